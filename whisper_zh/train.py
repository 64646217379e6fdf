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
import logging
import math
import os
import re
import shutil
import struct
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from accelerate import PartialState
from transformers import (HfArgumentParser, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback,
                          WhisperForConditionalGeneration, WhisperProcessor)

from whisper_zh.config import ConfigError, TrainConfig
from whisper_zh.data import DataError, LabelEncoder, PrepareOptions, open_source, prepare_split
from whisper_zh.features import (LabelTokens, SpeechCollator, TrainingExamples, check_example_options,
                                 log_mel_spectrogram, mel_filters_of)
from whisper_zh.text import error_rates, uses_cer

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CONFIG_NAME = "whisper_zh_config.json"
RESULTS_NAME = "results.json"
CURVES_NAME = "training_curves.png"
ZERO_SHOT_NAME = "zero_shot.json"
CT2_DIR = "ct2"


# --------------------------------------------------------------------------------------
# Hardware-derived settings
# --------------------------------------------------------------------------------------


def resolve_precision(precision: str = "auto") -> str:
    """"bf16" where the GPU has it natively (Ampere and later), "fp16" on older GPUs
    (the T4), "fp32" on the CPU. An explicit choice is returned unchanged."""
    if precision != "auto":
        if precision not in ("bf16", "fp16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16, fp16 or fp32, not {precision!r}")
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
    """Steps, intervals and warmup for ``n_train`` training examples (clips, or windows of
    clips: :class:`~whisper_zh.features.TrainingExamples`).

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
        raise ConfigError(f"save_steps ({save_steps}) must be a multiple of eval_steps ({eval_steps}) "
                          "so that every checkpoint has a score to rank it by")
    warmup = config.warmup_steps if config.warmup_steps is not None else min(500, max_steps // 10)
    return Schedule(max_steps, save_steps, eval_steps, warmup, global_batch)


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def load_model_and_processor(model_name_or_path: str, language: str = "zh", task: str = "transcribe",
                             dtype: torch.dtype = torch.float32):
    """A Whisper (Hub id or local directory) with SDPA attention, set up to transcribe
    ``language`` through its ``generation_config`` (not the legacy forced_decoder_ids)."""
    processor = WhisperProcessor.from_pretrained(model_name_or_path)
    processor.tokenizer.set_prefix_tokens(language=language, task=task)
    model = WhisperForConditionalGeneration.from_pretrained(
        model_name_or_path, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.language = language
    model.generation_config.task = task
    model.generation_config.forced_decoder_ids = None
    model.config.forced_decoder_ids = None
    return model, processor


def configure_spec_augment(model, config: TrainConfig) -> None:
    """SpecAugment through Whisper's own config fields (the encoder masks its input
    features in training mode only). Off unless ``apply_spec_augment``."""
    model.config.apply_spec_augment = config.apply_spec_augment
    if config.mask_time_prob is not None:
        model.config.mask_time_prob = config.mask_time_prob
    if config.mask_feature_prob is not None:
        model.config.mask_feature_prob = config.mask_feature_prob


def training_examples(config: TrainConfig, clips) -> TrainingExamples:
    """The prepared training split as training examples: a ``timestamp_fraction`` of the
    clips labelled with timestamps and joined into windows of up to ``timestamp_window_s``,
    a ``prompt_fraction`` of the examples after the text before them
    (:func:`whisper_zh.features.plan_examples`), fixed by ``seed``."""
    check_training_examples(config)
    return TrainingExamples.from_split(
        clips, timestamp_fraction=config.timestamp_fraction, timestamp_window_s=config.timestamp_window_s,
        prompt_fraction=config.prompt_fraction, seed=config.seed, max_length=config.max_label_tokens)


def check_training_examples(config: TrainConfig) -> None:
    """Raise ConfigError for timestamp or prompt options out of range, before any work is done."""
    try:
        check_example_options(config.timestamp_fraction, config.timestamp_window_s, config.prompt_fraction)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def make_collator(model, processor) -> SpeechCollator:
    """The collator that turns training examples (and plain clips, for evaluation) into batches."""
    return SpeechCollator(
        model.config.decoder_start_token_id,
        tokens=LabelTokens.from_tokenizer(processor.tokenizer),
        max_length=model.config.max_target_positions,
    )


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose batches carry waveforms: log-mel is computed here, on the
    model's device, batched, instead of being stored (see :mod:`whisper_zh.features`).
    With ``return_timestamps``, evaluation decodes as the app does: with timestamps."""

    def __init__(self, *args, mel_filters: torch.Tensor, return_timestamps: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.mel_filters = mel_filters
        self.return_timestamps = return_timestamps

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if "input_audio" in inputs:
            audio = inputs.pop("input_audio")
            self.mel_filters = self.mel_filters.to(audio.device)
            features = log_mel_spectrogram(audio, self.mel_filters)
            inputs["input_features"] = features.to(self.model.dtype)
        return inputs

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.return_timestamps:
            # evaluate() keeps its generation arguments in _gen_kwargs, used only when none are passed
            gen_kwargs = {**(gen_kwargs or getattr(self, "_gen_kwargs", {})), "return_timestamps": True}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)


