"""One job flow: an input (a file, a link or a waveform) -> segments -> files.

Every way in -- ``whisper-zh transcribe`` on one file, folder jobs, the page, the live
microphone -- goes through :class:`Job`, so each rule is decided here once:

* **Limits** hold while the work happens: a link's download and a file's decoding stop
  at :class:`~whisper_zh.serve.settings.Limits` (:func:`open_input`), a link's video
  included.
* **What was not transcribed is said**, never dropped: the parts of a file that could not
  be decoded (:attr:`Input.notes`) and the speech left without text
  (:attr:`JobResult.coverage`: speech the VAD heard that even the completeness pass could
  not transcribe), one line each for every entry point (:func:`notice_lines`).
* **Bilingual output** adds Whisper's English of the same audio (its ``translate``
  task) for the second subtitle line. The English pass keeps the request's prompt and
  hotwords: they name the people and terms the speech holds, which the translation
  should spell the same way; its script is the model's own (a script conversion is for
  Chinese characters).
* **One line of work**: :class:`Slots` bounds the jobs running at once and the requests
  waiting, whichever way they came in (the page, the API).
* **Silence** is a result without segments, not an error: its files are written, empty
  and valid, so a script finds every output it asked for and a resumed folder job skips
  the file; each entry point then *says* "no speech found" (:attr:`JobResult.no_speech`).
* **Speakers** (``diarize=True``) are labelled after the first pass, on the whole
  recording (:mod:`whisper_zh.serve.diarize`): segments shown as they come have none yet;
  the result's and the files' have them, split where the speaker changes.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import Cancelled, ConfigError, QueueFullError
from whisper_zh.media import decode_media, format_duration
from whisper_zh.serve.diarize import check_installed as check_diarize_installed
from whisper_zh.serve.diarize import diarize as label_speakers
from whisper_zh.serve.download import download_audio
from whisper_zh.serve.engine import Transcriber
from whisper_zh.serve.netguard import is_url
from whisper_zh.serve.settings import Limits
from whisper_zh.serve.subtitles import (
    DEFAULT_FORMATS,
    SubtitleStyle,
    check_formats,
    write_atomically,
)
from whisper_zh.serve.types import (
    Coverage,
    ProgressCallback,
    Segment,
    TranscribeOptions,
    join_text,
)

logger = logging.getLogger(__name__)

NO_SPEECH = "no speech found"
WAIT_POLL_S = 0.25  # how often a waiting call looks for a free slot or a gone client
NO_TEXT = "speech detected, no text"


@dataclass(frozen=True)
class Input:
    """An input ready for a job: its waveform, the video to play beside its subtitles
    (:func:`open_input` with ``video=True``, when there is one), and the notes the user
    must see with the transcript: the parts of the file that could not be decoded
    (:class:`~whisper_zh.media.DecodedMedia`)."""

    audio: np.ndarray
    video: Optional[Path] = None
    notes: tuple[str, ...] = ()


def open_input(source: Union[str, os.PathLike], workdir: Union[str, os.PathLike], limits: Limits = Limits(), *,
               video: bool = False, cookies: Optional[str] = None,
               progress: Optional[ProgressCallback] = None) -> Input:
    """A media path or an http(s) link -> its 16 kHz waveform, ``limits`` held while
    downloading and decoding. A link is downloaded into ``workdir/download``, deleted once
    decoded; ``workdir`` belongs to the caller, who removes it.

    With ``video`` (a page that plays what it transcribes), a link fetches a small video
    with its sound when the site has one (:func:`~whisper_zh.serve.download.download_audio`),
    and a file or download that holds moving pictures is :attr:`Input.video`: a download
    is then kept in ``workdir/download`` until the caller removes ``workdir``, which it
    does once the video is served.

    Raises:
        MediaLimitError, AudioDecodeError, InputNotFoundError, DownloadError, UnsafeURLError.
    """
    source = os.fspath(source)
    if not is_url(source):
        decoded = decode_media(source, max_duration_s=limits.max_duration_s, max_bytes=limits.max_bytes,
                               deadline_s=limits.decode_deadline_s)
        return Input(decoded.audio, Path(source) if video and decoded.video else None, decoded.notes)
    download = Path(workdir) / "download"
    path = download_audio(source, download, video=video, cookies=cookies, max_duration_s=limits.max_duration_s,
                          max_bytes=limits.max_bytes, allow_private=limits.allow_private_urls,
                          deadline_s=limits.download_deadline_s, progress=progress)
    keep = False
    try:
        decoded = decode_media(path, max_duration_s=limits.max_duration_s, max_bytes=limits.max_bytes,
                               deadline_s=limits.decode_deadline_s)
        keep = video and decoded.video
    finally:
        if not keep:
            shutil.rmtree(download, ignore_errors=True)
    if not keep:
        return Input(decoded.audio, notes=decoded.notes)
    for other in download.iterdir():  # the cookies' copy: it served the download only
        if other.is_file() and other != path:
            other.unlink()
    return Input(decoded.audio, path, decoded.notes)


def notice_lines(loaded: Optional[Input], coverage: Optional[Coverage]) -> list[str]:
    """What every entry point tells the user beside the transcript, a line each: the
    parts of the input not decoded, then the spans of speech left without text
    ("11:46–11:59: speech detected, no text")."""
    lines = list(loaded.notes) if loaded is not None else []
    if coverage is not None:
        lines += [f"{format_duration(start)}–{format_duration(end)}: {NO_TEXT}" for start, end in coverage.uncovered]
    return lines


def translation_options(options: TranscribeOptions) -> TranscribeOptions:
    """The English pass of bilingual output (see the module docstring)."""
    return replace(options, task="translate", script="original")


@dataclass
class JobResult:
    """What one input gave.

    Attributes:
        segments: the transcript (English for ``task="translate"``), in time order.
        translation: Whisper's English of the same audio, when bilingual output was asked for.
        duration_s: seconds of audio.
        elapsed_s: wall time of decoding (both passes).
        language: the language of ``segments``' text.
        files: {format: path} of the files written, once :meth:`Job.write` ran.
        coverage: the share of detected speech with text and the spans left without
            (None when the engine could not tell).
    """

    segments: list[Segment]
    translation: Optional[list[Segment]]
    duration_s: float
    elapsed_s: float
    language: str = "zh"
    files: dict[str, Path] = field(default_factory=dict)
    coverage: Optional[Coverage] = None

    @property
    def no_speech(self) -> bool:
        return not self.segments

    @property
    def text(self) -> str:
        return join_text((s.text for s in self.segments), self.language)


class Job:
    """One input through the engine to files: ``options`` for decoding, ``formats`` to
    write (:data:`~whisper_zh.serve.subtitles.FORMATS`; "bilingual" adds the English
    pass), ``style`` for the subtitles' layout (default: each format's own, by the text),
    ``diarize`` to label speakers (``num_speakers``: how many, when known).

        >>> job = Job(engine, TranscribeOptions(hotwords="小米"), ("srt", "bilingual"))
        >>> for segment in job.iter_segments(audio):   # the page shows them as they come
        ...     ...
        >>> result = job.finish(audio)                  # the English pass, if asked for
        >>> job.write(result, output_paths("subs", "talk", job.formats))

    Raises:
        MissingExtraError: ``diarize`` without the ``diarize`` extra, at once, before any work.
    """

    def __init__(self, engine: Transcriber, options: Optional[TranscribeOptions] = None,
                 formats: Sequence[str] = DEFAULT_FORMATS, *, style: Optional[SubtitleStyle] = None,
                 diarize: bool = False, num_speakers: Optional[int] = None):
        self.engine = engine
        self.diarize = diarize or num_speakers is not None
        self.num_speakers = num_speakers
        if self.diarize:
            check_diarize_installed()
        self.options = options or engine.options
        self.formats = check_formats(formats)
        self.language = "en" if self.options.task == "translate" else self.options.language
        self.style = style  # None: each format's own default for the text it holds
        self._segments: list[Segment] = []
        self._coverage: Optional[Coverage] = None
        self._started = 0.0

    @property
    def bilingual(self) -> bool:
        return "bilingual" in self.formats

    @property
    def coverage(self) -> Optional[Coverage]:
        """After :meth:`iter_segments`: the share of detected speech with text, and the
        spans without (None when the engine could not tell)."""
        return self._coverage

    def iter_segments(self, audio: np.ndarray, progress: Optional[ProgressCallback] = None) -> Iterator[Segment]:
        """The first pass: each segment as soon as it is decoded."""
        self._segments, self._started, self._coverage = [], time.perf_counter(), None
        stream = self.engine.iter_segments(audio, self.options, progress=progress)
        for segment in stream:
            self._segments.append(segment)
            yield segment
        self._coverage = getattr(stream, "coverage", None)

    def finish(self, audio: np.ndarray, progress: Optional[ProgressCallback] = None) -> JobResult:
        """After :meth:`iter_segments`: speakers and the English pass when asked for (none
        for silence), and the result."""
        if self.diarize and self._segments:
            self._segments = label_speakers(audio, self._segments, self.num_speakers).segments
        translation = None
        if self.bilingual:
            translation = []
            if self._segments:
                translation = list(self.engine.iter_segments(audio, translation_options(self.options),
                                                              progress=progress))
        return JobResult(self._segments, translation, len(audio) / SAMPLE_RATE,
                         time.perf_counter() - self._started, self.language, coverage=self._coverage)

    def run(self, audio: np.ndarray, progress: Optional[ProgressCallback] = None) -> JobResult:
        """Both passes at once."""
        for _ in self.iter_segments(audio, progress):
            pass
        return self.finish(audio, progress)

    def write(self, result: JobResult, targets: dict[str, Path]) -> dict[str, Path]:
        """Write ``result`` to ``targets`` ({format: path}, e.g. from
        :func:`~whisper_zh.serve.subtitles.output_paths`), each atomically; empty, valid
        files for silence. Records and returns them as ``result.files``."""
        result.files = write_atomically(result.segments, targets, style=self.style,
                                        translation=result.translation)
        return result.files


class Slots:
    """The server's transcription slots, shared by every way in (the page's jobs, the
    API's calls): ``limit`` held at once, up to ``max_waiting`` in line, served first come
    first served. ``others_waiting`` counts requests waiting elsewhere for the same slots
    (the page's Gradio queue), so that the line is one line.

        >>> slots = Slots(limit=1, max_waiting=32)
        >>> with slots.hold(cancelled=flag.is_set):   # waits its turn; QueueFullError if the line is full
        ...     job.run(audio)
    """

    def __init__(self, limit: int = 1, max_waiting: int = 32, others_waiting: Callable[[], int] = lambda: 0):
        if limit < 1:
            raise ConfigError(f"the concurrency limit must be at least 1, not {limit}")
        self.limit, self.max_waiting, self.others_waiting = limit, max_waiting, others_waiting
        self._cond = threading.Condition()
        self._busy = 0
        self._line: collections.deque = collections.deque()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        """Requests in this line now (not counting ``others_waiting``)."""
        return len(self._line)

    @contextmanager
    def hold(self, cancelled: Callable[[], bool] = lambda: False,
             on_wait: Optional[Callable[[int], None]] = None) -> Iterator[None]:
        """One slot for the ``with`` block, after those who came before.

        Args:
            cancelled: polled while waiting; True gives up (:class:`Cancelled`).
            on_wait: called with the number ahead, once, when the request has to wait.

        Raises:
            QueueFullError: ``max_waiting`` requests wait already.
            Cancelled: ``cancelled()`` became true while waiting.
        """
        ticket = object()
        with self._cond:
            if self._busy >= self.limit or self._line:
                if len(self._line) + self.others_waiting() >= self.max_waiting:
                    raise QueueFullError(f"{self.max_waiting} requests are waiting already; try again in a while")
                if on_wait is not None:
                    on_wait(len(self._line) + self._busy)
            self._line.append(ticket)
            try:
                while self._line[0] is not ticket or self._busy >= self.limit:
                    if cancelled():
                        raise Cancelled("the request was cancelled while it waited")
                    self._cond.wait(WAIT_POLL_S)
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()  # the next in line may go now, or look again
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()
