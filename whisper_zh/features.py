"""Features: cached clips -> batches of padded waveforms -> log-mel on the model's device.

Whisper's input is an 80 (or 128) x 3000 log-mel of a zero-padded 30 s window. Storing
it costs 0.96 MB a clip; computing it costs a few milliseconds of STFT. So the cache
keeps compressed audio, :class:`SpeechCollator` decodes a batch to waveforms padded to
the longest clip (in the DataLoader's worker processes), and :func:`log_mel_spectrogram`
pads to 30 s and computes the features on whichever device the model is on (a GPU when
there is one), batched. The result matches ``WhisperFeatureExtractor`` to float
rounding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from whisper_zh.audio import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, TIME_PRECISION
from whisper_zh.media import load_audio

# A clip's speech ends after its last 20 ms frame within this many dB of its loudest
# frame (Common Voice clips carry up to a second or two of trailing silence).
SPEECH_FLOOR_DB = 35.0


def log_mel_spectrogram(audio: torch.Tensor, mel_filters: torch.Tensor, n_samples: int = N_SAMPLES) -> torch.Tensor:
    """Whisper's log-mel, batched, on ``audio``'s device.

    Args:
        audio: float waveforms at 16 kHz, shape ``(batch, n)`` with ``n <= n_samples``;
            zero-padded (or cut) to ``n_samples`` here.
        mel_filters: shape ``(n_mels, n_fft // 2 + 1)``.

    Returns:
        float32 tensor of shape ``(batch, n_mels, n_samples // 160)``, values in about [-1, 1.5].
    """
    audio = audio.float()
    if audio.shape[-1] < n_samples:
        audio = torch.nn.functional.pad(audio, (0, n_samples - audio.shape[-1]))
    audio = audio[..., :n_samples]
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = mel_filters.to(audio.device, torch.float32) @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    # Per clip: floor at 8 (log10 units) below the clip's own maximum, as Whisper does.
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def mel_filters_of(feature_extractor) -> torch.Tensor:
    """The ``(n_mels, 201)`` filter bank of a ``WhisperFeatureExtractor``."""
    return torch.from_numpy(np.asarray(feature_extractor.mel_filters, dtype=np.float32).T.copy())


def decode_clip(data: Any) -> np.ndarray:
    """A cached ``audio`` value (encoded bytes) or a float array -> float32 16 kHz waveform."""
    if isinstance(data, (bytes, bytearray)):
        return load_audio(data)
    return np.asarray(data, dtype=np.float32)


def speech_end(clip: np.ndarray, floor_db: float = SPEECH_FLOOR_DB) -> float:
    """Where speech ends in ``clip`` (16 kHz), on Whisper's 0.02 s timestamp grid and never
    beyond the clip: the end of the last 20 ms frame within ``floor_db`` of the loudest
    frame. A clip shorter than one step, or silent, ends at its (grid-rounded) duration."""
    step = int(round(TIME_PRECISION * SAMPLE_RATE))
    n_steps = min(clip.shape[0] // step, int(round(CHUNK_LENGTH / TIME_PRECISION)))
    if n_steps == 0:
        return 0.0
    frames = clip[: n_steps * step].astype(np.float64).reshape(n_steps, step)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db >= energy_db.max() - floor_db)
    last = int(loud[-1]) + 1 if loud.size and energy_db.max() > -100 else n_steps
    return round(last * TIME_PRECISION, 2)


def example_draw(seed: int, *key: Any) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``key``: the same clip gets the same
    choice in every epoch, after a resume and in every DataLoader worker process."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class LabelTokens:
    """The special token ids the collator rewrites cached labels with."""

    no_timestamps: int
    timestamp_begin: int  # <|0.00|>; <|t|> is timestamp_begin + t / 0.02
    end_of_text: int
    start_of_prev: int
    start_of_transcript: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "LabelTokens":
        ids = tokenizer.convert_tokens_to_ids(
            ["<|notimestamps|>", "<|0.00|>", "<|endoftext|>", "<|startofprev|>", "<|startoftranscript|>"])
        return cls(*ids)


@dataclass
class SpeechCollator:
    """Rows of a prepared dataset -> ``{"input_audio", "labels"}``.

    ``input_audio`` is float32 ``(batch, longest clip in samples)``; the trainer turns it
    into ``input_features`` on the device (:func:`log_mel_spectrogram`). ``labels`` are
    padded with -100 (ignored by the loss) and lose their leading
    ``<|startoftranscript|>``, which the model prepends itself when it shifts labels
    right to make decoder inputs (``WhisperForConditionalGeneration.forward`` calls
    ``shift_tokens_right(labels, pad, decoder_start_token_id)`` when no decoder inputs
    are given).

    Timestamps: labels are cached as ``<|notimestamps|> text <|endoftext|>``. With
    ``tokens`` set, a ``timestamp_fraction`` of the clips (drawn by
    :func:`example_draw`, fixed per clip) is rewritten here, where the audio is at
    hand, to ``<|0.00|> text <|T|> <|endoftext|>`` with T the clip's :func:`speech_end`,
    so that fine-tuning keeps the timestamp prediction that long-form transcription
    relies on; the cache stays valid for any fraction.

    Previous text: a row holding ``prev_labels`` (the cached label ids of the clip before
    it, added by the training pipeline only) is, for a ``prompt_fraction`` of the clips,
    conditioned on that text as Whisper is at inference:
    ``<|startofprev|> previous text <|startoftranscript|> ...``. The prompt is input
    only: the batch then carries explicit ``decoder_input_ids`` and the prompt's
    positions in ``labels`` are -100.
    """

    decoder_start_token_id: int
    n_samples: int = N_SAMPLES
    tokens: Optional[LabelTokens] = None
    timestamp_fraction: float = 0.0
    prompt_fraction: float = 0.0
    seed: int = 0
    max_length: Optional[int] = None  # the decoder's max_target_positions; None: no limit

    def __call__(self, rows: list[dict]) -> dict:
        clips = [decode_clip(row["audio"])[: self.n_samples] for row in rows]
        audio = torch.zeros(len(clips), max(c.shape[0] for c in clips), dtype=torch.float32)
        for i, clip in enumerate(clips):
            audio[i, : clip.shape[0]] = torch.from_numpy(clip)
        batch: dict[str, torch.Tensor] = {"input_audio": audio}
        if "labels" in rows[0]:
            labels = [list(row["labels"]) for row in rows]
            if self.tokens is not None and self.timestamp_fraction > 0:
                labels = [self.with_timestamps(ids, clip) if self._draw("timestamps", row) < self.timestamp_fraction
                          else ids for ids, clip, row in zip(labels, clips, rows)]
            prompts = [None] * len(rows)
            if self.tokens is not None and self.prompt_fraction > 0 and "prev_labels" in rows[0]:
                prompts = [self.prompt_of(row["prev_labels"]) if row["prev_labels"]
                           and self._draw("prompt", row) < self.prompt_fraction else None for row in rows]
            if any(prompts):
                batch.update(self.prompted(labels, prompts))
            else:
                batch["labels"] = self.pad_labels(labels)
        return batch

    def _draw(self, purpose: str, row: dict) -> float:
        return example_draw(self.seed, purpose, row.get("path"), row.get("sentence"))

    def with_timestamps(self, ids: list[int], clip: np.ndarray) -> list[int]:
        """``... <|notimestamps|> text <|endoftext|>`` -> ``... <|0.00|> text <|T|><|endoftext|>``."""
        t = self.tokens
        too_long = self.max_length is not None and len(ids) + 1 > self.max_length
        if t.no_timestamps not in ids or ids[-1] != t.end_of_text or too_long:
            return ids
        at = ids.index(t.no_timestamps)
        end = t.timestamp_begin + int(round(speech_end(clip) / TIME_PRECISION))
        return ids[:at] + [t.timestamp_begin] + ids[at + 1:-1] + [end, t.end_of_text]

    def prompt_of(self, prev_ids: list[int]) -> list[int]:
        """``<|startofprev|>`` + the text tokens of a cached label (special tokens dropped),
        cut from the left to half the decoder's length, as Whisper cuts its prompt."""
        text = [i for i in prev_ids if i < self.tokens.end_of_text]
        if self.max_length is not None:
            text = text[len(text) - min(len(text), self.max_length // 2 - 1):]
        return [self.tokens.start_of_prev] + text

    def prompted(self, labels: list[list[int]], prompts: list[Optional[list[int]]]) -> dict:
        """Decoder inputs and labels for a batch where some rows carry a previous-text prompt."""
        inputs, targets = [], []
        for ids, prompt in zip(labels, prompts):
            if ids and ids[0] != self.decoder_start_token_id:
                ids = [self.decoder_start_token_id] + ids
            prompt = prompt or []
            if self.max_length is not None:  # decoder inputs are prompt + ids less the last token
                room = self.max_length + 1 - len(ids)
                prompt = [] if room < 2 else prompt[:1] + prompt[1:][len(prompt) - min(len(prompt), room):]
            sequence = prompt + ids
            inputs.append(sequence[:-1])
            # The target of position i is token i + 1; nothing is learned about the prompt
            # itself, nor its <|startoftranscript|> (forced at inference).
            targets.append([-100] * len(prompt) + ids[1:])
        width = max(len(x) for x in inputs)
        decoder_input_ids = torch.full((len(inputs), width), self.tokens.end_of_text, dtype=torch.long)
        padded = torch.full((len(inputs), width), -100, dtype=torch.long)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            decoder_input_ids[i, : len(x)] = torch.as_tensor(x)
            padded[i, : len(y)] = torch.as_tensor(y)
        return {"decoder_input_ids": decoder_input_ids, "labels": padded}

    def pad_labels(self, label_lists: list) -> torch.Tensor:
        width = max(len(ids) for ids in label_lists)
        labels = torch.full((len(label_lists), width), -100, dtype=torch.long)
        for i, ids in enumerate(label_lists):
            labels[i, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        return labels
