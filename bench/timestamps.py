"""Does fine-tuning keep Whisper's timestamps? whisper-base zero-shot against the same
fine-tune with every label ``<|notimestamps|>`` (``--timestamp-fraction 0``), with half
the clips labelled ``<|start|> text <|end|>`` one clip at a time (``--timestamp-window-s
0``), with the default: half the clips labelled with timestamps and joined into
windows of up to 30 s, a segment per clip, and with that plus half the examples
conditioned on the text before them (``--prompt-fraction 0.5``), as the engine's ct2
lanes condition each chunk at inference.

Every fine-tune runs the project's pipeline (:func:`whisper_zh.train.train`) on zh-cv-mini
train with the same seed, steps, batch and learning rate (decoder only, as
``bench/finetune_cpu.py``). Each model then transcribes one recording made of every
zh-multi-dev clip (dev and test: 67 clips, ~50 voices none of which were trained on,
joined with 0.3 s pauses: ``bench/transcribe.py``'s ``multi`` recording) three ways:

* the engine's transformers backend (the app's GPU path), whose segments are the
  timestamp tokens the model predicts in each 30 s window;
* faster-whisper's sequential ``transcribe`` on the model's CTranslate2 int8 export
  (what a user of the ``ct2/`` folder a fine-tune publishes gets), which also moves
  from window to window by the predicted timestamps;
* the engine's ct2 backend (the app's CPU path), which decodes without timestamps and
  times words by alignment: the control, whose segments do not depend on them.

Reported per model and decoder: segments; the share of usable segments (start before
end, not before the previous segment's end, inside the recording, shorter than 30 s);
median and longest segment; how far segment starts and ends are from where their words
were spoken (each reference character is placed in its clip's speech, spread evenly;
each segment's characters are aligned to the reference; the error of a start is the
segment's start less its first character's start, of an end its end less its last
character's end: median of the absolute errors, and the share within 0.5 s); sentences
lost (clips that got no text); CER of the whole recording.

Fine-tuned models are kept in ``--work-dir`` and reused by a later run with the same
settings and the same training code (``--fresh`` trains again).

    python bench/timestamps.py                   # 4 fine-tunes of 200 steps (~25-35 min each on 2 idle cores)
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from transcribe import MULTI_DATA, build_recording, measure, prepare_model_dir, systems  # noqa: E402
from whisper_zh.audio import CHUNK_LENGTH, SAMPLE_RATE  # noqa: E402

DEFAULT_TRAIN_DATA = first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0]
DEFAULT_MODEL = PROCESSOR_CANDIDATES[0]
IN_SYNC_S = 0.5
# bench/transcribe.py's system names -> how this table names them
DECODERS = {
    "whisper-zh engine, transformers": "engine transformers (timestamp tokens)",
    "faster-whisper int8 sequential (defaults": "faster-whisper sequential on ct2/ (timestamp tokens)",
    "whisper-zh engine, ct2 int8 (defaults": "engine ct2 (word alignment, control)",
}


def segment_stats(segments, duration: float) -> dict:
    """Counts and lengths of a transcript's ``(start, end, text)`` segments; usable =
    monotone, inside the audio, shorter than Whisper's window."""
    usable, previous_end = 0, 0.0
    for start, end, _ in segments:
        ok = (0.0 <= start < end <= duration + 0.01 and end - start < CHUNK_LENGTH
              and start >= previous_end - 0.01)
        usable += ok
        previous_end = max(previous_end, end)
    lengths = [end - start for start, end, _ in segments]
    return {
        "segments": len(segments),
        "usable_share": usable / len(segments) if segments else 0.0,
        "median_s": statistics.median(lengths) if lengths else 0.0,
        "longest_s": max(lengths, default=0.0),
    }


def reference_timeline(recording) -> tuple[str, list[float], list[float]]:
    """The recording's normalised reference text and each character's start and end:
    each clip's characters spread evenly over its speech (:func:`whisper_zh.features.speech_span`)."""
    from whisper_zh.train.examples import speech_span
    from whisper_zh.text import normalize

    text, starts, ends = [], [], []
    for (first, last), sentence in zip(recording.spans, recording.sentences):
        begin, end = speech_span(recording.audio[first:last])
        chars = normalize(sentence, "zh")
        offset, step = first / SAMPLE_RATE + begin, (end - begin) / max(1, len(chars))
        for k, char in enumerate(chars):
            text.append(char)
            starts.append(offset + k * step)
            ends.append(offset + (k + 1) * step)
    return "".join(text), starts, ends


