"""The transformers backend: Whisper in PyTorch through ``model.generate``.

Long audio is cut into windows of at most 30 s (:func:`whisper_zh.serve.segmentation.plan_windows`,
each cut in a pause); windows are decoded several at a time by one
``model.generate(..., return_timestamps=True, return_segments=True)`` call, which also
applies Whisper's own safeguards per window: temperature fallback on repetition loops
(compression ratio) or low confidence (average log-probability), and skipping windows
whose no-speech probability is high. A cheap energy gate in front skips silent windows
without running the model at all. Speech (Silero VAD) that no segment's timestamps cover
goes through the completeness pass the ct2 backend uses
(:func:`whisper_zh.serve.segmentation.complete`).
"""

from __future__ import annotations

import logging
import threading
from typing import Generator, Iterator, Optional, Sequence

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import MissingExtraError, ModelNotFoundError
from whisper_zh.serve.segmentation import (
    SpeechMap,
    complete,
    coverage_of,
    in_time_order,
    is_silent,
    plan_windows,
    speech_chunks,
    uncovered_speech,
)
from whisper_zh.serve.types import (
    DEFAULT_BEAM_SIZE,
    Coverage,
    ProgressCallback,
    Segment,
    TranscribeOptions,
    Word,
    prompt_window,
)

logger = logging.getLogger(__name__)


