"""CTranslate2 export (``whisper-zh export``) and the ct2 backend.

Accuracy is checked with the real whisper-base on real Mandarin clips; the tiny random
model only checks the export's files and plumbing.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _checks import is_chinese
from _media_helpers import plain_clips
from whisper_zh.serve.ct2_backend import ChunkResult, CT2Backend, decode_chunks, load_ct2
from whisper_zh.serve.segmentation import SpeechMap, missed_speech, speech_chunks, split_words
from whisper_zh.serve.models import find_ct2_model
from whisper_zh.serve.models import export_ct2
from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.media import load_audio
from whisper_zh.text import cer, to_simplified
from whisper_zh.serve.types import Segment, TranscribeOptions, Word

REPO = Path(__file__).resolve().parents[1]


def _copy_model(src: Path, dst: Path) -> Path:
    """A private copy (symlinks) of a model directory, so that an export written into it
    does not change what other tests see in the shared fixture."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.startswith("."):
            (dst / item.name).symlink_to(item.resolve())
    return dst


def _clips(zh_cv_mini: Path, n: int, plain: bool = False) -> list[tuple[np.ndarray, str]]:
    """The first ``n`` test clips with their sentences; ``plain``: only those whose sentence
    is Chinese characters (no digit strings or Latin letters, which a character reference
    scores all or nothing whatever the model heard)."""
    if plain:
        rows = plain_clips(zh_cv_mini, n)
    else:
        with open(zh_cv_mini / "test.tsv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return [(load_audio(zh_cv_mini / "clips" / row["path"]), row["sentence"]) for row in rows]


def _joined(clips: list[tuple[np.ndarray, str]], gap_s: float = 0.5) -> np.ndarray:
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    return np.concatenate([part for audio, _ in clips for part in (audio, gap)])


def _counting_encodes(model) -> list[int]:
    """The batch size of every ``model.encode`` call from now on. The wrapper holds the
    model weakly: a model that held itself would be freed only by the cyclic collector,
    at a moment no test chooses (in a forked child, its threads are not there)."""
    calls, owner = [], weakref.ref(model)

    def encode(features):
        calls.append(len(features))
        return type(owner()).encode(owner(), features)

    model.encode = encode
    return calls


class _RecordingGenerate:
    """Stands in for ``WhisperModel.model`` (the CTranslate2 Whisper) and records every
    ``generate`` call's prompts and keyword arguments; everything else passes through."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[list[list[int]], dict]] = []

    def generate(self, encoder_output, prompts, **kwargs):
        self.calls.append(([list(p) for p in prompts], kwargs))
        return self.inner.generate(encoder_output, prompts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tiny_ct2(tiny_whisper, tmp_path_factory) -> Path:
    return Path(export_ct2(str(tiny_whisper), str(tmp_path_factory.mktemp("ct2") / "tiny"), "float32"))


def _check_segments(segments: list[Segment], duration: float) -> None:
    assert segments, "no segments"
    previous_start = -1.0
    for segment in segments:
        assert isinstance(segment, Segment)
        assert isinstance(segment.text, str) and segment.text == segment.text.strip() and segment.text
        assert 0.0 <= segment.start <= segment.end <= duration + 1e-6
        assert segment.start >= previous_start
        assert 0.0 <= segment.no_speech_prob <= 1.0
        assert segment.words and "".join(w.word for w in segment.words).strip() == segment.text
        assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words)
        previous_start = segment.start


def _decode_all(model, audio, chunks, options=TranscribeOptions(), **kwargs) -> list:
    """decode_chunks' steps gathered into one result per chunk, in chunk order."""
    results = [None] * len(chunks)
    for step in decode_chunks(model, audio, chunks, options, **kwargs):
        for i, r in step:
            results[i] = r
    return results


# -- export ---------------------------------------------------------------------------

def test_export_tiny_default_dir_is_found_and_loadable(tiny_whisper, tmp_path):
    model_dir = _copy_model(tiny_whisper, tmp_path / "tiny")
    assert find_ct2_model(str(model_dir)) is None
    out = export_ct2(str(model_dir))
    assert Path(out) == (model_dir / "ct2").resolve()
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json",
                 "encoder.safetensors"):
        assert (Path(out) / name).is_file(), name
    preprocessor = json.loads((Path(out) / "preprocessor_config.json").read_text())
    assert preprocessor["feature_size"] == 80 and preprocessor["sampling_rate"] == SAMPLE_RATE
    config = json.loads((Path(out) / "config.json").read_text())
    assert len(config["lang_ids"]) == 99  # multilingual: the zh token is there
    assert find_ct2_model(str(model_dir)) == str(model_dir / "ct2")
    assert find_ct2_model(out) == out

    # exporting again replaces the export in place and leaves no temporary directory: the
    # weights are now float32, four bytes each where int8 (the default) stored one
    int8_size = (Path(out) / "model.bin").stat().st_size
    export_ct2(str(model_dir), quantization="float32")
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    assert (model_dir / "ct2" / "model.bin").stat().st_size > 2 * int8_size

    backend = CT2Backend(out, encoder="ct2")
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * SAMPLE_RATE).astype(np.float32)
    # random weights: any text, but the right shape of output. The VAD finds no speech in
    # noise, so two windows are given, and no threshold may drop what was written.
    everything = TranscribeOptions(temperatures=(0.0,), logprob_threshold=None, no_speech_threshold=None,
                                   compression_ratio_threshold=None, drop_hallucinations=False)
    windows = [(0, SAMPLE_RATE), (SAMPLE_RATE, 2 * SAMPLE_RATE)]
    for batch_size in (1, 8):
        segments = list(backend.iter_segments(noise, replace(everything, batch_size=batch_size), windows=windows))
        assert segments and all(isinstance(s, Segment) and 0.0 <= s.start <= s.end <= 2.0 for s in segments)


