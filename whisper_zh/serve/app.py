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

import asyncio
import os
import shutil
import tempfile
import threading
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import AudioDecodeError, Cancelled, WhisperZhError
from whisper_zh.media import format_duration
from whisper_zh.serve import api, uploads
from whisper_zh.serve.engine import Transcriber, get_transcriber
from whisper_zh.serve.jobs import Job, Slots, notice_lines, open_input
from whisper_zh.serve.live import LiveTranscriber
from whisper_zh.serve.netguard import is_url
from whisper_zh.serve.settings import ServeSettings
from whisper_zh.serve.subtitles import (
    DEFAULT_FORMATS,
    bilingual_cues,
    format_timestamp,
    make_cues,
    output_paths,
    to_txt,
    write_all,
)
from whisper_zh.serve.types import TranscribeOptions
from whisper_zh.text import SCRIPTS

PARTIAL_EVERY_S = 2.0  # seconds between partial results shown while transcribing
# Gradio looks whether a request's client is still there only when its handler yields:
# while a step of the work runs, the handler yields what is shown again this often, so that a
# client that left is noticed and its work stopped (after the engine's current model step).
HEARTBEAT_S = 1.0
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
    diarize: bool = False  # label who speaks


@dataclass(frozen=True)
class Update:
    """What the page shows, each time it changes."""

    status: str
    text: str = ""
    rows: tuple = ()
    files: Optional[list[str]] = None
    # the input's video (an upload, or a link's download) and its cues (the chosen output's:
    # {"text", "timestamp": [start, end]}), for the page's player
    video: Optional[tuple[str, list]] = None