def make_compute_metrics(tokenizer, language: str):
    """``compute_metrics`` for ``predict_with_generate``: CER and WER after normalisation
    (timestamp and other special tokens are dropped by the decode)."""

    def compute_metrics(prediction) -> dict:
        pred_ids = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        label_ids = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(pred_ids, skip_special_tokens=True)
        references = tokenizer.batch_decode(label_ids, skip_special_tokens=True)
        rates = error_rates(references, hypotheses, language)
        return {"cer": rates["cer"], "wer": rates["wer"]}

    return compute_metrics


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


# --------------------------------------------------------------------------------------
# Checkpoints and resume
# --------------------------------------------------------------------------------------


def is_complete_checkpoint(path: str) -> bool:
    """True when the Trainer finished writing ``path``: its ``trainer_state.json`` (written
    last) parses and names this step, and the weights, optimizer and scheduler files are
    whole (their headers and central directories read back)."""
    from safetensors import safe_open

    step = checkpoint_step(path)
    state_file = os.path.join(path, "trainer_state.json")
    if step is None or not os.path.isfile(state_file):
        return False
    try:
        with open(state_file) as f:
            if json.load(f).get("global_step") != step:
                return False
        weights = glob.glob(os.path.join(path, "model*.safetensors"))
        if not weights:
            return False
        for w in weights:
            with safe_open(w, "pt") as handle:
                handle.keys()
            _check_safetensors_size(w)
        for name in ("optimizer.pt", "scheduler.pt"):
            with zipfile.ZipFile(os.path.join(path, name)) as z:
                z.namelist()
    except Exception:  # any unreadable file means the checkpoint is not whole
        return False
    return True


def checkpoint_step(path: str) -> Optional[int]:
    """N for a ``.../checkpoint-N`` folder, else None."""
    match = CHECKPOINT_RE.match(os.path.basename(path.rstrip("/")))
    return int(match.group(1)) if match else None


def _check_safetensors_size(path: str) -> None:
    """safe_open reads only the header: check the data it describes is all there."""
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
    found = sorted((step, name) for name in os.listdir(output_dir) if (step := checkpoint_step(name)) is not None)
    for _, name in reversed(found):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        aside = os.path.join(output_dir, "_incomplete-" + name)
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        logger.warning("skipping %s: incomplete (the run stopped while saving it); moved to %s", path, aside)
    return None