def test_export_rejects_unknown_quantization(tiny_whisper, tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        export_ct2(str(tiny_whisper), str(tmp_path / "out"), quantization="int3")
    assert not (tmp_path / "out").exists()


def test_find_ct2_model_none_without_export(tmp_path):
    assert find_ct2_model(str(tmp_path)) is None
    assert find_ct2_model(str(tmp_path / "missing")) is None
    assert find_ct2_model("openai/whisper-small") is None
    with pytest.raises(FileNotFoundError, match="export"):
        load_ct2(str(tmp_path))


def test_cli_export(tiny_whisper, tmp_path):
    out = tmp_path / "cli-ct2"
    proc = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "export", str(tiny_whisper),
         "--quantization", "int8", "--output-dir", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()

    bad = subprocess.run([sys.executable, "-m", "whisper_zh", "export", str(tmp_path / "no-such-model")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 1 and "no such model" in bad.stderr
    assert not (tmp_path / "no-such-model").exists()


# -- decoding in lanes -------------------------------------------------------------------

def test_decode_chunks_falls_back_to_higher_temperatures_and_resets_the_prompt(tiny_ct2):
    """Random weights are unsure of every token (mean log-probability far below -1), so
    every chunk is decoded again at each fallback temperature, sampled, in one batch;
    text decoded at 0.8 is not used as the next chunk's prompt."""
    model = load_ct2(str(tiny_ct2))
    model.model = recorder = _RecordingGenerate(model.model)
    encoded = _counting_encodes(model)
    audio = np.random.default_rng(1).normal(0, 0.1, 12 * SAMPLE_RATE).astype(np.float32)
    chunks = [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 12.0)]
    results = _decode_all(model, audio, chunks, TranscribeOptions(batch_size=2, temperatures=(0.0, 0.4, 0.8),
                                                                  no_speech_threshold=None))
    assert len(results) == 4
    assert encoded == [1, 2, 1]  # each step's windows encoded once, for every temperature and the alignment
    # two lanes started in a ramp (lane_plan): chunk 0, then chunks 1 and 3, then chunk 2
    assert [len(prompts) for prompts, _ in recorder.calls] == [1, 1, 1, 2, 2, 2, 1, 1, 1]
    temperatures = [kwargs.get("sampling_temperature", 0.0) for _, kwargs in recorder.calls]
    assert temperatures == [0.0, 0.4, 0.8] * 3
    assert all(kwargs["num_hypotheses"] == 5 and kwargs["beam_size"] == 1 for _, kwargs in recorder.calls[1:3])
    bare = recorder.calls[0][0][0]
    assert all(p == bare for prompts, _ in recorder.calls for p in prompts)  # reset: no previous text
    kept = [r for r in results if r is not None]
    assert kept and all(isinstance(r, ChunkResult) and r.temperature == 0.8 for r in kept)
    assert all(0.0 <= w.start <= w.end <= 12.0 for r in kept for w in r.words)

    # without thresholds nothing is retried
    recorder.calls.clear()
    _decode_all(model, audio, chunks, TranscribeOptions(batch_size=2, compression_ratio_threshold=None,
                                                        logprob_threshold=None, no_speech_threshold=None),
                word_timestamps=False)
    assert [kwargs.get("sampling_temperature", 0.0) for _, kwargs in recorder.calls] == [0.0, 0.0, 0.0]
    assert _decode_all(model, audio, [], TranscribeOptions(batch_size=2)) == []


def test_a_batch_is_encoded_once_when_some_of_it_falls_back(tiny_ct2):
    """Chunks of one step that need another temperature are decoded again from the step's
    encoder output, not encoded again; those that do not keep their first result."""
    model = load_ct2(str(tiny_ct2))
    audio = np.random.default_rng(3).normal(0, 0.1, 12 * SAMPLE_RATE).astype(np.float32)
    chunks = [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 12.0)]
    plain = TranscribeOptions(batch_size=4, compression_ratio_threshold=None, logprob_threshold=None,
                              no_speech_threshold=None)
    scores = sorted(r.avg_logprob for r in _decode_all(model, audio, chunks, plain))
    assert scores[0] < scores[-1]
    # a threshold between the chunks' scores: some of the step fall back, some do not
    options = replace(plain, logprob_threshold=(scores[0] + scores[-1]) / 2, temperatures=(0.0, 0.5))
    encoded = _counting_encodes(model)
    results = _decode_all(model, audio, chunks, options)
    assert 0 < sum(r.temperature == 0.5 for r in results) < 4
    assert encoded == [4]


def test_some_windows_of_a_batch_are_read_from_its_encoder_output(tiny_ct2):
    """The fallback and the alignment of some of a batch's windows read their rows of the
    batch's encoder output: on a CPU copied out, not encoded again."""
    from faster_whisper.audio import pad_or_trim

    from whisper_zh.serve.ct2_backend import _encoder_rows

    model = load_ct2(str(tiny_ct2))
    rng = np.random.default_rng(2)
    features = np.stack([pad_or_trim(model.feature_extractor(rng.normal(0, 0.1, 3 * SAMPLE_RATE).astype(np.float32)))
                         for _ in range(3)])
    encoder_output = model.encode(features)
    encoded = _counting_encodes(model)
    assert _encoder_rows(model.encode, encoder_output, features, [0, 1, 2]) is encoder_output
    rows = _encoder_rows(model.encode, encoder_output, features, [0, 2])
    assert encoded == [] and list(rows.shape) == [2, *list(encoder_output.shape)[1:]]
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(encoder_output)[[0, 2]])
    assert not np.allclose(np.asarray(rows)[0], np.asarray(rows)[1])  # the rows asked for, not one twice


