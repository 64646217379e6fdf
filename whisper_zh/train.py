"""Training: a prepared dataset -> a fine-tuned Whisper, checkpointed, resumable, on the Hub.

The pipeline (:func:`train`) reads top to bottom like transformers'
``run_speech_recognition_seq2seq.py``: prepare the data (once, cached), load the model
and processor, derive the schedule and precision from the data and the hardware, build
a ``Seq2SeqTrainer``, resume from the newest complete checkpoint (local, else the Hub's
``last-checkpoint``), train, keep the checkpoint best on the eval split, score the test
split, write a model card and push.

The same command runs data-parallel under ``accelerate launch`` or ``torchrun``: the
Trainer does the distribution; preparation runs on the main process first and the
others read its cache.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from whisper_zh.config import TrainConfig
from whisper_zh.data import LabelEncoder, PrepareOptions, open_source, prepare_split
from whisper_zh.features import SpeechCollator, log_mel_spectrogram, mel_filters_of
from whisper_zh.text import error_rates, uses_cer

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CONFIG_NAME = "whisper_zh_config.json"


# --------------------------------------------------------------------------------------
# Hardware-derived settings
# --------------------------------------------------------------------------------------


def resolve_precision(precision: str = "auto") -> str:
    """"bf16" where the GPU has it natively (Ampere and later), "fp16" on older GPUs
    (the T4), "fp32" on the CPU. An explicit choice is returned unchanged."""
    if precision != "auto":
        if precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, not {precision!r}")
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def resolve_gradient_checkpointing(choice: Optional[bool]) -> bool:
    """On by default where GPU memory is short (under 24 GB: a 16 GB T4), off elsewhere:
    it saves activation memory at ~30% more compute per step."""
    if choice is not None:
        return choice
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_properties(0).total_memory < 24 * 2**30


@dataclass
class Schedule:
    max_steps: int
    save_steps: int
    eval_steps: int
    warmup_steps: int
    global_batch_size: int


def resolve_schedule(config: TrainConfig, n_train: int, world_size: int = 1) -> Schedule:
    """Steps, intervals and warmup for ``n_train`` training clips.

    ``max_steps`` (1600) is capped at ``max_epochs`` passes over the data, so a small
    dataset is not trained into the ground; checkpoints and evaluations come every 400
    steps, or four times in a shorter run; warmup is 500 steps, at most a tenth of the run.
    """
    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size
    max_steps = config.max_steps
    if config.max_epochs and n_train:
        max_steps = min(max_steps, max(1, math.ceil(config.max_epochs * n_train / global_batch)))
    save_steps = config.save_steps or min(400, max(1, max_steps // 4))
    eval_steps = config.eval_steps or save_steps
    if config.eval_split and save_steps % eval_steps:
        raise ValueError(f"save_steps ({save_steps}) must be a multiple of eval_steps ({eval_steps}) "
                         "so that every checkpoint has a score to rank it by")
    warmup = config.warmup_steps if config.warmup_steps is not None else min(500, max_steps // 10)
    return Schedule(max_steps, save_steps, eval_steps, warmup, global_batch)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def load_model_and_processor(model_name_or_path: str, language: str = "zh", task: str = "transcribe",
                             dtype: torch.dtype = torch.float32):
    """A Whisper (Hub id or local directory) with SDPA attention, set up to transcribe
    ``language`` through its ``generation_config`` (not the legacy forced_decoder_ids)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_name_or_path)
    processor.tokenizer.set_prefix_tokens(language=language, task=task)
    model = WhisperForConditionalGeneration.from_pretrained(
        model_name_or_path, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.language = language
    model.generation_config.task = task
    model.generation_config.forced_decoder_ids = None
    model.config.forced_decoder_ids = None
    return model, processor


def _trainer_class():
    from transformers import Seq2SeqTrainer

    class WhisperTrainer(Seq2SeqTrainer):
        """Seq2SeqTrainer whose batches carry waveforms: log-mel is computed here, on the
        model's device, batched, instead of being stored (see :mod:`whisper_zh.features`)."""

        def __init__(self, *args, mel_filters: torch.Tensor, **kwargs):
            super().__init__(*args, **kwargs)
            self.mel_filters = mel_filters

        def _prepare_inputs(self, inputs):
            inputs = super()._prepare_inputs(inputs)
            if "input_audio" in inputs:
                audio = inputs.pop("input_audio")
                self.mel_filters = self.mel_filters.to(audio.device)
                features = log_mel_spectrogram(audio, self.mel_filters)
                inputs["input_features"] = features.to(self.model.dtype)
            return inputs

    return WhisperTrainer


def make_compute_metrics(tokenizer, language: str):
    """``compute_metrics`` for ``predict_with_generate``: CER and WER after normalisation."""
    import numpy as np

    def compute_metrics(prediction) -> dict:
        pred_ids = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        label_ids = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(pred_ids, skip_special_tokens=True)
        references = tokenizer.batch_decode(label_ids, skip_special_tokens=True)
        rates = error_rates(references, hypotheses, language)
        return {"cer": rates["cer"], "wer": rates["wer"]}

    return compute_metrics


def _throughput_callback():
    from transformers import TrainerCallback

    class ThroughputCallback(TrainerCallback):
        """Adds ``samples_per_second`` since the previous log line to each training log."""

        def __init__(self, global_batch_size: int):
            self.global_batch_size = global_batch_size
            self._last = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            now = (time.perf_counter(), state.global_step)
            if logs is not None and "loss" in logs and self._last and now[1] > self._last[1]:
                logs["samples_per_second"] = round(
                    (now[1] - self._last[1]) * self.global_batch_size / (now[0] - self._last[0]), 2)
            self._last = now

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = (time.perf_counter(), state.global_step)

    return ThroughputCallback


# --------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------


def is_complete_checkpoint(path: str) -> bool:
    """True when the Trainer finished writing ``path``: its ``trainer_state.json`` (written
    last) parses and names this step, and the weights, optimizer and scheduler files are
    whole (their headers and central directories read back)."""
    match = CHECKPOINT_RE.match(os.path.basename(path.rstrip("/")))
    state_file = os.path.join(path, "trainer_state.json")
    if not match or not os.path.isfile(state_file):
        return False
    try:
        with open(state_file) as f:
            if json.load(f).get("global_step") != int(match.group(1)):
                return False
        weights = glob.glob(os.path.join(path, "model*.safetensors"))
        if not weights:
            return False
        for w in weights:
            from safetensors import safe_open

            with safe_open(w, "pt") as handle:
                handle.keys()
            _check_safetensors_size(w)
        import zipfile

        for name in ("optimizer.pt", "scheduler.pt"):
            with zipfile.ZipFile(os.path.join(path, name)) as z:
                z.namelist()
    except Exception:
        return False
    return True


def _check_safetensors_size(path: str) -> None:
    """safe_open reads only the header: check the data it describes is all there."""
    import struct

    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if os.path.getsize(path) < 8 + header_len + end:
        raise ValueError(f"{path} is truncated")


def find_resumable_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None.

    Incomplete ones (a run killed while saving) are moved aside to
    ``_incomplete-checkpoint-N`` so the Trainer never loads or rotates them (and, by the
    leading underscore, never pushes them with the output directory)."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(name))
    )
    for _, name in reversed(found):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        aside = os.path.join(output_dir, "_incomplete-" + name)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        print(f"skipping {path}: incomplete (the run stopped while saving it); moved to {aside}", flush=True)
    return None