def fetch_hub_checkpoint(repo_id: str, output_dir: str) -> Optional[str]:
    """Download the Hub repo's ``last-checkpoint/`` (pushed by ``hub_strategy="checkpoint"``)
    into ``output_dir/checkpoint-N``; None when the repo or the folder does not exist."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    tmp = os.path.join(output_dir, "_hub-download")  # "_*" is never pushed with the output dir
    try:
        huggingface_hub.snapshot_download(repo_id, allow_patterns=["last-checkpoint/*"], local_dir=tmp)
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
        logger.warning("the Hub's last-checkpoint of %s is incomplete; starting afresh", repo_id)
        return None
    logger.info("downloaded %s/last-checkpoint (step %d) to %s", repo_id, step, target)
    return target


def find_resume_point(config: TrainConfig, state: Optional[PartialState] = None) -> Optional[str]:
    """Where training continues: the newest complete checkpoint in ``output_dir``, else
    (with a Hub repo) the Hub's ``last-checkpoint``, downloaded into ``output_dir``; None
    to start afresh (or when ``config.resume`` is off). The main process looks first (and
    downloads); the other processes of a multi-GPU run then find what it left."""
    if not config.resume:
        return None
    state = state or PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        resume_from = find_resumable_checkpoint(config.output_dir)
        if resume_from is None and config.hub_model_id and state.is_main_process:
            resume_from = fetch_hub_checkpoint(config.hub_model_id, config.output_dir)
    return resume_from


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
    """Prepare (or reuse) the train, eval and test splits named in ``config`` (``splits``:
    only these roles).

    The eval split is cut to ``eval_max_samples`` clips (a fixed random subset), so
    evaluation during training stays cheap; the test split is used whole."""
    source = open_source(config.dataset, config.dataset_config)
    labels = LabelEncoder(config.model_name_or_path, config.language, config.task)
    result = PreparedData(train=None, eval=None, test=None)
    for role, split in config.split_roles().items():
        if splits is not None and role not in splits:
            continue
        max_samples = config.max_train_samples if role == "train" else None
        opts = PrepareOptions.from_config(config, max_samples=max_samples)
        dataset, stats = prepare_split(source, split, config.cache_dir, labels, opts, config.extract_dir)
        if role == "eval" and len(dataset) > config.eval_max_samples:
            dataset = dataset.shuffle(seed=config.seed).select(range(config.eval_max_samples))
        setattr(result, role, dataset)
        result.stats[split] = stats
        if verbose:
            logger.info("%s", stats.summary(f"{role} ({split})"))
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
    zero_shot_metrics: dict = field(default_factory=dict)  # the base model on the test split

    def summary(self) -> dict:
        """What ``results.json`` and the command line report: steps, checkpoints, CERs."""
        metrics = {k: v for k, v in {**self.zero_shot_metrics, **self.test_metrics}.items()
                   if k.rsplit("_", 1)[-1] in ("cer", "wer", "loss")}
        return {"global_step": self.global_step, "resumed_from": self.resumed_from,
                "best_checkpoint": self.best_checkpoint, "eval_cer": self.eval_cer, **metrics}


@dataclass
class TrainingPlan:
    """What :func:`train` will do with a configuration, derived before it starts."""

    n_train: int  # training examples
    schedule: Schedule
    precision: str
    gradient_checkpointing: bool
    num_processes: int = 1

    def describe(self, config: TrainConfig) -> str:
        return (f"model {config.model_name_or_path} on {device_name()} x{self.num_processes}: {self.precision}, "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}; "
                f"{self.schedule.max_steps} steps of {self.schedule.global_batch_size} examples, checkpoint every "
                f"{self.schedule.save_steps}, warmup {self.schedule.warmup_steps}")


def plan_training(config: TrainConfig, n_train: int, num_processes: int = 1) -> TrainingPlan:
    """Schedule, precision and gradient checkpointing for ``n_train`` training examples on this machine."""
    return TrainingPlan(n_train, resolve_schedule(config, n_train, num_processes), resolve_precision(config.precision),
                        resolve_gradient_checkpointing(config.gradient_checkpointing), num_processes)


def build_training_arguments(config: TrainConfig, schedule: Schedule, precision: str,
                             gradient_checkpointing: bool) -> Seq2SeqTrainingArguments:
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
        # transformers 5's name for gradient checkpointing
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
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


class WhisperGenerateDeprecationFilter(logging.Filter):
    """Drops one transformers 5 deprecation report that no caller can avoid:
    ``WhisperForConditionalGeneration.generate`` itself passes ``suppress_tokens`` and
    ``begin_suppress_tokens`` beside its ``generation_config`` to ``GenerationMixin.generate``
    (generation_whisper.py, a workaround for transformers PR #48108), which then warns that
    the call is deprecated. The same report about any other argument still shows."""

    PREFIX = "Passing `generation_config` together with generation-related arguments=("

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        names = set(re.findall(r"'(\w+)'", message[len(self.PREFIX):].split(")", 1)[0]))
        return not names <= {"suppress_tokens", "begin_suppress_tokens"}


def quiet_whisper_generate() -> None:
    """Install :class:`WhisperGenerateDeprecationFilter` (once) on transformers' generation logger."""
    generation_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, WhisperGenerateDeprecationFilter) for f in generation_logger.filters):
        generation_logger.addFilter(WhisperGenerateDeprecationFilter())


