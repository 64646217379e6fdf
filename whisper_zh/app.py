"""The Gradio app: microphone, uploaded file or link in; text, timed segments and
subtitle files out. Every handler calls the package (:mod:`whisper_zh.media`,
:mod:`whisper_zh.transcribe`, :mod:`whisper_zh.subtitles`); this module only wires UI.

    >>> from whisper_zh.app import build_app
    >>> demo = build_app("openai/whisper-small")   # a Hub id or the folder training wrote
    >>> demo.launch(share=True)                    # Colab; the Space runs app.py

Settings come from the environment (see :class:`AppConfig`), so a Space is configured
in its "Variables" tab without touching code.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from whisper_zh.media import (
    SAMPLE_RATE,
    AudioDecodeError,
    DownloadError,
    MediaTooLongError,
    download_audio,
    format_duration,
    is_url,
    load_media,
)
from whisper_zh.streaming import LiveTranscriber
from whisper_zh.subtitles import format_timestamp, write_all
from whisper_zh.transcribe import DEFAULT_MODEL_ID, NoSpeechError, TranscribeOptions, Transcriber, get_transcriber

PARTIAL_EVERY_S = 10.0

NO_SPEECH = "No speech found: the input is silent or holds only noise or music."

SCRIPTS = [("简体 Simplified", "simplified"), ("繁體 Traditional", "traditional")]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass
class AppConfig:
    """Everything an operator may change, each read from an environment variable."""

    model_id: str = field(default_factory=lambda: _env("MODEL_ID", DEFAULT_MODEL_ID))
    backend: str = field(default_factory=lambda: _env("BACKEND", "auto"))
    max_duration_s: float = field(default_factory=lambda: float(_env("MAX_DURATION_S", "3600")))
    max_upload_mb: float = field(default_factory=lambda: float(_env("MAX_UPLOAD_MB", "500")))
    # one transcription at a time per process: a second would double peak memory
    concurrency_limit: int = field(default_factory=lambda: int(_env("CONCURRENCY_LIMIT", "1")))
    max_queue: int = field(default_factory=lambda: int(_env("MAX_QUEUE", "32")))
    batch_size: int = field(default_factory=lambda: int(_env("BATCH_SIZE", str(TranscribeOptions.batch_size))))
    cookies: Optional[str] = field(default_factory=lambda: os.environ.get("YTDLP_COOKIES") or None)

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class UserError(Exception):
    """A problem with what the user sent; the message is shown to them as is."""


class Handlers:
    """The app's work, free of Gradio so it can be called and tested directly."""

    def __init__(self, config: AppConfig, transcriber: Optional[Transcriber] = None):
        self.config = config
        self._transcriber = transcriber

    @property
    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = get_transcriber(self.config.model_id, backend=self.config.backend)
        return self._transcriber

    def run(self, kind: str, source: Optional[str], script: str, cookies: Optional[str] = None,
            progress=None) -> Iterator[tuple]:
        """Transcribe ``source`` (a recorded/uploaded file path, or a link when ``kind`` is
        "url"); yields (status, text, segment rows, [srt, vtt, txt]) as work advances.

        Everything written -- the download, the subtitle files -- lives in one temporary
        directory per request, removed when the generator finishes (Gradio has copied
        the files it serves by then) or is closed.
        """
        report = progress or (lambda fraction, desc=None: None)
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-request-"))
        try:
            started = time.perf_counter()
            path = self._fetch(kind, source, cookies, workdir, report)
            report(0.0, desc="decoding")
            try:
                audio = load_media(path, max_duration_s=self.config.max_duration_s, max_bytes=self.config.max_bytes)
            except AudioDecodeError:
                raise UserError("This file is not audio or video that ffmpeg can decode "
                                "(corrupt, empty, or without a sound track).") from None
            shutil.rmtree(workdir / "download", ignore_errors=True)  # decoded: the download is no longer needed
            duration = len(audio) / SAMPLE_RATE
            yield (f"Decoded {format_duration(duration)} of audio; transcribing…", "", [], None)
            options = TranscribeOptions(script=script or "simplified", batch_size=self.config.batch_size,
                                        max_duration_s=self.config.max_duration_s)
            segments: list = []
            shown = time.perf_counter()
            for segment in self.transcriber.iter_segments(
                    audio, options, progress=lambda f, msg: report(f, desc=msg)):
                segments.append(segment)
                # long inputs: show what is done so far, a few times a minute
                if time.perf_counter() - shown > PARTIAL_EVERY_S:
                    shown = time.perf_counter()
                    yield (f"Transcribed {format_duration(segment.end)} of {format_duration(duration)}…",
                           _text(segments), _rows(segments), None)
            if not segments:
                yield (NO_SPEECH, "", [], None)
                return
            text = _text(segments)
            files = write_all(segments, workdir, stem=_stem(kind, source))
            elapsed = time.perf_counter() - started
            status = (f"{format_duration(duration)} of audio, {len(segments)} segment{'s' * (len(segments) != 1)}, "
                      f"transcribed in {elapsed:.1f} s ({self.transcriber.backend}, {self.transcriber.device}).")
            yield (status, text, _rows(segments), [str(files[f]) for f in ("srt", "vtt", "txt")])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _fetch(self, kind: str, source: Optional[str], cookies: Optional[str], workdir: Path, report) -> str:
        if kind == "url":
            url = (source or "").strip()
            if not url:
                raise UserError("Paste a link first.")
            if not is_url(url):
                raise UserError("That is not a link: it should start with https://")
            report(0.0, desc="downloading")
            return str(download_audio(
                url, workdir / "download", cookies=cookies or self.config.cookies,
                max_duration_s=self.config.max_duration_s, max_bytes=self.config.max_bytes,
                progress=lambda f, msg: report(f, desc=msg)))
        if not source:
            raise UserError("Record something first." if kind == "microphone" else "Upload a file first.")
        if not os.path.isfile(source):
            raise UserError("The uploaded file is gone; upload it again.")
        return source

    def live_feed(self, live: Optional[LiveTranscriber], chunk: Optional[tuple], script: str
                  ) -> tuple[LiveTranscriber, str, str]:
        """One piece of a live recording, ``chunk`` = (sample rate, int16 samples) as
        Gradio streams it; returns (the recording's state, status, text so far). The first
        piece starts a :class:`LiveTranscriber`, kept in the session's ``gr.State``."""
        if live is None:
            live = LiveTranscriber(self.transcriber, TranscribeOptions(
                script=script or "simplified", batch_size=self.config.batch_size,
                max_duration_s=self.config.max_duration_s))
        if chunk is None:
            return live, "Listening…", ""
        sample_rate, samples = chunk
        update = live.feed(samples, sample_rate)
        return live, f"🔴 Listening… {format_duration(update.audio_s)}", update.text

    def live_finish(self, live: Optional[LiveTranscriber]) -> Iterator[tuple]:
        """The recording stopped: confirm the rest, write the subtitle files as for an
        upload; yields (state reset, status, text, segment rows, [srt, vtt, txt])."""
        if live is None:
            yield (None, "Nothing was recorded.", "", [], None)
            return
        segments = live.finish()
        if not segments:
            yield (None, NO_SPEECH, "", [], None)
            return
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-live-"))
        try:
            files = write_all(segments, workdir, stem="live")
            status = (f"{format_duration(live.audio_s)} of live audio, {len(segments)} "
                      f"segment{'s' * (len(segments) != 1)} ({self.transcriber.backend}, {self.transcriber.device}).")
            yield (None, status, _text(segments), _rows(segments), [str(files[f]) for f in ("srt", "vtt", "txt")])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _text(segments: list) -> str:
    return "".join(s.text for s in segments)