@pytest.mark.slow
def test_decode_chunks_conditions_each_lane_on_its_previous_chunk(whisper_base_ct2, zh_cv_mini):
    """Six clips, one chunk each, three lanes started in a ramp: chunk 0; then 1 and 3;
    then 2, 4 and 5. Each chunk is prompted with the end of the text of the chunk before
    it in its lane, a lane's first chunk with the latest text decoded before it; as many
    tokens each (CTranslate2 needs <|startoftranscript|> at one position).

    One temperature and no no-speech rule, so that the model calls are the lanes' steps
    and nothing else, whatever the model's confidence on this machine's arithmetic."""
    clips = _clips(zh_cv_mini, 6, plain=True)
    audio = _joined(clips, gap_s=0.5)
    chunks, start = [], 0.0
    for clip, _ in clips:
        chunks.append((start, start + len(clip) / SAMPLE_RATE))
        start = chunks[-1][1] + 0.5
    model = load_ct2(str(whisper_base_ct2))
    model.model = recorder = _RecordingGenerate(model.model)
    tokenizer = model.hf_tokenizer
    sot, sot_prev = tokenizer.token_to_id("<|startoftranscript|>"), tokenizer.token_to_id("<|startofprev|>")

    greedy = TranscribeOptions(batch_size=3, temperatures=(0.0,), no_speech_threshold=None)
    steps = list(decode_chunks(model, audio, chunks, greedy))
    assert [sorted(i for i, _ in step) for step in steps] == [[0], [1, 3], [2, 4, 5]]  # one step at a time
    results = [r for _, r in sorted(pair for step in steps for pair in step)]
    assert all(r is not None and is_chinese(r.text) for r in results), [r and r.text for r in results]
    for (chunk_start, chunk_end), r in zip(chunks, results):
        assert r.words and all(chunk_start - 0.05 <= w.start <= w.end <= chunk_end + 0.05 for w in r.words)
    assert len(recorder.calls) == 3  # one model call a step: no temperature to fall back to
    first, second, third = (prompts for prompts, _ in recorder.calls)
    assert [len(first), len(second), len(third)] == [1, 2, 3]
    assert first[0][0] == sot
    for prompts, contexts in ((second, (0, 0)), (third, (1, 3, 3))):
        positions = {p.index(sot) for p in prompts}
        assert len(positions) == 1 and all(p[0] == sot_prev for p in prompts)
        keep = positions.pop() - 1
        assert keep == min(len(results[i].tokens) for i in contexts) > 0
        for prompt, previous in zip(prompts, contexts):
            assert prompt[1:1 + keep] == results[previous].tokens[-keep:]

    # one lane: each chunk after the first is prompted with the whole text before it
    recorder.calls.clear()
    results = _decode_all(model, audio, chunks[:3], replace(greedy, batch_size=1), word_timestamps=False)
    assert [len(prompts) for prompts, _ in recorder.calls] == [1, 1, 1]
    assert recorder.calls[1][0][0][1:1 + len(results[0].tokens)] == results[0].tokens
    assert recorder.calls[2][0][0][1:1 + len(results[1].tokens)] == results[1].tokens
    # and without conditioning every prompt is the bare start of transcript
    recorder.calls.clear()
    _decode_all(model, audio, chunks[:3], TranscribeOptions(batch_size=3), condition_on_previous_text=False,
                word_timestamps=False)
    assert all(p[0] == sot for prompts, _ in recorder.calls for p in prompts)
    # a prompt and hotwords lead every window's prompt, before the previous text
    recorder.calls.clear()
    options = TranscribeOptions(batch_size=1, prompt="以下是普通话的句子。", hotwords="物业")
    _decode_all(model, audio, chunks[:2], options, word_timestamps=False)
    fixed = tokenizer.encode(" 以下是普通话的句子。 物业", add_special_tokens=False).ids
    for prompts, _ in recorder.calls:
        assert prompts[0][0] == sot_prev and prompts[0][1:1 + len(fixed)] == fixed


