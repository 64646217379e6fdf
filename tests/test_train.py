"""Training: schedule and precision, kill -9 and resume, incomplete checkpoints, the Hub path."""

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from whisper_zh.errors import ConfigError
from whisper_zh.train.config import TrainConfig
from whisper_zh.train.checkpoints import checkpoint_step, find_resumable_checkpoint, is_complete_checkpoint
from whisper_zh.hub import is_hub_id
from whisper_zh.train.trainer import resolve_gradient_checkpointing, resolve_precision, resolve_schedule


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
    with pytest.raises(ConfigError, match="multiple of eval_steps"):
        resolve_schedule(TrainConfig(dataset="x", save_steps=30, eval_steps=20), n_train=6400)


def test_a_config_mistake_is_one_line_from_the_command_line(tmp_path, zh_cv_mini, tiny_whisper):
    run = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "train",
         *tiny_args(zh_cv_mini, tiny_whisper, tmp_path / "out", tmp_path / "cache", max_steps=4,
                    save_steps=3, eval_steps=2, max_train_samples=4)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "whisper-zh train: error: save_steps (3) must be a multiple of eval_steps (2) "
        "so that every checkpoint has a score to rank it by")
    assert not (tmp_path / "out").exists(), "nothing is loaded or written before the configuration is checked"


def test_precision_on_cpu():
    assert resolve_precision("auto") == "fp32"  # CI has no GPU
    assert resolve_precision("fp16") == "fp16"
    assert resolve_gradient_checkpointing(None) is False and resolve_gradient_checkpointing(True) is True
    with pytest.raises(ConfigError):
        resolve_precision("int4")


def test_spec_augment_is_an_option_off_by_default(tiny_whisper):
    from whisper_zh.train.trainer import configure_spec_augment, load_model_and_processor
    from whisper_zh.cli import parse_train_config as parse_config

    model, _ = load_model_and_processor(str(tiny_whisper))
    configure_spec_augment(model, parse_config(["--dataset", "x"]))
    assert model.config.apply_spec_augment is False
    config = parse_config(["--dataset", "x", "--apply-spec-augment", "true", "--mask_time_prob", "0.1",
                           "--mask_feature_prob", "0.2"])
    configure_spec_augment(model, config)
    assert (model.config.apply_spec_augment, model.config.mask_time_prob, model.config.mask_feature_prob) == \
        (True, 0.1, 0.2)
    # the encoder masks in training mode only
    features = torch.ones(1, model.config.num_mel_bins, 3000)
    model.train()
    assert (model.model._mask_input_features(features) == 0).any()
    model.eval()
    assert torch.equal(model.model._mask_input_features(features), features)


def test_training_examples_of_a_prepared_split_reach_the_trainer_as_timestamped_windows(tmp_path, zh_cv_mini,
                                                                                          tiny_whisper):
    """The pipeline's own path: the prepared cache -> planned examples -> the collator's batches."""
    from whisper_zh.train.trainer import load_model_and_processor, make_collator, training_examples
    from whisper_zh.train.data import prepare_data

    config = TrainConfig(dataset=str(zh_cv_mini), model_name_or_path=str(tiny_whisper), cache_dir=str(tmp_path),
                         eval_split="", test_split="")
    clips = prepare_data(config, splits=["train"], verbose=False).train
    examples = training_examples(config, clips)
    windows = [p for p in examples.plans if p.timestamps]
    assert sorted(r for p in examples.plans for r in p.rows) == list(range(len(clips))) == list(range(400))
    assert 0.4 < sum(len(p.rows) for p in windows) / 400 < 0.6 and len(examples) < 300
    assert all(sum(clips[r]["duration"] for r in p.rows) <= 30.0 for p in windows)
    assert f"400 clips in {len(examples)} examples" in examples.describe()

    model, processor = load_model_and_processor(str(tiny_whisper))
    collate = make_collator(model, processor)
    timestamp_begin = processor.tokenizer.convert_tokens_to_ids("<|0.00|>")
    batch = collate([examples[i] for i in range(len(examples))][:64])
    stamped = (batch["labels"] >= timestamp_begin).sum(dim=1)
    expected = [2 * len(examples.plans[i].rows) if examples.plans[i].timestamps else 0 for i in range(64)]
    assert stamped.tolist() == expected, "two timestamps per clip of a window, none elsewhere"
    assert batch["input_audio"].shape[1] <= 30 * 16000
    with pytest.raises(ConfigError, match="timestamp_window_s"):
        training_examples(TrainConfig(dataset="x", timestamp_window_s=45), clips)
    with pytest.raises(ConfigError, match="timestamp_fraction"):
        training_examples(TrainConfig(dataset="x", timestamp_fraction=1.5), clips)


