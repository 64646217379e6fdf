"""CPU fine-tune of the real whisper-base on zh-cv-mini: does the test CER go down?

Scores the model zero-shot on the test split (50 clips, greedy, :func:`whisper_zh.evaluate.evaluate`),
fine-tunes it with the project's own pipeline (:func:`whisper_zh.train.train`: the prepared
cache, ``SpeechCollator``, log-mel in the Trainer, the project's schedule) on the train
split, then scores the fine-tuned model on the same test clips the same way.

Defaults fit a 2-core CPU in about half an hour: decoder-only training
(``freeze_encoder``: ~3x cheaper steps), batch 8, a short run at a high learning rate,
no evaluation during training. Prints a before/after table and writes
``bench/results/finetune_cpu-<host>.json``.

    python bench/finetune_cpu.py                       # defaults below
    python bench/finetune_cpu.py --steps 1 --test-clips 4   # smoke run (a few minutes)

Units: CER as a fraction of reference characters (printed in %), times in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _machine import cpu_name  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "zh-cv-mini")
DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "whisper-zh", "whisper-base")




def score(model_dir: str, dataset, batch_size: int) -> dict:
    """Test CER of the model in ``model_dir`` (the engine's transformers backend, fp32, CPU,
    greedy) -> dict with cer, seconds, rows."""
    from whisper_zh.train.evaluate import evaluate
    from whisper_zh.serve.types import TranscribeOptions
    from whisper_zh.serve.engine import Transcriber

    transcriber = Transcriber(model_dir, backend="transformers", device="cpu")
    result = evaluate(transcriber, dataset, TranscribeOptions(batch_size=batch_size))
    print(f"  {result.summary()}", flush=True)
    return {"cer": result.error_rate, "n_clips": result.n_clips, "seconds": result.seconds,
            "rows": [vars(c) for c in result.clips]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="real whisper-base directory (build with ../shared/tools/make_whisper_base.py)")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "bench-finetune-cpu"),
                        help="cache and checkpoints (deleted first)")
    parser.add_argument("--steps", type=int, default=32, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step")
    parser.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (linear decay)")
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default: a tenth of the run)")
    parser.add_argument("--train-encoder", action="store_true", help="train the encoder too (~3x slower)")
    parser.add_argument("--test-clips", type=int, default=None, help="score only the first N test clips")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/finetune_cpu-<host>.json)")
    args = parser.parse_args(argv)

    import torch

    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.data import prepare_data
    from whisper_zh.train.pipeline import train

    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.path.isdir(args.data):
        raise SystemExit(f"no data at {args.data}: pass --data")
    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        raise SystemExit(f"no whisper-base at {args.model}: python ../shared/tools/make_whisper_base.py {args.model}")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    started = time.perf_counter()

    config = TrainConfig(
        dataset=args.data, model_name_or_path=args.model, cache_dir=os.path.join(args.work_dir, "cache"),
        output_dir=os.path.join(args.work_dir, "model"), train_split="train", eval_split="", test_split="test",
        max_steps=args.steps, max_epochs=0, save_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup, freeze_encoder=not args.train_encoder,
        precision="fp32", logging_steps=max(1, min(10, args.steps // 6)), resume=False,
    )
    test = prepare_data(config, splits=["test"]).test
    if args.test_clips:
        test = test.select(range(min(args.test_clips, len(test))))

    print(f"zero-shot {args.model} on {len(test)} test clips", flush=True)
    before = score(args.model, test, args.eval_batch_size)

    # Train only: the test split is scored below by the same function as before.
    train_config = TrainConfig(**{**config.to_dict(), "test_split": ""})
    t0 = time.perf_counter()
    result = train(train_config)
    train_seconds = time.perf_counter() - t0
    losses = [(h["step"], h["loss"]) for h in result.log_history if "loss" in h]

    print(f"fine-tuned ({result.global_step} steps) on {len(test)} test clips", flush=True)
    after = score(config.output_dir, test, args.eval_batch_size)
    total = time.perf_counter() - started

    train_clips = sum(s.kept for k, s in prepare_data(config, splits=["train"], verbose=False).stats.items())
    report = {
        "benchmark": "finetune_cpu",
        "host": socket.gethostname(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": args.model, "data": args.data, "train_clips": train_clips, "test_clips": len(test),
        "steps": result.global_step, "batch_size": args.batch_size, "learning_rate": args.lr,
        "freeze_encoder": not args.train_encoder, "precision": "fp32",
        "cer_before": before["cer"], "cer_after": after["cer"],
        "train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, result.global_step),
        "eval_seconds_before": before["seconds"], "eval_seconds_after": after["seconds"], "total_seconds": total,
        "loss_curve": losses,
        "clips": [{"path": b["path"], "reference": b["reference"], "before": b["hypothesis"], "cer_before": b["error_rate"],
                   "after": a["hypothesis"], "cer_after": a["error_rate"]} for b, a in zip(before["rows"], after["rows"])],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print()
    print("| model | test clips | CER |")
    print("|---|---|---|")
    print(f"| whisper-base zero-shot | {len(test)} | {100 * before['cer']:.2f}% |")
    print(f"| + {result.global_step} steps x {args.batch_size} clips, lr {args.lr:g}, "
          f"{'decoder only' if not args.train_encoder else 'full'} | {len(test)} | "
          f"{100 * after['cer']:.2f}% |")
    print(f"\ntraining {train_seconds:.0f} s ({report['seconds_per_step']:.1f} s/step), total {total:.0f} s "
          f"on {report['cpu']} ({os.cpu_count()} cores)")
    out = args.out or os.path.join(HERE, "results", f"finetune_cpu-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
