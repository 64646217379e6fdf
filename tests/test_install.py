"""Issue 22: serving installs without the training stack.

The extras (the base install and ``[app]`` serve with CTranslate2, no torch), the official
models' published CTranslate2 conversions (a stand-in ``snapshot_download`` records what
would be downloaded), the one-line messages for a model that cannot be had, and, marked
slow, a fresh virtualenv with only ``.[app]`` that transcribes a real clip and serves the
app without torch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _checks import is_chinese  # noqa: E402
from _ct2_base import base_ct2  # noqa: E402
from _media_helpers import plain_clips  # noqa: E402
from whisper_zh.errors import MissingExtraError, ModelNotFoundError  # noqa: E402
from whisper_zh.serve import models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "transformers", "datasets", "accelerate", "peft")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_serving_installs_no_training_stack():
    project = _pyproject()
    serving = [*project["dependencies"], *project["optional-dependencies"]["app"]]
    assert not {_name(r) for r in serving} & set(TRAINING_STACK), serving
    assert {"ctranslate2", "faster-whisper", "gradio", "yt-dlp"} <= {_name(r) for r in serving}


def test_requirements_txt_is_the_app_install():
    """What a Space installs is exactly the base install plus [app]."""
    project = _pyproject()
    serving = sorted([*project["dependencies"], *project["optional-dependencies"]["app"]])
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert sorted(line for line in lines if line and not line.startswith("#")) == serving


def test_train_extra_brings_the_training_stack():
    extras = _pyproject()["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        names = set()
        for r in extras[extra]:
            inner = re.fullmatch(r"whisper-zh\[(.+)\]", r)
            names |= set().union(*(expand(e) for e in inner.group(1).split(","))) if inner else {_name(r)}
        return names

    assert set(TRAINING_STACK) <= expand("train")
    assert expand("transformers") == {"torch", "transformers"}
    assert set(TRAINING_STACK) <= expand("dev") and {"gradio", "pytest"} <= expand("dev")


# -- where a model comes from ----------------------------------------------------------


class StandInHub:
    """``huggingface_hub.snapshot_download`` over a dict {repo id: {file: bytes}}: applies
    ``allow_patterns`` with huggingface_hub's own filter and records every call."""

    def __init__(self, tmp: Path, repos: dict[str, dict[str, bytes]]):
        self.tmp, self.repos, self.calls = tmp, repos, []

    def __call__(self, repo_id: str, allow_patterns=None, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append((repo_id, None if allow_patterns is None else list(allow_patterns)))
        if repo_id not in self.repos:
            # what snapshot_download raises offline for a repo not in the cache
            raise LocalEntryNotFoundError(f"{repo_id} is not cached")
        folder = self.tmp / repo_id.replace("/", "--")
        for name in filter_repo_objects(self.repos[repo_id], allow_patterns=allow_patterns):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(self.repos[repo_id][name])
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)


CT2_REPO = {"config.json": b"{}", "model.bin": b"ct2", "tokenizer.json": b"{}", "vocabulary.json": b"[]",
            "preprocessor_config.json": b"{}", "README.md": b"", ".gitattributes": b"",
            "model.fp32.bin": b"another copy", "pytorch_model.bin": b"weights"}


def _hub(monkeypatch, tmp_path, repos) -> StandInHub:
    import huggingface_hub

    hub = StandInHub(tmp_path / "hub", repos)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    return hub


def test_official_map_matches_faster_whisper():
    from faster_whisper.utils import _MODELS

    for model_id, repo in models.OFFICIAL_CT2.items():
        assert _MODELS[model_id.removeprefix("openai/whisper-")] == repo
    assert set(models.OFFICIAL_CT2) == {f"openai/whisper-{size}" for size in
                                        ("tiny", "base", "small", "medium", "large-v2", "large-v3", "large-v3-turbo")}


def test_ct2_files_are_what_faster_whisper_downloads(monkeypatch, tmp_path):
    import faster_whisper.utils

    hub = _hub(monkeypatch, tmp_path, {"Systran/faster-whisper-small": CT2_REPO})
    faster_whisper.utils.download_model("small")
    assert hub.calls == [("Systran/faster-whisper-small", list(models.CT2_FILES))]