def _rows(segments: list) -> list[list[str]]:
    """Table rows: start, end, text; hours shown only for inputs that reach an hour."""
    hours = bool(segments) and segments[-1].end >= 3600
    return [[format_timestamp(s.start, always_include_hours=hours),
             format_timestamp(s.end, always_include_hours=hours), s.text] for s in segments]


def _stem(kind: str, source: Optional[str]) -> str:
    if kind == "file" and source:
        stem = Path(source).stem
        safe = "".join(c for c in stem if c.isalnum() or c in "-_")[:60]
        return safe or "transcript"
    return "transcript"


def _handler(handlers: Handlers, kind: str):
    import gradio as gr

    def handle(source, script, *rest, progress=gr.Progress()):
        cookies = rest[0] if rest else None
        cookies_path = getattr(cookies, "name", cookies)
        try:
            yield from handlers.run(kind, source, script, cookies_path, progress=progress)
        except NoSpeechError:
            yield (NO_SPEECH, "", [], None)
        except (UserError, DownloadError, MediaTooLongError, FileNotFoundError) as err:
            message = str(err)
            raise gr.Error(message[:1].upper() + message[1:], title="Cannot transcribe") from None

    handle.__name__ = f"transcribe_{kind}"
    return handle


CSS = """
#title { text-align: center; }
#title h1 { margin-bottom: 0.2em; }
.status-line { min-height: 1.5em; }
"""

