"""What a run leaves: results.json, the curves, the CTranslate2 copy, the model card, the Hub."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch
from transformers import Seq2SeqTrainingArguments

from whisper_zh.hub import is_hub_id
from whisper_zh.serve.models import export_ct2
from whisper_zh.text import uses_cer
from whisper_zh.train.config import TrainConfig
from whisper_zh.train.data import PreparedData, open_source
from whisper_zh.train.trainer import (
    TrainingPlan,
    TrainResult,
    WhisperTrainer,
    device_name,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "whisper_zh_config.json"


RESULTS_NAME = "results.json"


CURVES_NAME = "training_curves.png"


CT2_DIR = "ct2"


ADAPTER_DIR = "adapter"


def publish_name(model_name_or_path: str) -> str:
    """How a base model is named in what a run publishes: its Hub id, or only the folder
    name of a local model (its path is this machine's business)."""
    return model_name_or_path if is_hub_id(model_name_or_path) else os.path.basename(model_name_or_path.rstrip("/"))


def save_adapter(model, config: TrainConfig) -> str:
    """A LoRA run's adapter (the checkpoint best on eval CER) as ``output_dir/adapter``,
    loadable with ``PeftModel.from_pretrained(base, ...)``; its config names the base as
    the card does."""
    out = os.path.join(config.output_dir, ADAPTER_DIR)
    model.save_pretrained(out)
    path = os.path.join(out, "adapter_config.json")
    with open(path) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = publish_name(config.model_name_or_path)
    with open(path, "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    # peft's own card names the base by its local path; the model card describes adapter/
    readme = os.path.join(out, "README.md")
    if os.path.isfile(readme):
        os.remove(readme)
    return out


def merge_adapter(model, output_dir: str):
    """The LoRA adapter folded into the base weights (peft's ``merge_and_unload``): a plain
    Whisper that ct2/, the card, the Space and ``from_pretrained`` take as any other.
    Adapter files the Trainer copied to ``output_dir`` while pushing checkpoints are
    removed: beside a full model, transformers would load them as an adapter."""
    merged = model.merge_and_unload()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    return merged


def export_final_ct2(config: TrainConfig) -> Optional[str]:
    """The final model as CTranslate2 (``output_dir/ct2``), which the app's engine and
    faster-whisper load directly (ctranslate2 is part of the base install); none when
    ``ct2_quantization`` is empty."""
    if not config.ct2_quantization:
        return None
    out = export_ct2(config.output_dir, os.path.join(config.output_dir, CT2_DIR), config.ct2_quantization)
    logger.info("exported a CTranslate2 %s copy to %s", config.ct2_quantization, out)
    return out


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
            "base_model": publish_name(config.model_name_or_path),
            "dataset": open_source(config.dataset, config.dataset_config, config.cache_dir).release_name,
            "language": config.language,
            "task": config.task,
            "train_split": config.train_split,
            "eval_split": config.eval_split,
            "test_split": config.test_split,
            "train_clips": counts.get(config.train_split),
            "test_clips": counts.get(config.test_split),
            "global_batch_size": plan.schedule.global_batch_size if plan else None,
            "learning_rate": config.peak_learning_rate,
            "lora_r": config.lora_r,
            "lora_alpha": (config.lora_alpha or 2 * config.lora_r) if config.uses_lora else None,
            "lora_target_modules": config.lora_modules() if config.uses_lora else None,
            "freeze_encoder": config.freeze_encoder,
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
        ("fine-tuning", fine_tuning(results)),
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
    adapter_use = ""
    if os.path.isfile(os.path.join(config.output_dir, ADAPTER_DIR, "adapter_config.json")):
        base_id = results.get("base_model") or config.model_name_or_path
        adapter_use = f"""The LoRA adapter alone (the model above already has it merged), with [PEFT](https://github.com/huggingface/peft):

```python
from peft import PeftModel
from transformers import WhisperForConditionalGeneration
base = WhisperForConditionalGeneration.from_pretrained("{base_id}")
model = PeftModel.from_pretrained(base, "{repo}", subfolder="{ADAPTER_DIR}")
```

"""
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
{adapter_use}With [whisper-zh](https://github.com/whisper-zh/whisper-zh) (subtitles included; it uses `{CT2_DIR}/` on a CPU):

```bash
whisper-zh transcribe audio.mp3 --model {repo} --srt audio.srt
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    path = os.path.join(config.output_dir, "README.md")
    card.save(path)
    return path


def fine_tuning(results: dict) -> str:
    """How the card says what was trained: LoRA (rank, alpha, modules) or every weight,
    and the share of the parameters that was."""
    share = ""
    if results.get("total_parameters"):
        share = (f": {100 * results['trainable_share']:.2f}% of {results['total_parameters'] / 1e6:.1f} M "
                 "parameters trained")
    if results.get("lora_r"):
        return (f"LoRA, rank {results['lora_r']}, alpha {results.get('lora_alpha')}, on "
                f"{', '.join(results.get('lora_target_modules') or [])}{share}; merged into the weights "
                f"(the adapter alone is in `{ADAPTER_DIR}/`)")
    return ("decoder only" if results.get("freeze_encoder") else "full (every weight)") + share


def timestamp_labels(fraction: Optional[float], window_s: Optional[float]) -> str:
    """How the card and the notebook say what share of clips was labelled with timestamps, and how."""
    share = f"{100 * (fraction or 0):.0f}% of training clips"
    if fraction and window_s:
        share += f", joined into windows of up to {window_s:g} s, a segment per clip"
    return share


def _cell(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


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
        # the adapter files a LoRA run's checkpoint pushes left at the root (see merge_adapter)
        delete_patterns=["adapter_model.safetensors", "adapter_config.json"] if config.uses_lora else None,
    )
    logger.info("pushed to https://huggingface.co/%s", config.hub_model_id)
