"""Nothing said is lost (issue 19): the completeness pass both backends share, the
coverage report, lanes that start in a ramp, and (slow) real recordings where Whisper's
first pass skips a run of utterances."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from whisper_zh.media import load_audio
from whisper_zh.serve.ct2_backend import lane_plan
from whisper_zh.serve.jobs import notice_lines
from whisper_zh.serve.segmentation import (
    SpeechMap,
    complete,
    coverage_of,
    in_time_order,
    split_at_pause,
    uncovered_speech,
)
from whisper_zh.serve.types import Coverage, Segment, SegmentStream

SR = 16000

# three utterances in a 30 s chunk, 0.5 s pauses: 2 s, 2 s, 12 s
SPEECH = SpeechMap(chunks=[(0.0, 30.0)], speech=[(10.0, 12.0), (12.5, 14.5), (15.0, 27.0)])


def _stubborn_decoder(decoded: list):
    """Stands in for a backend: a span's result is the covered stretch of the first
    utterance that starts in it, unless the span starts before 12.5 and ends after it,
    where it stops after the first (Whisper writing one utterance and stopping);
    a span holding the third utterance with anything before it writes nothing."""

    def decode(spans):
        decoded.append(list(spans))
        out = []
        for start, end in spans:
            pieces = [p for p in SPEECH.speech if start <= p[0] and p[1] <= end]
            if not pieces or (pieces[-1][0] == 15.0 and len(pieces) > 1 and pieces[0][0] == 12.5):
                out.append([])
            else:
                out.append([pieces[0]])
        return out

    return decode


def test_uncovered_speech_merges_overlapping_cover():
    assert uncovered_speech([(10.0, 20.0), (12.0, 13.0)], (0.0, 30.0), SPEECH) == [(20.0, 30.0)]
    assert uncovered_speech([], (0.0, 30.0), SPEECH) == [(0.0, 30.0)]
    assert uncovered_speech([(0.0, 30.0)], (0.0, 30.0), SPEECH) == []
    # less than a second of speech between covered stretches is not decoded again
    assert uncovered_speech([(10.0, 14.0), (14.4, 27.0)], (0.0, 30.0), SPEECH) == []


def test_split_at_pause_cuts_in_the_longest_pause():
    speech = SpeechMap([(0.0, 30.0)], [(1.0, 2.0), (2.2, 3.0), (4.0, 5.0)])
    assert split_at_pause((0.5, 6.0), speech) == [(0.5, 3.5), (3.5, 6.0)]
    assert split_at_pause((3.5, 6.0), speech) == []


def test_complete_decodes_again_until_every_utterance_has_text():
    """The first round writes the first utterance and stops; the rest is decoded again,
    written nothing for, cut at its pause, and each piece is then found: three results,
    each whole, nothing left."""
    decoded: list = []
    completion = complete([(9.5, 27.5)], _stubborn_decoder(decoded), lambda covered: covered, SPEECH)
    assert [sorted(r[0] for r in [result]) for _, result in completion.found]  # every result has text
    assert sorted(result[0] for _, result in completion.found) == SPEECH.speech
    assert completion.uncovered == []
    assert len(decoded) == 3 and decoded[0] == [(9.5, 27.5)]
    assert decoded[1] == [(12.0, 27.5)]  # what the first round left, as it is
    assert len(decoded[2]) == 2  # then cut at its pause: decoded apart


def test_complete_gives_up_within_its_rounds_and_reports():
    calls: list = []

    def nothing(spans):
        calls.append(spans)
        return [[] for _ in spans]

    completion = complete([(9.5, 27.5)], nothing, lambda covered: covered, SPEECH, max_rounds=2)
    assert completion.found == [] and len(calls) == 2
    # what is left: every piece still holding a second of speech, in order
    assert completion.uncovered == sorted(completion.uncovered) and completion.uncovered
    assert sum(SPEECH.speech_within(a, b) for a, b in completion.uncovered) >= 12.0
    coverage = coverage_of(completion.uncovered, SPEECH)
    assert coverage.speech_s == 16.0 and 0.0 <= coverage.share < 0.25
    # a piece without a pause to cut at is given up at once
    completion = complete([(14.8, 27.5)], nothing, lambda covered: covered, SPEECH)
    assert completion.uncovered == [(14.8, 27.5)] and len(calls) == 3


def test_refilled_segments_stay_whole_and_in_time_order():
    """A chunk's segment whose start reaches back over skipped speech, and the skipped
    speech's own segment: ordered by their ends, never mixed."""
    own = [Segment(0.0, 5.0, "甲乙"), Segment(5.5, 20.0, "丙丁")]  # the second absorbed 6-10
    found = [Segment(6.0, 10.0, "换一首歌")]
    ordered = in_time_order([own, found])
    assert [s.text for s in ordered] == ["甲乙", "换一首歌", "丙丁"]
    assert all(a.end <= b.start for a, b in zip(ordered, ordered[1:]))
    assert ordered[2].start == 10.0


