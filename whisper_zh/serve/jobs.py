"""One job flow: an input (a file, a link or a waveform) -> segments -> files.

Every way in -- ``whisper-zh transcribe`` on one file, folder jobs, the page, the live
microphone -- goes through :class:`Job`, so each rule is decided here once:

* **Limits** hold while the work happens: a link's download and a file's decoding stop
  at :class:`~whisper_zh.serve.settings.Limits` (:func:`load_input`).
* **Bilingual output** adds Whisper's English of the same audio (its ``translate``
  task) for the second subtitle line. The English pass keeps the request's prompt and
  hotwords: they name the people and terms the speech holds, which the translation
  should spell the same way; its script is the model's own (a script conversion is for
  Chinese characters).
* **Silence** is a result without segments, not an error: its files are written, empty
  and valid, so a script finds every output it asked for and a resumed folder job skips
  the file; each entry point then *says* "no speech found" (:attr:`JobResult.no_speech`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.media import load_media
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
    ProgressCallback,
    Segment,
    TranscribeOptions,
    join_text,
)

logger = logging.getLogger(__name__)

NO_SPEECH = "no speech found"


def load_input(source: Union[str, os.PathLike], workdir: Union[str, os.PathLike], limits: Limits = Limits(), *,
               cookies: Optional[str] = None, progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """A media path or an http(s) link -> the 16 kHz waveform, ``limits`` held while
    downloading and decoding. A link is downloaded into ``workdir/download`` (deleted once
    decoded); ``workdir`` belongs to the caller, who removes it.

    Raises:
        MediaLimitError, AudioDecodeError, InputNotFoundError, DownloadError, UnsafeURLError.
    """
    source = os.fspath(source)
    if is_url(source):
        download = Path(workdir) / "download"
        path = download_audio(source, download, cookies=cookies, max_duration_s=limits.max_duration_s,
                              max_bytes=limits.max_bytes, allow_private=limits.allow_private_urls,
                              deadline_s=limits.download_deadline_s, progress=progress)
        try:
            return load_media(path, max_duration_s=limits.max_duration_s, max_bytes=limits.max_bytes)
        finally:
            shutil.rmtree(download, ignore_errors=True)
    return load_media(source, max_duration_s=limits.max_duration_s, max_bytes=limits.max_bytes)


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
    """

    segments: list[Segment]
    translation: Optional[list[Segment]]
    duration_s: float
    elapsed_s: float
    language: str = "zh"
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def no_speech(self) -> bool:
        return not self.segments

    @property
    def text(self) -> str:
        return join_text((s.text for s in self.segments), self.language)


class Job:
    """One input through the engine to files: ``options`` for decoding, ``formats`` to
    write (:data:`~whisper_zh.serve.subtitles.FORMATS`; "bilingual" adds the English
    pass), ``style`` for the subtitles' layout (default: each format's own, by the text).

        >>> job = Job(engine, TranscribeOptions(hotwords="小米"), ("srt", "bilingual"))
        >>> for segment in job.iter_segments(audio):   # the page shows them as they come
        ...     ...
        >>> result = job.finish(audio)                  # the English pass, if asked for
        >>> job.write(result, output_paths("subs", "talk", job.formats))
    """

    def __init__(self, engine: Transcriber, options: Optional[TranscribeOptions] = None,
                 formats: Sequence[str] = DEFAULT_FORMATS, *, style: Optional[SubtitleStyle] = None):
        self.engine = engine
        self.options = options or engine.options
        self.formats = check_formats(formats)
        self.language = "en" if self.options.task == "translate" else self.options.language
        self.style = style  # None: each format's own default for the text it holds
        self._segments: list[Segment] = []
        self._started = 0.0

    @property
    def bilingual(self) -> bool:
        return "bilingual" in self.formats

    def iter_segments(self, audio: np.ndarray, progress: Optional[ProgressCallback] = None) -> Iterator[Segment]:
        """The first pass: each segment as soon as it is decoded."""
        self._segments, self._started = [], time.perf_counter()
        for segment in self.engine.iter_segments(audio, self.options, progress=progress):
            self._segments.append(segment)
            yield segment

    def finish(self, audio: np.ndarray, progress: Optional[ProgressCallback] = None) -> JobResult:
        """After :meth:`iter_segments`: the English pass when bilingual output was asked
        for (none for silence), and the result."""
        translation = None
        if self.bilingual:
            translation = []
            if self._segments:
                translation = list(self.engine.iter_segments(audio, translation_options(self.options),
                                                              progress=progress))
        return JobResult(self._segments, translation, len(audio) / SAMPLE_RATE,
                         time.perf_counter() - self._started, self.language)

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