def train(config: TrainConfig) -> TrainResult:
    """Run the whole pipeline for ``config``; safe to run again after any interruption.

    Raises:
        DataError: the dataset cannot be used (or leaves no training clips).
        ConfigError: the configuration cannot work (e.g. save_steps not a multiple of eval_steps).
    """
    quiet_whisper_generate()
    check_training_examples(config)
    # cpu=True on GPU-less machines: accelerate then also sets up torchrun's processes (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    # Preparation writes the cache once; the other processes of a multi-GPU run wait and read it.
    with state.main_process_first():
        data = prepare_data(config, verbose=state.is_main_process)
    if data.train is None or len(data.train) == 0:
        raise DataError("no training clips left after preparation: check the dataset and its split names")
    examples = training_examples(config, data.train)
    plan = plan_training(config, len(examples), state.num_processes)  # a config mistake fails here, early
    model, processor = load_model_and_processor(config.model_name_or_path, config.language, config.task)
    if config.max_label_tokens > model.config.max_target_positions:
        raise ConfigError(f"max_label_tokens ({config.max_label_tokens}) is more than the decoder's "
                          f"{model.config.max_target_positions} positions")
    if state.is_main_process:
        logger.info("%s", examples.describe())
        logger.info("%s", plan.describe(config))
    if plan.gradient_checkpointing:
        model.config.use_cache = False
    if config.freeze_encoder:
        model.freeze_encoder()
    configure_spec_augment(model, config)

    trainer = WhisperTrainer(
        model=model,
        args=build_training_arguments(config, plan.schedule, plan.precision, plan.gradient_checkpointing),
        train_dataset=examples,
        eval_dataset=data.eval,
        data_collator=make_collator(model, processor),
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer, config.language),
        callbacks=[ThroughputCallback(plan.schedule.global_batch_size)],
        mel_filters=mel_filters_of(processor.feature_extractor),
        return_timestamps=config.eval_timestamps,
    )

    zero_shot = zero_shot_metrics(trainer, data.test, config) if config.zero_shot_eval else {}
    resumed_from = find_resume_point(config, state)
    if resumed_from and state.is_main_process:
        logger.info("resuming from %s", resumed_from)
    trainer.train(resume_from_checkpoint=resumed_from)

    # With load_best_model_at_end the model in hand is now the checkpoint best on eval CER.
    trainer.save_model(config.output_dir)
    test_metrics = {}
    if data.test is not None and len(data.test):
        test_metrics = trainer.evaluate(eval_dataset=data.test, metric_key_prefix="test")
    result = TrainResult(
        output_dir=config.output_dir,
        global_step=trainer.state.global_step,
        best_checkpoint=trainer.state.best_model_checkpoint,
        eval_cer=trainer.state.best_metric,
        test_metrics=test_metrics,
        resumed_from=resumed_from,
        log_history=trainer.state.log_history,
        is_main_process=trainer.is_world_process_zero(),
        zero_shot_metrics=zero_shot,
    )
    if result.is_main_process:
        processor.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, CONFIG_NAME), "w") as f:
            json.dump(config.to_dict(), f, indent=2, ensure_ascii=False)
        export_final_ct2(config)
        results = save_results(result, config, data, trainer.args, plan)
        plot_history(result.log_history, config.output_dir)
        write_model_card(config, results)
        if config.hub_model_id:
            push_final_model(trainer, config)
    return result