def test_hub_ids_and_local_paths(tmp_path):
    assert is_hub_id("openai/whisper-small") and is_hub_id("whisper-small")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("/no/such/dir/model") and not is_hub_id("./model")


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


def kill_at_checkpoint(cmd, checkpoint, log_path) -> None:
    """Run ``cmd`` (a training command) until ``checkpoint`` is complete, then SIGKILL it,
    as a machine that dies mid-run would; its output goes to ``log_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            assert wait_for(lambda: is_complete_checkpoint(str(checkpoint)), 600, run), \
                log_path.read_text()[-3000:]
            run.send_signal(signal.SIGKILL)
            run.wait()
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == -signal.SIGKILL


def read_state(checkpoint):
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)


def test_sigkill_mid_run_then_same_command_resumes(tmp_path, zh_cv_mini, tiny_whisper):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "whisper_zh", "train",
           *tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=14)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kill_at_checkpoint(cmd, out / "checkpoint-4", tmp_path / "first.log")
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
    kept = sorted((checkpoint_step(p.name), p) for p in out.glob("checkpoint-*"))
    assert [step for step, p in kept if (p / "optimizer.pt").exists()] == [14], "only the newest keeps Adam state"
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 14 and summary["eval_cer"] is not None
    # the final model, processor and card are in the output directory
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "whisper_zh_config.json", "results.json", "training_curves.png", "ct2/model.bin"):
        assert (out / name).exists(), name
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"] == "zh" and generation["task"] == "transcribe"


def test_only_the_newest_checkpoint_keeps_its_optimizer_state(tmp_path):
    """The best checkpoint needs its weights, resuming needs the newest's optimizer state:
    the others' (two thirds of a full fine-tune's checkpoint) are deleted once a newer one
    is saved, on the main process only, and not while a push to the Hub is uploading."""
    from types import SimpleNamespace

    from whisper_zh.train.checkpoints import OptimizerStateInNewestOnly

    out = tmp_path / "out"
    for step in (4, 8, 12):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
            (out / f"checkpoint-{step}" / name).write_bytes(b"x")
    args, main = SimpleNamespace(output_dir=str(out)), SimpleNamespace(is_world_process_zero=True)

    def kept():
        return [step for step in (4, 8, 12, 16) if (out / f"checkpoint-{step}" / "optimizer.pt").exists()]

    OptimizerStateInNewestOnly().on_save(args, SimpleNamespace(is_world_process_zero=False), None)
    assert kept() == [4, 8, 12]
    # the Trainer has begun pushing checkpoint-12, the newest, when on_save comes
    upload = SimpleNamespace(done=False)
    upload.is_done = lambda: upload.done
    trainer = SimpleNamespace(push_in_progress=upload)
    callback = OptimizerStateInNewestOnly(trainer)
    callback.on_save(args, main, None)
    assert kept() == [12]
    # checkpoint-16 is saved while 12 still uploads (no new push starts): 12 keeps its state
    (out / "checkpoint-16").mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (out / "checkpoint-16" / name).write_bytes(b"x")
    callback.on_save(args, main, None)
    assert kept() == [12, 16]
    upload.done = True
    callback.on_save(args, main, None)
    assert kept() == [16]
    for step in (4, 8, 12, 16):  # weights, scheduler and state stay
        assert {p.name for p in (out / f"checkpoint-{step}").iterdir()} >= {
            "model.safetensors", "scheduler.pt", "trainer_state.json"}


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
    from whisper_zh.cli import parse_train_config as parse_config
    from whisper_zh.train.pipeline import train

    out, cache = tmp_path / "out", tmp_path / "cache"
    args = tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=4, hub_model_id="someone/whisper-zh-test",
                     test_split="test")
    result = train(parse_config(args))
    assert result.global_step == 4 and result.resumed_from is None
    repo = local_hub.repo("someone/whisper-zh-test")
    assert read_state(repo / "last-checkpoint")["global_step"] == 4
    # the model, its fast CTranslate2 copy, the curves, the numbers and the card went up together
    for name in ("model.safetensors", "tokenizer.json", "README.md", "whisper_zh_config.json", "results.json",
                 "training_curves.png", "ct2/model.bin", "ct2/tokenizer.json", "ct2/preprocessor_config.json",
                 "ct2/encoder.safetensors"):
        assert (repo / name).exists(), name
    assert not list(repo.glob("checkpoint-*")), "local checkpoint folders are not uploaded as such"
    check_card_against_results(repo, tiny_whisper)
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


def check_card_against_results(repo: Path, base_model: Path) -> None:
    """Every number of the model card is the one in results.json, as a percentage once."""
    from huggingface_hub import ModelCard

    results = json.loads((repo / "results.json").read_text())
    card = ModelCard.load(repo / "README.md")
    data = card.data
    assert data.language == "zh" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.base_model is None, "a local base model is not a Hub link"
    assert str(base_model) not in card.content and "huggingface.co//" not in card.content
    assert results["dataset"] == "zh-cv-mini" and "`zh-cv-mini`" in card.text
    assert results["base_model"] == base_model.name and f"`{base_model.name}`" in card.text
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    assert values == {"test CER": round(100 * results["test_cer"], 2),
                      "zero-shot CER of the base model": round(100 * results["zero_shot_cer"], 2)}
    assert all(r.dataset_split == "test" and r.dataset_name == "zh-cv-mini" for r in data.eval_results)
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card.text, re.M))
    assert rows["test CER"] == f"{100 * results['test_cer']:.2f}%"
    assert rows["zero-shot CER of the base model (same test clips)"] == f"{100 * results['zero_shot_cer']:.2f}%"
    assert rows["test split"] == f"`test` ({results['test_clips']} clips)" and results["test_clips"] == 50
    assert rows["training clips"] == f"{results['train_clips']} (`train`)"
    assert rows["steps"] == f"{results['global_step']} of batch {results['global_batch_size']}"
    best = results["eval_cer"]
    assert rows["best eval CER (`dev`)"] == f"{100 * best:.2f}%"
    # the per-step table: one line per logged step, the same losses and CERs
    steps = re.findall(r"^\| (\d+) \| ([\d.]*) \| ([\d.]*) \| ([\d.%]*) \|$", card.text, re.M)
    assert [int(s[0]) for s in steps] == [h["step"] for h in results["history"]] == [1, 2, 3, 4]
    for (step, loss, eval_loss, cer), h in zip(steps, results["history"]):
        assert float(loss) == pytest.approx(h["training loss"], abs=1e-4)
        if h["eval CER"] is not None:
            assert cer == f"{100 * h['eval CER']:.2f}%" and float(eval_loss) == pytest.approx(h["eval loss"], abs=1e-4)
    assert "training_curves.png" in card.text
    assert 'allow_patterns=["ct2/*"]' in card.text and "whisper-zh transcribe" in card.text


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
    logs = run.stdout + run.stderr
    assert "on CPU x2" in logs and "global batch" not in logs
    assert "of 4 examples, checkpoint every 2" in logs  # 2 per process x 2 processes
    summaries = [line for line in run.stdout.splitlines() if line.startswith('{"global_step"')]
    assert len(summaries) == 1 and json.loads(summaries[0])["global_step"] == 4
    assert read_state(find_resumable_checkpoint(str(out)))["global_step"] == 4
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 2  # train and dev, prepared once


def test_each_evaluation_reads_its_own_split_when_loader_workers_persist(tmp_path, zh_cv_mini, tiny_whisper,
                                                                          monkeypatch):
    """On a GPU the loaders' workers persist, and transformers then hands the first
    evaluation's loader (the zero-shot pass over test) to every later one."""
    from whisper_zh.cli import parse_train_config as parse_config
    from whisper_zh.train import pipeline

    scored = []
    make = pipeline.make_compute_metrics

    def counting(tokenizer, language):
        compute = make(tokenizer, language)

        def compute_metrics(prediction):
            scored.append(len(prediction.label_ids))
            return compute(prediction)
        return compute_metrics

    monkeypatch.setattr(pipeline, "make_compute_metrics", counting)
    args = tiny_args(zh_cv_mini, tiny_whisper, tmp_path / "out", tmp_path / "cache", max_steps=2, save_steps=1,
                     test_split="test", zero_shot_eval=True, dataloader_num_workers=1,
                     preprocessing_num_workers=1)
    config = parse_config(args)
    assert pipeline.build_training_arguments(config, pipeline.plan_training(config, 32).schedule, "fp32",
                                             False).dataloader_persistent_workers
    pipeline.train(config)
    test_clips = scored[0]
    assert test_clips > 4
    assert scored == [test_clips, 4, 4, test_clips]  # zero-shot on test, dev at steps 1 and 2, test