# -- segmentation ---------------------------------------------------------------------

def _words(*spec):
    return [Word(start=s, end=e, word=w) for w, s, e in spec]


def test_split_words_at_pauses_punctuation_and_length():
    # Alignment leaves no gaps: the pause (2.0-3.0 s) is absorbed into "物", which ends
    # after it; the split goes before "物" and its start moves to the pause's end.
    words = _words(("一", 0.5, 1.0), ("二", 1.0, 2.0), ("物", 2.0, 3.4), ("业", 3.4, 3.8))
    segments = split_words(words, pauses=[(2.0, 3.0)])
    assert [(s.start, s.end, s.text) for s in segments] == [(0.5, 2.0, "一二"), (3.0, 3.8, "物业")]
    assert [w.word for w in segments[1].words] == ["物", "业"] and segments[1].words[0].start == 3.0
    # a short pause does not split
    assert len(split_words(words, pauses=[(2.0, 2.1)])) == 1
    # sentence-final punctuation splits
    words = _words(("好。", 0.0, 0.5), ("走", 0.5, 1.0))
    assert [s.text for s in split_words(words, pauses=[])] == ["好。", "走"]
    # nothing longer than max_segment_s
    words = _words(*[("字", 0.5 * i, 0.5 * i + 0.5) for i in range(40)])
    segments = split_words(words, pauses=[], max_segment_s=5.0)
    assert all(s.end - s.start <= 5.0 + 1e-9 for s in segments)
    assert "".join(s.text for s in segments) == "字" * 40