class TransformersBackend:
    """Whisper in PyTorch through ``model.generate``: windows cut in pauses, decoded a batch
    at a time with timestamps (fp16 on a GPU, fp32 on a CPU)."""

    name = "transformers"

    def __init__(self, model_id: str, device: str):
        try:
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
        except ImportError as err:
            raise MissingExtraError.of("transformers", "the transformers backend") from err

        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            self.processor = WhisperProcessor.from_pretrained(model_id)
            self.model = WhisperForConditionalGeneration.from_pretrained(model_id, dtype=self.dtype)
        except OSError as err:
            # transformers' own message runs over several lines; its first one says what failed
            raise ModelNotFoundError(f"model {model_id!r} could not be loaded: {str(err).splitlines()[0]} "
                                     f"(check the id and the network, or give a local model folder: "
                                     f"--model / MODEL_ID)") from err
        self.model.to(device).eval()
        # generate() keeps per-call state on the model (generation config, caches), so two
        # requests in the same process take turns, one model call at a time
        self.lock = threading.Lock()

    def _generate_kwargs(self, options: TranscribeOptions) -> dict:
        kwargs = dict(language=options.language, task=options.task, return_timestamps=True,
                      return_segments=True, num_beams=options.beam_size or DEFAULT_BEAM_SIZE[self.name])
        if options.word_timestamps:
            kwargs["return_token_timestamps"] = True
        # no temperatures: one greedy or beam decode, as the ct2 backend does
        kwargs["temperature"] = tuple(options.temperatures) if options.temperatures else 0.0
        if options.compression_ratio_threshold is not None:
            kwargs["compression_ratio_threshold"] = options.compression_ratio_threshold
        if options.logprob_threshold is not None:
            kwargs["logprob_threshold"] = options.logprob_threshold
            # openai/whisper's no-speech rule needs both thresholds (the ct2 backend's too);
            # generate fails on the no-speech one alone
            if options.no_speech_threshold is not None:
                kwargs["no_speech_threshold"] = options.no_speech_threshold
        prompt = options.prompt_text
        if prompt:
            import torch

            # a short-form generate call prompts every window of the batch with it
            tokenizer = self.processor.tokenizer
            text = prompt_window(tokenizer(" " + prompt, add_special_tokens=False).input_ids,
                                 self.model.config.max_target_positions)
            ids = [tokenizer.convert_tokens_to_ids("<|startofprev|>"), *text]
            kwargs["prompt_ids"] = torch.tensor(ids, device=self.device)
        return kwargs

    def iter_segments(self, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None
                      ) -> Generator[Segment, None, Optional[Coverage]]:
        speech = None
        if windows is None:
            windows = plan_windows(audio, SAMPLE_RATE, options.window_s)
            speech = _speech_map(audio, options)
        # silent windows cost nothing and cannot hallucinate
        voiced, quiet = [], []
        for window in windows:
            (quiet if is_silent(audio[window[0]:window[1]], options.silence_threshold_db) else voiced).append(window)
        total = len(voiced)
        batch_size = max(1, options.batch_size)
        generate_kwargs = self._generate_kwargs(options)
        if progress:
            progress(0.0, f"transcribing {total} window{'s' * (total != 1)} of up to {options.window_s:.0f} s, "
                          f"{min(batch_size, max(total, 1))} at a time")
        # speech the VAD heard in a window too quiet to decode is said, not dropped
        uncovered = [] if speech is None else [
            span for a, b in quiet for span in uncovered_speech([], (a / SAMPLE_RATE, b / SAMPLE_RATE), speech)]
        for first in range(0, total, batch_size):
            batch = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in voiced[first:first + batch_size]]
            decoded = self._decode(audio, batch, generate_kwargs, batch_size)
            found: list = []
            if speech is not None:
                # the completeness pass: speech no segment's time covers is decoded again
                missed = [span for window, segments in zip(batch, decoded)
                          for span in uncovered_speech(_spans(segments), window, speech)]
                if missed:
                    completion = complete(missed, lambda spans: self._decode(audio, spans, generate_kwargs, batch_size),
                                          _spans, speech)
                    found, uncovered = completion.found, uncovered + completion.uncovered
            if progress:  # before the batch's segments: a caller sees how much is done when they come
                done = first + len(batch)
                progress(done / total, f"decoded {done}/{total} windows")
            for window, segments in zip(batch, decoded):
                refills = [r for span, r in found if window[0] <= (span[0] + span[1]) / 2 < window[1]]
                yield from in_time_order([segments, *refills])
        return None if speech is None else coverage_of(uncovered, speech)

    def _decode(self, audio: np.ndarray, spans: Sequence[tuple[float, float]], generate_kwargs: dict,
                batch_size: int) -> list[list[Segment]]:
        """The segments of each span (seconds, each at most 30 s) decoded on its own,
        ``batch_size`` spans per generate call."""
        import torch

        out = []
        feature_extractor = self.processor.feature_extractor
        for first in range(0, len(spans), batch_size):
            batch = spans[first:first + batch_size]
            # no attention_mask, even for word times: given one, generate decodes another text
            # (the words' times are held inside their segments instead)
            features = feature_extractor([audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in batch],
                                         sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            with self.lock, torch.inference_mode():
                # token timestamps switch the shared model to eager attention for good
                # (transformers' generate): switched back, so the next request runs SDPA again
                config = self.model.model.config
                attention = config._attn_implementation
                try:
                    output = self.model.generate(features.to(self.device, self.dtype), **generate_kwargs)
                finally:
                    config._attn_implementation = attention
            for (start, end), window_segments in zip(batch, output["segments"]):
                out.append([s for s in self._window_segments(window_segments, start, end) if s.text.strip()])
        return out

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
            words = ()
            if "token_timestamps" in raw:
                words = tuple(_timed_words(tokenizer, [int(t) for t in raw["tokens"]],
                                           [float(t) for t in raw["token_timestamps"]], offset, start, max(end, start)))
            yield Segment(start=round(start, 3), end=round(max(end, start), 3), text=text, words=words)


def _timed_words(tokenizer, tokens: list[int], times: list[float], offset: float, start: float,
                 end: float) -> Iterator[Word]:
    """A segment's words from generate's token timestamps (each token from its time to
    the next token's). A character split over several byte tokens is one piece; a piece
    without a leading space joins the word before it (for Chinese, whose pieces have none,
    a word is a piece: usually one character, as on the ct2 backend)."""
    pieces: list[list] = []  # [text, start, end]
    held: list[int] = []
    for i, token in enumerate(tokens):
        if token >= tokenizer.eos_token_id:  # <|endoftext|>, timestamps and the other special tokens
            continue
        if not held:
            piece_start = times[i]
        held.append(token)
        text = tokenizer.decode(held)
        if "\ufffd" in text:  # the rest of a character's bytes are still to come
            continue
        piece_end = times[i + 1] if i + 1 < len(times) else times[i]
        if pieces and text[:1].isalnum() and pieces[-1][0][-1:].isascii() and text.isascii():
            pieces[-1][0] += text
            pieces[-1][2] = piece_end
        else:
            pieces.append([text, piece_start, piece_end])
        held = []
    if held:  # bytes that never made a character: kept, so the words still spell the text
        pieces.append([tokenizer.decode(held), piece_start, times[-1]])
    for text, a, b in pieces:
        word_start = min(max(offset + a, start), end)
        yield Word(start=round(word_start, 3), end=round(min(max(offset + b, word_start), end), 3), word=text)


def _spans(segments: Sequence[Segment]) -> list[tuple[float, float]]:
    """What a window's segments stand for: their timestamps (Whisper's own, per segment)."""
    return [(s.start, s.end) for s in segments]


def _speech_map(audio: np.ndarray, options: TranscribeOptions) -> Optional[SpeechMap]:
    """The VAD's map for the completeness pass; None without faster-whisper (whose
    Silero VAD it uses), when the pass is skipped."""
    try:
        return speech_chunks(audio, options.window_s)
    except ImportError:
        logger.warning("faster-whisper is not installed: speech the decoder skips is not decoded again "
                       "(pip install 'whisper-zh[ct2]')")
        return None