def test_processes_wait_for_each_other_hours_not_minutes(tmp_path):
    """The first process prepares the data, downloads or pushes while the others wait at a
    barrier: their process group waits PROCESS_GROUP_TIMEOUT, not NCCL's 10 minutes (nor
    transformers' ddp_timeout, which comes after the state is made)."""
    script = tmp_path / "group_timeout.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from whisper_zh.distributed import process_state\n"
        "from whisper_zh.train.config import TrainConfig\n"
        "from whisper_zh.train.trainer import build_training_arguments, resolve_schedule\n"
        "state = process_state()\n"
        "config = TrainConfig(dataset='unused', output_dir='unused')\n"
        "build_training_arguments(config, resolve_schedule(config, 64, state.num_processes), 'fp32', False)\n"
        "backend = dist.group.WORLD._get_backend(torch.device('cpu'))\n"
        "with open(f'timeout-{state.process_index}.txt', 'w') as f:  # one file each: prints interleave\n"
        "    f.write(str(backend.options._timeout.total_seconds()))\n")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    from whisper_zh.distributed import PROCESS_GROUP_TIMEOUT

    waits = [float((tmp_path / f"timeout-{rank}.txt").read_text()) for rank in (0, 1)]
    assert waits == [PROCESS_GROUP_TIMEOUT.total_seconds()] * 2
    assert PROCESS_GROUP_TIMEOUT.total_seconds() >= 3600