class Handlers:
    """The app's work, free of Gradio so it can be called and tested directly."""

    def __init__(self, settings: ServeSettings, transcriber: Optional[Transcriber] = None,
                 slots: Optional[Slots] = None):
        self.settings = settings
        self._transcriber = transcriber
        # The work itself holds a slot, not only Gradio's event: Gradio frees its slot when a
        # request is cancelled while the work may still be in a model step, and the API's
        # calls take these same slots, so no more than CONCURRENCY_LIMIT jobs ever work at once
        self.slots = slots or Slots(settings.concurrency_limit, settings.max_queue)

    @property
    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = get_transcriber(self.settings.model_id, backend=self.settings.backend,
                                                encoder=self.settings.encoder)
        return self._transcriber

    def run(self, request: Request, progress=None, cancel: Optional[threading.Event] = None) -> Iterator[Update]:
        """Transcribe the request's input, yielding what to show as work advances.

        Everything written -- the download, the subtitle files -- lives in one temporary
        directory per request, removed when the generator finishes (Gradio has copied
        the files it serves by then) or is closed. ``request.cookies`` is the visitor's upload:
        deleted then too, since the page promises it serves this request only.

        ``cancel``, once set (from another thread), stops the work at the next progress
        report: after the engine's current model step, or the download's current read.

        Raises:
            Cancelled: ``cancel`` was set.
            UserError: the visitor's cookies.txt is gone (a second click after the first
                request deleted it).
        """
        if request.cookies and not Path(request.cookies).is_file():
            # the page's file box still names the deleted upload: say so, not its server path
            raise UserError("The cookies.txt you uploaded served one request and was deleted: "
                            "upload it again to use it for this link.")
        cancel = cancel or threading.Event()

        def report(fraction: float, desc: Optional[str] = None) -> None:
            if cancel.is_set():
                raise Cancelled()
            if progress is not None:
                progress(fraction, desc=desc)

        try:
            with self.slots.hold(cancelled=cancel.is_set,
                                 on_wait=lambda ahead: report(0.0, desc=f"waiting: {ahead} ahead")):
                yield from self._work(request, report)
        finally:
            if request.cookies:
                Path(request.cookies).unlink(missing_ok=True)

    def _work(self, request: Request, report) -> Iterator[Update]:
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-request-"))
        try:
            started = time.perf_counter()
            source = self._source(request)
            report(0.0, desc="downloading" if request.kind == "url" else "decoding")
            try:
                # a recording is not played back; an upload or a link that is a video is
                loaded = open_input(source, workdir, self.settings.limits, video=request.kind != "microphone",
                                    cookies=request.cookies or self.settings.cookies,
                                    progress=lambda f, msg: report(f, desc=msg))
            except AudioDecodeError:
                raise UserError("This file is not audio or video that ffmpeg can decode "
                                "(corrupt, empty, or without a sound track).") from None
            audio = loaded.audio
            duration = len(audio) / SAMPLE_RATE
            yield Update(f"Decoded {format_duration(duration)} of audio; transcribing…")
            options = TranscribeOptions(
                script=request.script or "simplified", task="translate" if request.output == "translate" else "transcribe",
                batch_size=self.settings.batch_size or TranscribeOptions.batch_size,
                hotwords=(request.hotwords or "").strip() or None)
            formats = (*FILE_FORMATS, "bilingual") if request.output == "bilingual" else FILE_FORMATS
            job = Job(self.transcriber, options, formats, diarize=request.diarize)
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
                yield Update(" ".join([NO_SPEECH, *(f"{line}." for line in notice_lines(loaded, job.coverage))]))
                return
            if job.diarize:
                yield Update("Transcribed; telling the speakers apart…", _text(segments, job.language),
                             _rows(segments))
            if job.bilingual:
                yield Update("Transcribed; translating to English for the bilingual subtitles…",
                             _text(segments, job.language), _rows(segments))
            result = job.finish(audio, progress=lambda f, msg: report(f, desc=f"translating: {msg}"))
            files = job.write(result, output_paths(workdir, _stem(request), formats))
            elapsed = time.perf_counter() - started
            status = (f"{format_duration(duration)} of audio, {len(segments)} segment{'s' * (len(segments) != 1)}, "
                      f"transcribed in {elapsed:.1f} s ({self.transcriber.backend.name}, {self.transcriber.device}).")
            status = " ".join([status, *(f"{line}." for line in notice_lines(loaded, result.coverage))])
            if job.diarize:
                found = len({s.speaker for s in result.segments})
                status += f" {found} speaker{'s' * (found != 1)}."
            video = None
            if loaded.video is not None:
                # the cues of the files, handed over as data: gr.Video writes its own WebVTT
                # into Gradio's cache, which outlives this request's folder (a link's video,
                # kept in that folder, is copied into the cache with this update too)
                cues = (bilingual_cues(result.segments, result.translation) if job.bilingual
                        else make_cues(result.segments))
                video = (str(loaded.video), [{"text": _escaped(c.text), "timestamp": [c.start, c.end]}
                                             for c in cues])
            yield Update(status, _text(result.segments, job.language), _rows(result.segments),
                         [str(files[f]) for f in formats], video)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

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
    """The transcript box: the TXT file's text, one segment a line, paragraphs at long pauses
    and changes of speaker (led by the speaker's label)."""
    return to_txt(segments).rstrip("\n")


def _rows(segments: list) -> tuple:
    """Table rows: start, end, text (led by the speaker's label when known); hours shown
    only for inputs that reach an hour."""
    hours = bool(segments) and segments[-1].end >= 3600
    return tuple([format_timestamp(s.start, always_include_hours=hours),
                  format_timestamp(s.end, always_include_hours=hours),
                  f"{s.speaker}：{s.text}" if getattr(s, "speaker", None) else s.text] for s in segments)


