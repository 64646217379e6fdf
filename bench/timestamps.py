"""Does fine-tuning keep Whisper's timestamps? whisper-base zero-shot, fine-tuned with every
label ``<|notimestamps|>`` (``--timestamp_fraction 0``), and fine-tuned with the default
mix (``timestamp_fraction`` 0.5: half the labels ``<|0.00|> text <|T|>``).

Both fine-tunes run the project's pipeline (:func:`whisper_zh.train.train`) on zh-cv-mini
train with the same seed, steps, batch and learning rate (decoder only, as
``bench/finetune_cpu.py``). Each model then transcribes one recording made of every
zh-multi-dev clip (dev and test: 67 clips, many voices none of which were trained on,
joined with 0.3 s pauses) with the engine's transformers backend, whose segments come
from the timestamp tokens the model predicts. Reported per model: segments, the share
of usable segments (start before end, not before the previous segment's end, inside
the recording, shorter than 30 s), median and longest segment, CER of the whole
recording.

    python bench/timestamps.py                   # 32 steps per fine-tune (~25 min on 2 idle cores)
    python bench/timestamps.py --steps 2         # smoke run

Prints a markdown table and writes ``bench/results/timestamps-<host>.json``.
Units: seconds; CER as a fraction of reference characters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from transcribe import build_recording  # noqa: E402  (bench/transcribe.py: clips joined with pauses)

DEFAULT_TRAIN_DATA = first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0]
DEFAULT_TEST_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "zh-multi-dev")
DEFAULT_MODEL = PROCESSOR_CANDIDATES[0]
MAX_SEGMENT_S = 30.0


def segment_stats(segments, duration: float) -> dict:
    """Counts and lengths of a transcript's segments; usable = monotone, inside the audio, < 30 s."""
    usable, previous_end = 0, 0.0
    for seg in segments:
        ok = (0.0 <= seg.start < seg.end <= duration + 0.01 and seg.end - seg.start < MAX_SEGMENT_S
              and seg.start >= previous_end - 0.01)
        usable += ok
        previous_end = max(previous_end, seg.end)
    lengths = [seg.end - seg.start for seg in segments]
    return {
        "segments": len(segments),
        "usable_share": usable / len(segments) if segments else 0.0,
        "median_s": statistics.median(lengths) if lengths else 0.0,
        "longest_s": max(lengths, default=0.0),
    }


def transcribe(model_dir: str, audio, sentences: list[str]) -> dict:
    from whisper_zh.text import cer
    from whisper_zh.transcribe import Transcriber

    engine = Transcriber(model_dir, backend="transformers", device="cpu")
    started = time.perf_counter()
    transcript = engine.transcribe(audio)
    seconds = time.perf_counter() - started
    duration = len(audio) / 16000
    return {
        **segment_stats(transcript.segments, duration),
        "cer": cer([" ".join(sentences)], [transcript.text]),
        "transcribe_seconds": seconds,
        "load_avg_after": os.getloadavg()[0],
        "segments_list": [{"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments],
    }


def fine_tune(args, fraction: float, work_dir: str) -> tuple[str, dict]:
    from whisper_zh.config import TrainConfig
    from whisper_zh.train import train

    config = TrainConfig(
        dataset=args.train_data, model_name_or_path=args.model, cache_dir=os.path.join(args.work_dir, "cache"),
        output_dir=work_dir, train_split="train", eval_split="", test_split="",
        max_steps=args.steps, max_epochs=0, save_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, freeze_encoder=True, precision="fp32", logging_steps=max(1, min(8, args.steps // 4)),
        resume=False, timestamp_fraction=fraction, ct2_quantization="", seed=args.seed,
    )
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    return config.output_dir, {
        "timestamp_fraction": fraction, "steps": result.global_step, "train_seconds": seconds,
        "seconds_per_step": seconds / max(1, result.global_step),
        "loss_curve": [(h["step"], h["loss"]) for h in result.log_history if "loss" in h],
    }


def markdown(report: dict) -> str:
    lines = [f"{report['recording_minutes']:.1f} min recording ({report['clips']} zh-multi-dev clips), "
             f"whisper-base, {report['steps']} steps x {report['batch_size']} clips, lr {report['learning_rate']:g}, "
             f"decoder only; {report['cpu']}, {report['cpu_count']} cores ({report['date']})", "",
             "| model | segments | usable | median s | longest s | CER |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['name']} | {row['segments']} | {100 * row['usable_share']:.0f}% | "
                     f"{row['median_s']:.1f} | {row['longest_s']:.1f} | {row['cer']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", default=DEFAULT_TRAIN_DATA, help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--test-data", default=DEFAULT_TEST_DATA, help="zh-multi-dev (Common Voice layout)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="real whisper-base directory")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "bench-timestamps"),
                        help="cache and models (deleted first)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, None],
                        help="timestamp fractions to fine-tune with (default: 0 and the TrainConfig default)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/timestamps-<host>.json)")
    args = parser.parse_args(argv)

    import logging

    import torch

    from whisper_zh.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in (args.train_data, args.test_data, args.model):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    fractions = [TrainConfig.timestamp_fraction if f is None else f for f in args.fractions]
    audio, sentences = build_recording(Path(args.test_data), None)
    report = {
        "benchmark": "timestamps", "host": socket.gethostname(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_start": os.getloadavg()[0],
        "model": args.model, "train_data": args.train_data, "test_data": args.test_data, "clips": len(sentences),
        "recording_minutes": len(audio) / 16000 / 60, "steps": args.steps, "batch_size": args.batch_size,
        "learning_rate": args.lr, "seed": args.seed, "freeze_encoder": True,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": [],
    }
    out = args.out or str(HERE / "results" / f"timestamps-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save():
        with open(out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)

    print("zero-shot", flush=True)
    report["rows"].append({"name": "whisper-base zero-shot", **transcribe(args.model, audio, sentences)})
    save()
    for fraction in fractions:
        print(f"fine-tune, timestamp_fraction {fraction}", flush=True)
        model_dir, training = fine_tune(args, fraction, os.path.join(args.work_dir, f"model-ts{fraction:g}"))
        name = f"fine-tuned, timestamp_fraction {fraction:g}" + (" (default)" if fraction == TrainConfig.timestamp_fraction else "")
        report["rows"].append({"name": name, **training, **transcribe(model_dir, audio, sentences)})
        save()
        print(markdown(report), flush=True)
    report["load_avg_end"] = os.getloadavg()[0]
    save()
    print(markdown(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
