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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from whisper_zh.audio import HOP_LENGTH, N_FFT, N_SAMPLES
from whisper_zh.media import load_audio


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


@dataclass
class SpeechCollator:
    """Rows of a prepared dataset -> ``{"input_audio", "labels"}``.

    ``input_audio`` is float32 ``(batch, longest clip in samples)``; the trainer turns it
    into ``input_features`` on the device (:func:`log_mel_spectrogram`). ``labels`` are
    padded with -100 (ignored by the loss) and lose their leading
    ``<|startoftranscript|>``, which the model prepends itself when it shifts labels
    right to make decoder inputs.
    """

    decoder_start_token_id: int
    n_samples: int = N_SAMPLES

    def __call__(self, rows: list[dict]) -> dict:
        clips = [decode_clip(row["audio"])[: self.n_samples] for row in rows]
        audio = torch.zeros(len(clips), max(c.shape[0] for c in clips), dtype=torch.float32)
        for i, clip in enumerate(clips):
            audio[i, : clip.shape[0]] = torch.from_numpy(clip)
        batch: dict[str, torch.Tensor] = {"input_audio": audio}
        if "labels" in rows[0]:
            batch["labels"] = self.pad_labels([row["labels"] for row in rows])
        return batch

    def pad_labels(self, label_lists: list) -> torch.Tensor:
        width = max(len(ids) for ids in label_lists)
        labels = torch.full((len(label_lists), width), -100, dtype=torch.long)
        for i, ids in enumerate(label_lists):
            labels[i, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        return labels
