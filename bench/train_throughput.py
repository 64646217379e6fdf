"""Training throughput: the project's training path against the Hugging Face blog recipe.

Every configuration runs the real ``Seq2SeqTrainer`` on real clips (zh-cv-mini's train
split, repeated so that no epoch ends inside the timed steps) for ``--warmup`` untimed
steps (torch.compile, cuDNN autotuning, worker start-up) and then ``--steps`` timed ones:

* ``blog``: the HF blog recipe (see ``bench/blog_recipe.py``): log-mel precomputed with
  ``WhisperFeatureExtractor`` in ``datasets.map`` and stored, the blog's collator,
  fp16, batch 16, gradient checkpointing, eager attention, default data loader;
* ``t4``: the project's T4 profile: its prepared cache (compressed clips + label ids),
  ``SpeechCollator``, log-mel computed on the device in the project's Trainer, and
  ``build_training_arguments`` (its data-loader settings): fp16, batch 16, SDPA,
  gradient checkpointing;
* ``fast``: the project's GPU-optimised profile, same path: bf16, batch 64, SDPA, no
  checkpointing, torch.compile, the project's default data-loader workers.

Reported per configuration: samples/s (training examples, each one 30 s encoder input,
per second of wall time over the timed steps), clips/s (the blog's samples are single
clips; the project's examples join its timestamped clips into windows of up to 30 s, so
one holds more than one clip on average), audio s/s (seconds of speech trained on per
second: clips/s x the mean clip duration of the training set), peak GPU memory (GiB,
``torch.cuda.max_memory_allocated`` over the whole run) and data wait (the share of the timed wall time between one step's end,
after ``torch.cuda.synchronize()``, and the next step's start: the time the device waited
for the data loader). Each configuration runs in its own process.

The model is an architecture with random weights (throughput does not depend on the
values): ``small`` (whisper-small: d_model 768, 12+12 layers, 12 heads, FFN 3072,
vocab 51865, 80 mels), ``base`` or ``tiny``, or a model directory. On a GPU the
default is ``small``; on a CPU it is ``tiny`` in fp32 for a few steps, so the script runs
anywhere in minutes (fp16/bf16 and torch.compile are GPU settings and are off there).

    python bench/train_throughput.py                        # this machine's defaults
    python bench/train_throughput.py --stage                # bundle data + tokenizer into
                                                            # outputs/bench-gpu/ for a GPU machine
    python bench/train_throughput.py --profiles fast --steps 50

Prints a markdown table and writes ``bench/results/train_throughput-<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from whisper_zh.train.data import dir_bytes  # noqa: E402
from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, STAGE_DIR, cpu_name, first_existing  # noqa: E402

ARCHITECTURES = {  # WhisperConfig fields; vocab, mels and special tokens come from the processor's config
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128),
}

PROFILES = {
    "blog": dict(name="HF blog recipe (precomputed log-mel)",
                 precision="fp16", batch=16, checkpointing=True, attention="eager", compile=False),
    "t4": dict(name="whisper-zh T4 profile (on-device log-mel)",
               precision="fp16", batch=16, checkpointing=True, attention="sdpa", compile=False),
    "fast": dict(name="whisper-zh GPU profile (on-device log-mel)",
                 precision="bf16", batch=64, checkpointing=False, attention="sdpa", compile=True),
}


def effective_profile(name: str, args, cuda: bool) -> dict:
    """``PROFILES[name]`` as it runs here: fp32 and no torch.compile on a CPU (fp16/bf16
    autocast and compilation are GPU settings), ``--compile`` and ``--batch-size`` applied."""
    profile = dict(PROFILES[name])
    if not cuda:
        profile.update(precision="fp32")
    if args.compile != "auto":
        profile["compile"] = args.compile == "on"
    elif not cuda:
        profile["compile"] = False
    if args.batch_size:
        profile["batch"] = args.batch_size
    return profile


def describe(profile: dict) -> str:
    """``name: precision, batch N, [grad. checkpointing, ]attention[, torch.compile]``."""
    parts = [profile["precision"], f"batch {profile['batch']}"]
    if profile["checkpointing"]:
        parts.append("grad. checkpointing")
    parts.append(profile["attention"].upper() if profile["attention"] == "sdpa" else profile["attention"])
    if profile["compile"]:
        parts.append("torch.compile")
    return f"{profile['name']}: {', '.join(parts)}"






def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------


def build_random_model(arch: str, processor_from: str, out_dir: str) -> str:
    """Write a randomly initialised Whisper of architecture ``arch`` with the tokenizer,
    feature extractor, special tokens and generation config of ``processor_from``."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    if os.path.exists(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    if arch == "tiny":
        from whisper_zh.testing import make_tiny_whisper

        return make_tiny_whisper(out_dir, processor_from)
    config = WhisperConfig.from_pretrained(processor_from)
    for key, value in ARCHITECTURES[arch].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(processor_from)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    WhisperProcessor.from_pretrained(processor_from).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def repeat(dataset, n_samples: int):
    """``dataset`` concatenated with itself until it holds at least ``n_samples`` rows."""
    import datasets

    k = max(1, math.ceil(n_samples / len(dataset)))
    return datasets.concatenate_datasets([dataset] * k) if k > 1 else dataset