def timing_errors(segments, timeline) -> dict:
    """How far segment starts and ends are from where their characters were spoken."""
    from rapidfuzz.distance import Levenshtein

    from whisper_zh.text import normalize

    reference, ref_starts, ref_ends = timeline
    hypothesis, owner = [], []
    for index, (_, _, text) in enumerate(segments):
        for char in normalize(text, "zh"):
            hypothesis.append(char)
            owner.append(index)
    # each hypothesis character -> the reference character it was aligned to (kept or substituted)
    aligned: list = [None] * len(hypothesis)
    for tag, h1, h2, r1, r2 in Levenshtein.opcodes("".join(hypothesis), reference):
        if tag in ("equal", "replace"):
            for k in range(h2 - h1):
                aligned[h1 + k] = r1 + min(k, r2 - r1 - 1)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for index, ref in zip(owner, aligned):
        if ref is not None:
            first.setdefault(index, ref)
            last[index] = ref
    start_errors = [abs(segments[i][0] - ref_starts[r]) for i, r in first.items()]
    end_errors = [abs(segments[i][1] - ref_ends[r]) for i, r in last.items()]
    both = start_errors + end_errors
    return {
        "start_error_median_s": statistics.median(start_errors) if start_errors else None,
        "end_error_median_s": statistics.median(end_errors) if end_errors else None,
        "in_sync_share": sum(e <= IN_SYNC_S for e in both) / len(both) if both else 0.0,
        "segments_aligned": len(first),
    }


def decode(model_dir: str, recording, timeline, work: Path) -> list[dict]:
    """The recording through each of :data:`DECODERS`, scored."""
    rows = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        model, export_s = prepare_model_dir(model_dir, Path(tmp), "cpu")
        for name, load in systems(model, "cpu", with_pipeline=False):
            label = next((label for key, label in DECODERS.items() if name.startswith(key)), None)
            if label is None:
                continue
            row = measure(load(), recording, keep_segments=True)
            segments = row.pop("segments")
            rows.append({"decoder": label, "system": name, **segment_stats(segments, recording.seconds),
                         **timing_errors(segments, timeline), **row,
                         "segments_list": [{"start": s, "end": e, "text": t} for s, e, t in segments]})
            print(f"  {label}: {len(segments)} segments, CER {row['cer']:.3f}", flush=True)
    return rows


def training_code_digest() -> str:
    """What a fine-tune depends on besides its settings: the pipeline's own code."""
    import hashlib

    digest = hashlib.sha1()
    for name in ("config.py", "data.py", "features.py", "train.py"):
        digest.update((ROOT / "whisper_zh" / name).read_bytes())
    return digest.hexdigest()[:12]


