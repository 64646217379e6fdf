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



# --- timestamp labels and the previous-text prompt ---------------------------------------


@pytest.fixture(scope="module")
def tokenizer(whisper_base):
    from transformers import WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(whisper_base)
    tok.set_prefix_tokens(language="zh", task="transcribe")
    return tok


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_collator_mixes_both_label_kinds_in_the_configured_proportion(tokenizer):
    from whisper_zh.features import LabelTokens

    tokens = LabelTokens.from_tokenizer(tokenizer)
    ids = tokenizer("今天天气很好").input_ids
    rows = [{"audio": _noise(0.3, i), "labels": ids, "path": f"clip-{i}.mp3", "sentence": "今天天气很好"}
            for i in range(400)]

    def timestamped_share(fraction, seed=42):
        collate = SpeechCollator(tokenizer.convert_tokens_to_ids("<|startoftranscript|>"), tokens=tokens,
                                 timestamp_fraction=fraction, seed=seed)
        labels = [row for i in range(0, len(rows), 40) for row in collate(rows[i:i + 40])["labels"].tolist()]
        kinds = [(tokens.timestamp_begin in row, tokens.no_timestamps in row) for row in labels]
        assert all(ts != nts for ts, nts in kinds), "every label has exactly one kind"
        return sum(ts for ts, _ in kinds) / len(kinds), labels

    for fraction in (0.0, 0.25, 0.5, 1.0):
        share, _ = timestamped_share(fraction)
        assert abs(share - fraction) < 0.06, (fraction, share)
    # the choice is fixed by the seed and the clip: the same in every epoch and process
    assert timestamped_share(0.5)[1] == timestamped_share(0.5)[1]
    assert timestamped_share(0.5, seed=1)[1] != timestamped_share(0.5)[1]


def test_timestamp_labels_are_on_the_grid_and_never_beyond_the_clip(tokenizer, two_clips):
    from whisper_zh.audio import TIME_PRECISION
    from whisper_zh.features import LabelTokens, speech_end

    tokens = LabelTokens.from_tokenizer(tokenizer)
    arrays, _ = two_clips
    silence = np.zeros(16000, np.float32)
    clips = [arrays[0], np.concatenate([arrays[1], silence]), _noise(1.2345, 0), _noise(0.01, 1)]
    ids = tokenizer("你好").input_ids
    rows = [{"audio": c, "labels": ids, "path": str(i), "sentence": "你好"} for i, c in enumerate(clips)]
    collate = SpeechCollator(50258, tokens=tokens, timestamp_fraction=1.0)
    for row, clip, labels in zip(rows, clips, collate(rows)["labels"].tolist()):
        labels = [t for t in labels if t != -100]
        # <|zh|><|transcribe|><|0.00|> text <|T|><|endoftext|>
        assert labels[:3] == ids[1:3] + [tokens.timestamp_begin]
        assert labels[3:-2] == ids[4:-1] and labels[-1] == tokens.end_of_text
        end = (labels[-2] - tokens.timestamp_begin) * TIME_PRECISION
        assert 0 <= end <= len(clip) / 16000
        assert end == pytest.approx(speech_end(clip))
    # speech ends before the appended second of silence; noise to the end ends on the last full step
    assert speech_end(clips[1]) <= len(arrays[1]) / 16000 + TIME_PRECISION
    assert speech_end(clips[2]) == pytest.approx(1.22)
    assert speech_end(clips[3]) == 0.0


def test_previous_text_prompt_is_input_only(tokenizer):
    from whisper_zh.features import LabelTokens

    tokens = LabelTokens.from_tokenizer(tokenizer)
    sot = tokens.start_of_transcript
    ids, prev = tokenizer("你好").input_ids, tokenizer("前一句话").input_ids
    rows = [{"audio": _noise(0.2, i), "labels": ids, "prev_labels": prev if i else [], "path": str(i),
             "sentence": "你好"} for i in range(3)]
    batch = SpeechCollator(sot, tokens=tokens, prompt_fraction=1.0, max_length=448)(rows)
    inputs, labels = batch["decoder_input_ids"].tolist(), batch["labels"].tolist()
    text = [t for t in prev if t < tokens.end_of_text]
    # the first row has no previous text: the plain decoder input (the labels shifted right)
    assert inputs[0][: len(ids) - 1] == ids[:-1] and labels[0][: len(ids) - 1] == ids[1:]
    for row_in, row_out in zip(inputs[1:], labels[1:]):
        assert row_in == [tokens.start_of_prev, *text, *ids[:-1]]
        assert row_out == [-100] * (1 + len(text)) + ids[1:]
