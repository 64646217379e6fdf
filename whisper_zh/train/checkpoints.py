"""Checkpoints a run can trust, and where a run resumes.

A checkpoint counts only when complete (every file the Trainer writes, weights whose
size matches their header); a half-written one (a kill mid-save) is moved aside, never
loaded or pushed. With the output folder gone (a Colab reset), the Hub repo's
``last-checkpoint`` is downloaded instead, with ``best-checkpoint`` (pushed by
:class:`BestCheckpointToHub`) when the best is another one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from typing import Optional

from transformers import TrainerCallback

from whisper_zh.distributed import process_state
from whisper_zh.errors import ConfigError
from whisper_zh.train.config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
HUB_LAST = "last-checkpoint"  # where hub_strategy="checkpoint" pushes the newest
HUB_BEST = "best-checkpoint"  # where BestCheckpointToHub pushes the best by eval CER


OPTIMIZER_STATE = "optimizer.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def is_complete_checkpoint(path: str) -> bool:
    """True when the Trainer finished writing ``path``: its ``trainer_state.json`` (written
    last) parses and names this step, and the weights (the model's, or a LoRA run's
    adapter and its ``adapter_config.json``), optimizer and scheduler files are whole
    (their headers and central directories read back)."""
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
        if is_adapter_checkpoint(path):
            with open(os.path.join(path, ADAPTER_CONFIG)) as f:
                json.load(f)
            weights.append(os.path.join(path, ADAPTER_WEIGHTS))
        if not weights:
            return False
        for w in weights:
            with safe_open(w, "pt") as handle:
                handle.keys()
            _check_safetensors_size(w)
        for name in (OPTIMIZER_STATE, "scheduler.pt"):
            with zipfile.ZipFile(os.path.join(path, name)) as z:
                z.namelist()
    except Exception:  # any unreadable file means the checkpoint is not whole
        return False
    return True


def is_adapter_checkpoint(path: str) -> bool:
    """A LoRA run's checkpoint: the Trainer saved the adapter, not the model."""
    return os.path.isfile(os.path.join(path, ADAPTER_WEIGHTS))


def check_resume_kind(checkpoint: Optional[str], lora: bool) -> None:
    """Raise ConfigError when ``checkpoint`` is of the other kind of run (adapter vs full
    weights): resuming it would load nothing that fits."""
    if checkpoint is None or is_adapter_checkpoint(checkpoint) == lora:
        return
    found, wanted = ("a full fine-tune", "LoRA") if lora else ("a LoRA adapter", "full fine-tune")
    raise ConfigError(f"{checkpoint} is {found} checkpoint and this is a {wanted} run (lora_r): "
                      "use another output_dir (or hub_model_id), or resume=false")


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


class OptimizerStateInNewestOnly(TrainerCallback):
    """Resuming needs the optimizer state of the newest checkpoint only; the best one,
    kept for ``load_best_model_at_end``, needs only its weights. So once a checkpoint is
    saved, the others lose their Adam state: two thirds of a full fine-tune's checkpoint
    (whisper-small: 1.9 of 2.9 GB on Drive). The newest always keeps it, so a run killed
    while saving the next one resumes from a whole checkpoint
    (:func:`find_resumable_checkpoint` looks at the newest first).

    ``trainer``: the checkpoint its Hub push is still uploading keeps its state until the
    upload is done. (The Trainer starts the push of the checkpoint it just saved before
    ``on_save``, and starts no other while one runs: a push not seen before is of the
    newest checkpoint.)"""

    def __init__(self, trainer=None):
        self.trainer = trainer
        self._push, self._pushed = None, None  # the push in progress, and the checkpoint it uploads

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        push = getattr(self.trainer, "push_in_progress", None)
        uploading = None
        if push is not None and not push.is_done():
            if push is not self._push:
                self._push, self._pushed = push, newest_checkpoint(args.output_dir)
            uploading = self._pushed
        drop_stale_optimizer_state(args.output_dir, keep=uploading)


class BestCheckpointToHub(TrainerCallback):
    """With a Hub repo, the best checkpoint by eval CER goes up too, as ``best-checkpoint/``
    (its weights and state, not its optimizer state), whenever the best changes. The
    Trainer pushes only the newest: a run resumed from the Hub (its output folder lost)
    found its best checkpoint gone, kept the best CER, and ended publishing the last
    weights under that CER. The best's weights are mostly the bytes just pushed as
    ``last-checkpoint``, which the Hub stores once."""

    def __init__(self, trainer):
        self.trainer = trainer
        self._pushed: Optional[str] = None
        self._uploads: list = []
        self._api = None  # one client: its uploads run one after another, in order

    def on_save(self, args, state, control, **kwargs):
        best = state.best_model_checkpoint
        if not (args.push_to_hub and state.is_world_process_zero and best) or best == self._pushed:
            return
        if not os.path.isdir(best):
            return
        from huggingface_hub import HfApi

        self._pushed = best
        self._api = self._api or HfApi()
        repo_id = getattr(self.trainer, "hub_model_id", None) or args.hub_model_id
        self._uploads.append(self._api.upload_folder(
            repo_id=repo_id, folder_path=best, path_in_repo=HUB_BEST, run_as_future=True,
            ignore_patterns=[OPTIMIZER_STATE, "_*"],
            commit_message=f"best checkpoint: step {checkpoint_step(best)}, CER {state.best_metric:.4f}"))

    def on_train_end(self, args, state, control, **kwargs):
        for upload in self._uploads:
            try:
                upload.result()
            except Exception as err:  # the model itself is pushed at the end all the same
                logger.warning("the best checkpoint's upload to the Hub failed: %s", err)
        self._uploads.clear()