def fine_tune(args, fraction: float, window_s: float, prompt: float = 0.0) -> tuple[str, dict]:
    """The fine-tuned model's directory and its training numbers; a model already trained
    with the same settings in ``args.work_dir`` is reused."""
    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.pipeline import train

    key = {"code": training_code_digest(),
           "model": args.model, "train_data": args.train_data, "steps": args.steps, "batch_size": args.batch_size,
           "learning_rate": args.lr, "seed": args.seed, "timestamp_fraction": fraction,
           "timestamp_window_s": window_s if fraction else None, "prompt_fraction": prompt, "freeze_encoder": True}
    output_dir = os.path.join(args.work_dir, f"model-ts{fraction:g}" + (f"-w{window_s:g}" if fraction else "")
                              + (f"-p{prompt:g}" if prompt else ""))
    record = os.path.join(output_dir, "bench_training.json")
    if os.path.isfile(record):
        with open(record) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            print(f"  reusing {output_dir}", flush=True)
            return output_dir, saved["training"]
    shutil.rmtree(output_dir, ignore_errors=True)
    config = TrainConfig(
        dataset=args.train_data, model_name_or_path=args.model, cache_dir=os.path.join(args.work_dir, "cache"),
        output_dir=output_dir, train_split="train", eval_split="", test_split="",
        max_steps=args.steps, max_epochs=0, save_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, freeze_encoder=True, precision="fp32", logging_steps=max(1, min(8, args.steps // 4)),
        resume=False, timestamp_fraction=fraction, timestamp_window_s=window_s, prompt_fraction=prompt,
        ct2_quantization="", seed=args.seed)
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    training = {
        "steps": result.global_step, "train_seconds": seconds, "seconds_per_step": seconds / max(1, result.global_step),
        "load_avg_after_training": os.getloadavg()[0],
        "loss_curve": [(h["step"], h["loss"]) for h in result.log_history if "loss" in h],
    }
    with open(record, "w") as f:
        json.dump({"key": key, "training": training}, f, indent=2)
    return output_dir, training


def markdown(report: dict) -> str:
    lines = [f"{report['recording_minutes']:.1f} min recording ({report['clips']} zh-multi-dev clips, ~50 voices), "
             f"whisper-base, {report['steps']} steps x {report['batch_size']} examples, lr {report['learning_rate']:g}, "
             f"decoder only, on zh-cv-mini train; {report['cpu']}, {report['cpu_count']} cores ({report['date']})"]
    for decoder in DECODERS.values():
        lines += ["", f"**{decoder}**", "",
                  "| model | segments | usable | median s | longest s | start error s | end error s "
                  f"| within {IN_SYNC_S:g} s | sentences lost | CER |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for model in report["models"]:
            row = next((r for r in model["decoders"] if r["decoder"] == decoder), None)
            if row is None:
                continue
            fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {model['name']} | {row['segments']} | {100 * row['usable_share']:.0f}% | "
                         f"{row['median_s']:.1f} | {row['longest_s']:.1f} | {fmt(row['start_error_median_s'])} | "
                         f"{fmt(row['end_error_median_s'])} | {100 * row['in_sync_share']:.0f}% | "
                         f"{row['sentences_lost']} | {row['cer']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", default=DEFAULT_TRAIN_DATA, help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--test-data", default=str(MULTI_DATA), help="zh-multi-dev (Common Voice layout)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="real whisper-base directory")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "bench-timestamps"),
                        help="cache and fine-tuned models (reused by a run with the same settings)")
    parser.add_argument("--fresh", action="store_true", help="delete --work-dir first")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", nargs="+", default=None, metavar="FRACTION[:WINDOW_S[:PROMPT]]",
                        help="fine-tunes to compare: timestamp_fraction, timestamp_window_s (default: "
                             "TrainConfig's), prompt_fraction (default 0). Default: 0, the default fraction "
                             "with window 0, the TrainConfig defaults, and those with prompt_fraction 0.5")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/timestamps-<host>.json)")
    args = parser.parse_args(argv)

    import logging

    import torch

    from whisper_zh.train.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in (args.train_data, args.test_data, args.model):
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}")
    if args.fresh:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir, exist_ok=True)
    default = (TrainConfig.timestamp_fraction, TrainConfig.timestamp_window_s, TrainConfig.prompt_fraction)
    if args.variants is None:
        variants = [(0.0, 0.0, 0.0), (default[0], 0.0, 0.0), default, (default[0], default[1], 0.5)]
    else:
        variants = []
        for v in args.variants:
            parts = [float(x) for x in v.split(":")]
            variants.append(tuple(parts + list(default[len(parts):])))
    recording = build_recording("multi", Path(args.test_data), ("dev", "test"), None)
    timeline = reference_timeline(recording)
    report = {
        "benchmark": "timestamps", "host": socket.gethostname(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_start": os.getloadavg()[0],
        "model": args.model, "train_data": args.train_data, "test_data": args.test_data,
        "clips": len(recording.sentences), "recording_minutes": recording.seconds / 60, "steps": args.steps,
        "batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed, "freeze_encoder": True,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": [],
    }
    out = args.out or str(HERE / "results" / f"timestamps-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save():
        report["markdown"] = markdown(report)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)

    work = Path(args.work_dir)
    print("whisper-base zero-shot", flush=True)
    report["models"].append({"name": "zero-shot", "decoders": decode(args.model, recording, timeline, work)})
    save()
    for fraction, window_s, prompt in variants:
        if not fraction:
            name = "fine-tuned, no timestamp labels"
        elif not window_s:
            name = f"fine-tuned, {100 * fraction:.0f}% timestamped, one clip each"
        else:
            name = f"fine-tuned, {100 * fraction:.0f}% timestamped, windows of {window_s:g} s"
        if prompt:
            name += f", {100 * prompt:.0f}% after the previous text"
        if (fraction, window_s, prompt) == default:
            name += " (default)"
        print(name, flush=True)
        model_dir, training = fine_tune(args, fraction, window_s, prompt)
        report["models"].append({"name": name, "timestamp_fraction": fraction, "timestamp_window_s": window_s,
                                 "prompt_fraction": prompt, **training,
                                 "decoders": decode(model_dir, recording, timeline, work)})
        save()
        print(markdown(report), flush=True)
    report["load_avg_end"] = os.getloadavg()[0]
    save()
    print(markdown(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
