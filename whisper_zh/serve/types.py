"""What flows between the serving stages: options in, typed segments out.

One frozen :class:`TranscribeOptions` (openai/whisper's ``DecodingOptions`` pattern)
means the same thing to both backends; :class:`Segment` and :class:`Word` are what
every backend yields, :class:`Transcript` what the engine returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Optional, Protocol, Sequence

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH
from whisper_zh.errors import ConfigError
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
        speaker: who says it ("S1", "S2" ...), when speakers were labelled.
    """

    start: float
    end: float
    word: str
    probability: Optional[float] = None
    speaker: Optional[str] = None


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
        speaker: who speaks ("S1", "S2" ...), when speakers were labelled
            (:mod:`whisper_zh.serve.diarize`); a segment never spans a change of speaker.
    """

    start: float
    end: float
    text: str
    no_speech_prob: Optional[float] = None
    words: tuple[Word, ...] = ()
    speaker: Optional[str] = None


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode. The thresholds are openai/whisper's."""

    language: str = "zh"
    task: str = "transcribe"
    script: str = "simplified"  # simplified | traditional | original (as the model wrote it)
    batch_size: int = 8  # windows of up to 30 s decoded together by one model call
    beam_size: Optional[int] = None  # None: the backend's default (DEFAULT_BEAM_SIZE); 1 = greedy
    # candidates sampled at each fallback temperature (ct2; transformers' Whisper generate has
    # no best-of and samples one, so there the fallback is openai/whisper's with best_of=1)
    best_of: int = 5
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
    # Segments carry timed words. The ct2 backend aligns them always (its completeness pass
    # and subtitle cuts need them); the transformers backend only when asked, from its
    # alignment heads' cross-attention (generate's token timestamps, eager attention: slower)
    word_timestamps: bool = False

    def __post_init__(self):
        # Whisper reads 30 s: a longer window would be cut there, its end silently lost
        if not 0 < self.window_s <= CHUNK_LENGTH:
            raise ConfigError(f"window_s must be more than 0 and at most {CHUNK_LENGTH} s, not {self.window_s:g}")

    @property
    def prompt_text(self) -> str:
        """What leads every window's prompt: the prompt, then the hotwords ("" for none)."""
        return " ".join(t.strip() for t in (self.prompt, self.hotwords) if t and t.strip())


def prompt_window(tokens: Sequence[int], max_length: int) -> list[int]:
    """The part of a prompt's tokens a window is given: the last ``max_length // 2 - 1``
    (openai/whisper's rule, half the decoder's context, 223 of Whisper's 448), so a long
    prompt leaves room for the text and keeps the hotwords, which come last."""
    keep = max(max_length // 2 - 1, 0)
    return list(tokens[len(tokens) - keep:]) if len(tokens) > keep else list(tokens)


def join_text(texts, language: str) -> str:
    """Pieces of text as one: without spaces for Chinese (and other languages written without
    them), with single spaces otherwise."""
    return ("" if language in CHARACTER_LANGUAGES else " ").join(texts).strip()


@dataclass(frozen=True)
class Coverage:
    """How much of the detected speech got text, after the completeness pass.

    Attributes:
        speech_s: seconds of speech the VAD found in the input.
        uncovered: ``(start, end)`` spans, in seconds, holding speech that got no text
            (each with at least about a second of speech), in time order.
        uncovered_s: seconds of detected speech inside them.
    """

    speech_s: float
    uncovered: tuple[tuple[float, float], ...] = ()
    uncovered_s: float = 0.0

    @property
    def share(self) -> float:
        """The share of detected speech with text, in [0, 1] (1 when none was detected)."""
        return 1.0 if self.speech_s <= 0 else max(0.0, 1.0 - self.uncovered_s / self.speech_s)


class SegmentStream:
    """An iterator of segments that knows, once exhausted, the input's :class:`Coverage`
    (``None`` until then, or when the backend could not tell: no VAD installed, clips).

    It wraps a generator that *returns* the coverage (``return coverage`` ends it);
    :meth:`close` stops the decoding early.
    """

    def __init__(self, segments: Iterator[Segment]):
        self._segments = segments
        self.coverage: Optional[Coverage] = None

    def __iter__(self) -> "SegmentStream":
        return self

    def __next__(self) -> Segment:
        try:
            return next(self._segments)
        except StopIteration as stop:
            self.coverage = stop.value
            raise

    def close(self) -> None:
        close = getattr(self._segments, "close", None)
        if close:
            close()


@dataclass
class Transcript:
    """The result of :meth:`Transcriber.transcribe`."""

    segments: list[Segment]
    duration: float  # seconds of input audio
    language: str = "zh"
    elapsed_s: float = 0.0  # wall time spent transcribing (decoding excluded)
    backend: str = "transformers"
    coverage: Optional[Coverage] = None  # detected speech with and without text

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
                      windows: Optional[Sequence[tuple[int, int]]] = None) -> Generator[Segment, None,
                                                                                      Optional[Coverage]]:
        """Yield the segments of ``audio`` (float32, 16 kHz mono) in time order, each as
        soon as it and everything before it is decoded, calling ``progress`` after each
        model step; speech the first pass skipped is decoded again (the completeness pass,
        :func:`whisper_zh.serve.segmentation.complete`) and the generator returns the
        :class:`Coverage`. The text is as the model wrote it: the engine converts scripts
        and filters.

        ``windows`` (sample spans of at most ``options.window_s``) are clips joined into
        ``audio`` (:meth:`whisper_zh.serve.engine.Transcriber.decode_clips`): each is then
        decoded on its own, without the previous text and without the completeness pass,
        and the generator returns ``None``."""