def _escaped(text: str) -> str:
    """Cue text as WebVTT needs it (gr.Video writes it as given)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _stem(request: Request) -> str:
    if request.kind == "file" and request.source:
        stem = Path(request.source).stem
        safe = "".join(c for c in stem if c.isalnum() or c in "-_")[:60]
        return safe or "transcript"
    return "transcript"


def _handler(handlers: Handlers, kind: str):
    """The Gradio handler of one way in: each step of :meth:`Handlers.run` runs in a
    worker thread while this coroutine waits, so that Gradio's cancel (which cancels it)
    and a client that leaves (noticed at a yield, :data:`HEARTBEAT_S`) both reach it and
    stop the work; the event's slot stays taken until the work has stopped."""
    import gradio as gr

    async def handle(source, script, output, hotwords, *rest, progress=gr.Progress()):
        # rest: (cookies,) for links, then the speakers checkbox
        *cookies, diarize = rest or (False,)
        cookies = cookies[0] if cookies else None
        request = Request(kind, source, script, output, hotwords, getattr(cookies, "name", cookies),
                          diarize=bool(diarize))
        cancel = threading.Event()
        updates = handlers.run(request, progress=progress, cancel=cancel)
        step, shown = None, _shown(Update("Working…"))
        try:
            while True:
                step = asyncio.get_running_loop().run_in_executor(None, next, updates, None)
                while not step.done():
                    await asyncio.wait({step}, timeout=HEARTBEAT_S)
                    if not step.done():
                        # the last outputs again, not gr.skip(): API clients read every output
                        yield shown
                update = step.result()
                if update is None:
                    return
                shown = _shown(update)
                yield shown
        except WhisperZhError as err:
            raise _shown_error(err) from None
        except MemoryError:
            # the request's arrays are unreachable once this frame is left; the app goes on
            raise gr.Error(OUT_OF_MEMORY, title="Cannot transcribe") from None
        finally:  # done, failed, cancelled, or closed because the client left
            cancel.set()
            while step is not None and not step.done():
                try:
                    await asyncio.wait({step})
                except asyncio.CancelledError:  # cancelled again: the work still has to stop first
                    continue
            if step is not None and not step.cancelled():
                step.exception()  # retrieved (this request's Cancelled, or raised above), so asyncio logs nothing
            updates.close()

    handle.__name__ = f"transcribe_{kind}"
    # what an MCP client reads about the tool (MCP_SERVER)
    handle.__doc__ = (f"Transcribe Chinese speech ({_SOURCES[kind]}) into text, timed segments and "
                      "SRT/VTT/TXT/JSON files, or translate it to English.\n\n"
                      f"Args:\n    source: {_SOURCES[kind]}\n    script: the characters: simplified, traditional, "
                      "taiwan, hongkong or original\n    output: transcribe (Chinese), translate (English) or "
                      "bilingual\n    hotwords: names and terms to get right, separated by spaces (may be empty)\n")
    return handle


def _live_handler(handlers: Handlers):
    """:meth:`Handlers.live_feed` with its errors shown as the other handlers' are, so
    that an API client reads the reason rather than Gradio's generic error."""
    import gradio as gr

    def transcribe_live(live, chunk, script, hotwords=None):
        try:
            return handlers.live_feed(live, chunk, script, hotwords)
        except WhisperZhError as err:
            raise _shown_error(err) from None
        except MemoryError:
            raise gr.Error(OUT_OF_MEMORY, title="Cannot transcribe") from None

    return transcribe_live


def _shown_error(err: WhisperZhError):
    import gradio as gr

    message = str(err)
    return gr.Error(message[:1].upper() + message[1:], title="Cannot transcribe")


_SOURCES = {"microphone": "a recording, as an audio file", "file": "an audio or video file",
            "url": "a link to a video page, e.g. YouTube"}


def _shown(update: Update) -> tuple:
    """An Update as the page's outputs: status, text, segments table, files, video player
    (empty, and so hidden by :data:`CSS`, unless the input was a video)."""
    import gradio as gr

    status, text, rows, files, video = astuple(update)
    player = (gr.update(value=video[0], subtitles=video[1]) if video
              else gr.update(value=None, subtitles=None))
    return status, text, [list(row) for row in rows], files, player


