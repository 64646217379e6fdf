"""What the Colab notebook (``notebooks/chinese_fine_tune.ipynb``) calls, so that no logic
lives only in the notebook: each of its cells is a call into this module or the pipeline.

The same helpers run in Colab and in a local Jupyter: in Colab the work folder is on
Google Drive (mounted here) and the Hub token comes from the Colab secret ``HF_TOKEN``;
elsewhere the work folder is a local directory and the token comes from the environment,
an earlier ``hf auth login``, or a prompt. Tokens are never printed or written anywhere.

The helpers here only find things, show them (tables, figures, printed summaries: a
notebook's output is its user interface) and call the pipeline; what the command line
also does lives in the pipeline (:mod:`whisper_zh.train.pipeline`, :mod:`whisper_zh.train.data`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Optional

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError, InputNotFoundError
from whisper_zh.train.config import TrainConfig
from whisper_zh.train.publish import (  # noqa: F401  (the notebook's API)
    CURVES_NAME,
    RESULTS_NAME,
    history_table,
    plot_history,
)

DRIVE_MOUNT = "/content/drive"
COLAB_WORK_DIR = os.path.join(DRIVE_MOUNT, "MyDrive", "whisper-zh")
LOCAL_WORK_DIR = os.path.join(os.path.expanduser("~"), "whisper-zh")
# The runtime's own disk in Colab: a Common Voice archive (~21 GB for zh-CN) does not fit
# a free 15 GB Drive, and only the prepared cache and the checkpoints must outlive the runtime.
COLAB_LOCAL_DIR = "/content"

# What a run in "smoke" mode changes: a few minutes end to end, its own output folder, no
# Hub push, so the real run never resumes from it.
SMOKE_RUN = dict(max_train_samples=64, max_steps=20, save_steps=10, eval_steps=10, eval_max_samples=16,
                 test_split="", zero_shot_eval=False, ct2_quantization="", hub_model_id=None,
                 output_dir="smoke-run")
# Parameters that Colab's forms cannot leave empty: 0 there means "derived from the data" (the
# learning rate: from the kind of run, TrainConfig.peak_learning_rate).
DERIVED_WHEN_ZERO = ("save_steps", "eval_steps", "warmup_steps", "max_train_samples", "learning_rate")


# --------------------------------------------------------------------------------------
# Where we run, where things go
# --------------------------------------------------------------------------------------


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def mount_drive() -> str:
    """Mount Google Drive at /content/drive (once per runtime); return the mount point."""
    if not os.path.isdir(os.path.join(DRIVE_MOUNT, "MyDrive")):
        from google.colab import drive

        drive.mount(DRIVE_MOUNT)
    return DRIVE_MOUNT


def prepare_work_dir(work_dir: Optional[str] = None) -> str:
    """The folder that holds the dataset, the cache and the checkpoints, created if needed.

    ``None`` means MyDrive/whisper-zh in Colab (so a disconnect loses nothing) and
    ~/whisper-zh elsewhere. A folder on Drive mounts Drive first."""
    colab = in_colab()
    if work_dir is None:
        work_dir = COLAB_WORK_DIR if colab else LOCAL_WORK_DIR
    work_dir = os.path.abspath(os.path.expanduser(work_dir))
    if colab and work_dir.startswith(DRIVE_MOUNT + os.sep):
        mount_drive()
    os.makedirs(work_dir, exist_ok=True)
    print(f"work folder: {work_dir}{' (Google Drive)' if work_dir.startswith(DRIVE_MOUNT) else ''}")
    return work_dir


def extract_dir() -> Optional[str]:
    """Where the split lists and the clips they name are extracted from a release archive:
    in Colab the runtime's local disk, since unpacking ~50k small files onto Drive is slow
    and only the prepared cache (on Drive) needs to survive a disconnect; elsewhere None
    (the default, ``cache_dir/releases``)."""
    return os.path.join(COLAB_LOCAL_DIR, "cv-release") if in_colab() else None


def download_dir(work_dir: str) -> str:
    """Where :func:`download_release` puts an archive: the runtime's local disk in Colab,
    ``work_dir`` elsewhere."""
    return os.path.join(COLAB_LOCAL_DIR, "mcv") if in_colab() else work_dir


def path_in(work_dir: str, path: str) -> str:
    """``path`` if absolute (or ~), else ``work_dir/path``."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(work_dir, path)