@pytest.mark.parametrize("model_id", sorted(models.OFFICIAL_CT2))
def test_official_models_load_their_published_conversion(monkeypatch, tmp_path, model_id):
    repo = models.OFFICIAL_CT2[model_id]
    hub = _hub(monkeypatch, tmp_path, {repo: CT2_REPO, model_id: {"model.safetensors": b"weights"}})
    monkeypatch.setattr(models, "can_convert", lambda: pytest.fail("an official model was to be converted"))
    found = Path(models.resolve_ct2_model(model_id))
    assert hub.calls == [(repo, list(models.CT2_FILES))]  # one download, of the conversion only
    assert sorted(p.name for p in found.iterdir()) == ["config.json", "model.bin", "preprocessor_config.json",
                                                       "tokenizer.json", "vocabulary.json"]


def test_a_pushed_model_downloads_only_its_ct2_folder(monkeypatch, tmp_path):
    hub = _hub(monkeypatch, tmp_path, {"you/whisper-small-zh": {"ct2/model.bin": b"ct2", "ct2/config.json": b"{}",
                                                                "model.safetensors": b"weights"}})
    found = models.resolve_ct2_model("you/whisper-small-zh")
    assert hub.calls == [("you/whisper-small-zh", ["ct2/*"])]
    assert Path(found).name == "ct2" and not (Path(found).parent / "model.safetensors").exists()


