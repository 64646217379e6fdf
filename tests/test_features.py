"""On-the-fly log-mel and the collator."""

import numpy as np
import pytest
import torch

from whisper_zh.train.examples import SpeechCollator, log_mel_spectrogram, mel_filters_of
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


def test_plan_puts_the_configured_share_of_clips_in_timestamped_windows_of_at_most_30_s():
    from whisper_zh.train.examples import plan_examples

    rng = np.random.default_rng(0)
    n = 2000
    keys = [(f"clip-{i}.mp3", "今天天气很好") for i in range(n)]
    durations = rng.uniform(1.5, 9.0, n).tolist()
    lengths = rng.integers(8, 60, n).tolist()

    def plan(fraction, seed=42, window_s=30.0):
        return plan_examples(keys, durations, lengths, timestamp_fraction=fraction, timestamp_window_s=window_s,
                             seed=seed, max_length=448)

    for fraction in (0.0, 0.25, 0.5, 1.0):
        plans = plan(fraction)
        rows = sorted(r for p in plans for r in p.rows)
        assert rows == list(range(n)), "every clip is in exactly one example"
        stamped = [p for p in plans if p.timestamps]
        share = sum(len(p.rows) for p in stamped) / n
        assert abs(share - fraction) < 0.04, (fraction, share)
        assert all(len(p.rows) == 1 for p in plans if not p.timestamps)
        for p in stamped:
            assert list(p.rows) == sorted(p.rows), "a window keeps the split's order"
            assert sum(durations[r] for r in p.rows) <= 30.0 or len(p.rows) == 1
            assert 4 + sum(lengths[r] - 3 for r in p.rows) <= 448
        if 0 < fraction:
            # windows are filled: adding the next timestamped clip would overflow 30 s
            assert np.mean([len(p.rows) for p in stamped]) > 4
    # the choice is fixed by the seed and the clip: the same in every epoch and process
    assert plan(0.5) == plan(0.5) and plan(0.5, seed=1) != plan(0.5)
    # windows of 0 s: one clip per timestamped example
    assert all(len(p.rows) == 1 for p in plan(0.5, window_s=0))
    # the decoder's token limit closes a window too
    long_labels = plan_examples(keys[:50], [1.0] * 50, [200] * 50, timestamp_fraction=1.0, max_length=448)
    assert all(4 + 197 * len(p.rows) <= 448 for p in long_labels) and len(long_labels) == 25
    with pytest.raises(ValueError, match="timestamp_window_s"):
        plan(0.5, window_s=31)


def test_prompts_come_from_the_clip_before_the_first_one():
    from whisper_zh.train.examples import plan_examples

    keys = [(str(i), "x") for i in range(400)]
    plans = plan_examples(keys, [2.0] * 400, [10] * 400, timestamp_fraction=0.5, prompt_fraction=0.5, seed=3)
    prompted = [p for p in plans if p.prompt_row is not None]
    assert abs(len(prompted) / len(plans) - 0.5) < 0.1
    assert all(p.prompt_row == p.rows[0] - 1 for p in prompted)
    assert not any(p.rows[0] == 0 and p.prompt_row is not None for p in plans)


def test_timestamped_windows_label_each_clip_at_its_place_on_the_grid(tokenizer, zh_cv_mini):
    from whisper_zh.audio import SAMPLE_RATE, TIME_PRECISION
    from whisper_zh.train.examples import Example, LabelTokens, speech_span

    tokens = LabelTokens.from_tokenizer(tokenizer)
    paths = sorted((zh_cv_mini / "clips").glob("*.mp3"))[:6]
    waves = [load_audio(p) for p in paths]
    sentences = ["第一句", "第二句话", "三", "第四句话很长", "五五", "六"]
    clips = tuple({"audio": p.read_bytes(), "labels": tokenizer(s).input_ids} for p, s in zip(paths, sentences))
    # room for the first four clips only
    n_samples = sum(len(w) for w in waves[:4]) + len(waves[4]) // 2
    collate = SpeechCollator(tokens.start_of_transcript, n_samples=n_samples, tokens=tokens, max_length=448)
    batch = collate([Example(clips, timestamps=True), clips[5]])
    joined = np.concatenate(waves[:4])
    np.testing.assert_allclose(batch["input_audio"][0, : len(joined)].numpy(), joined, atol=1e-6)
    assert batch["input_audio"].shape[1] == len(joined)

    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    # <|zh|><|transcribe|> then <|start|> text <|end|> per clip, then <|endoftext|>
    assert labels[:2] == tokenizer("x").input_ids[1:3] and labels[-1] == tokens.end_of_text
    body, offset, previous = labels[2:-1], 0.0, 0
    for wave, sentence in zip(waves[:4], sentences):
        text = tokenizer(sentence).input_ids[4:-1]
        start, end = body[0], body[len(text) + 1]
        assert body[1: len(text) + 1] == text
        assert tokens.timestamp_begin <= start <= end, "timestamps are timestamp tokens, in order"
        span = speech_span(wave)
        assert (start - tokens.timestamp_begin) * TIME_PRECISION == pytest.approx(offset + span[0], abs=0.011)
        assert (end - tokens.timestamp_begin) * TIME_PRECISION == pytest.approx(offset + span[1], abs=0.011)
        assert start >= previous and (end - tokens.timestamp_begin) * TIME_PRECISION <= len(joined) / SAMPLE_RATE
        previous, offset, body = end, offset + len(wave) / SAMPLE_RATE, body[len(text) + 2:]
    assert body == [], "the clips that did not fit are left out of the labels as of the audio"
    # a plain row in the same batch keeps its <|notimestamps|> label
    assert [t for t in batch["labels"][1].tolist() if t != -100] == tokenizer("六").input_ids[1:]