def zero_shot_metrics(trainer: WhisperTrainer, test, config: TrainConfig) -> dict:
    """The base model's ``zero_shot_cer`` / ``zero_shot_wer`` on the test split, decoded as
    the fine-tuned model will be; computed before the first step and kept in
    ``output_dir/zero_shot.json``, so a resumed run does not compute it again."""
    if test is None or not len(test):
        return {}
    path = os.path.join(config.output_dir, ZERO_SHOT_NAME)
    key = {"base_model": config.model_name_or_path, "test_split": config.test_split, "clips": len(test)}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["metrics"]
    metrics = trainer.evaluate(eval_dataset=test, metric_key_prefix="zero_shot")
    metrics = {k: v for k, v in metrics.items() if k in ("zero_shot_cer", "zero_shot_wer", "zero_shot_loss")}
    if trainer.is_world_process_zero():
        os.makedirs(config.output_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"key": key, "metrics": metrics}, f, indent=2)
    return metrics


def export_final_ct2(config: TrainConfig) -> Optional[str]:
    """The final model as CTranslate2 (``output_dir/ct2``), which the app's engine and
    faster-whisper load directly; skipped (with a log line) without ``ctranslate2``."""
    if not config.ct2_quantization:
        return None
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        logger.warning("ctranslate2 is not installed (pip install 'whisper-zh[ct2]'): no %s/ copy exported", CT2_DIR)
        return None
    from whisper_zh.export import export_ct2

    out = export_ct2(config.output_dir, os.path.join(config.output_dir, CT2_DIR), config.ct2_quantization)
    logger.info("exported a CTranslate2 %s copy to %s", config.ct2_quantization, out)
    return out


# --------------------------------------------------------------------------------------
# What a run leaves: results.json, the curves, the model card, the Hub
# --------------------------------------------------------------------------------------


def history_table(log_history: list):
    """Trainer ``log_history`` -> one row per step: training loss, eval loss, eval CER/WER."""
    import pandas as pd

    rows: dict[int, dict] = {}
    for entry in log_history:
        row = rows.setdefault(entry["step"], {"step": entry["step"]})
        if "loss" in entry:
            row["training loss"] = entry["loss"]
        for key, name in (("eval_loss", "eval loss"), ("eval_cer", "eval CER"), ("eval_wer", "eval WER")):
            if key in entry:
                row[name] = entry[key]
    columns = ["step", "training loss", "eval loss", "eval CER", "eval WER"]
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["step"]), columns=columns)
    return table.dropna(how="all", subset=columns[1:]).set_index("step")