def test_transformers_only_model_without_the_extra(monkeypatch, tmp_path, tiny_whisper):
    """No conversion extra: a clear message naming the pip command, before any weights
    are downloaded."""
    hub = _hub(monkeypatch, tmp_path, {"you/plain-whisper": {"model.safetensors": b"weights", "config.json": b"{}"}})
    monkeypatch.setattr(models, "can_convert", lambda: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no conversion cached earlier
    for model in ("you/plain-whisper", str(tiny_whisper)):
        with pytest.raises(MissingExtraError) as info:
            models.resolve_ct2_model(model)
        assert 'pip install "whisper-zh[transformers]"' in str(info.value) and model in str(info.value)
    assert hub.calls == [("you/plain-whisper", ["ct2/*"])]
    with pytest.raises(MissingExtraError, match=re.escape('pip install "whisper-zh[transformers]"')):
        models.export_ct2(str(tiny_whisper), str(tmp_path / "out"))


def test_offline_model_is_one_clear_error(monkeypatch, tmp_path):
    _hub(monkeypatch, tmp_path, {})
    for model_id in ("opanai/whisper-smal", "openai/whisper-small"):
        with pytest.raises(ModelNotFoundError) as info:
            models.resolve_ct2_model(model_id)
        message = str(info.value)
        assert f"{model_id!r}" in message and "unreachable" in message and "\n" not in message


def test_default_device_does_not_import_torch():
    code = ("import sys\nfrom whisper_zh.serve.engine import default_device\n"
            "assert default_device() in ('cpu', 'cuda')\nassert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_folder_job_without_accelerate(monkeypatch, tmp_path, whisper_base, zh_cv_mini):
    """Without accelerate (the serving install) a folder job runs as one process."""
    from whisper_zh.distributed import SingleProcess, process_state
    from whisper_zh.serve.folder import transcribe_folder

    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` raises ImportError
    monkeypatch.setitem(sys.modules, "accelerate.utils", None)
    assert isinstance(process_state(), SingleProcess)
    rows = plain_clips(zh_cv_mini, 2)
    for row in rows:
        shutil.copy(zh_cv_mini / "clips" / row["path"], tmp_path / row["path"])
    summary = transcribe_folder(tmp_path, tmp_path / "out", ["txt"], str(base_ct2(whisper_base)),
                                backend="ct2", device="cpu", progress=False)
    assert summary.num_processes == 1 and summary.is_main_process and not summary.failed
    for row in rows:
        text = (tmp_path / "out" / Path(row["path"]).with_suffix(".txt")).read_text(encoding="utf-8")
        assert is_chinese(text), (row["sentence"], text)  # accuracy is bench/'s; luck is no test


# -- one line when the model cannot be had ----------------------------------------------


class _RepoNotFound(BaseHTTPRequestHandler):
    """A stand-in Hub that knows no repository: 404 with the Hub's RepoNotFound code."""

    def _answer(self):
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"{}")

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def empty_hub():
    server = HTTPServer(("127.0.0.1", 0), _RepoNotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_ID", "WHISPER_ZH_DEBUG"))}
    return {**env, "HF_HOME": str(tmp_path / "hf"), **extra}


@pytest.mark.parametrize("hub", ["mistyped", "unreachable"])
def test_cli_and_app_end_in_one_line(tmp_path, zh_cv_mini, empty_hub, hub):
    clip = zh_cv_mini / "clips" / plain_clips(zh_cv_mini, 1)[0]["path"]
    env = _env(tmp_path, HF_ENDPOINT=empty_hub if hub == "mistyped" else _closed_port(),
               MODEL_ID="opanai/whisper-smal", PYTHONPATH=str(REPO))
    expected = "is not on the Hugging Face Hub" if hub == "mistyped" else "the Hugging Face Hub is unreachable"
    for argv in ([sys.executable, "-m", "whisper_zh", "transcribe", str(clip)], [sys.executable, "app.py"]):
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert "'opanai/whisper-smal'" in lines[0] and expected in lines[0], lines
        assert "local model folder" in lines[0]


# -- a fresh virtualenv with only [app] --------------------------------------------------


def _du(path: Path) -> int:
    return sum(os.lstat(os.path.join(root, f)).st_size for root, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def app_venv(tmp_path_factory) -> Path:
    """A virtualenv with ``pip install ".[app]"`` of this checkout and nothing else
    (a few minutes: one per run)."""
    venv = tmp_path_factory.mktemp("app-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{REPO}[app]"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_app_install_serves_without_torch(app_venv, tmp_path, whisper_base, zh_cv_mini):
    python = app_venv / "bin" / "python"
    env = _env(tmp_path, HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    for module in TRAINING_STACK:
        probe = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, env=env, capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the [app] install"
    assert _du(app_venv) <= 2**30, f"[app] install is {_du(app_venv) / 2**20:.0f} MB"

    row = plain_clips(zh_cv_mini, 1)[0]
    clip = zh_cv_mini / "clips" / row["path"]
    cli = [str(app_venv / "bin" / "whisper-zh"), "transcribe", str(clip)]
    proc = subprocess.run([*cli, "--model", str(base_ct2(whisper_base))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_chinese(proc.stdout.strip()), (row["sentence"], proc.stdout)

    # a transformers-only model (whisper-base as saved by transformers) cannot be converted here
    proc = subprocess.run([*cli, "--model", str(whisper_base)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("whisper-zh transcribe: error: ") and 'pip install "whisper-zh[transformers]"' in last


@pytest.mark.slow
def test_app_install_runs_the_app(app_venv, tmp_path, whisper_base, zh_cv_mini):
    """``python app.py`` in the [app] install serves a CTranslate2 model and transcribes a real clip."""
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path, HF_HUB_OFFLINE="1", MODEL_ID=str(base_ct2(whisper_base)), GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    env.pop("PYTHONPATH", None)
    shutil.copy(REPO / "app.py", tmp_path / "app.py")  # so that the installed package is the one imported
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(app_venv / "bin" / "python"), "app.py"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not serve its page"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        row = plain_clips(zh_cv_mini, 1)[0]
        status, text, *_ = Client(url, verbose=False).predict(
            handle_file(str(zh_cv_mini / "clips" / row["path"])), "simplified", "transcribe", "", False,
            api_name="/transcribe_file")
        assert is_chinese(text), (row["sentence"], text)  # accuracy is bench/'s; luck is no test
        assert "(ct2, cpu)" in status, status
    finally:
        proc.terminate()
        proc.wait(30)


def test_training_commands_name_the_train_extra(monkeypatch, capsys):
    import importlib.util

    from whisper_zh.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    for command in ("prepare", "train", "evaluate"):
        assert main([command, "--dataset", "nowhere"]) == 1
        line = capsys.readouterr().err.strip()
        assert line == (f'whisper-zh {command}: error: whisper-zh {command} (datasets) needs the [train] extra, '
                        f'which is not installed: pip install "whisper-zh[train]"')


@pytest.mark.slow
def test_app_install_names_the_train_extra(app_venv, tmp_path):
    env = _env(tmp_path)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(app_venv / "bin" / "whisper-zh"), "train", "--dataset", "nowhere"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert 'pip install "whisper-zh[train]"' in proc.stderr