def _checkpoints(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folder names in ``output_dir``, oldest first."""
    steps = {name: checkpoint_step(name) for name in os.listdir(output_dir)}
    return sorted((name for name, step in steps.items() if step is not None), key=steps.get)


def newest_checkpoint(output_dir: str) -> Optional[str]:
    found = _checkpoints(output_dir)
    return found[-1] if found else None


def drop_stale_optimizer_state(output_dir: str, keep: Optional[str] = None) -> list[str]:
    """Delete the optimizer state of every ``checkpoint-N`` in ``output_dir`` but the
    newest (and ``keep``, a folder name); returns the files deleted."""
    dropped = []
    for name in _checkpoints(output_dir)[:-1]:
        if name == keep:
            continue
        path = os.path.join(output_dir, name, OPTIMIZER_STATE)
        if os.path.isfile(path):
            size = os.path.getsize(path)
            os.remove(path)
            dropped.append(path)
            logger.info("deleted %s (%.0f MB): only the newest checkpoint's is needed to resume", path, size / 2**20)
    return dropped


def find_resumable_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None.

    Incomplete ones (a run killed while saving) are moved aside to
    ``_incomplete-checkpoint-N`` so the Trainer never loads or rotates them (and, by the
    leading underscore, never pushes them with the output directory)."""
    if not os.path.isdir(output_dir):
        return None
    for name in reversed(_checkpoints(output_dir)):
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
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    tmp = os.path.join(output_dir, "_hub-download")  # "_*" is never pushed with the output dir
    try:
        huggingface_hub.snapshot_download(repo_id, allow_patterns=[f"{HUB_LAST}/*"], local_dir=tmp)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    source = os.path.join(tmp, HUB_LAST)
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
    _fetch_hub_best(repo_id, output_dir, target)
    return target


def _fetch_hub_best(repo_id: str, output_dir: str, last: str) -> None:
    """Put the best checkpoint that ``last`` (just downloaded) names beside it, from the
    repo's ``best-checkpoint/``, and name it in ``last``'s state by its path here. Without
    it, the best so far is forgotten (the best is then chosen among the evaluations still
    to come), rather than kept as a CER no weights of this run have."""
    import huggingface_hub

    state_file = os.path.join(last, "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    named = state.get("best_model_checkpoint")
    best_step = checkpoint_step(named) if named else None
    if best_step is None or best_step == checkpoint_step(last):
        if named:
            state["best_model_checkpoint"] = last
    else:
        target = os.path.join(output_dir, f"checkpoint-{best_step}")
        tmp = os.path.join(output_dir, "_hub-download-best")
        source = os.path.join(tmp, HUB_BEST)
        # a network error is raised, as for last-checkpoint: only a best that is not there
        # (a run from before it was pushed) or unreadable is forgotten
        huggingface_hub.snapshot_download(repo_id, allow_patterns=[f"{HUB_BEST}/*"], local_dir=tmp)
        try:
            with open(os.path.join(source, "trainer_state.json")) as f:
                found = json.load(f).get("global_step")
        except (OSError, ValueError):  # nothing matched the pattern: no such folder
            found = None
        if found == best_step:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(source, target)
            state["best_model_checkpoint"] = target
            logger.info("downloaded %s/%s (step %d) to %s", repo_id, HUB_BEST, best_step, target)
        else:
            logger.warning("the best checkpoint of %s (step %d) is not on the Hub: the best is chosen among "
                           "the evaluations from here on", repo_id, best_step)
            state.update(best_model_checkpoint=None, best_metric=None, best_global_step=None)
        shutil.rmtree(tmp, ignore_errors=True)
    with open(state_file + ".tmp", "w") as f:  # the checkpoint stays whole if this is cut short
        json.dump(state, f, indent=2, sort_keys=True)
    os.replace(state_file + ".tmp", state_file)


def find_resume_point(config: TrainConfig, state=None) -> Optional[str]:
    """Where training continues: the newest complete checkpoint in ``output_dir``, else
    (with a Hub repo) the Hub's ``last-checkpoint``, downloaded into ``output_dir``; None
    to start afresh (or when ``config.resume`` is off). The main process looks first (and
    downloads); the other processes of a multi-GPU run then find what it left."""
    if not config.resume:
        return None
    state = state or process_state()
    with state.main_process_first():
        resume_from = find_resumable_checkpoint(config.output_dir)
        if resume_from is None and config.hub_model_id and state.is_main_process:
            resume_from = fetch_hub_checkpoint(config.hub_model_id, config.output_dir)
    return resume_from