def plot_history(log_history: list, output_dir: Optional[str] = None):
    """Loss and CER against the step, as a matplotlib Figure (returned, so a notebook
    shows it); saved as ``output_dir/training_curves.png`` when ``output_dir`` is given.
    None (and a log line) when matplotlib is not installed."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", CURVES_NAME)
        return None

    table = history_table(log_history)
    fig, (loss_ax, cer_ax) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    # Closed so that pyplot does not show it a second time at the end of a notebook cell;
    # the notebook shows the returned figure.
    plt.close(fig)
    for column, style in (("training loss", "-"), ("eval loss", "o--")):
        series = table[column].dropna()
        if len(series):
            loss_ax.plot(series.index, series.values, style, label=column)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    if loss_ax.lines:
        loss_ax.legend()
    cer = table["eval CER"].dropna()
    cer_ax.plot(cer.index, 100 * cer.values, "o-", color="tab:red")
    cer_ax.set(xlabel="step", ylabel="CER (%)", title="eval CER")
    for ax in (loss_ax, cer_ax):
        ax.grid(alpha=0.3)
    if output_dir:
        fig.savefig(os.path.join(output_dir, CURVES_NAME), dpi=100)
    return fig


def save_results(result: TrainResult, config: Optional[TrainConfig] = None, data: Optional[PreparedData] = None,
                 args: Optional[Seq2SeqTrainingArguments] = None, plan: Optional[TrainingPlan] = None) -> dict:
    """Write ``output_dir/results.json``: :meth:`TrainResult.summary`, and (given the run's
    configuration) what the model card states: data, schedule, hardware and the per-step
    history. Every number on the card comes from this file."""
    results = result.summary()
    if config is not None:
        counts = {split: s.kept for split, s in (data.stats if data else {}).items()}
        results.update({
            # a Hub id, or only the folder name of a local model: results.json is pushed
            "base_model": config.model_name_or_path if is_hub_id(config.model_name_or_path)
            else os.path.basename(config.model_name_or_path.rstrip("/")),
            "dataset": open_source(config.dataset, config.dataset_config).release_name,
            "language": config.language,
            "task": config.task,
            "train_split": config.train_split,
            "eval_split": config.eval_split,
            "test_split": config.test_split,
            "train_clips": counts.get(config.train_split),
            "test_clips": counts.get(config.test_split),
            "global_batch_size": plan.schedule.global_batch_size if plan else None,
            "learning_rate": config.learning_rate,
            "timestamp_fraction": config.timestamp_fraction,
            "timestamp_window_s": config.timestamp_window_s,
            "precision": plan.precision if plan else None,
            "hardware": f"{max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1} x {device_name()}",
            "history": history_table(result.log_history).reset_index().astype(object)
            .where(lambda t: t.notna(), None).to_dict("records"),
        })
    with open(os.path.join(result.output_dir, RESULTS_NAME), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    return results


def percent(value: Optional[float]) -> str:
    """A rate (0.0836) as the card shows it ("8.36%"); "n/a" when not measured."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def write_model_card(config: TrainConfig, results: dict) -> str:
    """``output_dir/README.md`` for the Hub, from ``results`` (:func:`save_results`): front
    matter (language, base model when it is a Hub id, model-index with the test and
    zero-shot error rates), the numbers, the curves, the per-step table and how to use
    the model with transformers, faster-whisper and ``whisper-zh transcribe``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metric = "cer" if uses_cer(config.language) else "wer"
    name = config.hub_model_id or os.path.basename(config.output_dir.rstrip("/"))
    base_is_hub_id = is_hub_id(config.model_name_or_path)
    dataset = results.get("dataset") or config.dataset
    eval_results = []
    for key, label in ((f"test_{metric}", f"test {metric.upper()}"),
                       (f"zero_shot_{metric}", f"zero-shot {metric.upper()} of the base model")):
        if results.get(key) is not None:
            eval_results.append(EvalResult(
                task_type="automatic-speech-recognition", task_name="Speech Recognition",
                dataset_type=dataset, dataset_name=dataset, dataset_split=config.test_split,
                metric_type=metric, metric_value=round(100 * results[key], 2), metric_name=label))
    card_data = ModelCardData(
        language=config.language, license="apache-2.0",
        base_model=config.model_name_or_path if base_is_hub_id else None,
        library_name="transformers", pipeline_tag="automatic-speech-recognition",
        tags=["whisper", "whisper-zh", "automatic-speech-recognition"], metrics=[metric],
        model_name=name if eval_results else None, eval_results=eval_results or None)
    base = f"[{config.model_name_or_path}](https://huggingface.co/{config.model_name_or_path})" if base_is_hub_id \
        else f"`{os.path.basename(config.model_name_or_path.rstrip('/'))}`"
    m = metric.upper()
    rows = [
        ("test split", f"`{config.test_split}` ({results.get('test_clips') or 0} clips)" if config.test_split else "none"),
        (f"test {m}", percent(results.get(f"test_{metric}"))),
        (f"zero-shot {m} of the base model (same test clips)", percent(results.get(f"zero_shot_{metric}"))),
        (f"best eval {m} (`{config.eval_split}`)", percent(results.get("eval_cer"))),
        ("training clips", f"{results.get('train_clips') or 0} (`{config.train_split}`)"),
        ("steps", f"{results['global_step']} of batch {results.get('global_batch_size')}"),
        ("learning rate", f"{results.get('learning_rate')}"),
        ("timestamp labels", timestamp_labels(results.get("timestamp_fraction"), results.get("timestamp_window_s"))),
        ("precision", f"{results.get('precision')}"),
        ("hardware", f"{results.get('hardware')}"),
    ]
    history = results.get("history") or []
    history_rows = "\n".join(
        f"| {h['step']} | {_cell(h.get('training loss'), '.4f')} | {_cell(h.get('eval loss'), '.4f')} | "
        f"{percent(h.get('eval CER')) if h.get('eval CER') is not None else ''} |" for h in history)
    repo = config.hub_model_id or config.output_dir
    curves = f"![loss and {m} during training]({CURVES_NAME})\n\n" if os.path.isfile(
        os.path.join(config.output_dir, CURVES_NAME)) else ""
    has_ct2 = os.path.isfile(os.path.join(config.output_dir, CT2_DIR, "model.bin"))
    if has_ct2:
        ct2_load = (f'from huggingface_hub import snapshot_download\n'
                    f'model = WhisperModel(snapshot_download("{repo}", allow_patterns=["{CT2_DIR}/*"]) + "/{CT2_DIR}", '
                    f'compute_type="int8")') if config.hub_model_id else \
            f'model = WhisperModel("{os.path.join(config.output_dir, CT2_DIR)}", compute_type="int8")'
        faster_whisper = f"""