def test_a_run_resumed_from_the_hub_keeps_its_best_checkpoint(tmp_path, zh_cv_mini, tiny_whisper, local_hub,
                                                              monkeypatch):
    """The best checkpoint by eval CER goes up as best-checkpoint/; a run that lost its
    output folder downloads it with last-checkpoint, and ends holding the best of all its
    evaluations (it forgot the best folder, kept its CER, and published the last weights).
    The evaluations' CERs are scripted (steps 1-4: 0.5, 0.7, 0.9, 0.8), so the best is
    step 1 whatever a random model writes."""
    from whisper_zh.cli import parse_train_config as parse_config
    from whisper_zh.train import pipeline
    from whisper_zh.train.pipeline import train

    scripted = iter([0.5, 0.7, 0.9, 0.8])
    monkeypatch.setattr(pipeline, "make_compute_metrics",
                        lambda tokenizer, language: lambda prediction: {"cer": next(scripted), "wer": 1.0})
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = train(parse_config(tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=3, save_steps=1,
                                         hub_model_id="someone/whisper-zh-best")))
    repo = local_hub.repo("someone/whisper-zh-best")
    assert read_state(repo / "best-checkpoint")["global_step"] == 1
    assert first.best_checkpoint.endswith("checkpoint-1") and first.eval_cer == 0.5
    assert not (repo / "best-checkpoint" / "optimizer.pt").exists()

    shutil.rmtree(out)
    result = train(parse_config(tiny_args(zh_cv_mini, tiny_whisper, out, cache, max_steps=4, save_steps=1,
                                          hub_model_id="someone/whisper-zh-best")))
    assert result.resumed_from == str(out / "checkpoint-3")
    evaluations = {e["step"]: e["eval_cer"] for e in result.log_history if "eval_cer" in e}
    assert sorted(evaluations) == [1, 2, 3, 4]
    assert evaluations == {1: 0.5, 2: 0.7, 3: 0.9, 4: 0.8} and result.eval_cer == 0.5
    assert result.best_checkpoint == str(out / "checkpoint-1")
    assert read_state(result.best_checkpoint)["global_step"] == 1