def _releases_in(folder: str, skip: Optional[str] = None) -> list[str]:
    """The Common Voice releases directly in ``folder``, found by what they hold (a folder
    with ``<locale>/clips`` and TSVs, or an archive of one), whatever they are called:
    extracted folders first, then archives, each by name."""
    from whisper_zh.train.data import archive_release, find_release_dir

    if not os.path.isdir(folder):
        return []
    entries = sorted(os.path.join(folder, name) for name in os.listdir(folder) if not name.startswith("."))
    entries = [e for e in entries if not skip or os.path.abspath(e) != os.path.abspath(skip)]  # the cache
    folders = [e for e in entries if os.path.isdir(e) and find_release_dir(e)]
    archives = [e for e in entries if os.path.isfile(e) and archive_release(e, max_members=50)]
    return folders or archives


def find_dataset(work_dir: str, dataset: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """The dataset argument for :class:`~whisper_zh.train.config.TrainConfig`.

    ``None``: a Common Voice release (extracted folder, else archive; the last name wins)
    in ``work_dir`` or in :func:`download_dir`, found by content; else, when ``cache_dir``
    holds splits prepared from a release that is gone (a new Colab runtime), that
    release's path: training goes on from the cache. A relative path is looked up in
    ``work_dir`` first; anything else (an absolute path, a Hub dataset id) is returned as given."""
    if dataset is None:
        from whisper_zh.train.data import prepared_records

        found = (_releases_in(work_dir, cache_dir) or _releases_in(download_dir(work_dir), cache_dir) or [None])[-1]
        if found is None:
            gone = [r["source"] for r in prepared_records(cache_dir) if r["source"]["kind"] in ("cv", "cv-tar")
                    and not os.path.exists(r["source"]["location"])]
            if gone:
                found = gone[-1]["location"]
                print(f"dataset: {gone[-1]['release_name']}, prepared in {cache_dir} (the release itself is "
                      "not needed any more)")
                return found
            raise InputNotFoundError(
                f"no Common Voice release in {work_dir}: set MDC_DATASET_ID (and the Colab secret "
                "MDC_API_KEY) to download it, or download the zh-CN release from "
                "https://datacollective.mozillafoundation.org into that folder, or set DATASET to its path")
        print(f"dataset: {found}")
        return found
    path = os.path.expanduser(dataset)
    if not os.path.isabs(path) and os.path.exists(os.path.join(work_dir, path)):
        return os.path.join(work_dir, path)
    return path


def download_release(dataset_id: Optional[str], work_dir: str, cache_dir: str = "cache") -> Optional[str]:
    """Download a Common Voice release from the Mozilla Data Collective with its client
    (``pip install datacollective``) to :func:`download_dir`; return the archive's path.

    Nothing is downloaded when ``dataset_id`` is empty, when a release is already there
    or in ``work_dir``, or when the cache (``cache_dir``, relative to ``work_dir``) holds
    splits prepared from an earlier download (after a disconnect: the cache is all
    training needs). The API key comes from the Colab secret ``MDC_API_KEY`` or the
    ``MDC_API_KEY`` environment variable (where the client reads it); it is never printed."""
    from whisper_zh.errors import MissingExtraError
    from whisper_zh.train.data import prepared_records

    if not dataset_id:
        return None
    target, cache_dir = download_dir(work_dir), path_in(work_dir, cache_dir)
    present = _releases_in(work_dir, cache_dir) or _releases_in(target, cache_dir)
    if present:
        print(f"already here, not downloading: {present[-1]}")
        return present[-1]
    cached = [r["source"] for r in prepared_records(cache_dir)
              if os.path.dirname(r["source"]["location"]) == target]
    if cached:
        print(f"{cached[-1]['release_name']} was prepared into the cache already: not downloading it again")
        return None
    key = _colab_secret("MDC_API_KEY") or os.environ.get("MDC_API_KEY")
    if not key:
        raise ConfigError("no Mozilla Data Collective API key: create one in your account's settings at "
                          "https://datacollective.mozillafoundation.org and add it as the Colab secret MDC_API_KEY "
                          "(or the MDC_API_KEY environment variable)")
    try:
        import datacollective
    except ImportError as err:
        raise MissingExtraError("the download needs the Data Collective client: pip install datacollective") from err
    os.environ["MDC_API_KEY"] = key  # the client reads it there; this process only
    os.makedirs(target, exist_ok=True)
    free = shutil.disk_usage(target).free
    print(f"downloading {dataset_id} to {target} ({free / 1e9:.0f} GB free there)")
    try:
        archive = str(datacollective.download_dataset(dataset_id, download_directory=target, show_progress=True))
    except Exception as err:
        # `from None`: the client's error may quote the request, and with it the key.
        raise ConfigError(f"could not download {dataset_id} ({type(err).__name__}): check the dataset id, "
                          "that you accepted its terms on the website, and MDC_API_KEY") from None
    print(f"downloaded: {archive}")
    return archive


def make_config(work_dir: str, dataset: Optional[str] = None, cache_dir: str = "cache",
                output_dir: Optional[str] = None, smoke_run: bool = False, **values) -> TrainConfig:
    """The :class:`~whisper_zh.train.config.TrainConfig` of the notebook's parameters.

    A parameter left ``None`` keeps TrainConfig's default, and one of
    :data:`DERIVED_WHEN_ZERO` set to 0 (what a Colab form can say) too, so the schedule the
    pipeline derives from the data is not overridden; ``smoke_run`` applies
    :data:`SMOKE_RUN` over all of them. ``dataset`` is found by :func:`find_dataset`; the
    cache and output folders are relative to ``work_dir``; an archive is extracted where
    :func:`extract_dir` says."""
    values = {k: v for k, v in values.items() if v is not None and not (k in DERIVED_WHEN_ZERO and v == 0)}
    if smoke_run:
        values.update(SMOKE_RUN)
        output_dir = SMOKE_RUN["output_dir"]
        print(f"smoke run: {SMOKE_RUN['max_steps']} steps on {SMOKE_RUN['max_train_samples']} clips into "
              f"{SMOKE_RUN['output_dir']}/, no Hub push; set SMOKE_RUN = False for the real run")
    values.pop("output_dir", None)
    cache_dir = path_in(work_dir, cache_dir)
    return TrainConfig(dataset=find_dataset(work_dir, dataset, cache_dir), cache_dir=cache_dir,
                       output_dir=path_in(work_dir, output_dir or TrainConfig.output_dir),
                       extract_dir=extract_dir(), **values)


def show_logs() -> None:
    """Show the pipeline's progress messages in the cells' output, as the command line does."""
    from whisper_zh.logs import configure_logging

    configure_logging()


# --------------------------------------------------------------------------------------
# Hardware and Hub
# --------------------------------------------------------------------------------------


def gpu_report(config=None, require: bool = False) -> dict:
    """Print and return the accelerator: GPU name and memory, and the precision and
    gradient checkpointing that training will use with ``config`` (a TrainConfig).

    With ``require`` and no GPU, stop (ConfigError) rather than let *Run all* train for
    days on a CPU."""
    import torch

    from whisper_zh.train.trainer import (
        resolve_gradient_checkpointing,
        resolve_precision,
    )

    config = config or TrainConfig()
    precision = resolve_precision(config.precision)
    checkpointing = resolve_gradient_checkpointing(config.gradient_checkpointing)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report = {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                  "precision": precision, "gradient_checkpointing": checkpointing}
        print(f"GPU: {report['device']}, {report['memory_gib']} GiB; training in {precision}, "
              f"gradient checkpointing {'on' if checkpointing else 'off'}")
    else:
        report = {"device": "CPU", "memory_gib": None, "precision": precision,
                  "gradient_checkpointing": checkpointing}
        hint = " In Colab: Runtime > Change runtime type > T4 GPU." if in_colab() else ""
        if require:
            raise ConfigError(f"no GPU: this runtime has none.{hint} Or set REQUIRE_GPU = False to train "
                              "on the CPU (days for whisper-small; minutes for a smoke run).")
        print(f"no GPU: training runs on the CPU in {precision}, far slower.{hint}")
    return report


def _colab_secret(name: str) -> Optional[str]:
    """A Colab secret, or None when it is not set or this notebook may not read it."""
    try:
        from google.colab import userdata

        return userdata.get(name) or None
    except Exception:  # not in Colab, secret missing, or access not granted
        return None


def hub_login(required: bool) -> Optional[str]:
    """Make a Hub token available to this process; return the account name.

    Does nothing when ``required`` is false (no Hub repo to push to). Otherwise the token
    comes from the Colab secret ``HF_TOKEN``, the ``HF_TOKEN`` environment variable, an
    earlier ``hf auth login``, or a hidden prompt, in that order. A token found here is
    kept in this process's environment only: it is never printed and never written to
    disk (``huggingface_hub.login`` would store it in ~/.cache/huggingface)."""
    import huggingface_hub

    if not required:
        print("no Hub repo set: checkpoints and the model stay in the output folder")
        return None
    token = _colab_secret("HF_TOKEN") or os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
    if not token:
        import getpass

        try:
            token = getpass.getpass("Hugging Face token with write access (hidden): ").strip()
        except Exception as err:  # a headless run cannot prompt
            raise ConfigError("no Hub token: set the Colab secret HF_TOKEN or the HF_TOKEN environment "
                               "variable, or run `hf auth login`") from err
    os.environ["HF_TOKEN"] = token
    try:
        name = huggingface_hub.whoami(token=token)["name"]
    except Exception as err:
        del os.environ["HF_TOKEN"]
        # `from None`: the original error may quote the request, and with it the token.
        raise ConfigError(f"could not check the token with the Hub ({type(err).__name__}): "
                           "check HF_TOKEN and the connection") from None
    print(f"logged in to the Hub as {name}")
    return name


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def describe_source(config):
    """Open the dataset named in ``config`` and return a table of its splits.

    From an archive, its split lists (TSVs) are extracted here, once, into
    ``config.extract_dir``; a release folder is only read; a release that is gone but
    prepared is described from the cache, without the archive. Columns: split, clips
    listed, and which role (train / eval / test) the split plays in ``config``."""
    import pandas as pd

    from whisper_zh.train.data import list_splits, open_source, release_dir

    source = open_source(config.dataset, config.dataset_config, config.cache_dir)
    roles: dict[str, list[str]] = {}
    for role, splits in config.split_roles().items():
        for split in filter(None, (s.strip() for s in splits.split("+"))):
            roles.setdefault(split, []).append(role)
    if source.kind == "cached":
        print(f"Common Voice release {source.release_name}: prepared in {config.cache_dir}; the release "
              "itself is not needed (clips kept by the preparation are listed)")
    elif source.kind in ("cv", "cv-tar"):
        print(f"Common Voice release {source.release_name}: {release_dir(source, config.cache_dir, config.extract_dir)}")
    else:
        print(f"{source.kind} dataset: {source.location}")
    sizes = list_splits(source, config.cache_dir, config.extract_dir)
    rows = [{"split": s, "clips": n, "used as": ", ".join(roles.get(s, []))} for s, n in sizes.items()]
    return pd.DataFrame(rows).set_index("split")


# Measured (bench/prepare.py, bench/results/prepare-vm.json): the prepared cache of zh-cv-mini's
# 500 Common Voice-style mp3 clips (4.8 s each on average), labels included, is 29.3 kB a clip.
CACHE_BYTES_PER_CLIP = 30_000


def storage_budget(config, work_dir: str, splits=None) -> dict:
    """Print and return the space a run of ``config`` needs on Drive (``work_dir``) against
    what is free there. ``splits``: the table of :func:`describe_source` (or a number of clips).

    Checkpoints follow from the model's parameter count P (read from its config, no
    weights loaded): the newest checkpoint holds fp32 weights (4P bytes) and the Adam
    optimizer state (8P), the best one its weights only (the others' optimizer state is
    deleted, :class:`~whisper_zh.train.checkpoints.OptimizerStateInNewestOnly`); then the
    final model (4P, where a Hub run's Trainer also copies each pushed checkpoint's
    weights) and its int8 CTranslate2 copy (~P); the cache is
    the clips of the splits used (the training split capped at ``max_train_samples``)
    times :data:`CACHE_BYTES_PER_CLIP`. Files deleted through the Drive mount stay in
    Drive's bin (counted against the quota) for 30 days: each save but the newest loses its
    optimizer state there (8P), each checkpoint rotated away its weights (4P), so the
    bin's share is counted too, from the run's schedule."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_zh.train.trainer import resolve_schedule

    with torch.device("meta"):  # the shapes only: no memory, no weights read
        model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(config.model_name_or_path))
    params = sum(p.numel() for p in model.parameters())
    weights, optimizer = 4 * params, 8 * params
    clips = train_clips = splits
    if splits is not None and not isinstance(splits, int):
        cap = config.max_train_samples or None
        used_clips = [(min(n, cap) if cap and "train" in used else n, used)
                      for n, used in zip(splits["clips"], splits["used as"]) if used and n]
        clips = sum(n for n, _ in used_clips)
        train_clips = sum(n for n, used in used_clips if "train" in used)
    saves = 0
    if train_clips:
        schedule = resolve_schedule(config, train_clips)
        saves = schedule.max_steps // schedule.save_steps
    parts = {
        "prepared cache": (clips or 0) * CACHE_BYTES_PER_CLIP,
        "newest checkpoint (weights + optimizer)": weights + optimizer,
        "best checkpoint (weights)": weights,
        "final model": weights,
        "ct2 int8 copy": params if config.ct2_quantization else 0,
        # optimizer states deleted from older checkpoints, and the checkpoints rotated away
        "Drive's bin (deleted, kept 30 days)": max(0, saves - 1) * optimizer + max(0, saves - 2) * weights,
    }
    need = sum(parts.values())
    usage = shutil.disk_usage(work_dir)
    for name, size in parts.items():
        print(f"{name:>36}: {size / 1e9:6.2f} GB")
    print(f"{'needed on ' + work_dir:>36}: {need / 1e9:6.2f} GB (estimate; {params / 1e6:.0f} M parameters)")
    print(f"{'free there':>36}: {usage.free / 1e9:6.2f} GB")
    if need > usage.free:
        print("NOT ENOUGH SPACE: free some (and empty Drive's bin), or use a smaller model or fewer clips")
    return {"parameters": params, "parts": parts, "needed": need, "free": usage.free}


def prepare_stats_table(stats: dict):
    """``PreparedData.stats`` (split -> PrepareStats) -> a table: clips kept and dropped
    (with the reasons), hours of audio, cache size, and clips prepared by this call (0 when
    the cache was reused)."""
    import pandas as pd

    rows = []
    for split, s in stats.items():
        rows.append({
            "split": split,
            "kept": s.kept,
            "dropped": sum(s.dropped.values()),
            "why dropped": ", ".join(f"{reason} {n}" for reason, n in sorted(s.dropped.items())) or "-",
            "hours": round(s.audio_seconds / 3600, 2),
            "cache MiB": round(s.cache_bytes / 2**20, 1),
            "prepared now": s.prepared_now,
        })
    return pd.DataFrame(rows).set_index("split")


def show_examples(dataset, n: int = 3, seed: int = 0):
    """Display ``n`` random rows of a prepared split as a table, each clip playable inline;
    return the table."""
    import pandas as pd
    from IPython.display import Audio, display

    from whisper_zh.train.examples import decode_clip

    n = min(n, len(dataset))
    rows = dataset.shuffle(seed=seed).select(range(n)) if n else dataset
    table = pd.DataFrame({
        "path": rows["path"],
        "sentence": rows["sentence"],
        "seconds": [round(d, 2) for d in rows["duration"]],
        "label tokens": [len(ids) for ids in rows["labels"]],
    })
    display(table)
    for row in rows:
        print(f"{row['path']}: {row['sentence']}")
        display(Audio(decode_clip(row["audio"]), rate=SAMPLE_RATE))
    return table


def show_batch(config, dataset, n: int = 4) -> dict:
    """Collate the first ``n`` training examples of a prepared split as training will
    (timestamped windows and all) and print what the model is given: the shapes, and one
    label decoded with its timestamps. Returns the batch."""
    import types

    from transformers import WhisperConfig, WhisperProcessor

    from whisper_zh.train.trainer import make_collator, training_examples

    processor = WhisperProcessor.from_pretrained(config.model_name_or_path)
    processor.tokenizer.set_prefix_tokens(language=config.language, task=config.task)
    examples = training_examples(config, dataset)
    # the collator reads only the model's config: no need to load the weights here
    model = types.SimpleNamespace(config=WhisperConfig.from_pretrained(config.model_name_or_path))
    collator = make_collator(model, processor)
    order = sorted(range(len(examples)), key=lambda i: not examples.plans[i].timestamps)  # a timestamped one first
    batch = collator([examples[i] for i in order[:n]])
    for name, value in batch.items():
        print(f"{name:>12}: {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}")
    audio = batch["input_audio"]
    print(f"{'':>12}  {audio.shape[1] / SAMPLE_RATE:.1f} s of 16 kHz audio per row (log-mel is computed on the GPU)")
    label = [t for t in batch["labels"][0].tolist() if t != -100]
    print("label 0:", processor.tokenizer.decode(label, decode_with_timestamps=True))
    return batch


def describe_processor(config, example: Optional[str] = None) -> dict:
    """Load the base model's feature extractor and tokenizer, set to ``config``'s language
    and task, print what they produce and check that a sentence survives encode/decode."""
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(config.model_name_or_path)
    processor.tokenizer.set_prefix_tokens(language=config.language, task=config.task)
    fe, tok = processor.feature_extractor, processor.tokenizer
    example = example or "今天天气很好，我们去公园散步吧。"
    ids = tok(example).input_ids
    decoded = tok.decode(ids, skip_special_tokens=True)
    info = {
        "sampling_rate": fe.sampling_rate,
        "mel_bins": fe.feature_size,
        "window_s": fe.chunk_length,
        "vocab_size": len(tok),
        "prefix": tok.decode(tok.prefix_tokens),
        "example_tokens": len(ids),
        "round_trip": decoded == example,
    }
    print(f"feature extractor: {info['mel_bins']} mel bins at {info['sampling_rate']} Hz, "
          f"{info['window_s']} s windows (log-mel is computed per batch on the GPU during training)")
    print(f"tokenizer: {info['vocab_size']} tokens; every label starts with {info['prefix']}")
    print(f"{example!r} -> {info['example_tokens']} tokens -> {decoded!r} "
          f"({'identical' if info['round_trip'] else 'DIFFERENT'})")
    return info


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def training_plan(config) -> dict:
    """Show what :func:`whisper_zh.train.train` will do with ``config``, and get its
    starting point ready.

    Reads the prepared training split from the cache (preparing it only if it is missing)
    and derives the schedule and precision as the pipeline does
    (:func:`whisper_zh.train.plan_training`). Finding where training resumes is the
    pipeline's :func:`whisper_zh.train.find_resume_point`: the newest complete checkpoint
    in the output folder, else, with a Hub repo, the Hub's ``last-checkpoint``, which it
    downloads into the output folder (so this cell can take minutes)."""
    from whisper_zh.train.checkpoints import checkpoint_step, find_resume_point
    from whisper_zh.train.data import prepare_data
    from whisper_zh.train.publish import timestamp_labels
    from whisper_zh.train.trainer import plan_training, training_examples

    data = prepare_data(config, splits=["train"], verbose=False)
    examples = training_examples(config, data.train)
    plan = plan_training(config, len(examples))
    resume_from = find_resume_point(config)
    resume_step = checkpoint_step(resume_from) if resume_from else 0
    schedule = plan.schedule
    shown = {
        "model": config.model_name_or_path,
        "training clips": len(data.train),
        "training examples": plan.n_train,
        "steps": schedule.max_steps,
        "examples per step": schedule.global_batch_size,
        "checkpoint every": schedule.save_steps,
        "evaluate every": schedule.eval_steps if config.eval_split else None,
        "warmup steps": schedule.warmup_steps,
        "precision": plan.precision,
        "gradient checkpointing": plan.gradient_checkpointing,
        "timestamp labels": timestamp_labels(config.timestamp_fraction, config.timestamp_window_s),
        "output folder": config.output_dir,
        "Hub repo": config.hub_model_id,
        "resume from": resume_from,
    }
    for key, value in shown.items():
        print(f"{key:>24}: {value}")
    if resume_from and resume_step >= schedule.max_steps:
        print(f"checkpoint {resume_step} already reaches {schedule.max_steps} steps: training only "
              "reloads it and writes the final model (raise MAX_STEPS to train further)")
    elif resume_from:
        print(f"training resumes at step {resume_step} of {schedule.max_steps}")
    else:
        print("no checkpoint yet: training starts from the base model")
    return shown


def show_results(result) -> dict:
    """Print the outcome of a :class:`~whisper_zh.train.TrainResult` (rates in %) and return
    ``output_dir/results.json``, which :func:`whisper_zh.train.train` wrote (written here
    from ``result`` when it is missing)."""
    from whisper_zh.train.publish import save_results as write

    path = os.path.join(result.output_dir, RESULTS_NAME)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    else:
        summary = write(result)
    for key, value in result.summary().items():
        shown = f"{100 * value:.2f}%" if key.endswith(("_cer", "_wer")) and value is not None else value
        print(f"{key:>16}: {shown}")
    return summary


# --------------------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------------------


def launch_app(model_dir: str, launch: bool = True, **build_kwargs):
    """Build the project's Gradio app (:func:`whisper_zh.app.build_app`, as ``app.py``
    serves it) on ``model_dir`` and, when ``launch``, start it: with a public share link
    in Colab, on localhost elsewhere. Returns the ``gr.Blocks``."""
    from whisper_zh.serve.app import build_app, launch_options

    demo = build_app(model_dir, **build_kwargs)
    if launch:
        demo.launch(share=in_colab(), **launch_options())
    else:
        print(f"built {type(demo).__module__}.{type(demo).__name__} on {model_dir} (not launched)")
    sys.stdout.flush()
    return demo