# The player is hidden by style, not by Gradio's `visible`: a gr.Video made visible by the
# update that gives it a value shows an empty box in the browser (Gradio 6.31).
CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
.status-line { min-height: 1.5em; }
#player:not(:has(video)) { display: none; }
"""

DESCRIPTION = """
# 中文语音转文字 · Chinese speech to text
Record, upload an audio or video file, paste a YouTube link, or talk live. Any length up to
the limit; you get the text, timed segments, and `.srt` / `.vtt` / `.txt` subtitle files. A
video, uploaded or linked, plays here with its subtitles.
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

    def page_waiting() -> int:
        """Visitors in Gradio's line for the page's transcriptions (a Gradio internal: 0 if it moves)."""
        line = getattr(getattr(demo, "_queue", None), "event_queue_per_concurrency_id", {}).get(TRANSCRIBE_QUEUE)
        return len(getattr(line, "queue", ()))

    handlers = Handlers(settings, transcriber,
                        Slots(settings.concurrency_limit, settings.max_queue, others_waiting=page_waiting))
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
                speakers = gr.Checkbox(False, label="Who is speaking (label speakers S1, S2 …)")
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
                player = gr.Video(label="Video with subtitles", interactive=False, elem_id="player")
                text = gr.Textbox(label="Transcript", lines=8, max_lines=20, buttons=["copy"])
                files = gr.File(label="Subtitles and text", file_count="multiple", interactive=False)
                segments = gr.Dataframe(headers=["start", "end", "text"], datatype=["str", "str", "str"],
                                        label="Segments", interactive=False, wrap=True,
                                        column_widths=["15%", "15%", "70%"], max_height=400)
        choices = [script, output, hotwords]
        outputs = [status, text, segments, files, player]
        # Gradio gives every event its own queue unless told otherwise: the four ways to
        # transcribe share one, so that CONCURRENCY_LIMIT bounds them together (each holds
        # a whole recording in memory)
        queued = dict(concurrency_id=TRANSCRIBE_QUEUE, concurrency_limit=settings.concurrency_limit)
        mic_button.click(_handler(handlers, "microphone"), [mic, *choices, speakers], outputs,
                         api_name="transcribe_microphone", **queued)
        file_button.click(_handler(handlers, "file"), [upload, *choices, speakers], outputs,
                          api_name="transcribe_file", **queued)
        url_button.click(_handler(handlers, "url"), [url, *choices, cookies, speakers], outputs,
                         api_name="transcribe_url", **queued)
        url.submit(_handler(handlers, "url"), [url, *choices, cookies, speakers], outputs, api_name=False,
                   **queued)
        # Every piece the browser sends is an event; LiveTranscriber decides when to decode.
        # Live pieces queue apart, so a long upload does not hold a live session back: the
        # engine's lock still runs one model call at a time, and a live decode reads at most
        # 20 s, so a stream costs little memory.
        live_mic.stream(_live_handler(handlers), [live_state, live_mic, script, hotwords], [live_state, status, text],
                        time_limit=int(settings.max_duration_s), show_progress="hidden", api_name="transcribe_live",
                        concurrency_id=LIVE_QUEUE, concurrency_limit=settings.concurrency_limit)
        live_mic.stop_recording(handlers.live_finish, [live_state], [live_state, *outputs], api_name=False)

    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.max_queue)
    api.attach(demo, api.Service(settings, lambda: handlers.transcriber, handlers.slots))
    return demo


def launch_options(settings: Optional[ServeSettings] = None) -> dict:
    """``demo.launch`` arguments the app needs: the upload size caps (enforced by the
    server while the bytes arrive: 413 beyond a file's or a request's, 503 beyond the
    server's total, :mod:`whisper_zh.serve.uploads`), the theme and CSS, the OpenAI audio API's routes beside the
    page's (:mod:`whisper_zh.serve.api`) and Gradio's MCP server when ``MCP_SERVER`` is
    on. Other arguments may be added (``share=True`` in Colab)."""
    import gradio as gr

    settings = settings or ServeSettings.from_env()
    return dict(max_file_size=f"{settings.max_upload_mb:g}mb", css=CSS, theme=gr.themes.Soft(),
                app_kwargs={"routes": api.routes(), "middleware": uploads.middleware(settings)},
                mcp_server=settings.mcp_server)
