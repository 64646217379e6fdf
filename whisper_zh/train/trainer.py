"""The Trainer and what it is built from: the model, the schedule and precision this
machine and this data call for, the collator, metrics and callbacks.

Everything here is transformers' own mechanism (``Seq2SeqTrainer``, ``TrainerCallback``,
``Seq2SeqTrainingArguments``) configured for Whisper; :mod:`whisper_zh.train.pipeline`
puts it together.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers import (
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from whisper_zh.distributed import PROCESS_GROUP_TIMEOUT, process_state
from whisper_zh.errors import ConfigError, MissingExtraError
from whisper_zh.text import error_rates
from whisper_zh.train.config import TrainConfig
from whisper_zh.train.examples import (
    LabelTokens,
    SpeechCollator,
    TrainingExamples,
    check_example_options,
    log_mel_spectrogram,
)

logger = logging.getLogger(__name__)

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
    clips: :class:`~whisper_zh.train.examples.TrainingExamples`).

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


@dataclass(frozen=True)
class ParameterCount:
    """How many of a model's parameters a run trains (the card and results.json state it)."""

    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @classmethod
    def of(cls, model) -> "ParameterCount":
        params = list(model.parameters())
        return cls(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def check_lora(config: TrainConfig) -> None:
    """Raise ConfigError for LoRA options that cannot work, before any work is done."""
    if config.lora_r < 0:
        raise ConfigError(f"lora_r must be 0 (full fine-tune) or a positive rank, not {config.lora_r}")
    if not config.uses_lora:
        return
    if config.lora_alpha is not None and config.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha must be positive, not {config.lora_alpha}")
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), not {config.lora_dropout}")
    if not config.lora_modules():
        raise ConfigError("lora_target_modules names no module")


def apply_lora(model, config: TrainConfig, gradient_checkpointing: bool = False):
    """``model`` wrapped by peft's ``get_peft_model`` with LoRA adapters on
    ``config.lora_target_modules`` (the base weights frozen); ``model`` itself when
    ``lora_r`` is 0. The Trainer then saves, resumes and loads the best checkpoint as
    adapters (its own PEFT support)."""
    check_lora(config)
    if not config.uses_lora:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingExtraError("LoRA training (--lora-r) needs peft: pip install peft") from e
    if gradient_checkpointing:
        # With every base weight frozen, the checkpointed blocks' inputs would need no
        # gradient and (reentrant) checkpointing would then skip the adapters' backward.
        model.enable_input_require_grads()
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                      lora_dropout=config.lora_dropout, target_modules=config.lora_modules(), bias="none")
    peft_model = get_peft_model(model, lora)
    missing = set(config.lora_modules()) - {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if missing:  # peft raises only when none matches
        raise ConfigError(f"lora_target_modules: {', '.join(sorted(missing))} not in the model")
    return peft_model


def is_lora_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


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
    (:func:`whisper_zh.train.examples.plan_examples`), fixed by ``seed``."""
    check_training_examples(config)
    return TrainingExamples.from_split(
        clips, timestamp_fraction=config.timestamp_fraction, timestamp_window_s=config.timestamp_window_s,
        prompt_fraction=config.prompt_fraction, seed=config.seed, max_length=config.max_label_tokens)


def check_training_examples(config: TrainConfig) -> None:
    """Raise ConfigError for timestamp or prompt options out of range, before any work is done."""
    check_example_options(config.timestamp_fraction, config.timestamp_window_s, config.prompt_fraction)


def make_collator(model, processor) -> SpeechCollator:
    """The collator that turns training examples (and plain clips, for evaluation) into batches."""
    return SpeechCollator(
        model.config.decoder_start_token_id,
        tokens=LabelTokens.from_tokenizer(processor.tokenizer),
        max_length=model.config.max_target_positions,
    )


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose batches carry waveforms: log-mel is computed here, on the
    model's device, batched, instead of being stored (see :mod:`whisper_zh.train.examples`).
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

    def get_eval_dataloader(self, eval_dataset=None):
        # With persistent workers (any GPU run), transformers keeps the first evaluation's
        # loader under one key and hands it out for whatever dataset evaluate() is given
        # next: the zero-shot pass's test loader would serve every dev evaluation, or the dev
        # loader the final test. A loader is kept only for the dataset it was made from.
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(eval_dataset, str) and getattr(self, "_eval_loader_dataset", None) is not dataset:
            getattr(self, "_eval_dataloaders", {}).pop("eval", None)
            self._eval_loader_dataset = dataset
        return super().get_eval_dataloader(eval_dataset)

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
        learning_rate=config.peak_learning_rate,
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
        # the best and the newest, only the newest with its optimizer state (OptimizerStateInNewestOnly):
        # 2.9 + 1 GB of whisper-small on Drive
        save_total_limit=2,
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
        use_cpu=not torch.cuda.is_available() and process_state().num_processes > 1,
        ddp_timeout=int(PROCESS_GROUP_TIMEOUT.total_seconds()),
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
    parameters: Optional[ParameterCount] = None  # trained / all parameters

    def summary(self) -> dict:
        """What ``results.json`` and the command line report: steps, checkpoints, CERs."""
        metrics = {k: v for k, v in {**self.zero_shot_metrics, **self.test_metrics}.items()
                   if k.rsplit("_", 1)[-1] in ("cer", "wer", "loss")}
        trained = {} if self.parameters is None else {
            "trainable_parameters": self.parameters.trainable, "total_parameters": self.parameters.total,
            "trainable_share": self.parameters.share}
        return {"global_step": self.global_step, "resumed_from": self.resumed_from,
                "best_checkpoint": self.best_checkpoint, "eval_cer": self.eval_cer, **metrics, **trained}