def test_missed_speech_finds_skipped_sentences_between_words():
    speech = SpeechMap(chunks=[(0.0, 20.0)], speech=[(0.2, 2.0), (2.5, 6.0), (6.4, 9.0), (9.5, 10.0)])
    # the decoder wrote the first and the third sentence: the second (2.5-6.0) is missed,
    # whether the alignment shows a gap or a word that absorbs it (starts at 2.1, ends at 6.8)
    for second_word_start, missed in ((6.4, (2.0, 6.4)), (2.1, (2.0, 5.8))):
        words = _words(("一", 0.2, 1.0), ("二", 1.0, 2.0), ("三", second_word_start, 6.8), ("四", 6.8, 7.6),
                       ("五", 7.6, 8.4), ("六", 8.4, 9.0), ("七", 9.5, 10.0))
        assert missed_speech(words, (0.0, 10.5), speech) == [missed]
    # half a second of speech after the last word is not enough to decode again
    words = _words(*[(str(i), 0.2 + 0.8 * i, 1.0 + 0.8 * i) for i in range(11)])  # 0.2-9.0, no gap
    assert missed_speech(words, (0.0, 10.5), speech) == []
    # nothing written at all: the whole chunk
    assert missed_speech([], (0.0, 10.5), speech) == [(0.0, 10.5)]
    assert speech.pauses == [(2.0, 2.5), (6.0, 6.4), (9.0, 9.5)]


# -- real whisper-base ---------------------------------------------------------------

