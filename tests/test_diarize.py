"""Speaker labels: the encoder's input, clustering, splitting at changes, and a two-voice
conversation built from real clips (bench/diarize.py measures more, with transcription)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from whisper_zh.errors import ConfigError, MissingExtraError
from whisper_zh.serve import diarize as D
from whisper_zh.serve.types import Segment, Word

# not imported: the package's own module needs pkg_resources (see diarize's docstring)
if importlib.util.find_spec("resemblyzer") is None:
    pytest.skip('speaker labels need pip install "whisper-zh[diarize]"', allow_module_level=True)

SR = 16000


def test_mel_frames_are_librosas():
    """Against librosa's own output, recorded (tests/data/record_librosa_mel.py)."""
    with np.load(Path(__file__).parent / "data" / "librosa_mel.npz") as recorded:
        audio, want = recorded["audio"], recorded["mel"]
    got = D.mel_frames(audio)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_windows_cover_the_speech_only():
    segments = [Segment(0.0, 5.0, "x", words=(Word(0.5, 1.0, "a"), Word(1.1, 3.0, "b"))), Segment(10.0, 10.5, "y")]
    assert D.speech_spans(segments) == [(0.5, 3.0), (10.0, 10.5)]
    starts = D.window_starts(D.speech_spans(segments), duration=20.0)
    assert len(starts) == 4 and starts[0] == pytest.approx(0.5) and starts[2] + D.WINDOW_S == pytest.approx(3.0)
    assert starts[-1] == pytest.approx(10.25 - D.WINDOW_S / 2)  # one window centred on a short span
    assert all(s >= 0 and s + D.WINDOW_S <= 20.0 for s in starts)


def test_cluster_counts_and_folds_outliers():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(256), rng.standard_normal(256)
    points = [a + 0.2 * rng.standard_normal(256) for _ in range(20)] + \
             [b + 0.2 * rng.standard_normal(256) for _ in range(20)] + [rng.standard_normal(256)]  # one outlier
    points = np.abs(np.stack(points))  # the encoder's embeddings are non-negative
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = D.cluster(points, threshold=0.05)
    assert len(set(labels[:40])) == 2 and len(set(labels)) == 2  # the outlier joined a voice
    assert len(set(labels[:20])) == 1 and len(set(labels[20:40])) == 1
    assert set(D.cluster(points, 2)[:40]) == {0, 1}
    assert set(D.cluster(points, 1)) == {0}
    with pytest.raises(ConfigError):
        D.cluster(points, 0)


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"whisper-zh\[diarize\]"):
        D._weights_path()


def test_two_real_voices_are_told_apart(conversation):
    """The ``conversation`` fixture (conftest.py): two voices, four turns each, alternating."""
    audio, turns = conversation
    # one segment a turn, except one that runs over a change of speaker, with words
    # spread evenly over the two turns it covers (as aligned words would be)
    segments = [Segment(a, b, "嗯" * 5) for a, b, _ in turns[2:]]
    (a0, b0, _), (a1, b1, _) = turns[0], turns[1]
    words = tuple(Word(a0 + k * (b0 - a0) / 6, a0 + (k + 1) * (b0 - a0) / 6, "你") for k in range(6)) + \
        tuple(Word(a1 + k * (b1 - a1) / 6, a1 + (k + 1) * (b1 - a1) / 6, "好") for k in range(6))
    segments.insert(0, Segment(a0, b1, "你" * 6 + "，" + "好" * 6 + "。", words=words))

    result = D.diarize(audio, segments)
    assert result.num_speakers == 2
    first, second, *rest = result.segments
    assert (first.text, second.text) == ("你你你你你你，", "好好好好好好。")  # split at the change
    assert first.speaker != second.speaker
    assert {w.speaker for w in first.words} == {first.speaker}
    assert first.end <= second.start
    # the other turns: the right voice after mapping, with a wide margin (measured: all)
    mapping = {0: first.speaker, 1: second.speaker}
    right = sum(s.speaker == mapping[voice] for s, (_, _, voice) in zip(rest, turns[2:]))
    assert right >= len(rest) - 1

    assert {s.speaker for s in D.diarize(audio, segments, 1).segments} == {"S1"}
    given = D.diarize(audio, segments, 2)
    assert given.num_speakers == 2 and [s.speaker for s in given.segments][:2] == ["S1", "S2"]