def test_lane_plan_ramps_up_then_runs_every_lane():
    for n, lanes in ((18, 8), (6, 3), (9, 8), (100, 8), (40, 4)):
        plan = lane_plan(n, lanes)
        assert [i for _, lane in plan for i in lane] == list(range(n))  # consecutive, every chunk once
        assert len(plan) <= lanes
        steps = max(first + len(lane) for first, lane in plan)
        per_step = [sum(first <= t < first + len(lane) for first, lane in plan) for t in range(steps)]
        assert per_step[0] == 1 and per_step[1] == 2  # text after one chunk
        assert steps <= -(-n // lanes) + 3  # the ramp costs at most three more steps
        if n >= 2 * lanes:
            assert max(per_step) == lanes
    assert lane_plan(18, 8)[0] == (0, [0, 1, 2, 3, 4])
    # what fits in one step is decoded in one step
    assert lane_plan(3, 8) == [(0, [0]), (0, [1]), (0, [2])]
    assert lane_plan(0, 8) == []


def test_coverage_lines_and_stream():
    coverage = Coverage(speech_s=100.0, uncovered=((706.2, 719.4),), uncovered_s=12.0)
    assert coverage.share == pytest.approx(0.88)
    assert notice_lines(None, coverage) == ["11:46–11:59: speech detected, no text"]
    assert notice_lines(None, None) == [] and Coverage(0.0).share == 1.0

    def segments():
        yield Segment(0.0, 1.0, "你好")
        return coverage

    stream = SegmentStream(segments())
    assert stream.coverage is None
    assert list(stream) == [Segment(0.0, 1.0, "你好")] and stream.coverage is coverage


# -- real whisper-base ---------------------------------------------------------------

def _rows(data: Path, split: str) -> list[dict]:
    with open(data / f"{split}.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _recording(parts: list[np.ndarray], gap_s: float = 0.3) -> tuple[np.ndarray, list[tuple[float, float]]]:
    gap = np.zeros(int(gap_s * SR), np.float32)
    spans, samples = [], 0
    for audio in parts:
        spans.append((samples / SR, (samples + len(audio)) / SR))
        samples += len(audio) + len(gap)
    return np.concatenate([p for audio in parts for p in (audio, gap)]), spans


def _read_speech(zh_cv_mini: Path, seconds: float, skip: int = 0) -> list[np.ndarray]:
    clips, total = [], 0.0
    for row in _rows(zh_cv_mini, "test")[skip:] + _rows(zh_cv_mini, "dev"):
        if total >= seconds:
            break
        clips.append(load_audio(zh_cv_mini / "clips" / row["path"]))
        total += len(clips[-1]) / SR + 0.3
    return clips


@pytest.fixture(scope="module")
def ct2_engine(whisper_base):
    from _ct2_base import base_ct2

    from whisper_zh.serve.engine import Transcriber

    return Transcriber(str(base_ct2(whisper_base)), backend="ct2", device="cpu")


@pytest.mark.slow
def test_first_segment_of_an_eight_minute_input_comes_before_a_quarter(ct2_engine, zh_cv_mini):
    """The lanes start in a ramp: the first step decodes one chunk, so the first
    segment is out while less than a quarter of the chunks are decoded (progress is
    reported after each step, before its segments; with 8 lanes from the start it was 8
    of ~18 chunks)."""
    audio, _ = _recording(_read_speech(zh_cv_mini, 480.0))
    assert len(audio) / SR >= 480.0
    reported: list[float] = []
    stream = ct2_engine.iter_segments(audio, progress=lambda fraction, message: reported.append(fraction))
    first = next(stream)
    stream.close()
    assert first.text and first.start < 30.0
    assert reported[0] == 0.0 and 0.0 < reported[-1] < 0.25, reported


def _first_pass_stops_early(monkeypatch, backend, cut_s: float) -> list:
    """Make the backend's first decode of the recording stop at ``cut_s`` (Whisper writing
    the first utterance of a run and stopping, as on issue 19's recording); every later
    decode (the completeness pass) is the real one. Returns the list of decoded spans."""
    calls: list = []
    if backend.name == "ct2":
        from whisper_zh.serve import ct2_backend

        real = ct2_backend._SpanDecoder.decode

        def decode(self, spans, prompts):
            results = real(self, spans, prompts)
            calls.append(list(spans))
            if len(calls) == 1:
                for r in results:
                    r.words = [w for w in r.words or [] if w.end <= cut_s]
                    r.text = "".join(w.word for w in r.words)
            return results

        monkeypatch.setattr(ct2_backend._SpanDecoder, "decode", decode)
    else:
        real = type(backend)._decode

        def decode(self, audio, spans, generate_kwargs, batch_size):
            results = real(self, audio, spans, generate_kwargs, batch_size)
            calls.append(list(spans))
            if len(calls) == 1:
                results = [[s for s in segments if s.end <= cut_s] for segments in results]
            return results

        monkeypatch.setattr(type(backend), "_decode", decode)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_a_skipped_run_of_utterances_comes_back_whole_and_in_order(backend, whisper_base, zh_cv_mini, monkeypatch,
                                                                   request):
    """Read speech, then a run from other sources (a 2 s command, a 2 s sentence, a 12 s
    spontaneous one), then read speech. The first pass writes up to the first utterance
    of the run and stops; the completeness pass brings every clip back: each clip has a
    segment overlapping it, segments are in time order, none mixes two clips, and the
    coverage says all the speech has text."""
    multi = zh_cv_mini.parent / "zh-multi-dev" / "clips"
    if not multi.is_dir():
        pytest.skip(f"{multi} is missing")
    read = _read_speech(zh_cv_mini, 12.0)
    run = [load_audio(multi / name) for name in ("zhmd_a3_SSB02990372.mp3", "zhmd_valle_zh-1.mp3",
                                                 "zhmd_frpod_S1.mp3")]
    audio, spans = _recording([*read, *run, *_read_speech(zh_cv_mini, 6.0, skip=len(read))])
    first_run = len(read)
    if backend == "ct2":
        engine = request.getfixturevalue("ct2_engine")
    else:
        from whisper_zh.serve.engine import Transcriber

        engine = Transcriber(str(whisper_base), backend="transformers", device="cpu")
    calls = _first_pass_stops_early(monkeypatch, engine.backend, cut_s=spans[first_run][1] + 0.2)
    stream = engine.iter_segments(audio)
    segments = list(stream)

    assert len(calls) > 1  # the completeness pass ran
    for i, (start, end) in enumerate(spans):
        assert any(min(end, s.end) - max(start, s.start) >= 0.3 for s in segments), (i, spans[i], segments)
    assert all(a.end <= b.start + 1e-6 and a.start <= a.end for a, b in zip(segments, segments[1:]))
    run_clips = set(range(first_run, first_run + len(run)))
    for s in segments:  # no segment mixes a run's clip with another clip
        if s.words:
            owners = {min(range(len(spans)), key=lambda i: max(spans[i][0] - m, m - spans[i][1], 0.0))
                      for m in ((w.start + w.end) / 2 for w in s.words)}
        else:
            owners = {i for i, (a, b) in enumerate(spans) if min(b, s.end) - max(a, s.start) >= 0.5}
        assert len(owners) <= 1 or not owners & run_clips, (s, owners)
    coverage = stream.coverage
    assert coverage is not None and coverage.speech_s > 30.0
    assert coverage.share > 0.9 and all(b - a < 5.0 for a, b in coverage.uncovered), coverage


@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_speech_too_quiet_to_decode_is_reported_not_dropped(backend, whisper_base, zh_cv_mini, request):
    """A stretch of real speech turned down below the silence gate (-45 dB) between two
    loud ones, 31 s of silence apart so that it is a chunk (a window) of its own: it is
    not decoded, and the coverage says so: its span is uncovered (it was dropped from
    the coverage before, which read 100 %)."""
    from whisper_zh.media import frame_energy_db

    loud = _read_speech(zh_cv_mini, 4.0)
    quiet = _read_speech(zh_cv_mini, 6.0, skip=len(loud))
    quiet = [clip * np.float32(10 ** ((-50.0 - frame_energy_db(clip).max()) / 20)) for clip in quiet]
    silence = np.zeros(31 * SR, np.float32)
    middle, quiet_spans = _recording(quiet)
    start = (sum(len(c) for c in loud) + 0.3 * SR * len(loud) + len(silence)) / SR
    audio = np.concatenate([_recording(loud)[0], silence, middle, silence, _recording(loud)[0]])
    if backend == "ct2":
        engine = request.getfixturevalue("ct2_engine")
    else:
        from whisper_zh.serve.engine import Transcriber

        engine = Transcriber(str(whisper_base), backend="transformers", device="cpu")
    stream = engine.iter_segments(audio)
    segments = list(stream)
    quiet_start, quiet_end = start + quiet_spans[0][0], start + quiet_spans[-1][1]
    assert segments and not any(min(quiet_end, s.end) - max(quiet_start, s.start) > 0 for s in segments)
    coverage = stream.coverage
    uncovered = sum(max(0.0, min(quiet_end, b) - max(quiet_start, a)) for a, b in coverage.uncovered)
    assert uncovered > 0.8 * (quiet_end - quiet_start) - 1.0, coverage
    assert coverage.share < 0.8, coverage