@pytest.mark.slow
def test_base_ct2_int8_transcribes_real_mandarin(whisper_base_ct2, zh_cv_mini):
    """Accuracy as a corpus CER over a dozen clips of Chinese characters, with a wide
    margin: whisper-base scores about 0.15 on them (0.13 on all 44 such clips of the test
    split, bench/ and ``whisper-zh evaluate`` measure it); 0.5 is a broken decoder, not
    a few characters more or less from another CPU's int8 arithmetic."""
    clips = _clips(zh_cv_mini, 12, plain=True)
    backend = CT2Backend(str(whisper_base_ct2), encoder="ct2")

    # one clip at a time: the per-clip texts score against the sentences
    hypotheses = []
    for audio, _ in clips:
        segments = list(backend.iter_segments(audio, TranscribeOptions()))
        _check_segments(segments, len(audio) / SAMPLE_RATE)
        hypotheses.append("".join(s.text for s in segments))
    score = cer([ref for _, ref in clips], hypotheses)
    assert score < 0.5, (score, hypotheses)

    # a joined recording, batched (VAD chunks) and sequential
    clips = clips[:8]
    audio = _joined(clips)
    duration = len(audio) / SAMPLE_RATE
    speech = speech_chunks(audio, 30.0)
    chunks = speech.chunks
    assert len(chunks) >= 2 and len(speech.pauses) >= len(clips) - 1
    assert all(0 < end - start <= 30.0 for start, end in chunks)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(chunks, chunks[1:]))
    assert chunks[0][0] < 1.0 and chunks[-1][1] > duration - len(clips[-1][0]) / SAMPLE_RATE
    reference = "".join(ref for _, ref in clips)
    for batch_size in (8, 1):
        segments = list(backend.iter_segments(audio, TranscribeOptions(batch_size=batch_size)))
        _check_segments(segments, duration)
        score = cer([reference], ["".join(s.text for s in segments)])
        assert score < 0.5, (batch_size, score)
        # phrases, not whole 30 s chunks: subtitles need them
        assert len(segments) >= len(clips) // 2, segments
        assert max(s.end - s.start for s in segments) <= 15.0


@pytest.mark.slow
def test_transcriber_ct2_backend_has_the_transformers_format(whisper_base, whisper_base_ct2, zh_cv_mini, tmp_path):
    """Both backends give the same kind of result; what they write is only checked to be
    Chinese (accuracy is the test above's, and bench/'s)."""
    import whisper_zh

    model_dir = _copy_model(whisper_base, tmp_path / "base")
    (model_dir / "ct2").symlink_to(whisper_base_ct2, target_is_directory=True)  # base/ct2, where the engine looks
    clips = _clips(zh_cv_mini, 4, plain=True)
    audio = _joined(clips)

    results = {}
    for backend in ("ct2", "transformers"):
        engine = whisper_zh.Transcriber(str(model_dir), backend=backend, device="cpu")
        assert engine.backend.name == backend
        results[backend] = engine.transcribe(audio)
    assert whisper_zh.Transcriber(str(model_dir), backend="auto", device="cpu").backend.name == "ct2"

    ct2_result, hf_result = results["ct2"], results["transformers"]
    assert type(ct2_result) is type(hf_result)
    assert ct2_result.backend == "ct2" and hf_result.backend == "transformers"
    duration = len(audio) / SAMPLE_RATE
    for result in (ct2_result, hf_result):
        assert result.duration == pytest.approx(duration)
        assert result.segments and all(type(s) is whisper_zh.Segment for s in result.segments)
        starts = [s.start for s in result.segments]
        assert starts == sorted(starts)
        assert all(0.0 <= s.start <= s.end <= duration + 1e-6 and s.text for s in result.segments)
        assert is_chinese(result.text), result.text
        # both write the default script (Simplified): no Traditional-only characters left
        assert result.text == to_simplified(result.text)
    # the ct2 engine's segments carry their words, converted to the script asked for
    assert all(s.words and "".join(w.word for w in s.words).strip() == s.text for s in ct2_result.segments)


@pytest.mark.slow
def test_hotwords_fix_a_name_without_hurting_other_clips(whisper_base_ct2, zh_cv_mini):
    """With the film title 精武陈真 as hotwords, whisper-base writes it (zero-shot it
    writes something like 金武纯真; whether it happens to get it right without them is not
    this test's business), and clips that do not contain it do not get worse: a corpus
    CER over 16 other clips, with a margin of 0.1 (about 20 characters)."""
    from whisper_zh.serve.engine import Transcriber

    rows = plain_clips(zh_cv_mini, 50)
    target = next(r for r in rows if r["sentence"] == "精武陈真")
    others = [r for r in rows if r is not target][:16]
    clips = [load_audio(zh_cv_mini / "clips" / r["path"]) for r in [target, *others]]
    engine = Transcriber(str(whisper_base_ct2), backend="ct2", device="cpu")
    plain = engine.decode_clips(clips)
    hot = engine.decode_clips(clips, TranscribeOptions(hotwords="精武 陈真"))
    assert "精武" in hot[0] and "陈真" in hot[0], (plain[0], hot[0])
    references = [r["sentence"] for r in others]
    plain_cer, hot_cer = cer(references, plain[1:]), cer(references, hot[1:])
    print(f"\nCER of {len(others)} other clips: {plain_cer:.3f} without hotwords, {hot_cer:.3f} with")
    assert hot_cer <= plain_cer + 0.1, (plain_cer, hot_cer)