DESCRIPTION = """
# 中文语音转文字 · Chinese speech to text
Record, upload an audio or video file, or paste a YouTube link. Any length up to the limit;
you get the text, timed segments, and `.srt` / `.vtt` / `.txt` subtitle files.
"""


def build_app(model_id: Optional[str] = None, *, config: Optional[AppConfig] = None,
              transcriber: Optional[Transcriber] = None, preload: bool = True):
    """The app as a ``gr.Blocks``, queued, not launched.

    Args:
        model_id: overrides ``config.model_id`` (default: ``$MODEL_ID``).
        transcriber: an engine already loaded (tests; several apps in one process).
        preload: load the model now, so that the first visitor does not wait for it.

    ``demo.launch(...)`` then applies the upload size limit, theme and CSS by default;
    any of its arguments can still be passed (``share=True`` in Colab).
    """
    import gradio as gr

    config = config or AppConfig()
    if model_id:
        config.model_id = model_id
    handlers = Handlers(config, transcriber)
    if preload:
        handlers.transcriber  # noqa: B018 -- loads the model once, before the first request

    with gr.Blocks(title="whisper-zh: Chinese speech to text", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(DESCRIPTION, elem_id="title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                script = gr.Radio(SCRIPTS, value="simplified", label="Characters")
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
                    f"Model: `{config.model_id}` · limit {format_duration(config.max_duration_s)} "
                    f"and {config.max_upload_mb:.0f} MB per input")
            with gr.Column(scale=7):
                status = gr.Markdown(elem_classes="status-line")
                text = gr.Textbox(label="Transcript", lines=8, max_lines=20, buttons=["copy"])
                files = gr.File(label="Subtitles and text", file_count="multiple", interactive=False)
                segments = gr.Dataframe(headers=["start", "end", "text"], datatype=["str", "str", "str"],
                                        label="Segments", interactive=False, wrap=True,
                                        column_widths=["15%", "15%", "70%"], max_height=400)
        outputs = [status, text, segments, files]
        mic_button.click(_handler(handlers, "microphone"), [mic, script], outputs,
                         api_name="transcribe_microphone")
        file_button.click(_handler(handlers, "file"), [upload, script], outputs, api_name="transcribe_file")
        url_button.click(_handler(handlers, "url"), [url, script, cookies], outputs, api_name="transcribe_url")
        url.submit(_handler(handlers, "url"), [url, script, cookies], outputs, api_name=False)
        # every piece the browser sends is an event; LiveTranscriber decides when to decode
        live_mic.stream(handlers.live_feed, [live_state, live_mic, script], [live_state, status, text],
                        time_limit=int(config.max_duration_s), show_progress="hidden", api_name="transcribe_live")
        live_mic.stop_recording(handlers.live_finish, [live_state], [live_state, *outputs], api_name=False)

    demo.queue(default_concurrency_limit=config.concurrency_limit, max_size=config.max_queue)
    demo.launch = functools.partial(
        type(demo).launch, demo, max_file_size=f"{config.max_upload_mb:g}mb", css=CSS,
        theme=gr.themes.Soft())
    return demo


def main() -> None:
    """``python app.py``: serve on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (0.0.0.0:7860 on a Space)."""
    build_app().launch()
