"""Training: schedule and precision, kill -9 and resume, incomplete checkpoints, the Hub path."""

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from whisper_zh.config import TrainConfig
from whisper_zh.train import (
    find_resumable_checkpoint, is_complete_checkpoint, resolve_gradient_checkpointing, resolve_precision,
    resolve_schedule)


def tiny_args(data, model, out, cache, max_steps, **extra):
    args = {"dataset": data, "model_name_or_path": model, "output_dir": out, "cache_dir": cache,
            "max_steps": max_steps, "save_steps": 2, "per_device_train_batch_size": 4,
            "max_train_samples": 32, "eval_max_samples": 4, "generation_max_length": 6,
            "logging_steps": 1, "test_split": "", **extra}
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


# --- schedule and hardware ------------------------------------------------------------


def test_schedule_keeps_original_defaults_on_a_full_release():
    s = resolve_schedule(TrainConfig(dataset="x"), n_train=30000)
    assert (s.max_steps, s.save_steps, s.eval_steps, s.warmup_steps, s.global_batch_size) == (1600, 400, 400, 160, 16)


def test_schedule_scales_down_for_a_400_clip_dataset():
    s = resolve_schedule(TrainConfig(dataset="x"), n_train=400)
    # 16 epochs of 25 steps; four evaluations; warmup a tenth of the run
    assert (s.max_steps, s.save_steps, s.eval_steps, s.warmup_steps) == (400, 100, 100, 40)


def test_schedule_counts_gpus_and_accumulation_and_honours_explicit_values():
    cfg = TrainConfig(dataset="x", gradient_accumulation_steps=2, save_steps=50, eval_steps=25, warmup_steps=7)
    s = resolve_schedule(cfg, n_train=6400, world_size=4)
    assert s.global_batch_size == 128 and s.max_steps == 800 and (s.save_steps, s.eval_steps, s.warmup_steps) == (50, 25, 7)
    with pytest.raises(ValueError, match="multiple of eval_steps"):
        resolve_schedule(TrainConfig(dataset="x", save_steps=30, eval_steps=20), n_train=6400)


def test_precision_on_cpu():
    assert resolve_precision("auto") == "fp32"  # CI has no GPU
    assert resolve_precision("fp16") == "fp16"
    assert resolve_gradient_checkpointing(None) is False and resolve_gradient_checkpointing(True) is True
    with pytest.raises(ValueError):
        resolve_precision("int4")


# --- kill -9 and resume -----------------------------------------------------------------


def wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def read_state(checkpoint):
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)


def test_sigkill_mid_run_then_same_command_resumes(tmp_path, zh_cv_mini, tiny_whisper):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "whisper_zh", "train",
           *tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=14)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for(lambda: is_complete_checkpoint(str(out / "checkpoint-4")), 600, first), \
            (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    last_complete = find_resumable_checkpoint(str(out))
    done_step = read_state(last_complete)["global_step"]
    assert 4 <= done_step < 14, "the run must be killed mid-way"

    # A checkpoint left half-written by a kill: newer than the last good one, weights truncated.
    broken = out / f"checkpoint-{done_step + 2}"
    shutil.copytree(last_complete, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    state = read_state(broken)
    state["global_step"] = done_step + 2
    (broken / "trainer_state.json").write_text(json.dumps(state))
    assert not is_complete_checkpoint(str(broken))

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert f"skipping {broken}: incomplete" in output
    assert f"resuming from {out / f'checkpoint-{done_step}'}" in output
    assert not broken.exists() and (out / f"_incomplete-checkpoint-{done_step + 2}").exists()

    final = read_state(find_resumable_checkpoint(str(out)))
    assert final["global_step"] == 14
    logged_steps = [e["step"] for e in final["log_history"] if "loss" in e]
    assert logged_steps == list(range(1, 15)), "every step once: none lost, none repeated"
    assert final["best_model_checkpoint"] is not None
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 14 and summary["eval_cer"] is not None
    # the final model, processor and card are in the output directory
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "whisper_zh_config.json"):
        assert (out / name).exists(), name
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"] == "zh" and generation["task"] == "transcribe"


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"\x00" * 10)  # no trainer_state.json
    assert find_resumable_checkpoint(str(out)) is None
    assert (out / "_incomplete-checkpoint-2").exists() and not (out / "checkpoint-2").exists()
    assert find_resumable_checkpoint(str(tmp_path / "missing")) is None


