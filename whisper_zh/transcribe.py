"""The transcription engine: any length of Chinese speech in, timed segments out.

    >>> from whisper_zh.transcribe import Transcriber
    >>> engine = Transcriber("openai/whisper-small")          # loaded once per process
    >>> result = engine.transcribe("talk.mp4")                # path, URL-downloaded file or waveform
    >>> result.text, result.segments[0]                       # Segment(start=0.0, end=3.2, text='...')

Long audio is cut into windows of at most 30 s (Whisper's receptive field). Each cut
is placed at the quietest 20 ms inside the last few seconds before the 30 s mark, so
a cut falls in a pause between phrases rather than inside a word; windows do not
overlap, so nothing is decoded twice and nothing needs merging at the joins. Windows
are decoded several at a time by one ``model.generate(..., return_timestamps=True,
return_segments=True)`` call, which also applies Whisper's own safeguards per window:
temperature fallback on repetition loops (compression ratio) or low confidence
(average log-probability), and skipping windows whose no-speech probability is high.
A cheap energy gate in front skips silent windows without running the model at all --
Whisper invents credits such as "字幕由Amara.org社群提供" on silence.

Backends: ``transformers`` (this module) and ``ct2`` (CTranslate2 through
:mod:`whisper_zh.ct2`, several times faster on a CPU); ``auto`` picks ct2 on a CPU when
the model directory holds a CTranslate2 conversion.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisper_zh.config import ServeSettings
from whisper_zh.media import MediaTooLongError, download_audio, format_duration, is_url, load_media
from whisper_zh.text import CHARACTER_LANGUAGES, convert_script, normalize

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "ct2")
# Beam search where it is cheap: on 2 CPU cores, 42 min of zh-cv-mini, whisper-base
# int8, CTranslate2's beam 5 took 18% longer than greedy and cut CER from 0.213 to 0.177
# (bench/transcribe.py). transformers' beam search is several times slower than its
# greedy search, so it decodes greedily, as openai/whisper does at temperature 0.
DEFAULT_BEAM_SIZE = {"ct2": 5, "transformers": 1}

# (fraction done in [0, 1], what is happening) -> None; gr.Progress fits this shape.
ProgressCallback = Callable[[float, str], None]

# Credits from subtitle sites that Whisper learned from its training data and emits on
# silence, music or noise. Matched after normalisation (simplified, no punctuation, lower
# case); real speech practically never consists of only these.
_HALLUCINATIONS = re.compile(
    r"字幕由.{0,12}(amara|提供)|amara\.?org|请不吝点赞|订阅.{0,6}(转发|打赏)|明镜与点点|字幕志愿者"
    r"|中文字幕.{0,4}(提供|制作)|谢谢观看|感谢观看"
)


class NoSpeechError(ValueError):
    """The input holds no speech (silence, noise, an empty recording)."""

    def __init__(self, message: str = "no speech found"):
        super().__init__(message)


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
    max_duration_s: Optional[float] = 3600.0
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


# ---------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------

CUT_SEARCH_S = 5.0  # a cut before the 30 s mark looks this far back for a pause

def frame_energy_db(audio: np.ndarray, sr: int = SAMPLE_RATE, frame_s: float = 0.02) -> np.ndarray:
    """RMS level of consecutive ``frame_s`` frames in dBFS (0 = full scale); shape
    ``(ceil(n_samples / frame),)``. Digital silence gives -120 rather than -inf."""
    frame = max(1, int(round(frame_s * sr)))
    padded = np.pad(audio.astype(np.float32), (0, (-len(audio)) % frame))
    rms = np.sqrt(np.mean(padded.reshape(-1, frame) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6))


def is_silent(audio: np.ndarray, threshold_db: float = -45.0, sr: int = SAMPLE_RATE) -> bool:
    """True when no 20 ms frame of ``audio`` is louder than ``threshold_db`` dBFS."""
    return audio.size == 0 or float(frame_energy_db(audio, sr).max()) < threshold_db


def plan_windows(audio: np.ndarray, sr: int = SAMPLE_RATE, window_s: float = float(CHUNK_LENGTH),
                 search_s: float = CUT_SEARCH_S) -> list[tuple[int, int]]:
    """Cut points for long audio: ``[(start_sample, end_sample), ...]``, contiguous,
    non-overlapping, each at most ``window_s`` long, covering the whole input.

    Every cut but the last is at the quietest 20 ms frame (energy smoothed over 100 ms)
    within ``search_s`` before the ``window_s`` mark, so it lands in a pause.
    """
    n = len(audio)
    window = int(window_s * sr)
    if n <= window:
        return [(0, n)]
    frame = int(0.02 * sr)
    energy = frame_energy_db(audio, sr)
    smooth = np.convolve(energy, np.ones(5) / 5, mode="same")
    windows, start = [], 0
    while n - start > window:
        lo = (start + window - int(search_s * sr)) // frame + 1
        hi = (start + window) // frame  # frames [lo, hi) end before the window does
        # latest minimum: a longer window means fewer windows
        best = lo + int(np.flatnonzero(smooth[lo:hi] == smooth[lo:hi].min())[-1]) if hi > lo else hi
        cut = min(max(best * frame + frame // 2, start + 1), start + window)
        windows.append((start, cut))
        start = cut
    windows.append((start, n))
    return windows


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------

class Backend(Protocol):
    """What the engine needs of a backend; :class:`TransformersBackend` and
    :class:`whisper_zh.ct2.CT2Backend` implement it, with the same options meaning the same.
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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend:
    """Whisper in PyTorch through ``model.generate``: windows cut in pauses, decoded a batch
    at a time with timestamps (fp16 on a GPU, fp32 on a CPU)."""

    name = "transformers"

    def __init__(self, model_id: str, device: str):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.processor = WhisperProcessor.from_pretrained(model_id)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_id, dtype=self.dtype)
        self.model.to(device).eval()
        # generate() keeps per-call state on the model (generation config, caches), so two
        # requests in the same process take turns, one model call at a time
        self.lock = threading.Lock()

    def _generate_kwargs(self, options: TranscribeOptions) -> dict:
        kwargs = dict(language=options.language, task=options.task, return_timestamps=True,
                      return_segments=True, num_beams=options.beam_size or DEFAULT_BEAM_SIZE[self.name])
        if options.temperatures:
            kwargs["temperature"] = tuple(options.temperatures)
        # the thresholds only make sense together: generate's fallback reads them all
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
            if getattr(options, name) is not None:
                kwargs[name] = getattr(options, name)
        prompt = options.prompt_text
        if prompt:
            # a short-form generate call prompts every window of the batch with it
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(" " + prompt, return_tensors="pt").to(self.device)
        return kwargs

    def iter_segments(self, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None) -> Iterator[Segment]:
        import torch

        if windows is None:
            windows = plan_windows(audio, SAMPLE_RATE, options.window_s)
        # silent windows cost nothing and cannot hallucinate
        voiced = [w for w in windows if not is_silent(audio[w[0]:w[1]], options.silence_threshold_db)]
        total = len(voiced)
        batch_size = max(1, options.batch_size)
        generate_kwargs = self._generate_kwargs(options)
        feature_extractor = self.processor.feature_extractor
        if progress:
            progress(0.0, f"transcribing {total} window{'s' * (total != 1)} of up to {options.window_s:.0f} s, "
                          f"{min(batch_size, max(total, 1))} at a time")
        for first in range(0, total, batch_size):
            batch = voiced[first:first + batch_size]
            features = feature_extractor([audio[s:e] for s, e in batch], sampling_rate=SAMPLE_RATE,
                                         return_tensors="pt").input_features
            with self.lock, torch.inference_mode():
                output = self.model.generate(features.to(self.device, self.dtype), **generate_kwargs)
            for (start, end), window_segments in zip(batch, output["segments"]):
                yield from self._window_segments(window_segments, start / SAMPLE_RATE, end / SAMPLE_RATE)
            if progress:
                done = first + len(batch)
                progress(done / total, f"decoded {done}/{total} windows")

    def _window_segments(self, raw_segments: list[dict], offset: float, window_end: float) -> Iterator[Segment]:
        """Whisper's per-window segments -> Segments in input time. Segments that start
        past the window's real end were read off the zero padding after it."""
        tokenizer = self.processor.tokenizer
        for raw in raw_segments:
            start = offset + float(raw["start"])
            if start >= window_end - 0.01:
                continue
            end = min(offset + float(raw["end"]), window_end)
            text = tokenizer.decode(raw["tokens"], skip_special_tokens=True)
            yield Segment(start=round(start, 3), end=round(max(end, start), 3), text=text)


