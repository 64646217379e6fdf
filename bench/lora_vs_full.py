"""Does LoRA learn as well here? The real whisper-base fine-tuned on zh-cv-mini train by
the project's pipeline (:func:`whisper_zh.train.train`) with every weight trained and with
LoRA adapters of each ``--ranks`` (``--lora-r``), the same seed, steps, batch and
examples; each model is then scored on zh-multi-dev the way ``bench/timestamps.py`` and
``bench/transcribe.py`` score it: all 67 clips (~50 voices none of which were trained on)
joined with 0.3 s pauses into one recording, transcribed by the engine's ct2 backend at
its defaults from the ``ct2/`` int8 export the run publishes (LoRA runs: the merged
model).

On a CPU both run decoder only by default (``freeze_encoder``: ~3x cheaper steps, and
what 2 cores can do in minutes; LoRA's encoder adapters are then frozen too), so the
comparison is full decoder against LoRA on the decoder's projections;
``--train-encoder`` compares whole models. Learning rates differ by design: LoRA's
adapters start at zero and need a rate ~30-100x a full fine-tune's (``--lr-full``,
``--lr-lora``).

Reported per model: CER of the recording, sentences lost (clips that got no text),
trainable parameters (and their share), seconds per training step, the final training
loss, the 1-minute load average after training (other processes slow steps down).

    python bench/lora_vs_full.py                           # 60 steps x 8, full and LoRA r=32
    python bench/lora_vs_full.py --steps 2 --ranks 8       # smoke run
    python bench/lora_vs_full.py --no-full --no-zero-shot --ranks 32 --lr-lora 1e-4 3e-4   # a sweep

Prints a markdown table and writes ``bench/results/lora_vs_full-<host>.json``.
Units: CER as a fraction of reference characters; seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from transcribe import MULTI_DATA, build_recording, measure, prepare_model_dir  # noqa: E402

DEFAULT_TRAIN_DATA = first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0]
DEFAULT_MODEL = PROCESSOR_CANDIDATES[0]


def score(model_dir: Path, recording) -> dict:
    """The engine's ct2 backend at its defaults on the recording (``model_dir/ct2`` must exist)."""
    from whisper_zh.serve.engine import Transcriber

    # (bench/transcribe.py's own loader still passes the pre-layout TranscribeOptions.max_duration_s)
    transcriber = Transcriber(str(model_dir), backend="ct2", device="cpu")
    row = measure(lambda audio: ((s.start, s.end, s.text) for s in transcriber.iter_segments(audio)), recording)
    print(f"  CER {row['cer']:.3f}, {row['sentences_lost']} sentences lost", flush=True)
    return {k: row[k] for k in ("cer", "cer_digits_as_characters", "sentences_lost", "lost", "wall_s",
                                "loadavg_1min")}