# --- the Hub path, against a local stand-in for the Hub ----------------------------------


class LocalHub:
    """Stands in for the Hugging Face Hub: repos are folders under ``root``. Records every
    call so the test can check what would have been sent."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def repo(self, repo_id):
        return self.root / repo_id

    def create_repo(self, repo_id, *args, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs.get("token")))
        self.repo(repo_id).mkdir(parents=True, exist_ok=True)
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None,
                      run_as_future=False, token=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, path_in_repo, token))
        target = self.repo(repo_id) / (path_in_repo or "")
        for file in Path(folder_path).rglob("*"):
            rel = file.relative_to(folder_path).as_posix()
            if file.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns or []):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target / rel)
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, **kwargs):
        from huggingface_hub.errors import RepositoryNotFoundError

        self.calls.append(("snapshot_download", repo_id, allow_patterns))
        if not self.repo(repo_id).exists():
            raise RepositoryNotFoundError(f"{repo_id} not found")
        for file in self.repo(repo_id).rglob("*"):
            rel = file.relative_to(self.repo(repo_id)).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns or ["*"]):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, Path(local_dir) / rel)
        return local_dir


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    import huggingface_hub

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: hub.create_repo(*a, **k))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: hub.upload_folder(**k))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "T" * 34)  # must never be written anywhere
    return hub


def test_checkpoints_go_to_the_hub_and_a_lost_output_dir_resumes_from_it(tmp_path, zh_cv_mini, tiny_whisper,
                                                                          local_hub, capsys):
    from whisper_zh.train import parse_config, train

    out, cache = tmp_path / "out", tmp_path / "cache"
    args = tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=4, hub_model_id="someone/whisper-zh-test")
    result = train(parse_config(args))
    assert result.global_step == 4 and result.resumed_from is None
    repo = local_hub.repo("someone/whisper-zh-test")
    assert read_state(repo / "last-checkpoint")["global_step"] == 4
    for name in ("model.safetensors", "tokenizer.json", "README.md", "whisper_zh_config.json"):
        assert (repo / name).exists(), name
    assert not list(repo.glob("checkpoint-*")), "local checkpoint folders are not uploaded as such"
    card = (repo / "README.md").read_text()
    assert "language: zh" in card and f"base_model: {tiny_whisper}" in card and "| steps | 4 " in card
    assert "hardware" in card and "CER" in card
    # the token reached no file, log or call argument
    secret = os.environ["HF_TOKEN"]
    for file in list(out.rglob("*")) + list(repo.rglob("*")):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    assert all(secret not in str(call) for call in local_hub.calls)
    assert secret not in capsys.readouterr().out

    # Colab reset: the output directory is gone; the same command continues from the Hub.
    shutil.rmtree(out)
    args = tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=6, hub_model_id="someone/whisper-zh-test")
    result = train(parse_config(args))
    assert result.resumed_from == str(out / "checkpoint-4")
    assert result.global_step == 6
    assert read_state(repo / "last-checkpoint")["global_step"] == 6
    steps = [e["step"] for e in result.log_history if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- data-parallel --------------------------------------------------------------------


def test_torchrun_trains_data_parallel(tmp_path, zh_cv_mini, tiny_whisper):
    """The same command under torchrun: two processes (gloo on a CPU), one shared cache."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "whisper_zh", "train",
         *tiny_args(zh_cv_mini, tiny_whisper, out, tmp_path / "cache", max_steps=4,
                    per_device_train_batch_size=2)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "on CPU x2" in run.stdout and "global batch" not in run.stdout
    assert "of 4 clips, checkpoint every 2" in run.stdout  # 2 per process x 2 processes
    summaries = [line for line in run.stdout.splitlines() if line.startswith('{"global_step"')]
    assert len(summaries) == 1 and json.loads(summaries[0])["global_step"] == 4
    assert read_state(find_resumable_checkpoint(str(out)))["global_step"] == 4
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 2  # train and dev, prepared once
