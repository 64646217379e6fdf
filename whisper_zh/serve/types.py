"""What flows between the serving stages: options in, typed segments out.

One frozen :class:`TranscribeOptions` (openai/whisper's ``DecodingOptions`` pattern)
means the same thing to both backends; :class:`Segment` and :class:`Word` are what
every backend yields, :class:`Transcript` what the engine returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH
from whisper_zh.text import CHARACTER_LANGUAGES

BACKENDS = ("auto", "transformers", "ct2")


# Beam search where it is cheap: on 2 CPU cores, 42 min of zh-cv-mini, whisper-base
# int8, CTranslate2's beam 5 took 18% longer than greedy and cut CER from 0.213 to 0.177
# (bench/transcribe.py). transformers' beam search is several times slower than its
# greedy search, so it decodes greedily, as openai/whisper does at temperature 0.
DEFAULT_BEAM_SIZE = {"ct2": 5, "transformers": 1}


# (fraction done in [0, 1], what is happening) -> None; gr.Progress fits this shape.
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class Word:
    """One word (for Chinese: usually one character) with its time, from the backend's
    cross-attention alignment.

    Attributes:
        start, end: seconds from the beginning of the input.
        word: its text as the model wrote it, leading space included for Latin words.
        probability: the model's probability of the word, when known.
    """

    start: float
    end: float
    word: str
    probability: Optional[float] = None


@dataclass(frozen=True)
class Segment:
    """One stretch of speech.

    Attributes:
        start, end: seconds from the beginning of the input.
        text: the words, in the requested script.
        no_speech_prob: the model's probability that the window held no speech, when the
            backend reports it (ct2 does; transformers applies it inside generate).
        words: the segment's timed words, in order, when the backend aligned them
            (empty otherwise); their texts joined give ``text`` in the model's script.
    """

    start: float
    end: float
    text: str
    no_speech_prob: Optional[float] = None
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode. The thresholds are openai/whisper's."""

    language: str = "zh"
    task: str = "transcribe"
    script: str = "simplified"  # simplified | traditional | original (as the model wrote it)
    batch_size: int = 8  # windows of up to 30 s decoded together by one model call
    beam_size: Optional[int] = None  # None: the backend's default (DEFAULT_BEAM_SIZE); 1 = greedy
    best_of: int = 5  # candidates sampled at each fallback temperature
    # Text that leads every window's prompt (<|startofprev|>), not only the first one's:
    # a style to imitate ("以下是普通话的句子。" pushes towards Simplified and punctuation)
    # and names or terms the model should prefer ("小米 澎湃OS").
    prompt: Optional[str] = None
    hotwords: Optional[str] = None
    # openai/whisper retries at 0.2, 0.4 ... 1.0; three steps catch the same loops at half
    # the worst-case cost (measured: same CER on real clips, 40% less time)
    temperatures: tuple[float, ...] = (0.0, 0.4, 0.8)
    compression_ratio_threshold: Optional[float] = 2.4  # above: a repetition loop, retry hotter
    logprob_threshold: Optional[float] = -1.0  # below: low confidence, retry hotter
    no_speech_threshold: Optional[float] = 0.6  # above (and low confidence): skip the window
    silence_threshold_db: float = -45.0  # a window whose loudest 20 ms stays below is skipped
    window_s: float = float(CHUNK_LENGTH)  # the longest piece of audio decoded at once
    drop_hallucinations: bool = True

    @property
    def prompt_text(self) -> str:
        """What leads every window's prompt: the prompt, then the hotwords ("" for none)."""
        return " ".join(t.strip() for t in (self.prompt, self.hotwords) if t and t.strip())


def join_text(texts, language: str) -> str:
    """Pieces of text as one: without spaces for Chinese (and other languages written without
    them), with single spaces otherwise."""
    return ("" if language in CHARACTER_LANGUAGES else " ").join(texts).strip()


@dataclass
class Transcript:
    """The result of :meth:`Transcriber.transcribe`."""

    segments: list[Segment]
    duration: float  # seconds of input audio
    language: str = "zh"
    elapsed_s: float = 0.0  # wall time spent transcribing (decoding excluded)
    backend: str = "transformers"

    @property
    def text(self) -> str:
        """All segments joined: without spaces for Chinese, with single spaces otherwise."""
        return join_text((s.text for s in self.segments), self.language)

    @property
    def speed(self) -> float:
        """Seconds of audio per second of wall time ("x real time")."""
        return self.duration / self.elapsed_s if self.elapsed_s > 0 else float("inf")


class Backend(Protocol):
    """What the engine needs of a backend; :class:`whisper_zh.serve.transformers_backend.TransformersBackend` and
    :class:`whisper_zh.serve.ct2_backend.CT2Backend` implement it, with the same options meaning the same.
    """

    name: str  # "transformers" or "ct2"
    device: str

    def iter_segments(self, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None) -> Iterator[Segment]:
        """Yield the segments of ``audio`` (float32, 16 kHz mono) in time order, each as
        soon as it and everything before it is decoded, calling ``progress`` after each
        model step. ``windows`` (sample spans of at most ``options.window_s``) replace the
        backend's own cutting; each is then decoded on its own (clips joined for batching).
        The text is as the model wrote it: the engine converts scripts and filters."""
