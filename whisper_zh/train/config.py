"""The one configuration object of the training pipeline.

``TrainConfig`` drives the command line (``whisper-zh train``: one option per field,
built by :mod:`whisper_zh.cli`) and the notebook (its parameters cell fills one in). Every
default lives here. Fields left ``None`` are derived from the data and the hardware by
:func:`whisper_zh.train.trainer.resolve_schedule` and :func:`whisper_zh.train.trainer.resolve_precision`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from whisper_zh.hub import DEFAULT_MODEL

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "whisper-zh")
# Every linear projection of Whisper's attention and feed-forward blocks, encoder and
# decoder alike (the names peft matches against module paths).
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Peak learning rates when none is given. LoRA's adapters start at zero and take a higher
# rate than a full fine-tune, but not the 1e-3 usual elsewhere: whisper-base fine-tuned on
# one voice and scored on zh-multi-dev's ~50 others (bench/lora_vs_full.py) gave CER 0.159
# at 1e-4 against 0.207 at 3e-4 and 0.219 at 1e-3 (zero-shot 0.174, full fine-tune 0.167).
FULL_LEARNING_RATE = 1e-5
LORA_LEARNING_RATE = 1e-4


@dataclass
class TrainConfig:
    # --- data ---------------------------------------------------------------------------
    dataset: str = field(
        default="",
        metadata={"help": "A Common Voice release, found by content whatever its name (cv-corpus-*, "
                          "mcv-scripted-zh-CN-v24.0, ...): the extracted <locale> folder, any folder above it, or "
                          "the archive; a Hub dataset id, or a local `datasets` directory."},
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of a `datasets` dataset."})
    text_column: str = field(default="sentence", metadata={"help": "Transcript column of a `datasets` dataset."})
    streaming: bool = field(default=False, metadata={"help": "Stream a Hub dataset instead of downloading it."})
    train_split: str = field(default="train", metadata={"help": "Training split(s), '+'-joined: e.g. train+dev."})
    eval_split: str = field(
        default="dev",
        metadata={"help": "Split evaluated during training; the checkpoint best on it is kept. "
                          "Empty for no evaluation during training."},
    )
    test_split: str = field(default="test", metadata={"help": "Split scored once at the end. Empty to skip."})
    zero_shot_eval: bool = field(
        default=True,
        metadata={"help": "Also score the base model on test_split (once, before training) for the model card."})
    eval_max_samples: int = field(default=500, metadata={"help": "Clips of eval_split used during training."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Cap on training clips (debugging)."})
    max_duration_s: float = field(default=30.0, metadata={"help": "Longer clips are dropped (Whisper's window)."})
    max_label_tokens: int = field(
        default=448, metadata={"help": "Longer labels are dropped, and a timestamped window's label is kept within "
                                       "it (at most the decoder's 448 positions)."})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "Prepared data (Drive on Colab)."})
    extract_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where the split lists and the clips they name are extracted from a release archive "
                          "(default: cache_dir/releases; on Colab a local disk: only the prepared cache needs to "
                          "outlive the runtime, and training needs only the cache once a split is prepared)."})
    prepare_shard_size: int = field(
        default=1000, metadata={"help": "Clips per cache shard: the unit an interrupted preparation resumes at."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes preparing clips (default: all CPU cores)."})

    # --- model --------------------------------------------------------------------------
    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Whisper Hub id or local directory."})
    language: str = field(default="zh", metadata={"help": "Whisper language code."})
    task: str = field(default="transcribe", metadata={"help": "transcribe or translate."})

    # --- training -----------------------------------------------------------------------
    output_dir: str = field(default="whisper-small-zh", metadata={"help": "Checkpoints and the final model."})
    max_steps: int = field(default=1600, metadata={"help": "Optimiser steps (capped by max_epochs)."})
    max_epochs: float = field(
        default=16.0,
        metadata={"help": "Cap on passes over the training data: keeps small datasets from "
                          "being overfitted by max_steps. 0 for no cap."},
    )
    save_steps: Optional[int] = field(
        default=None, metadata={"help": "Checkpoint interval (default 400, or a quarter of a short run)."})
    eval_steps: Optional[int] = field(default=None, metadata={"help": "Evaluation interval (default save_steps)."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Training examples (clips, or timestamped windows of clips) per GPU per step."})
    per_device_eval_batch_size: Optional[int] = field(default=None, metadata={"help": "Default: the train batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update."})
    learning_rate: Optional[float] = field(
        default=None, metadata={"help": f"Peak learning rate (default {FULL_LEARNING_RATE:g} for a full fine-tune, "
                                        f"{LORA_LEARNING_RATE:g} with LoRA)."})
    warmup_steps: Optional[int] = field(
        default=None, metadata={"help": "Linear warmup (default 500, at most a tenth of the run)."})
    weight_decay: float = field(default=0.0)
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where native, else fp16 on GPU, fp32 on CPU), bf16, fp16, fp32."})
    gradient_checkpointing: Optional[bool] = field(
        default=None, metadata={"help": "Default: on when the GPU has under 24 GB (a T4), off otherwise."})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Train the decoder only: ~3x cheaper steps, for CPUs and small GPUs."})
    lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank: train low-rank adapters (PEFT) instead of every weight, which is what fits "
                          "medium, large-v3 and large-v3-turbo on a 16 GB T4; the adapter is merged into the "
                          "weights at the end (and also published in adapter/). 0: full fine-tune."})
    lora_alpha: Optional[int] = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 x lora_r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(
        default=",".join(LORA_TARGET_MODULES),
        metadata={"help": "Comma-separated names of the linear layers that get adapters: Whisper's attention "
                          "(q_proj, k_proj, v_proj, out_proj) and feed-forward (fc1, fc2) projections."})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model (fast GPUs)."})
    timestamp_fraction: float = field(
        default=0.5,
        metadata={"help": "Share of training clips labelled with timestamps instead of <|notimestamps|>, as in "
                          "Whisper's own training data: keeps the model predicting the timestamps long-form "
                          "transcription relies on. 0 for none."})
    timestamp_window_s: float = field(
        default=30.0,
        metadata={"help": "Consecutive timestamped clips are joined into one input of up to this many seconds, "
                          "each clip its own segment (<|start|> text <|end|>), like Whisper's 30 s long-form "
                          "windows. 0: one clip per input."})
    prompt_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of training examples conditioned on the text of the clip before them "
                          "(<|startofprev|>), as Whisper is at inference. Uses the order of the training split."})
    apply_spec_augment: bool = field(
        default=False, metadata={"help": "SpecAugment: mask spans of time and frequency of the training input."})
    mask_time_prob: Optional[float] = field(
        default=None, metadata={"help": "SpecAugment time-masking probability (default: the model config's, 0.05)."})
    mask_feature_prob: Optional[float] = field(
        default=None, metadata={"help": "SpecAugment frequency-masking probability (default: the model config's, 0)."})
    dataloader_num_workers: Optional[int] = field(default=None, metadata={"help": "Default: min(4, CPU cores)."})
    generation_max_length: int = field(default=225, metadata={"help": "Token limit when decoding for evaluation."})
    eval_timestamps: bool = field(
        default=True, metadata={"help": "Decode evaluations with timestamps, as the app transcribes."})
    ct2_quantization: str = field(
        default="int8",
        metadata={"help": "Also export the final model to CTranslate2 (OUTPUT_DIR/ct2, pushed with the model) "
                          "in this weight type, for fast CPU serving. Empty to skip."})
    logging_steps: int = field(default=25)
    seed: int = field(default=42)
    report_to: str = field(default="none", metadata={"help": "tensorboard, wandb, ... or none."})
    resume: bool = field(default=True, metadata={"help": "Continue from the newest complete checkpoint, "
                                                        "local or on the Hub."})

    # --- hub ----------------------------------------------------------------------------
    hub_model_id: Optional[str] = field(
        default=None, metadata={"help": "Push checkpoints and the final model to this Hub repo."})
    hub_private_repo: bool = field(default=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate``, or the default for this kind of run."""
        if self.learning_rate:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.uses_lora else FULL_LEARNING_RATE

    def lora_modules(self) -> list[str]:
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]

    def split_roles(self) -> dict[str, str]:
        """Role -> split name(s) (``"train+dev"`` joins splits); empty names are left out."""
        roles = {"train": self.train_split, "eval": self.eval_split, "test": self.test_split}
        return {role: split for role, split in roles.items() if split}