With [faster-whisper](https://github.com/SYSTRAN/faster-whisper), from the CTranslate2
{config.ct2_quantization} copy in `{CT2_DIR}/` (fastest on a CPU):

```python
from faster_whisper import WhisperModel
{ct2_load}
segments, info = model.transcribe("audio.mp3", language="{config.language}")
print("".join(segment.text for segment in segments))
```
"""
    else:
        faster_whisper = ""
    body = f"""
# {name}

{base} fine-tuned for `{config.language}` speech recognition with
[whisper-zh](https://github.com/whisper-zh/whisper-zh) on `{dataset}`.

| | |
|---|---|
""" + "\n".join(f"| {k} | {v} |" for k, v in rows) + f"""

{m} is computed after normalising both sides: Traditional to Simplified (OpenCC),
punctuation and spaces removed, full-width to half-width, lower case. Evaluation decodes
{"with timestamps, as the app does" if config.eval_timestamps else "without timestamps"}.

## Training

{curves}| step | training loss | eval loss | eval {m} |
|---:|---:|---:|---:|
{history_rows}

## Use

With transformers:

```python
from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model="{repo}")
print(asr("audio.mp3", return_timestamps=True,
          generate_kwargs={{"language": "{config.language}", "task": "{config.task}"}})["text"])
```
{faster_whisper}
With [whisper-zh](https://github.com/whisper-zh/whisper-zh) (subtitles included; it uses `{CT2_DIR}/` on a CPU):

```bash
whisper-zh transcribe audio.mp3 --model {repo} --srt audio.srt
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    path = os.path.join(config.output_dir, "README.md")
    card.save(path)
    return path


def timestamp_labels(fraction: Optional[float], window_s: Optional[float]) -> str:
    """How the card and the notebook say what share of clips was labelled with timestamps, and how."""
    share = f"{100 * (fraction or 0):.0f}% of training clips"
    if fraction and window_s:
        share += f", joined into windows of up to {window_s:g} s, a segment per clip"
    return share


def _cell(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def is_hub_id(name: str) -> bool:
    """True for a Hub model id ("org/name" or "name") that is not a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.exists(os.path.expanduser(name)):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def push_final_model(trainer: WhisperTrainer, config: TrainConfig) -> None:
    """Upload the final model, processor, CTranslate2 copy, curves, results and card
    (checkpoints went up during training). The token comes from HF_TOKEN or the
    huggingface_hub login and is never written."""
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
    logger.info("pushed to https://huggingface.co/%s", config.hub_model_id)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_config(argv: list[str], prog: str = "whisper-zh train") -> TrainConfig:
    """Command-line arguments (or a single .json file) -> :class:`TrainConfig`."""
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
    config = parse_config(argv)
    try:
        result = train(config)
    except (DataError, ConfigError) as err:
        print(f"whisper-zh train: {err}", file=sys.stderr)
        return 2
    if not result.is_main_process:
        return 0
    summary = {k: v for k, v in result.summary().items()
               if k in ("global_step", "best_checkpoint", "eval_cer", "test_cer", "test_wer")}
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0


def prepare_main(argv: list[str]) -> int:
    """``whisper-zh prepare``: the data stage alone (e.g. on a CPU machine before renting a GPU)."""
    config = parse_config(argv, prog="whisper-zh prepare")
    try:
        prepare_data(config)
    except (DataError, ConfigError) as err:
        print(f"whisper-zh prepare: {err}", file=sys.stderr)
        return 2
    return 0