def fetch_hub_checkpoint(repo_id: str, output_dir: str) -> Optional[str]:
    """Download the Hub repo's ``last-checkpoint/`` (pushed by ``hub_strategy="checkpoint"``)
    into ``output_dir/checkpoint-N``; None when the repo or the folder does not exist."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    tmp = os.path.join(output_dir, "_hub-download")  # "_*" is never pushed with the output dir
    try:
        snapshot_download(repo_id, allow_patterns=["last-checkpoint/*"], local_dir=tmp)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    source = os.path.join(tmp, "last-checkpoint")
    state_file = os.path.join(source, "trainer_state.json")
    if not os.path.isfile(state_file):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    with open(state_file) as f:
        step = json.load(f)["global_step"]
    target = os.path.join(output_dir, f"checkpoint-{step}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(source, target)
    shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete_checkpoint(target):
        print(f"the Hub's last-checkpoint of {repo_id} is incomplete; starting afresh", flush=True)
        return None
    print(f"downloaded {repo_id}/last-checkpoint (step {step}) to {target}", flush=True)
    return target


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    train: object
    eval: Optional[object]
    test: Optional[object]
    stats: dict = field(default_factory=dict)  # split -> PrepareStats


def prepare_data(config: TrainConfig, splits: Optional[list[str]] = None, verbose: bool = True) -> PreparedData:
    """Prepare (or reuse) the train, eval and test splits named in ``config``.

    The eval split is cut to ``eval_max_samples`` clips (a fixed random subset), so
    evaluation during training stays cheap; the test split is used whole."""
    source = open_source(config.dataset, config.dataset_config)
    labels = LabelEncoder(config.model_name_or_path, config.language, config.task)
    opts = PrepareOptions(
        language=config.language, task=config.task, audio_column=config.audio_column,
        text_column=config.text_column, max_duration_s=config.max_duration_s,
        max_label_tokens=config.max_label_tokens, streaming=config.streaming,
        num_workers=config.preprocessing_num_workers, shard_size=config.prepare_shard_size,
    )
    wanted = {"train": config.train_split, "eval": config.eval_split, "test": config.test_split}
    if splits is not None:
        wanted = {k: v for k, v in wanted.items() if k in splits}
    result = PreparedData(train=None, eval=None, test=None)
    for role, split in wanted.items():
        if not split:
            continue
        role_opts = opts
        if role == "train" and config.max_train_samples:
            role_opts = PrepareOptions(**{**opts.__dict__, "max_samples": config.max_train_samples})
        dataset, stats = prepare_split(source, split, config.cache_dir, labels, role_opts, config.extract_dir)
        if role == "eval" and len(dataset) > config.eval_max_samples:
            dataset = dataset.shuffle(seed=config.seed).select(range(config.eval_max_samples))
        setattr(result, role, dataset)
        result.stats[split] = stats
        if verbose:
            print(stats.summary(f"{role} ({split})"), flush=True)
    return result


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    best_checkpoint: Optional[str]
    eval_cer: Optional[float]
    test_metrics: dict
    resumed_from: Optional[str]
    log_history: list
    is_main_process: bool = True


def build_training_arguments(config: TrainConfig, schedule: Schedule, precision: str,
                             gradient_checkpointing: bool):
    from transformers import Seq2SeqTrainingArguments

    has_eval = bool(config.eval_split)
    workers = config.dataloader_num_workers
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    return Seq2SeqTrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size or config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=schedule.warmup_steps,
        weight_decay=config.weight_decay,
        max_steps=schedule.max_steps,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        torch_compile=config.torch_compile,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=schedule.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=schedule.save_steps,
        save_total_limit=2,  # the best and the newest: a whisper-small checkpoint is ~3 GB on Drive
        load_best_model_at_end=has_eval,
        metric_for_best_model="cer" if has_eval else None,
        greater_is_better=False if has_eval else None,
        predict_with_generate=True,
        generation_max_length=config.generation_max_length,
        logging_steps=config.logging_steps,
        report_to=[] if config.report_to in ("none", "") else config.report_to.split(","),
        remove_unused_columns=False,  # the collator needs "audio", which the model does not take
        label_names=["labels"],
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=config.seed,
        # Without a GPU, torchrun's processes only join up (over gloo) in use_cpu mode.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        push_to_hub=bool(config.hub_model_id),
        hub_model_id=config.hub_model_id,
        hub_strategy="checkpoint",
        hub_private_repo=config.hub_private_repo,
    )


def train(config: TrainConfig) -> TrainResult:
    """Run the whole pipeline for ``config``; safe to run again after any interruption."""
    from accelerate import PartialState

    # cpu=True on GPU-less machines: accelerate then also sets up torchrun's processes (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    # Preparation writes the cache once; the other processes of a multi-GPU run wait and read it.
    with state.main_process_first():
        data = prepare_data(config, verbose=state.is_main_process)
    if data.train is None or len(data.train) == 0:
        raise SystemExit("no training clips left after preparation: check the dataset and its split names")

    model, processor = load_model_and_processor(config.model_name_or_path, config.language, config.task)
    precision = resolve_precision(config.precision)
    checkpointing = resolve_gradient_checkpointing(config.gradient_checkpointing)
    schedule = resolve_schedule(config, len(data.train), state.num_processes)
    if state.is_main_process:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        print(f"model {config.model_name_or_path} on {device} x{state.num_processes}: {precision}, "
              f"gradient checkpointing {'on' if checkpointing else 'off'}; {schedule.max_steps} steps of "
              f"{schedule.global_batch_size} clips, checkpoint every {schedule.save_steps}, "
              f"warmup {schedule.warmup_steps}", flush=True)
    if checkpointing:
        model.config.use_cache = False
    if config.freeze_encoder:
        model.freeze_encoder()

    args = build_training_arguments(config, schedule, precision, checkpointing)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=SpeechCollator(model.config.decoder_start_token_id),
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer, config.language),
        callbacks=[_throughput_callback()(schedule.global_batch_size)],
        mel_filters=mel_filters_of(processor.feature_extractor),
    )

    resumed_from = None
    if config.resume:
        # The main process looks first (and fetches from the Hub); the others then find what it left.
        with state.main_process_first():
            resumed_from = find_resumable_checkpoint(config.output_dir)
            if resumed_from is None and config.hub_model_id and state.is_main_process:
                resumed_from = fetch_hub_checkpoint(config.hub_model_id, config.output_dir)
        if resumed_from and state.is_main_process:
            print(f"resuming from {resumed_from}", flush=True)
    trainer.train(resume_from_checkpoint=resumed_from)

    # With load_best_model_at_end the model in hand is now the checkpoint best on eval CER.
    trainer.save_model(config.output_dir)
    test_metrics = {}
    if data.test is not None and len(data.test):
        test_metrics = trainer.evaluate(eval_dataset=data.test, metric_key_prefix="test")
    best_cer = trainer.state.best_metric
    if trainer.is_world_process_zero():
        processor.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, CONFIG_NAME), "w") as f:
            json.dump(config.to_dict(), f, indent=2, ensure_ascii=False)
        write_model_card(config, trainer, data, test_metrics, precision)
        if config.hub_model_id:
            push_final_model(trainer, config)
    return TrainResult(
        output_dir=config.output_dir,
        global_step=trainer.state.global_step,
        best_checkpoint=trainer.state.best_model_checkpoint,
        eval_cer=best_cer,
        test_metrics=test_metrics,
        resumed_from=resumed_from,
        log_history=trainer.state.log_history,
        is_main_process=trainer.is_world_process_zero(),
    )


def write_model_card(config: TrainConfig, trainer, data: PreparedData, test_metrics: dict, precision: str) -> str:
    """README.md for the Hub: language, dataset, base model, CER, steps, hardware."""
    metric = "cer" if uses_cer(config.language) else "wer"
    test_value = test_metrics.get(f"test_{metric}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    n_gpus = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    source = os.path.basename(config.dataset.rstrip("/")) if os.path.exists(
        os.path.expanduser(config.dataset)) else config.dataset
    counts = {split: s.kept for split, s in data.stats.items()}
    results = ""
    if test_value is not None:
        results = (
            "model-index:\n"
            f"- name: {config.hub_model_id or os.path.basename(config.output_dir)}\n"
            "  results:\n"
            "  - task: {type: automatic-speech-recognition, name: Speech Recognition}\n"
            f"    dataset: {{name: {json.dumps(source)}, type: {json.dumps(source)}, split: {config.test_split}}}\n"
            f"    metrics:\n    - {{type: {metric}, value: {100 * test_value:.2f}, name: {metric.upper()}}}\n"
        )
    card = f"""---
