"""On-the-fly log-mel and the collator."""

import numpy as np
import pytest
import torch

from whisper_zh.features import SpeechCollator, log_mel_spectrogram, mel_filters_of
from whisper_zh.media import load_audio


@pytest.fixture(scope="module")
def feature_extractor(whisper_base):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(whisper_base)


@pytest.fixture(scope="module")
def two_clips(zh_cv_mini):
    clips = sorted((zh_cv_mini / "clips").glob("*.mp3"))[:2]
    return [load_audio(c) for c in clips], [c.read_bytes() for c in clips]


def test_log_mel_matches_whisper_feature_extractor(feature_extractor, two_clips):
    arrays, _ = two_clips
    reference = feature_extractor(arrays, sampling_rate=16000, return_tensors="np").input_features
    batch = torch.zeros(2, max(a.shape[0] for a in arrays))
    for i, a in enumerate(arrays):
        batch[i, : a.shape[0]] = torch.from_numpy(a)
    ours = log_mel_spectrogram(batch, mel_filters_of(feature_extractor))
    assert ours.shape == (2, 80, 3000)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)


def test_collator_decodes_bytes_pads_audio_and_labels(two_clips):
    arrays, encoded = two_clips
    collate = SpeechCollator(decoder_start_token_id=50258)
    batch = collate([
        {"audio": encoded[0], "labels": [50258, 50260, 50359, 50363, 1, 2, 50257]},
        {"audio": encoded[1], "labels": [50258, 50260, 50359, 50363, 3, 50257]},
    ])
    longest = max(a.shape[0] for a in arrays)
    assert batch["input_audio"].shape == (2, longest)
    np.testing.assert_allclose(batch["input_audio"][0, : arrays[0].shape[0]].numpy(), arrays[0], atol=1e-6)
    assert batch["input_audio"][0, arrays[0].shape[0]:].abs().sum() == 0 or arrays[0].shape[0] == longest
    # the leading <|startoftranscript|> is dropped (the model prepends it); padding is -100
    assert batch["labels"].tolist() == [[50260, 50359, 50363, 1, 2, 50257], [50260, 50359, 50363, 3, 50257, -100]]