def step_timer(warmup: int, cuda: bool):
    """A TrainerCallback recording each step's start and end (after a device sync) and
    stopping checkpoint saves (the benchmark times training, not writing)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begins, self.ends = [], []

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(self._now())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(self._now())
            control.should_save = False
            control.should_evaluate = False

        def window(self, steps: int) -> tuple[float, float]:
            """(wall seconds, data-wait seconds) of the ``steps`` steps after the warm-up."""
            if len(self.ends) < warmup + steps:
                raise RuntimeError(f"only {len(self.ends)} steps ran, {warmup + steps} expected")
            start, end = self.ends[warmup - 1], self.ends[warmup + steps - 1]
            wait = sum(self.begins[i] - self.ends[i - 1] for i in range(warmup, warmup + steps))
            return end - start, wait

    return StepTimer()


# --------------------------------------------------------------------------------------
# One configuration (runs in a child process)
# --------------------------------------------------------------------------------------


def run_profile(name: str, args) -> dict:
    import torch

    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.data import prepare_data

    cuda = torch.cuda.is_available()
    profile = effective_profile(name, args, cuda)
    batch = profile["batch"]
    total_steps = args.warmup + args.steps
    work = args.work_dir

    # The project's prepared cache of the same clips (also gives the durations for audio s/s).
    config = TrainConfig(
        dataset=args.data, model_name_or_path=args.model_dir, cache_dir=os.path.join(work, "cache"),
        output_dir=os.path.join(work, f"run-{name}"), eval_split="", test_split="",
        max_steps=total_steps, max_epochs=0, save_steps=total_steps, warmup_steps=0,
        per_device_train_batch_size=batch, precision=profile["precision"],
        gradient_checkpointing=profile["checkpointing"], torch_compile=profile["compile"],
        dataloader_num_workers=args.workers if name == "fast" else None,
        logging_steps=10 ** 6, report_to="none", resume=False,
    )
    prepared = prepare_data(config, splits=["train"], verbose=False).train
    mean_duration = float(sum(prepared["duration"])) / len(prepared)
    timer = step_timer(args.warmup, cuda)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    if name == "blog":
        trainer, clips_per_sample = blog_trainer(args, profile, total_steps, timer, cuda), 1.0
    else:
        trainer = project_trainer(config, prepared, total_steps, timer)
        clips_per_sample = len(trainer.train_dataset.clips) / len(trainer.train_dataset)
    trainer.train()
    seconds, wait = timer.window(args.steps)
    samples = args.steps * batch
    clips = samples * clips_per_sample
    result = {
        "profile": name, "label": describe(profile), "precision": profile["precision"], "batch": batch,
        "gradient_checkpointing": profile["checkpointing"], "attention": profile["attention"],
        "torch_compile": profile["compile"], "dataloader_num_workers": trainer.args.dataloader_num_workers,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "seconds": seconds,
        "samples_per_second": samples / seconds, "clips_per_sample": clips_per_sample,
        "clips_per_second": clips / seconds, "audio_seconds_per_second": clips * mean_duration / seconds,
        "mean_clip_seconds": mean_duration, "data_wait_seconds": wait, "data_wait_share": wait / seconds,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
        "step_seconds": [e - b for b, e in zip(timer.begins, timer.ends)],
    }
    del trainer
    gc.collect()
    return result


def project_trainer(config, prepared, total_steps: int, timer):
    """The Trainer exactly as :func:`whisper_zh.train.train` builds it (the same training
    examples: timestamped clips joined into windows), on the repeated cache."""
    from whisper_zh.train.examples import mel_filters_of
    from whisper_zh.train.trainer import (WhisperTrainer, build_training_arguments, load_model_and_processor, make_collator, plan_training, training_examples)

    needed = total_steps * config.per_device_train_batch_size
    copies = math.ceil(needed / len(training_examples(config, prepared))) + 1  # +1: windows may join at the seams
    train_set = training_examples(config, repeat(prepared, copies * len(prepared)))
    model, processor = load_model_and_processor(config.model_name_or_path, config.language, config.task)
    plan = plan_training(config, len(train_set))
    if plan.gradient_checkpointing:
        model.config.use_cache = False
    args = build_training_arguments(config, plan.schedule, plan.precision, plan.gradient_checkpointing)
    return WhisperTrainer(
        model=model, args=args, train_dataset=train_set,
        data_collator=make_collator(model, processor),
        processing_class=processor, callbacks=[timer],
        mel_filters=mel_filters_of(processor.feature_extractor),
    )


def blog_trainer(args, profile: dict, total_steps: int, timer, cuda: bool):
    """The blog's Trainer on log-mel features precomputed (once, cached in the work dir)."""
    import datasets
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration,
                              WhisperProcessor)

    from blog_recipe import DataCollatorSpeechSeq2SeqWithPadding, precompute_log_mel

    processor = WhisperProcessor.from_pretrained(args.model_dir)
    processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe")
    features_dir = os.path.join(args.work_dir, "blog-log-mel-train")
    if os.path.exists(os.path.join(features_dir, "dataset_info.json")):
        features = datasets.load_from_disk(features_dir)
    else:
        features, _ = precompute_log_mel(args.data, "train", processor, features_dir,
                                         num_proc=min(4, os.cpu_count() or 1))
    train_set = repeat(features, total_steps * profile["batch"])
    model = WhisperForConditionalGeneration.from_pretrained(args.model_dir, attn_implementation=profile["attention"])
    model.generation_config.language = "zh"
    model.generation_config.task = "transcribe"
    model.generation_config.forced_decoder_ids = None
    training_args = Seq2SeqTrainingArguments(
        output_dir=os.path.join(args.work_dir, "run-blog"),
        per_device_train_batch_size=profile["batch"],
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        warmup_steps=0,
        max_steps=total_steps,
        gradient_checkpointing=profile["checkpointing"],
        fp16=profile["precision"] == "fp16",
        bf16=profile["precision"] == "bf16",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10 ** 6,
        report_to=[],
        predict_with_generate=True,
        generation_max_length=225,
    )
    return Seq2SeqTrainer(
        args=training_args, model=model, train_dataset=train_set,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id),
        processing_class=processor.feature_extractor, callbacks=[timer],
    )


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def stage(args) -> int:
    """Copy zh-cv-mini and the processor files into ``outputs/bench-gpu`` (git-ignored, ~20 MB)
    so that ``run`` can carry them to a GPU machine, which has no ``../shared``."""
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    os.makedirs(STAGE_DIR, exist_ok=True)
    data_out = os.path.join(STAGE_DIR, "zh-cv-mini")
    if os.path.abspath(args.data) != os.path.abspath(data_out):
        shutil.rmtree(data_out, ignore_errors=True)
        shutil.copytree(args.data, data_out)
    proc_out = os.path.join(STAGE_DIR, "processor")
    if os.path.abspath(args.processor_from) != os.path.abspath(proc_out):
        shutil.rmtree(proc_out, ignore_errors=True)
        WhisperProcessor.from_pretrained(args.processor_from).save_pretrained(proc_out)
        WhisperConfig.from_pretrained(args.processor_from).save_pretrained(proc_out)
        GenerationConfig.from_pretrained(args.processor_from).save_pretrained(proc_out)
    size = dir_bytes(STAGE_DIR)
    print(f"staged {STAGE_DIR} ({size / 2**20:.1f} MiB): carry 'outputs/bench-gpu' to the GPU machine")
    return 0


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def print_table(report: dict) -> None:
    base = next((r for r in report["results"] if r["profile"] == "blog"), None)
    print(f"\n{report['model']} on {report['device']} ({report['cpu']}, {report['cpu_count']} cores); "
          f"{report['timed_steps']} timed steps after {report['warmup_steps']} warm-up\n")
    print("| configuration | samples/s | clips/s | audio s/s | peak GPU GiB | data wait | vs blog |")
    print("|---|---|---|---|---|---|---|")
    for r in report["results"]:
        if "error" in r:
            print(f"| {r.get('label', r['profile'])} | failed: {r['error'][:80]} | | | | | |")
            continue
        ratio = f"{r['samples_per_second'] / base['samples_per_second']:.1f}x" if base and "error" not in base else ""
        label = r["label"] + (f", {r['dataloader_num_workers']} loader workers" if r["profile"] != "blog" else "")
        rate = r["samples_per_second"]
        print(f"| {label} | {rate:.1f} | " if rate >= 10 else f"| {label} | {rate:.2f} | ", end="")
        print(f"{r.get('clips_per_second', rate):.2f} | {r['audio_seconds_per_second']:.1f} | "
              f"{fmt(r['peak_gpu_gib'], '.1f')} | {100 * r['data_wait_share']:.0f}% | {ratio} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=first_existing(DATA_CANDIDATES),
                        help="zh-cv-mini in Common Voice layout (default ../shared/data/zh-cv-mini, "
                             "else outputs/bench-gpu/zh-cv-mini)")
    parser.add_argument("--processor-from", default=first_existing(PROCESSOR_CANDIDATES) or "openai/whisper-small",
                        help="tokenizer/feature extractor/special tokens: a Whisper directory or Hub id")
    parser.add_argument("--model", default=None,
                        help="small, base, tiny (random weights) or a model directory "
                             "(default: small on a GPU, tiny on a CPU)")
    parser.add_argument("--profiles", default="blog,t4,fast", help="comma-separated: blog, t4, fast")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on GPU, 1 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every profile's batch")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loader workers of the fast profile (default: the project's)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile in the fast profile (auto: on a GPU only)")
    parser.add_argument("--work-dir", default=None, help="models, caches (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/train_throughput-<device>.json)")
    parser.add_argument("--stage", action="store_true", help="bundle data + processor into outputs/bench-gpu and exit")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not args.data or not os.path.isdir(args.data):
        raise SystemExit("no zh-cv-mini found: pass --data DIR (or run --stage where ../shared exists)")
    if args.stage:
        return stage(args)

    import torch

    cuda = torch.cuda.is_available()
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup or (10 if cuda else 1)

    if args.child:  # one configuration, in its own process
        result = run_profile(args.child, args)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return 0

    model = args.model or ("small" if cuda else "tiny")
    own_work = args.work_dir is None
    work = args.work_dir or tempfile.mkdtemp(prefix="whisper-zh-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        model_dir = (build_random_model(model, args.processor_from, os.path.join(work, f"model-{model}"))
                     if model in ARCHITECTURES else model)
        results = []
        for name in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            if name not in PROFILES:
                raise SystemExit(f"unknown profile {name!r}: choose from {', '.join(PROFILES)}")
            part = os.path.join(work, f"result-{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", part,
                   "--model-dir", model_dir, "--data", args.data, "--processor-from", args.processor_from,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--work-dir", work,
                   "--compile", args.compile]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            print(f"== {name}: {describe(effective_profile(name, args, cuda))}", flush=True)
            started = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode == 0 and os.path.exists(part):
                with open(part) as f:
                    result = json.load(f)
                print(f"   {result['samples_per_second']:.1f} samples/s, data wait "
                      f"{100 * result['data_wait_share']:.0f}% ({time.perf_counter() - started:.0f} s)", flush=True)
            else:
                result = {"profile": name, "label": describe(effective_profile(name, args, cuda)),
                          "error": f"exit {proc.returncode}"}
            results.append(result)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)

    import transformers

    device = device_name()
    report = {
        "benchmark": "train_throughput", "device": device, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "model": model if model in ARCHITECTURES else os.path.basename(model.rstrip("/")),
        "model_random_weights": model in ARCHITECTURES, "data": os.path.basename(args.data.rstrip("/")),
        "warmup_steps": args.warmup, "timed_steps": args.steps,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results,
    }
    print_table(report)
    out = args.out or os.path.join(HERE, "results", f"train_throughput-{slug(device)}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
