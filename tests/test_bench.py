"""bench/transcribe.py's report: what it says of the engine against faster-whisper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
