"""The Gradio app: microphone, uploaded file or link in; text, timed segments and
subtitle files out. Every handler calls the package's one job flow
(:mod:`whisper_zh.serve.jobs`) or the live transcriber; this module only wires UI.

    >>> from whisper_zh.serve.app import build_app, launch_options
    >>> demo = build_app("openai/whisper-small")   # a Hub id or the folder training wrote
    >>> demo.launch(share=True, **launch_options())  # Colab; the Space runs app.py

Settings come from the environment (:meth:`whisper_zh.serve.settings.ServeSettings.from_env`,
read here, at the edge, unless given), so a Space is configured in its "Variables" tab without touching code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import AudioDecodeError, WhisperZhError
from whisper_zh.media import format_duration
from whisper_zh.serve.engine import Transcriber, get_transcriber
from whisper_zh.serve.jobs import Job, load_input
from whisper_zh.serve.live import LiveTranscriber
from whisper_zh.serve.netguard import is_url
from whisper_zh.serve.settings import ServeSettings
from whisper_zh.serve.subtitles import (
    DEFAULT_FORMATS,
    format_timestamp,
    output_paths,
    write_all,
)
from whisper_zh.serve.types import TranscribeOptions, join_text
from whisper_zh.text import SCRIPTS

PARTIAL_EVERY_S = 2.0  # seconds between partial results shown while transcribing
# The Gradio queues: recordings, uploads and links wait in one; live pieces in another.
TRANSCRIBE_QUEUE, LIVE_QUEUE = "transcribe", "live"

NO_SPEECH = "No speech found: the input is silent or holds only noise or music."

# What the page offers to write: the Chinese text, Whisper's English translation, or both
# in one set of subtitles (the Chinese line over the English one).
OUTPUTS = [("中文 Chinese", "transcribe"), ("English translation", "translate"),
           ("中英双语 Bilingual", "bilingual")]
FILE_FORMATS = (*DEFAULT_FORMATS, "json")  # files every result comes with

OUT_OF_MEMORY = ("The server ran out of memory on this input. Try a shorter or smaller file, "
                 "or ask the operator to lower MAX_DURATION_S or BATCH_SIZE.")


class UserError(WhisperZhError):
    """A problem with what the user sent; the message is shown to them as is."""


@dataclass(frozen=True)
class Request:
    """One visitor's request, as the page sends it."""

    kind: str  # "microphone", "file" or "url"
    source: Optional[str]  # the recording's or upload's path, or the link
    script: str = "simplified"
    output: str = "transcribe"  # one of OUTPUTS' values
    hotwords: Optional[str] = None
    cookies: Optional[str] = None  # path of the visitor's cookies.txt (links only)


@dataclass(frozen=True)
class Update:
    """What the page shows, each time it changes."""

    status: str
    text: str = ""
    rows: tuple = ()
    files: Optional[list[str]] = None


