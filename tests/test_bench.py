"""bench/transcribe.py's report: what it says of the engine against faster-whisper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    if "bench_transcribe" not in sys.modules:  # its dataclasses look their module up there
        spec = importlib.util.spec_from_file_location("bench_transcribe", REPO / "bench" / "transcribe.py")
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["bench_transcribe"]


def _row(system: str, wall_s: float) -> dict:
    return {"system": system, "recording": "multi", "wall_s": wall_s, "cpu_s": wall_s, "first_segment_s": 1.0,
            "x_realtime": 400 / wall_s, "cer": 0.17, "cer_digits_as_characters": 0.16, "sentences_lost": 0,
            "clips_lost": 0, "loadavg_1min": [1.0, 1.0], "steal_s": 0.0}


def test_the_report_says_how_many_times_faster_the_engine_is_than_each_sequential_beam_5_row():
    bench = _bench()
    rows = [
        _row("whisper-zh engine, ct2 int8 (8 lanes, greedy)", 8.0),
        _row("whisper-zh engine, ct2 int8 (defaults: 8 lanes, beam 5)", 10.0),
        _row("faster-whisper int8 sequential (defaults: beam 5)", 40.0),
        _row("faster-whisper int8 sequential (beam 5, cpu_threads=1)", 25.0),
        _row("faster-whisper int8 sequential (greedy)", 12.0),
        _row("faster-whisper int8 BatchedInferencePipeline (defaults: batch 8, beam 5)", 9.0),
    ]
    line = bench._speedups(rows)[-1]
    assert line == ("engine (ct2 defaults) against faster-whisper sequential: 4.00× faster than "
                    "(defaults: beam 5); 2.50× faster than (beam 5, cpu_threads=1)")
    assert bench._speedups(rows[2:]) == [] and bench._speedups(rows[:2]) == []

    result = {"machine": {"cpu_model": "test CPU", "cpu_count": 2}, "model": "whisper-base", "device": "cpu",
              "date": "2026-12-02", "recordings": {"multi": {"audio_s": 400.0, "clips": 67}}, "rows": rows}
    assert line in bench.markdown(result)


@pytest.fixture
def profile_undone(monkeypatch):
    """What :meth:`CallProfile.install` replaces, put back after the test."""
    import faster_whisper

    from whisper_zh.serve import bf16_encoder, ct2_backend, transformers_backend

    monkeypatch.setattr(faster_whisper.WhisperModel, "__init__", faster_whisper.WhisperModel.__init__)
    monkeypatch.setattr(bf16_encoder.BF16Encoder, "__call__", bf16_encoder.BF16Encoder.__call__)
    for module in (ct2_backend, transformers_backend):
        monkeypatch.setattr(module, "speech_chunks", module.speech_chunks)
        monkeypatch.setattr(module, "complete", module.complete)
    return _bench().CallProfile()


def test_the_profile_counts_each_phase_and_the_windows_encoded_and_is_reported_per_system(monkeypatch,
                                                                                        profile_undone):
    import faster_whisper

    bench = _bench()

    class Model:  # stands in for CTranslate2's Whisper
        is_multilingual = True

        def encode(self, features):
            return "encoded"

        def generate(self, encoded, prompts):
            return ["text"] * len(prompts)

        def align(self, *args):
            raise RuntimeError("a failed call is timed too")

    class Loaded:
        def __init__(self, *args, **kwargs):
            self.model = Model()

    class Features:
        shape = (3, 80, 3000)

    monkeypatch.setattr(faster_whisper, "WhisperModel", Loaded)
    profile = profile_undone
    profile.install()
    profile.install()  # a second install wraps nothing twice
    model = faster_whisper.WhisperModel("any").model
    assert model.encode(Features()) == "encoded" and model.generate("encoded", [[1], [2]]) == ["text", "text"]
    with pytest.raises(RuntimeError, match="timed too"):
        model.align()
    assert model.is_multilingual  # everything else reaches the model as it is
    snapshot = profile.snapshot()
    assert snapshot["calls"] == {"vad": 0, "encode": 1, "generate": 1, "align": 1, "completeness": 0}
    assert snapshot["windows_encoded"] == 3  # the batch's windows, not the calls
    profile.reset()
    assert profile.snapshot()["windows_encoded"] == 0 and not any(profile.snapshot()["calls"].values())

    engine = _row("whisper-zh engine, ct2 int8 (defaults: 8 lanes, beam 5)", 10.0)
    engine["profile"] = {"seconds": {"vad": 0.5, "encode": 4.0, "generate": 4.5, "align": 0.7, "completeness": 1.5},
                         "calls": {"vad": 1, "encode": 5, "generate": 5, "align": 5, "completeness": 2},
                         "windows_encoded": 23}
    peer = _row("faster-whisper int8 sequential (defaults: beam 5)", 20.0)
    peer["profile"] = {"seconds": {"vad": 0.0, "encode": 8.0, "generate": 11.5, "align": 0.0, "completeness": 0.0},
                       "calls": {"vad": 0, "encode": 15, "generate": 15, "align": 0, "completeness": 0},
                       "windows_encoded": 15}
    unprofiled = _row("faster-whisper int8 sequential (beam 5, cpu_threads=1)", 30.0)
    table = bench._profile_table([engine, peer, unprofiled])
    assert table[-2] == ("| whisper-zh engine, ct2 int8 (defaults: 8 lanes, beam 5) | 10.0 | 0.50 | 4.00 (23) "
                         "| 4.50 (5) | 0.70 (5) | 1.50 (2) |")
    assert table[-1] == "| faster-whisper int8 sequential (defaults: beam 5) | 20.0 | – | 8.00 (15) | 11.50 (15) | – | – |"
    assert len(table) == 5  # the header, its rule, a row for each profiled system
    assert bench._profile_table([unprofiled]) == []


def test_profile_and_interleave_are_refused_together():
    with pytest.raises(SystemExit):
        _bench().main(["--profile", "--interleave"])


def test_the_profile_wraps_the_models_the_engine_loads_and_times_its_phases(profile_undone, whisper_base_ct2,
                                                                             zh_cv_mini):
    from _ct2_base import joined

    from whisper_zh.media import load_audio
    from whisper_zh.serve import ct2_backend
    from whisper_zh.serve.types import TranscribeOptions

    profile = profile_undone
    profile.install()

    backend = ct2_backend.CT2Backend(str(whisper_base_ct2))
    clips, seconds = [], 0.0
    for path in sorted((zh_cv_mini / "clips").glob("*.mp3")):
        clips.append(load_audio(path))
        seconds += len(clips[-1]) / 16000 + 0.5
        if seconds > 40:  # two chunks of speech, decoded in one step
            break
    list(backend.iter_segments(joined(clips), TranscribeOptions()))
    seen = profile.snapshot()
    assert seen["calls"]["vad"] == 1
    # the first encode call held both chunks: windows are counted, not calls
    assert seen["windows_encoded"] >= seen["calls"]["encode"] + 1
    assert seen["calls"]["generate"] >= 1 and seen["calls"]["align"] >= 1
    assert all(seen["seconds"][phase] > 0 for phase in ("vad", "encode", "generate", "align"))


def test_the_machine_helper_imports_without_site_packages(tmp_path):
    """bench/install.py measures installs from nothing, so its helper (which asks
    whisper_zh.cpu for the CPU's flags) must import under an interpreter with no
    site-packages: the checkout's package, standard library only."""
    import subprocess

    code = "import sys; sys.path.insert(0, sys.argv[1]); import _machine; print(_machine.cpu_name())"
    done = subprocess.run([sys.executable, "-S", "-c", code, str(REPO / "bench")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)  # not the checkout: -c puts the working directory on sys.path
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