class Transcriber:
    """A Whisper model loaded once, ready to transcribe any number of inputs.

    Args:
        model_id: a Hub id or a local directory (default: ``$MODEL_ID`` or
            openai/whisper-small).
        backend: "transformers", "ct2" or "auto" (default: ``$BACKEND`` or auto). On a
            CPU auto means ct2 for every model: its own CTranslate2 export (a local
            ``ct2/`` folder, or only the ``ct2/`` folder of a Hub repo is downloaded),
            else a one-time int8 conversion cached for the next start
            (:func:`whisper_zh.ct2.resolve_ct2_model`). On a GPU auto means transformers.
        device: "cuda" or "cpu" (default: cuda when available).
        options: default :class:`TranscribeOptions` for :meth:`transcribe`.
    """

    def __init__(self, model_id: Optional[str] = None, *, backend: Optional[str] = None,
                 device: Optional[str] = None, options: Optional[TranscribeOptions] = None):
        if model_id is None or backend is None:
            settings = ServeSettings.from_env()
            model_id, backend = model_id or settings.model_id, backend or settings.backend
        self.model_id = model_id
        choice = backend.lower()
        if choice not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {choice!r}")
        self.device = device or default_device()
        self.options = options or TranscribeOptions()
        if choice == "auto":
            choice = "ct2" if self.device == "cpu" else "transformers"
        started = time.perf_counter()
        if choice == "ct2":
            from whisper_zh.ct2 import CT2Backend, resolve_ct2_model

            self.backend: Backend = CT2Backend(resolve_ct2_model(self.model_id), device=self.device)
        else:
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
            audio: float32 waveform of shape ``(n_samples,)`` at 16 kHz, or a media path.
            options: decoding options (default: the engine's); ``overrides`` replace
                single fields, e.g. ``script="traditional"``.
            progress: called with (fraction, message) after each model step.

        Raises:
            NoSpeechError: nothing but silence or noise was found.
            MediaTooLongError: longer than ``options.max_duration_s``.
        """
        options = replace(options or self.options, **overrides)
        if not isinstance(audio, np.ndarray):
            audio = load_media(audio, max_duration_s=options.max_duration_s)
        started = time.perf_counter()
        segments = list(self.iter_segments(audio, options, progress=progress))
        if not segments:
            raise NoSpeechError()
        return Transcript(segments=segments, duration=len(audio) / SAMPLE_RATE, language=options.language,
                          elapsed_s=time.perf_counter() - started, backend=self.backend.name)

    def iter_segments(self, audio: np.ndarray, options: Optional[TranscribeOptions] = None, *,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None) -> Iterator[Segment]:
        """Yield segments in time order, each as soon as it is decoded.

        Args:
            audio: float32 waveform, shape ``(n_samples,)``, 16 kHz mono.
            windows: ``[(start_sample, end_sample), ...]``, each at most 30 s, to decode
                instead of the backend's own cuts (e.g. the boundaries of clips joined
                into ``audio``: each is then transcribed on its own, in batches).
        """
        options = options or self.options
        duration = len(audio) / SAMPLE_RATE
        if options.max_duration_s is not None and duration > options.max_duration_s:
            raise MediaTooLongError(
                f"the input is {format_duration(duration)} long; the limit is "
                f"{format_duration(options.max_duration_s)} (set MAX_DURATION_S to change it)")
        if is_silent(audio, options.silence_threshold_db):
            return
        if windows is not None:
            too_long = [w for w in windows if w[1] - w[0] > options.window_s * SAMPLE_RATE]
            if too_long:
                raise ValueError(f"windows longer than {options.window_s:g} s: {too_long[:3]}")
        for segment in self.backend.iter_segments(audio, options, progress, windows):
            text = convert_script(segment.text.strip(), options.script)
            if not text or (options.drop_hallucinations and _is_hallucination(text)):
                continue
            words = tuple(replace(w, word=convert_script(w.word, options.script)) for w in segment.words)
            yield replace(segment, text=text, words=words)

    def transcribe_clips(self, clips: Sequence[np.ndarray], options: Optional[TranscribeOptions] = None, *,
                         progress: Optional[ProgressCallback] = None) -> list[str]:
        """The text of each of many short clips (each at most ``options.window_s``),
        decoded independently, ``options.batch_size`` at a time: what evaluation needs."""
        options = replace(options or self.options, max_duration_s=None)
        bounds = np.cumsum([0] + [len(c) for c in clips])
        windows = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        texts: list[list[str]] = [[] for _ in clips]
        starts = [int(a) for a in bounds[:-1]]
        for segment in self.iter_segments(np.concatenate(clips) if clips else np.zeros(0, np.float32), options,
                                          progress=progress, windows=windows):
            # a segment belongs to the clip its middle falls in (its start is rounded to the
            # millisecond, and can fall a few samples before its clip's)
            clip = bisect.bisect_right(starts, (segment.start + segment.end) / 2 * SAMPLE_RATE) - 1
            texts[max(clip, 0)].append(segment.text)
        return [join_text(t, options.language) for t in texts]


def _is_hallucination(text: str) -> bool:
    """True when a segment is (almost) nothing but known credit lines: at most four
    characters are left once they are removed. "谢谢观看" ending a real sentence stays."""
    plain = normalize(text, "zh")
    return bool(plain) and plain != (rest := _HALLUCINATIONS.sub("", plain)) and len(rest) <= 4


_engines: dict[tuple, Transcriber] = {}
_engines_lock = threading.Lock()


def get_transcriber(model_id: Optional[str] = None, *, backend: Optional[str] = None,
                    device: Optional[str] = None) -> Transcriber:
    """The process-wide :class:`Transcriber` for these arguments, loaded on first use."""
    settings = ServeSettings.from_env()
    key = (model_id or settings.model_id, (backend or settings.backend).lower(), device)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = Transcriber(key[0], backend=key[1], device=device)
        return _engines[key]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from whisper_zh.cli import ArgumentParser
    from whisper_zh.subtitles import CHINESE_STYLE, DEFAULT_FORMATS, FORMATS, LATIN_STYLE
    from whisper_zh.text import SCRIPT_NAMES

    parser = ArgumentParser(
        prog="whisper-zh transcribe",
        description="Transcribe Chinese speech from media files, folders or links (YouTube or any site "
                    "yt-dlp supports): print the text, write subtitles. Long inputs are cut into "
                    "windows of at most 30 s decoded in batches.",
        epilog="examples:\n"
               "  whisper-zh transcribe talk.mp4 --srt talk.srt\n"
               "  whisper-zh transcribe https://www.youtube.com/watch?v=... --script taiwan --vtt talk.vtt\n"
               "  whisper-zh transcribe interview.m4a --hotwords '小米 澎湃OS' --formats srt,json,bilingual\n"
               "  whisper-zh transcribe recordings/ --output-dir subs --formats srt,txt   # a whole folder\n"
               "  accelerate launch -m whisper_zh transcribe recordings/ --output-dir subs  # on every GPU",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="FILE_DIR_GLOB_OR_URL",
                        help="media files, folders (searched recursively), glob patterns, or http(s) links")
    parser.add_argument("--model", default=None,
                        help="Hub id or local directory (default: $MODEL_ID or %s)" % ServeSettings.model_id)
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="inference backend (default: $BACKEND or auto: ct2 on a CPU, transformers on a GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output-dir", metavar="DIR", default=None,
                     help="write every input's subtitle files here (folders: the same tree below DIR)")
    out.add_argument("--overwrite", action="store_true",
                     help="folders: transcribe files whose outputs exist too (default: skip them, so a run resumes)")
    out.add_argument("--summary-json", metavar="PATH", help="folders: also write the summary, file by file, as JSON")
    out.add_argument("--formats", default=None, metavar="LIST",
                     help=f"with --output-dir: comma-separated, of {','.join(FORMATS)} "
                          f"(default: {','.join(DEFAULT_FORMATS)}); bilingual adds an English translation pass")
    for fmt in ("srt", "vtt", "txt", "json"):
        out.add_argument(f"--{fmt}", metavar="PATH", help=f"write the {fmt} file of a single input here")
    out.add_argument("--segments", action="store_true", help="print [start --> end] text lines instead of the text")
    out.add_argument("--script", choices=SCRIPT_NAMES, default="simplified",
                     help="Chinese characters of the output (default: simplified)")
    out.add_argument("--line-width", type=int, default=None,
                     help=f"subtitle line width in Chinese characters (default: {CHINESE_STYLE.max_line_width}; "
                          f"{LATIN_STYLE.max_line_width} Latin characters for other languages)")
    out.add_argument("--max-lines", type=int, default=None,
                     help=f"lines per subtitle (default: {CHINESE_STYLE.max_lines})")
    out.add_argument("--keep-punctuation", action="store_true",
                     help="keep ，。 in subtitles (default: replaced by spaces, as Chinese subtitles are written)")
    dec = parser.add_argument_group("decoding")
    dec.add_argument("--language", default=TranscribeOptions.language, help="spoken language (default: zh)")
    dec.add_argument("--task", choices=["transcribe", "translate"], default=TranscribeOptions.task,
                     help="translate: English text from Chinese speech (Whisper's own task)")
    dec.add_argument("--prompt", default=None,
                     help="text that leads every window's prompt, e.g. '以下是普通话的句子。' for punctuation")
    dec.add_argument("--hotwords", default=None, help="names and terms to prefer, e.g. '小米 澎湃OS'")
    dec.add_argument("--batch-size", type=int, default=None,
                     help=f"windows decoded together (default: $BATCH_SIZE or {TranscribeOptions.batch_size})")
    dec.add_argument("--beam-size", type=int, default=None,
                     help="1 = greedy (default: 5 with the ct2 backend, 1 with transformers)")
    dec.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                     help="refuse longer inputs (default: $MAX_DURATION_S or 3600)")
    dec.add_argument("--cookies", metavar="COOKIES_TXT", default=None,
                     help="cookies.txt for yt-dlp, for YouTube's sign-in check (default: $YTDLP_COOKIES)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``whisper-zh transcribe``: one input prints its transcript to stdout; several
    inputs, a folder or a glob are a batch job (:mod:`whisper_zh.folder`)."""
    from whisper_zh.folder import check_formats, is_folder_job
    from whisper_zh.subtitles import default_style, format_timestamp, write_all, write_subtitles

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = ServeSettings.from_env()
    max_duration = args.max_duration or settings.max_duration_s
    options = TranscribeOptions(language=args.language, task=args.task, script=args.script,
                                batch_size=args.batch_size or settings.batch_size or TranscribeOptions.batch_size,
                                beam_size=args.beam_size, prompt=args.prompt, hotwords=args.hotwords,
                                max_duration_s=max_duration)
    formats = check_formats(args.formats.split(",")) if args.formats else None
    base = default_style(language="en" if args.task == "translate" else args.language)
    style = replace(base, max_line_width=args.line_width or base.max_line_width,
                    max_lines=args.max_lines or base.max_lines,
                    keep_punctuation=args.keep_punctuation or base.keep_punctuation)
    if len(args.sources) > 1 or is_folder_job(args.sources[0]):
        return _folder_main(args, options, formats, style)

    def report(fraction: float, message: str) -> None:
        print(f"\r[{fraction:4.0%}] {message:<60}", end="", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="whisper-zh-") as tmp:
        source = args.sources[0]
        if is_url(source):
            logger.info("downloading %s", source)
            source = download_audio(source, tmp, cookies=args.cookies or settings.cookies,
                                    max_duration_s=max_duration, max_bytes=settings.max_bytes, progress=report)
            print(file=sys.stderr)
        audio = load_media(source, max_duration_s=max_duration, max_bytes=settings.max_bytes)
        engine = Transcriber(args.model, backend=args.backend, device=args.device, options=options)
        logger.info("%s: %s of audio", engine, format_duration(len(audio) / SAMPLE_RATE))
        try:
            result = engine.transcribe(audio, progress=report)
        except NoSpeechError:
            print("\nno speech found", file=sys.stderr)
            return 0
        print(file=sys.stderr)
        translation = None
        if formats and "bilingual" in formats:
            translation = engine.transcribe(audio, task="translate", script="original", progress=report).segments
            print(file=sys.stderr)
    logger.info("%.1f s of audio in %.1f s (%.1fx real time)", result.duration, result.elapsed_s, result.speed)
    for fmt in ("srt", "vtt", "txt", "json"):
        path = getattr(args, fmt)
        if path:
            logger.info("wrote %s", write_subtitles(result.segments, path, fmt, style=style))
    if args.output_dir:
        stem = "transcript" if is_url(args.sources[0]) else os.path.splitext(os.path.basename(args.sources[0]))[0]
        for path in write_all(result.segments, args.output_dir, stem, formats or None,
                              style=style, translation=translation).values():
            logger.info("wrote %s", path)
    if args.segments:
        for s in result.segments:
            print(f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {s.text}")
    else:
        print(result.text)
    return 0


def _folder_main(args: argparse.Namespace, options: TranscribeOptions, formats: Optional[Sequence[str]],
                 style) -> int:
    """Several inputs, folders or globs: a batch job (:func:`whisper_zh.folder.transcribe_folder`),
    split over the processes of ``accelerate launch``/``torchrun``; the summary on stdout."""
    import json

    from tqdm.contrib.logging import logging_redirect_tqdm

    from whisper_zh.folder import transcribe_folder
    from whisper_zh.subtitles import DEFAULT_FORMATS

    if not args.output_dir:
        raise ValueError("several inputs, a folder or a glob need --output-dir")
    with logging_redirect_tqdm():
        summary = transcribe_folder(args.sources, args.output_dir, formats or DEFAULT_FORMATS, args.model, options,
                                    backend=args.backend, device=args.device, overwrite=args.overwrite, style=style)
    if summary.is_main_process:
        print(summary.report())
        if args.summary_json:
            with open(args.summary_json, "w", encoding="utf-8") as f:
                json.dump(summary.to_dict(), f, ensure_ascii=False, indent=1)
    return 1 if summary.failed else 0