class Handlers:
    """The app's work, free of Gradio so it can be called and tested directly."""

    def __init__(self, settings: ServeSettings, transcriber: Optional[Transcriber] = None):
        self.settings = settings
        self._transcriber = transcriber

    @property
    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = get_transcriber(self.settings.model_id, backend=self.settings.backend)
        return self._transcriber

    def run(self, request: Request, progress=None) -> Iterator[Update]:
        """Transcribe the request's input, yielding what to show as work advances.

        Everything written -- the download, the subtitle files -- lives in one temporary
        directory per request, removed when the generator finishes (Gradio has copied
        the files it serves by then) or is closed. ``request.cookies`` is the visitor's upload:
        deleted then too, since the page promises it serves this request only.
        """
        report = progress or (lambda fraction, desc=None: None)
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-request-"))
        try:
            started = time.perf_counter()
            source = self._source(request)
            report(0.0, desc="downloading" if request.kind == "url" else "decoding")
            try:
                audio = load_input(source, workdir, self.settings.limits,
                                   cookies=request.cookies or self.settings.cookies,
                                   progress=lambda f, msg: report(f, desc=msg))
            except AudioDecodeError:
                raise UserError("This file is not audio or video that ffmpeg can decode "
                                "(corrupt, empty, or without a sound track).") from None
            duration = len(audio) / SAMPLE_RATE
            yield Update(f"Decoded {format_duration(duration)} of audio; transcribing…")
            options = TranscribeOptions(
                script=request.script or "simplified", task="translate" if request.output == "translate" else "transcribe",
                batch_size=self.settings.batch_size or TranscribeOptions.batch_size,
                hotwords=(request.hotwords or "").strip() or None)
            formats = (*FILE_FORMATS, "bilingual") if request.output == "bilingual" else FILE_FORMATS
            job = Job(self.transcriber, options, formats)
            segments: list = []
            done = [0.0]  # fraction decoded, as the engine last reported it

            def on_progress(fraction: float, message: str) -> None:
                done[0] = fraction
                report(fraction, desc=message)

            shown = 0.0
            for segment in job.iter_segments(audio, progress=on_progress):
                segments.append(segment)
                # show the text as it grows, at most every PARTIAL_EVERY_S
                if time.perf_counter() - shown > PARTIAL_EVERY_S:
                    shown = time.perf_counter()
                    yield Update(f"Transcribed {done[0]:.0%} of {format_duration(duration)}…",
                                 _text(segments, job.language), _rows(segments))
            if not segments:
                yield Update(NO_SPEECH)
                return
            if job.bilingual:
                yield Update("Transcribed; translating to English for the bilingual subtitles…",
                             _text(segments, job.language), _rows(segments))
            result = job.finish(audio, progress=lambda f, msg: report(f, desc=f"translating: {msg}"))
            files = job.write(result, output_paths(workdir, _stem(request), formats))
            elapsed = time.perf_counter() - started
            status = (f"{format_duration(duration)} of audio, {len(segments)} segment{'s' * (len(segments) != 1)}, "
                      f"transcribed in {elapsed:.1f} s ({self.transcriber.backend.name}, {self.transcriber.device}).")
            yield Update(status, result.text, _rows(segments), [str(files[f]) for f in formats])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if request.cookies:
                Path(request.cookies).unlink(missing_ok=True)

    def _source(self, request: Request) -> str:
        """The request's link or file, checked for what a visitor can get wrong."""
        if request.kind == "url":
            url = (request.source or "").strip()
            if not url:
                raise UserError("Paste a link first.")
            if not is_url(url):
                raise UserError("That is not a link: it should start with https://")
            return url
        if not request.source:
            raise UserError("Record something first." if request.kind == "microphone" else "Upload a file first.")
        if not os.path.isfile(request.source):
            raise UserError("The uploaded file is gone; upload it again.")
        return request.source

    def live_feed(self, live: Optional[LiveTranscriber], chunk: Optional[tuple], script: str,
                  hotwords: Optional[str] = None) -> tuple[LiveTranscriber, str, str]:
        """One piece of a live recording, ``chunk`` = (sample rate, int16 samples) as
        Gradio streams it; returns (the recording's state, status, text so far). The first
        piece starts a :class:`LiveTranscriber` with the page's script and hotwords, kept in
        the session's ``gr.State``."""
        if live is None:
            live = LiveTranscriber(self.transcriber, TranscribeOptions(
                script=script or "simplified", batch_size=self.settings.batch_size or TranscribeOptions.batch_size,
                hotwords=(hotwords or "").strip() or None))
        if chunk is None:
            return live, "Listening…", ""
        sample_rate, samples = chunk
        update = live.feed(samples, sample_rate)
        return live, f"🔴 Listening… {format_duration(update.audio_s)}", update.text

    def live_finish(self, live: Optional[LiveTranscriber]) -> Iterator[tuple]:
        """The recording stopped: confirm the rest, write the subtitle files as for an
        upload; yields (state reset, status, text, segment rows, [srt, vtt, txt])."""
        if live is None:
            yield (None, *_shown(Update("Nothing was recorded.")))
            return
        segments = live.finish()
        if not segments:
            yield (None, *_shown(Update(NO_SPEECH)))
            return
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-live-"))
        try:
            files = write_all(segments, workdir, stem="live", formats=FILE_FORMATS)
            status = (f"{format_duration(live.audio_s)} of live audio, {len(segments)} segment"
                      f"{'s' * (len(segments) != 1)} ({self.transcriber.backend.name}, {self.transcriber.device}).")
            yield (None, *_shown(Update(status, _text(segments), _rows(segments),
                                        [str(files[f]) for f in FILE_FORMATS])))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _text(segments: list, language: str = "zh") -> str:
    return join_text((s.text for s in segments), language)


