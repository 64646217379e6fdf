"""The transcription engine: any length of Chinese speech in, timed segments out.

    >>> from whisper_zh import Transcriber
    >>> engine = Transcriber("openai/whisper-small")          # loaded once per process
    >>> result = engine.transcribe("talk.mp4")                # a media path or a waveform
    >>> result.text, result.segments[0]                       # Segment(start=0.0, end=3.2, text='...')

The engine picks a backend (``transformers`` or ``ct2``: CTranslate2, several times
faster on a CPU) behind one :class:`Backend` protocol, converts the output's script and
drops the credits Whisper invents on silence ("字幕由Amara.org社群提供").
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import threading
import time
from dataclasses import replace
from typing import Generator, Optional, Sequence, Union

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError, NoSpeechError
from whisper_zh.hub import DEFAULT_MODEL
from whisper_zh.media import as_waveform, clean_samples, load_media
from whisper_zh.serve.bf16_encoder import check_encoder_choice
from whisper_zh.serve.ct2_backend import CT2Backend
from whisper_zh.serve.models import resolve_ct2_model
from whisper_zh.serve.segmentation import is_silent
from whisper_zh.serve.transformers_backend import TransformersBackend
from whisper_zh.serve.types import (
    BACKENDS,
    Backend,
    Coverage,
    ProgressCallback,
    Segment,
    SegmentStream,
    TranscribeOptions,
    Transcript,
    join_text,
)
from whisper_zh.text import convert_script, normalize

logger = logging.getLogger(__name__)

# Credits from subtitle sites that Whisper learned from its training data and emits on
# silence, music or noise. Matched after normalisation (simplified, no punctuation, lower
# case); real speech practically never consists of only these.
_HALLUCINATIONS = re.compile(
    r"字幕由.{0,12}(amara|提供)|amara\.?org|请不吝点赞|订阅.{0,6}(转发|打赏)|明镜与点点|字幕志愿者"
    r"|中文字幕.{0,4}(提供|制作)|谢谢观看|感谢观看"
)


def default_device() -> str:
    """"cuda" when a GPU is usable, else "cpu". CTranslate2 (part of every install) answers:
    asking torch would import it (over a second) on the CPU path, which never uses it."""
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class Transcriber:
    """A Whisper model loaded once, ready to transcribe any number of inputs.

    Args:
        model_id: a Hub id or a local directory (default: openai/whisper-small).
        backend: "transformers", "ct2" or "auto" (the default). On a
            CPU auto means ct2 for every model: its own CTranslate2 export (a local
            ``ct2/`` folder, or only the ``ct2/`` folder of a Hub repo is downloaded),
            the published conversion of OpenAI's models, else a one-time int8
            conversion cached for the next start (the ``[transformers]`` extra)
            (:func:`whisper_zh.serve.models.resolve_ct2_model`). On a GPU auto means transformers.
        device: "cuda" or "cpu" (default: cuda when available).
        encoder: the ct2 backend's encoder: "auto" (PyTorch bfloat16 on a CPU with AMX
            when the export carries its weights, else CTranslate2's), "ct2" or "bf16"
            (:func:`whisper_zh.serve.bf16_encoder.choose_encoder`).
        options: default :class:`TranscribeOptions` for :meth:`transcribe`.
    """

    def __init__(self, model_id: str = DEFAULT_MODEL, *, backend: str = "auto",
                 device: Optional[str] = None, options: Optional[TranscribeOptions] = None,
                 encoder: str = "auto"):
        self.model_id = model_id
        choice = backend.lower()
        if choice not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {choice!r}")
        self.device = device or default_device()
        self.options = options or TranscribeOptions()
        if choice == "auto":
            choice = "ct2" if self.device == "cpu" else "transformers"
        started = time.perf_counter()
        if choice == "ct2":
            self.backend: Backend = CT2Backend(resolve_ct2_model(self.model_id), device=self.device,
                                               encoder=encoder)
        else:
            if encoder != "auto":
                check_encoder_choice(encoder)
                if backend.lower() == "transformers":
                    raise ConfigError(f"encoder={encoder!r} is an option of the ct2 backend, not of transformers")
                # an operator's ENCODER left set when the model moved to a GPU
                logger.info("encoder=%s is the ct2 backend's option; the transformers backend runs here", encoder)
            self.backend = TransformersBackend(self.model_id, self.device)
        logger.info("loaded %s with the %s backend on %s in %.1f s", self.model_id, self.backend.name,
                    self.device, time.perf_counter() - started)

    def __repr__(self) -> str:
        return f"Transcriber({self.model_id!r}, backend={self.backend.name!r}, device={self.device!r})"

    # -- public API ---------------------------------------------------------

    def transcribe(self, audio: Union[np.ndarray, str, os.PathLike],
                   options: Optional[TranscribeOptions] = None, *,
                   progress: Optional[ProgressCallback] = None, **overrides) -> Transcript:
        """Transcribe a whole input.

        Args:
            audio: a 16 kHz waveform (float32 ``(n_samples,)``, or integer PCM, or
                channels: :func:`~whisper_zh.media.as_waveform`), or a media path.
            options: decoding options (default: the engine's); ``overrides`` replace
                single fields, e.g. ``script="traditional"``.
            progress: called with (fraction, message) after each model step.

        Returns:
            The segments, and the :class:`~whisper_zh.serve.types.Coverage`: how much of
            the detected speech got text, and the spans that did not.

        Raises:
            NoSpeechError: nothing but silence or noise was found.
        """
        options = replace(options or self.options, **overrides)
        if not isinstance(audio, np.ndarray):
            audio = load_media(audio)
        started = time.perf_counter()
        stream = self.iter_segments(audio, options, progress=progress)
        segments = list(stream)
        if not segments:
            raise NoSpeechError()
        return Transcript(segments=segments, duration=len(audio) / SAMPLE_RATE, language=options.language,
                          elapsed_s=time.perf_counter() - started, backend=self.backend.name,
                          coverage=stream.coverage)

    def iter_segments(self, audio: np.ndarray, options: Optional[TranscribeOptions] = None, *,
                      progress: Optional[ProgressCallback] = None) -> SegmentStream:
        """Segments in time order, each as soon as it is decoded; once the stream is
        exhausted, its ``coverage`` tells how much of the detected speech got text (speech
        the first pass skipped is decoded again on both backends; what still has no text
        is listed there, not dropped silently).

        Args:
            audio: 16 kHz waveform: float32 ``(n_samples,)``, or any array
                :func:`~whisper_zh.media.as_waveform` takes (integer PCM, channels).
        """
        return SegmentStream(self._segments(audio, options or self.options, progress))

    def decode_clips(self, clips: Sequence[np.ndarray], options: Optional[TranscribeOptions] = None, *,
                     progress: Optional[ProgressCallback] = None) -> list[str]:
        """The text of each of many short clips (each at most ``options.window_s``): what
        evaluation needs.

        Each clip is one utterance decoded on its own, ``options.batch_size`` at a time
        (they are joined into one waveform only to batch them): never prompted with
        another clip's text, without VAD, and without the completeness pass, so that a
        score measures the model on each clip as it is. ``prompt``/``hotwords``, the beam,
        the temperatures and thresholds, the silence gate and the script apply as in
        :meth:`transcribe`.

        Raises:
            ConfigError: a clip is longer than ``options.window_s``.
        """
        options = options or self.options
        clips = [as_waveform(c) for c in clips]
        too_long = [i for i, c in enumerate(clips) if len(c) > options.window_s * SAMPLE_RATE]
        if too_long:
            raise ConfigError(f"clips longer than {options.window_s:g} s: {too_long[:3]}")
        bounds = np.cumsum([0] + [len(c) for c in clips])
        windows = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        texts: list[list[str]] = [[] for _ in clips]
        starts = [int(a) for a in bounds[:-1]]
        audio = np.concatenate(clips) if clips else np.zeros(0, np.float32)
        for segment in self._segments(audio, options, progress, windows):
            # a segment belongs to the clip its middle falls in (its start is rounded to the
            # millisecond, and can fall a few samples before its clip's)
            clip = bisect.bisect_right(starts, (segment.start + segment.end) / 2 * SAMPLE_RATE) - 1
            texts[max(clip, 0)].append(segment.text)
        return [join_text(t, options.language) for t in texts]

    def _segments(self, audio: np.ndarray, options: TranscribeOptions, progress: Optional[ProgressCallback],
                  windows: Optional[Sequence[tuple[int, int]]] = None) -> Generator[Segment, None,
                                                                                    Optional[Coverage]]:
        """The backend's segments in the requested script, credits Whisper invents dropped;
        returns the backend's coverage. A waveform given as is may hold NaN or infinities
        (a float WAV, a buggy client): they are made silence, in place, before the model
        reads them, where one NaN turns every window it touches into ``))))``."""
        audio = as_waveform(audio)  # an int16 or stereo array failed deep in a backend
        clean_samples(audio)
        if is_silent(audio, options.silence_threshold_db):
            return Coverage(speech_s=0.0) if windows is None else None
        segments = self.backend.iter_segments(audio, options, progress, windows)
        while True:
            try:
                segment = next(segments)
            except StopIteration as stop:
                return stop.value
            text = convert_script(segment.text.strip(), options.script)
            if not text or (options.drop_hallucinations and _is_hallucination(text)):
                continue
            words = tuple(replace(w, word=convert_script(w.word, options.script)) for w in segment.words)
            yield replace(segment, text=text, words=words)


def _is_hallucination(text: str) -> bool:
    """True when a segment is (almost) nothing but known credit lines: at most four
    characters are left once they are removed. "谢谢观看" ending a real sentence stays."""
    plain = normalize(text, "zh")
    return bool(plain) and plain != (rest := _HALLUCINATIONS.sub("", plain)) and len(rest) <= 4


_engines: dict[tuple, Transcriber] = {}
_engines_lock = threading.Lock()


def get_transcriber(model_id: str = DEFAULT_MODEL, *, backend: str = "auto",
                    device: Optional[str] = None, encoder: str = "auto") -> Transcriber:
    """The process-wide :class:`Transcriber` for these arguments, loaded on first use."""
    key = (model_id, backend.lower(), device, encoder.lower())
    with _engines_lock:
        if key not in _engines:
            _engines[key] = Transcriber(model_id, backend=key[1], device=device, encoder=key[3])
        return _engines[key]