def test_the_model_is_loaded_in_a_thread_that_ends_with_the_load(tmp_path, monkeypatch):
    """The OpenMP team libgomp keeps for the thread that loads a CTranslate2 model lives as
    long as that thread: left in the caller's, it halved the decoder's speed on 2 cores
    (bench/README.md). The load's errors still reach the caller."""
    import threading

    import faster_whisper

    from whisper_zh.serve.ct2_backend import load_ct2

    (tmp_path / "model.bin").write_bytes(b"")
    loaders = []

    class Recorder:
        def __init__(self, model_dir, **kwargs):
            if kwargs["compute_type"] == "broken":
                raise ValueError("not a model")
            loaders.append(threading.current_thread())
            self.kwargs = kwargs

    monkeypatch.setattr(faster_whisper, "WhisperModel", Recorder)
    model = load_ct2(str(tmp_path), device="cuda:1", compute_type="int8")
    assert model.kwargs == {"device": "cuda", "device_index": 1, "compute_type": "int8", "local_files_only": True}
    assert loaders[0] is not threading.current_thread() and not loaders[0].is_alive()
    with pytest.raises(ValueError, match="not a model"):
        load_ct2(str(tmp_path), compute_type="broken")


LONG_PROMPT = "以下是普通话的句子，" * 60  # ~600 tokens: past half of the decoder's 448 positions


def test_a_long_prompt_keeps_its_end_and_the_hotwords_on_both_backends(tiny_whisper, tiny_ct2):
    """Half the decoder's context at most (openai/whisper's rule), its last tokens: the
    hotwords, which come after the prompt, stay. The transformers backend failed on such a
    prompt (decoder_input_ids longer than the model's 448 positions)."""
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.types import prompt_window

    options = TranscribeOptions(batch_size=1, prompt=LONG_PROMPT, hotwords="物业 陈真", temperatures=(0.0,),
                                logprob_threshold=None, no_speech_threshold=None, compression_ratio_threshold=None)
    audio = np.random.default_rng(2).normal(0, 0.1, 4 * SAMPLE_RATE).astype(np.float32)

    model = load_ct2(str(tiny_ct2))
    model.model = recorder = _RecordingGenerate(model.model)
    tokenizer = model.hf_tokenizer
    everything = tokenizer.encode(" " + options.prompt_text, add_special_tokens=False).ids
    assert len(everything) > 448
    _decode_all(model, audio, [(0.0, 4.0)], options, word_timestamps=False)
    (prompts, _), = recorder.calls
    fixed = prompts[0][1:prompts[0].index(tokenizer.token_to_id("<|startoftranscript|>"))]
    assert fixed == everything[-223:] == prompt_window(everything, 448)
    assert tokenizer.decode(fixed).endswith("物业 陈真")

    engine = Transcriber(str(tiny_whisper), backend="transformers", device="cpu")
    original = engine.backend.model.generate
    seen = []

    def spy(input_features, **kwargs):
        seen.append(kwargs["prompt_ids"].tolist())
        kwargs["max_new_tokens"] = 8  # random weights would otherwise ramble to the limit
        return original(input_features, **kwargs)

    engine.backend.model.generate = spy
    list(engine.iter_segments(audio, options))
    assert seen and all(ids[1:] == everything[-223:] and len(ids) == 224 for ids in seen)