def _rows(segments: list) -> tuple:
    """Table rows: start, end, text; hours shown only for inputs that reach an hour."""
    hours = bool(segments) and segments[-1].end >= 3600
    return tuple([format_timestamp(s.start, always_include_hours=hours),
                  format_timestamp(s.end, always_include_hours=hours), s.text] for s in segments)


def _stem(request: Request) -> str:
    if request.kind == "file" and request.source:
        stem = Path(request.source).stem
        safe = "".join(c for c in stem if c.isalnum() or c in "-_")[:60]
        return safe or "transcript"
    return "transcript"


def _handler(handlers: Handlers, kind: str):
    import gradio as gr

    def handle(source, script, output, hotwords, *rest, progress=gr.Progress()):
        cookies = rest[0] if rest else None
        request = Request(kind, source, script, output, hotwords, getattr(cookies, "name", cookies))
        try:
            for update in handlers.run(request, progress=progress):
                yield _shown(update)
        except WhisperZhError as err:
            message = str(err)
            raise gr.Error(message[:1].upper() + message[1:], title="Cannot transcribe") from None
        except MemoryError:
            # the request's arrays are unreachable once this frame is left; the app goes on
            raise gr.Error(OUT_OF_MEMORY, title="Cannot transcribe") from None

    handle.__name__ = f"transcribe_{kind}"
    return handle


def _shown(update: Update) -> tuple:
    """An Update as the page's outputs: status, text, segments table, files."""
    status, text, rows, files = astuple(update)
    return status, text, [list(row) for row in rows], files


CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
.status-line { min-height: 1.5em; }
"""

DESCRIPTION = """
# 中文语音转文字 · Chinese speech to text
Record, upload an audio or video file, paste a YouTube link, or talk live. Any length up to
the limit; you get the text, timed segments, and `.srt` / `.vtt` / `.txt` subtitle files.
"""


def build_app(model_id: Optional[str] = None, *, settings: Optional[ServeSettings] = None,
              transcriber: Optional[Transcriber] = None, preload: bool = True):
    """The app as a ``gr.Blocks``, queued, not launched: ``demo.launch(**launch_options())``.

    Args:
        model_id: overrides ``settings.model_id`` (default: ``$MODEL_ID``).
        settings: default: :meth:`ServeSettings.from_env`.
        transcriber: an engine already loaded (tests; several apps in one process).
        preload: load the model now, so that the first visitor does not wait for it.
    """
    import gradio as gr

    settings = settings or ServeSettings.from_env()
    if model_id:
        settings = replace(settings, model_id=model_id)
    handlers = Handlers(settings, transcriber)
    if preload:
        handlers.transcriber  # noqa: B018 -- loads the model once, before the first request

    with gr.Blocks(title="whisper-zh: Chinese speech to text", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(DESCRIPTION, elem_id="title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Row():
                    script = gr.Radio([(s.label, s.name) for s in SCRIPTS if s.name != "original"],
                                      value="simplified", label="Characters")
                    output = gr.Radio(OUTPUTS, value="transcribe", label="Output")
                hotwords = gr.Textbox(label="Hotwords (optional)", lines=1, max_lines=1,
                                      placeholder="names and terms to get right, e.g. 小米 澎湃OS")
                with gr.Tabs():
                    with gr.Tab("🎙️ Microphone"):
                        mic = gr.Audio(sources=["microphone"], type="filepath", label="Recording")
                        mic_button = gr.Button("Transcribe recording", variant="primary")
                    with gr.Tab("📁 File"):
                        upload = gr.File(label="Audio or video (mp3, wav, m4a, flac, ogg, mp4, mkv, mov, webm…)",
                                         file_types=["audio", "video"], type="filepath")
                        file_button = gr.Button("Transcribe file", variant="primary")
                    with gr.Tab("🔗 Link"):
                        url = gr.Textbox(label="YouTube or other video page", lines=1,
                                         placeholder="https://www.youtube.com/watch?v=…")
                        with gr.Accordion("YouTube asks to sign in? Add cookies", open=False):
                            gr.Markdown("Export `cookies.txt` from a browser logged in to YouTube "
                                        "(e.g. with the *Get cookies.txt LOCALLY* extension) and upload it "
                                        "here. It is used for this request only.")
                            cookies = gr.File(label="cookies.txt", file_types=[".txt"], type="filepath")
                        url_button = gr.Button("Transcribe link", variant="primary")
                    with gr.Tab("🔴 Live"):
                        live_mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy",
                                            label="Speak: the text appears as you talk; stop for the subtitles")
                        live_state = gr.State(None)
                gr.Markdown(
                    f"Model: `{settings.model_id}` · limit {format_duration(settings.max_duration_s)} "
                    f"and {settings.max_upload_mb:.0f} MB per input")
            with gr.Column(scale=7):
                status = gr.Markdown(elem_classes="status-line")
                text = gr.Textbox(label="Transcript", lines=8, max_lines=20, buttons=["copy"])
                files = gr.File(label="Subtitles and text", file_count="multiple", interactive=False)
                segments = gr.Dataframe(headers=["start", "end", "text"], datatype=["str", "str", "str"],
                                        label="Segments", interactive=False, wrap=True,
                                        column_widths=["15%", "15%", "70%"], max_height=400)
        choices = [script, output, hotwords]
        outputs = [status, text, segments, files]
        # Gradio gives every event its own queue unless told otherwise: the four ways to
        # transcribe share one, so that CONCURRENCY_LIMIT bounds them together (each holds
        # a whole recording in memory)
        queued = dict(concurrency_id=TRANSCRIBE_QUEUE, concurrency_limit=settings.concurrency_limit)
        mic_button.click(_handler(handlers, "microphone"), [mic, *choices], outputs,
                         api_name="transcribe_microphone", **queued)
        file_button.click(_handler(handlers, "file"), [upload, *choices], outputs, api_name="transcribe_file",
                          **queued)
        url_button.click(_handler(handlers, "url"), [url, *choices, cookies], outputs, api_name="transcribe_url",
                         **queued)
        url.submit(_handler(handlers, "url"), [url, *choices, cookies], outputs, api_name=False, **queued)
        # Every piece the browser sends is an event; LiveTranscriber decides when to decode.
        # Live pieces queue apart, so a long upload does not hold a live session back: the
        # engine's lock still runs one model call at a time, and a live decode reads at most
        # 20 s, so a stream costs little memory.
        live_mic.stream(handlers.live_feed, [live_state, live_mic, script, hotwords], [live_state, status, text],
                        time_limit=int(settings.max_duration_s), show_progress="hidden", api_name="transcribe_live",
                        concurrency_id=LIVE_QUEUE, concurrency_limit=settings.concurrency_limit)
        live_mic.stop_recording(handlers.live_finish, [live_state], [live_state, *outputs], api_name=False)

    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.max_queue)
    return demo


def launch_options(settings: Optional[ServeSettings] = None) -> dict:
    """``demo.launch`` arguments the app needs: the upload size cap (enforced by the
    server, 413 beyond it), the theme and CSS. Other arguments may be added
    (``share=True`` in Colab)."""
    import gradio as gr

    settings = settings or ServeSettings.from_env()
    return dict(max_file_size=f"{settings.max_upload_mb:g}mb", css=CSS, theme=gr.themes.Soft())