def test_a_window_stops_at_the_decoders_token_limit(tokenizer):
    from whisper_zh.train.examples import Example, LabelTokens

    tokens = LabelTokens.from_tokenizer(tokenizer)
    ids = tokenizer("今天天气很好" * 5).input_ids
    clips = tuple({"audio": _noise(1.0, i), "labels": ids} for i in range(10))
    collate = SpeechCollator(tokens.start_of_transcript, tokens=tokens, max_length=100)
    labels = [t for t in collate([Example(clips, timestamps=True)])["labels"][0].tolist() if t != -100]
    assert len(labels) + 1 <= 100  # + the <|startoftranscript|> the model prepends
    per_clip = len(ids) - 5 + 2
    assert (len(labels) - 3) % per_clip == 0 and (len(labels) - 3) // per_clip == (100 - 4) // per_clip
    # a first clip that does not fit keeps its plain label
    short = SpeechCollator(tokens.start_of_transcript, tokens=tokens, max_length=len(ids))
    assert short([Example(clips[:1], timestamps=True)])["labels"][0].tolist() == ids[1:]
    with pytest.raises(ValueError, match="only with timestamps"):
        Example(clips[:2])


def test_speech_span_is_on_the_grid_and_inside_the_clip(two_clips):
    from whisper_zh.audio import TIME_PRECISION
    from whisper_zh.train.examples import speech_span

    arrays, _ = two_clips
    silence = np.zeros(16000, np.float32)
    padded = np.concatenate([silence, arrays[1], silence])
    start, end = speech_span(padded)
    plain = speech_span(arrays[1])
    # the same speech one second later (its last, partial step now counts: one step more at most)
    assert start == pytest.approx(1.0 + plain[0], abs=0.001)
    assert 1.0 + plain[1] - 0.001 <= end <= 1.0 + plain[1] + TIME_PRECISION + 0.001
    assert 0 <= start < end <= len(padded) / 16000 - 1.0 + TIME_PRECISION
    for value in (start, end):
        assert round(value / TIME_PRECISION, 6) == round(value / TIME_PRECISION)
    # noise to the end ends on the last full step; too short for a step spans nothing; silence spans all
    assert speech_span(_noise(1.2345, 0)) == (0.0, pytest.approx(1.22))
    assert speech_span(_noise(0.01, 1)) == (0.0, 0.0)
    assert speech_span(silence) == (0.0, 1.0)


def test_previous_text_prompt_is_input_only(tokenizer):
    from whisper_zh.train.examples import Example, LabelTokens

    tokens = LabelTokens.from_tokenizer(tokenizer)
    sot = tokens.start_of_transcript
    ids, prev = tokenizer("你好").input_ids, tokenizer("前一句话").input_ids
    examples = [Example(({"audio": _noise(0.2, i), "labels": ids},), prompt_labels=prev if i else None)
                for i in range(3)]
    batch = SpeechCollator(sot, tokens=tokens, max_length=448)(examples)
    inputs, labels = batch["decoder_input_ids"].tolist(), batch["labels"].tolist()
    text = [t for t in prev if t < tokens.end_of_text]
    # the first example has no previous text: the plain decoder input (the labels shifted right)
    assert inputs[0][: len(ids) - 1] == ids[:-1] and labels[0][: len(ids) - 1] == ids[1:]
    for row_in, row_out in zip(inputs[1:], labels[1:]):
        assert row_in == [tokens.start_of_prev, *text, *ids[:-1]]
        assert row_out == [-100] * (1 + len(text)) + ids[1:]