language: {config.language}
license: apache-2.0
base_model: {config.model_name_or_path}
library_name: transformers
pipeline_tag: automatic-speech-recognition
tags: [whisper, whisper-zh, automatic-speech-recognition]
metrics: [{metric}]
{results}---

# {os.path.basename(config.output_dir.rstrip('/'))}

[{config.model_name_or_path}](https://huggingface.co/{config.model_name_or_path}) fine-tuned for
`{config.language}` speech recognition with [whisper-zh](https://github.com/whisper-zh/whisper-zh) on `{source}`.

| | |
|---|---|
| test split | `{config.test_split}` ({counts.get(config.test_split, 0)} clips) |
| test {metric.upper()} | {f'{100 * test_value:.2f}%' if test_value is not None else 'not measured'} |
| best eval {metric.upper()} (`{config.eval_split}`) | {f'{100 * trainer.state.best_metric:.2f}%' if trainer.state.best_metric is not None else 'n/a'} |
| training clips | {counts.get(config.train_split, 0)} (`{config.train_split}`) |
| steps | {trainer.state.global_step} of batch {trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size} |
| learning rate | {config.learning_rate} |
| precision | {precision} |
| hardware | {n_gpus} x {device} |

{metric.upper()} is computed after normalising both sides: Traditional to Simplified (OpenCC),
punctuation and spaces removed, full-width to half-width, lower case.

## Use

```python
from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model="{config.hub_model_id or config.output_dir}")
print(asr("audio.mp3", generate_kwargs={{"language": "{config.language}", "task": "{config.task}"}})["text"])
```
"""
    path = os.path.join(config.output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path


def push_final_model(trainer, config: TrainConfig) -> None:
    """Upload the final model, processor and card (checkpoints went up during training).
    The token comes from HF_TOKEN or the huggingface_hub login and is never written."""
    from huggingface_hub import HfApi

    finish = getattr(trainer, "_finish_current_push", None)
    if finish:  # the last checkpoint upload must land before the final commit
        finish()
    HfApi().upload_folder(
        repo_id=config.hub_model_id,
        folder_path=config.output_dir,
        commit_message=f"whisper-zh: final model after {trainer.state.global_step} steps",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "_*", "_*/**", "runs/**", "last-checkpoint/**"],
    )
    print(f"pushed to https://huggingface.co/{config.hub_model_id}", flush=True)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_config(argv: list[str], prog: str = "whisper-zh train") -> TrainConfig:
    """Command-line arguments (or a single .json file) -> :class:`TrainConfig`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainConfig, prog=prog)
    if len(argv) == 1 and argv[0].endswith(".json"):
        (config,) = parser.parse_json_file(argv[0])
    else:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    if not config.dataset:
        parser.error("--dataset is required: a Common Voice release folder or .tar.gz, "
                     "a local datasets directory, or a Hub dataset id")
    return config


def main(argv: list[str]) -> int:
    from whisper_zh.data import DataError

    config = parse_config(argv)
    try:
        result = train(config)
    except DataError as err:
        print(f"whisper-zh train: {err}", file=sys.stderr)
        return 2
    if not result.is_main_process:
        return 0
    summary = {"global_step": result.global_step, "best_checkpoint": result.best_checkpoint,
               "eval_cer": result.eval_cer, **{k: v for k, v in result.test_metrics.items()
                                               if k in ("test_cer", "test_wer")}}
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0


def prepare_main(argv: list[str]) -> int:
    """``whisper-zh prepare``: the data stage alone (e.g. on a CPU machine before renting a GPU)."""
    from whisper_zh.data import DataError

    config = parse_config(argv, prog="whisper-zh prepare")
    try:
        prepare_data(config)
    except DataError as err:
        print(f"whisper-zh prepare: {err}", file=sys.stderr)
        return 2
    return 0