def fine_tune(args, lora_r: int, learning_rate: float) -> tuple[Path, dict]:
    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.pipeline import train

    output_dir = Path(args.work_dir) / (f"lora-r{lora_r}-lr{learning_rate:g}" if lora_r else "full")
    shutil.rmtree(output_dir, ignore_errors=True)
    config = TrainConfig(
        dataset=args.train_data, model_name_or_path=args.model, cache_dir=os.path.join(args.work_dir, "cache"),
        output_dir=str(output_dir), train_split="train", eval_split="", test_split="", zero_shot_eval=False,
        max_steps=args.steps, max_epochs=0, save_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=learning_rate, lora_r=lora_r,
        freeze_encoder=not args.train_encoder, precision="fp32", logging_steps=max(1, min(10, args.steps // 6)),
        resume=False, seed=args.seed, ct2_quantization="int8")
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    losses = [(h["step"], h["loss"]) for h in result.log_history if "loss" in h]
    # the Trainer's own runtime: the steps, without preparation, loading and the ct2 export
    runtime = next((h["train_runtime"] for h in result.log_history if "train_runtime" in h), seconds)
    return output_dir, {
        "lora_r": lora_r, "learning_rate": config.learning_rate, "steps": result.global_step,
        "trainable_parameters": result.parameters.trainable, "total_parameters": result.parameters.total,
        "trainable_share": result.parameters.share, "train_seconds": round(seconds, 1),
        "seconds_per_step": round(runtime / max(1, result.global_step), 2),
        "final_loss": losses[-1][1] if losses else None, "loss_curve": losses,
        "load_avg_after_training": round(os.getloadavg()[0], 2),
    }


def markdown(report: dict) -> str:
    lines = [f"{report['recording_minutes']:.1f} min recording ({report['clips']} zh-multi-dev clips, ~50 voices), "
             f"engine ct2 int8 defaults; whisper-base, {report['steps']} steps x {report['batch_size']} examples on "
             f"zh-cv-mini train, {'whole model' if report['train_encoder'] else 'decoder only'}, seed "
             f"{report['seed']}; {report['cpu']}, {report['cpu_count']} cores ({report['date']})", "",
             "| model | lr | trainable parameters | CER | sentences lost | s/step | final loss | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        trained = "–" if m.get("trainable_parameters") is None else \
            f"{m['trainable_parameters'] / 1e6:.2f} M ({100 * m['trainable_share']:.2f}%)"
        fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {m['name']} | {fmt(m.get('learning_rate'), 'g')} | {trained} | {m['cer']:.3f} | "
                     f"{m['sentences_lost']} | {fmt(m.get('seconds_per_step'), '.1f')} | "
                     f"{fmt(m.get('final_loss'), '.3f')} | {fmt(m.get('load_avg_after_training'), '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", default=DEFAULT_TRAIN_DATA, help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--test-data", default=str(MULTI_DATA), help="zh-multi-dev (Common Voice layout)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="real whisper-base directory")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "bench-lora"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr-full", type=float, default=3e-5, help="as bench/timestamps.py")
    parser.add_argument("--lr-lora", type=float, nargs="+", default=[1e-3],
                        help="LoRA learning rates to compare (each with each of --ranks)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[32], help="LoRA ranks to compare")
    parser.add_argument("--no-full", action="store_true", help="skip the full fine-tune")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip scoring the base model")
    parser.add_argument("--train-encoder", action="store_true", help="train the encoder too (~3x slower steps)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/lora_vs_full-<host>.json)")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in (args.train_data, args.test_data, args.model):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}")
    os.makedirs(args.work_dir, exist_ok=True)
    recording = build_recording("multi", Path(args.test_data), ("dev", "test"), None)
    report = {
        "benchmark": "lora_vs_full", "host": socket.gethostname(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_start": os.getloadavg()[0],
        "model": args.model, "train_data": args.train_data, "test_data": args.test_data,
        "clips": len(recording.sentences), "recording_minutes": recording.seconds / 60, "steps": args.steps,
        "batch_size": args.batch_size, "train_encoder": args.train_encoder, "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": [],
    }
    out = args.out or str(HERE / "results" / f"lora_vs_full-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save():
        report["markdown"] = markdown(report)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)

    if not args.no_zero_shot:
        print("whisper-base zero-shot", flush=True)
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            model_dir, _ = prepare_model_dir(args.model, Path(tmp), "cpu")
            report["models"].append({"name": "zero-shot", **score(model_dir, recording)})
        save()
    runs = ([] if args.no_full else [(0, args.lr_full)]) + [(r, lr) for r in args.ranks for lr in args.lr_lora]
    for lora_r, learning_rate in runs:
        name = f"LoRA r={lora_r}, alpha {2 * lora_r}" if lora_r else "full fine-tune"
        print(name, f"lr {learning_rate:g}", flush=True)
        model_dir, training = fine_tune(args, lora_r, learning_rate)
        report["models"].append({"name": name, **training, **score(model_dir, recording)})
        save()
        print(markdown(report), flush=True)
    report["load_avg_end"] = os.getloadavg()[0]
    save()
    print(markdown(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
