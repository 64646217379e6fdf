"""The transformers backend: Whisper in PyTorch through ``model.generate``.

Long audio is cut into windows of at most 30 s (:func:`whisper_zh.serve.segmentation.plan_windows`,
each cut in a pause); windows are decoded several at a time by one
``model.generate(..., return_timestamps=True, return_segments=True)`` call, which also
applies Whisper's own safeguards per window: temperature fallback on repetition loops
(compression ratio) or low confidence (average log-probability), and skipping windows
whose no-speech probability is high. A cheap energy gate in front skips silent windows
without running the model at all.
"""

from __future__ import annotations

import threading
from typing import Iterator, Optional, Sequence

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.serve.segmentation import is_silent, plan_windows
from whisper_zh.serve.types import (
    DEFAULT_BEAM_SIZE,
    ProgressCallback,
    Segment,
    TranscribeOptions,
)


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
