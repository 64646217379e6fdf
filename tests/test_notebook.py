"""The Colab notebook: executed headless twice (a fresh run, then a rerun that must reuse
the cache and resume), the committed copy kept clean, and the helpers it calls."""

from __future__ import annotations

import json
import os
import re
import sys
import types
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from whisper_zh import notebook as nb

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "chinese_fine_tune.ipynb"
SECTIONS = [
    "1 Prepare work",
    "2 Load data",
    "3 Prepare feature extractor, tokenizer and data",
    "4 Training preparation",
    "5 Training",
    "6 Gradio",
]
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")

# Appended to the executed copy only: reads the kernel's state after the last cell.
PROBE = """
import json as _json
import gradio as _gr
print("PROBE " + _json.dumps({
    "prepared_now": {split: s.prepared_now for split, s in data.stats.items()},
    "plan_resume_from": plan["resume from"],
    "global_step": result.global_step,
    "resumed_from": result.resumed_from,
    "eval_cer": result.eval_cer,
    "app_is_blocks": isinstance(demo, _gr.Blocks),
    "batch": {k: list(v.shape) for k, v in batch.items()},
}))
"""


# --------------------------------------------------------------------------------------
# Headless execution
# --------------------------------------------------------------------------------------


def _execute(out_path: Path, drive: Path, model: Path, dataset: Path, max_steps: int):
    """Run the notebook with small parameters and the probe; return (probe dict, output notebook)."""
    import papermill as pm

    source = nbformat.read(NOTEBOOK, as_version=4)
    source.cells.append(nbformat.v4.new_code_cell(PROBE))
    patched = out_path.with_suffix(".in.ipynb")
    nbformat.write(source, patched)
    parameters = dict(
        BASE_MODEL=str(model), WORK_DIR=str(drive), DATASET=str(dataset),
        MAX_STEPS=max_steps, SAVE_STEPS=2, EVAL_STEPS=2, BATCH_SIZE=4, EVAL_SAMPLES=4,
        MAX_TRAIN_SAMPLES=16, TEST_SPLIT="", GENERATION_MAX_LENGTH=8, LOGGING_STEPS=1,
        LAUNCH_APP=False, REQUIRE_GPU=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        # The kernel is a child process: it must import this checkout and stay off the Hub.
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_TOKEN", raising=False)
        pm.execute_notebook(str(patched), str(out_path), parameters=parameters, kernel_name="python3",
                            cwd=str(out_path.parent), progress_bar=False, execution_timeout=900)
    executed = nbformat.read(out_path, as_version=4)
    probe = None
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("PROBE "):
                    probe = json.loads(line[len("PROBE "):])
    assert probe is not None, "the probe cell printed nothing"
    return probe, executed


def _outputs_of(executed, code_start: str) -> list:
    cells = [c for c in executed.cells if c.cell_type == "code" and c.source.startswith(code_start)]
    assert len(cells) == 1, code_start
    return cells[0].outputs


def _stream_text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_whisper, zh_cv_mini):
    """The notebook executed once on an empty 'Drive' folder, 4 steps, a checkpoint every 2."""
    root = tmp_path_factory.mktemp("notebook")
    drive = root / "drive"
    probe, executed = _execute(root / "run1.ipynb", drive, tiny_whisper, zh_cv_mini, max_steps=4)
    return {"root": root, "drive": drive, "probe": probe, "executed": executed,
            "model": tiny_whisper, "dataset": zh_cv_mini}


def _done_files(drive: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (drive / "cache" / "prepared").glob("*/done.json")}


def test_notebook_trains_from_scratch_and_builds_the_app(first_run):
    drive, probe, executed = first_run["drive"], first_run["probe"], first_run["executed"]
    output_dir = drive / "whisper-small-zh"

    # Prepared cache on "Drive": train and dev (eval) prepared by this run.
    assert sorted(probe["prepared_now"]) == ["dev", "train"]
    assert probe["prepared_now"]["train"] == 16 and probe["prepared_now"]["dev"] > 0
    assert len(_done_files(drive)) == 2
    # Checkpoints, the final model, and a final CER written by the package.
    assert probe["plan_resume_from"] is None and probe["resumed_from"] is None
    assert probe["global_step"] == 4
    assert (output_dir / "checkpoint-4" / "trainer_state.json").is_file()
    assert (output_dir / "model.safetensors").is_file()
    results = json.loads((output_dir / "results.json").read_text())
    assert results["global_step"] == 4 and results["resumed_from"] is None
    assert isinstance(results["eval_cer"], float) and results["eval_cer"] >= 0
    assert results["eval_cer"] == pytest.approx(probe["eval_cer"])
    assert (output_dir / "training_curves.png").stat().st_size > 0
    # The app was built (not launched) from the trained model.
    assert probe["app_is_blocks"] is True
    assert "built gradio.blocks.Blocks" in _stream_text(_outputs_of(executed, "demo = nb.launch_app"))
    # One collated batch shown: 4 examples, and a label with its timestamps.
    assert probe["batch"]["input_audio"][0] == probe["batch"]["labels"][0] == 4
    shown = _stream_text(_outputs_of(executed, "examples = nb.show_examples"))
    assert "input_audio: (4, " in shown and re.search(r"label 0: .*<\|\d+\.\d\d\|>", shown)
    # The Drive budget was printed before any preparation.
    assert "free there" in _stream_text(_outputs_of(executed, "splits = nb.describe_source"))

    # What a user sees: the counts table, playable clips, the live table, the plot.
    stats_html = "".join(o.data.get("text/html", "") for o in _outputs_of(executed, "from whisper_zh.train.data import dir_bytes, prepare_data")
                         if o.output_type == "execute_result")
    assert "why dropped" in stats_html and "prepared now" in stats_html
    audio = [o for o in _outputs_of(executed, "examples = nb.show_examples")
             if "<audio" in o.get("data", {}).get("text/html", "")]
    assert len(audio) == 3
    train_outputs = _outputs_of(executed, "from whisper_zh.train.pipeline import train")
    live = [o for o in train_outputs if o.output_type in ("display_data", "update_display_data")
            and "Cer" in o.get("data", {}).get("text/html", "")]
    assert live, "no live loss/CER table in the training cell's output"
    plot = _outputs_of(executed, "nb.plot_history")
    assert any("image/png" in o.get("data", {}) for o in plot)


def test_notebook_rerun_skips_preparation_and_resumes(first_run):
    drive = first_run["drive"]
    done_before = _done_files(drive)
    probe, executed = _execute(first_run["root"] / "run2.ipynb", drive, first_run["model"],
                               first_run["dataset"], max_steps=6)
    output_dir = drive / "whisper-small-zh"

    assert probe["prepared_now"] == {"train": 0, "dev": 0}
    assert _done_files(drive) == done_before  # the cache was read, not rewritten
    assert probe["plan_resume_from"] == str(output_dir / "checkpoint-4")
    assert probe["resumed_from"] == str(output_dir / "checkpoint-4")
    assert probe["global_step"] == 6
    assert f"resuming from {output_dir / 'checkpoint-4'}" in _stream_text(
        _outputs_of(executed, "from whisper_zh.train.pipeline import train"))
    assert (output_dir / "checkpoint-6" / "trainer_state.json").is_file()
    results = json.loads((output_dir / "results.json").read_text())
    assert results["global_step"] == 6 and results["resumed_from"].endswith("checkpoint-4")
    assert probe["app_is_blocks"] is True


# --------------------------------------------------------------------------------------
# The committed notebook
# --------------------------------------------------------------------------------------


def test_committed_notebook_is_clean():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert not TOKEN_RE.search(text), "something that looks like a Hugging Face token"
    assert not re.search(r"""HF_TOKEN["']?\]?\s*=\s*["']""", text), "a token assigned in the notebook"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"committed with outputs: {cell.source[:60]!r}"
        assert cell.execution_count is None, f"committed with an execution count: {cell.source[:60]!r}"
    assert "widgets" not in notebook.metadata

    headings = [line[3:].strip() for c in notebook.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    assert headings == SECTIONS

    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    params = parameters[0].source
    # Every parameter is a Colab form field showing the real default, the pipeline's own.
    assignments = [line for line in params.splitlines() if re.match(r"^[A-Z_]+ = ", line)]
    assert assignments and all("#@param" in line for line in assignments)
    values: dict = {}
    exec(params, values)
    from whisper_zh.train.config import TrainConfig

    default = TrainConfig()
    assert (values["MAX_STEPS"], values["BATCH_SIZE"], values["EVAL_SAMPLES"]) == (
        default.max_steps, default.per_device_train_batch_size, default.eval_max_samples)
    assert (values["BASE_MODEL"], values["OUTPUT_DIR"], values["TEST_SPLIT"], values["ZERO_SHOT"]) == (
        default.model_name_or_path, default.output_dir, default.test_split, default.zero_shot_eval)
    assert (values["GENERATION_MAX_LENGTH"], values["LOGGING_STEPS"]) == (
        default.generation_max_length, default.logging_steps)
    # 0: derived from the data (a form cannot say None)
    assert values["SAVE_STEPS"] == values["EVAL_STEPS"] == values["MAX_TRAIN_SAMPLES"] == 0
    assert values["LEARNING_RATE"] == 0 and default.learning_rate is None  # by the kind of run
    assert values["REQUIRE_GPU"] is True and values["SMOKE_RUN"] is False and values["MDC_DATASET_ID"] == ""
    # The parameters come first; every other cell calls the package.
    assert code[0] is parameters[0]
    for cell in code[1:]:
        assert "whisper_zh" in cell.source or "nb." in cell.source, f"a cell that bypasses whisper_zh: {cell.source!r}"


def test_after_a_disconnect_sections_1_4_5_6_run_on_their_own():
    """The names that sections 4, 5 and 6 use are all defined in section 1 (or by
    themselves), so a rerun of 1, 4 and 5 needs nothing from the data sections."""
    import ast
    import builtins

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    section, cells_by_section = None, {}
    for cell in notebook.cells:
        heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None)
        if cell.cell_type == "markdown" and heading:
            section = heading.split()[0]
        elif cell.cell_type == "code":
            cells_by_section.setdefault(section, []).append(cell.source)
    defined = set(dir(builtins))
    for number in ("1", "4", "5", "6"):
        for source in cells_by_section[number]:
            tree = ast.parse(source)
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert used <= defined, f"section {number} needs {sorted(used - defined)} from elsewhere"


def test_colab_badge_points_at_the_notebook():
    docs = [p for p in (REPO / "README.md", REPO / "docs" / "notebook.md") if p.exists()]
    badge = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/whisper-zh/blob/main/"
                       r"notebooks/chinese_fine_tune\.ipynb")
    assert any(badge.search(p.read_text(encoding="utf-8")) for p in docs)


# --------------------------------------------------------------------------------------
# Helpers (whisper_zh.notebook)
# --------------------------------------------------------------------------------------


FAKE_TOKEN = "hf_" + "x1Y2z3" * 6


@pytest.fixture
def no_prompt(monkeypatch):
    import getpass

    def prompt(*args, **kwargs):
        raise AssertionError("prompted for a token")

    monkeypatch.setattr(getpass, "getpass", prompt)


@pytest.fixture
def hub_home(monkeypatch, tmp_path):
    """An empty HF_HOME, no token anywhere, and a whoami that knows FAKE_TOKEN only."""
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)

    def whoami(token=None):
        if token != FAKE_TOKEN:
            raise ValueError(f"401 Unauthorized for token {token}")
        return {"name": "alice"}

    monkeypatch.setattr(huggingface_hub, "whoami", whoami)
    return tmp_path / "hf"


def test_hub_login_not_needed_without_a_repo(no_prompt, hub_home, capsys):
    assert nb.hub_login(required=False) is None
    assert "HF_TOKEN" not in os.environ


def test_hub_login_from_the_environment_never_shows_or_saves_the_token(no_prompt, hub_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert nb.hub_login(required=True) == "alice"
    assert FAKE_TOKEN not in capsys.readouterr().out
    assert not any(FAKE_TOKEN in p.read_text(errors="ignore") for p in hub_home.rglob("*") if p.is_file())


def test_hub_login_from_the_colab_secret(no_prompt, hub_home, monkeypatch, capsys):
    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=lambda name: FAKE_TOKEN if name == "HF_TOKEN" else None)
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(google, "colab", colab, raising=False)
    assert nb.in_colab()
    assert nb.hub_login(required=True) == "alice"
    assert os.environ["HF_TOKEN"] == FAKE_TOKEN  # for the Trainer's pushes, in this process only
    assert FAKE_TOKEN not in capsys.readouterr().out


def test_hub_login_rejected_token_is_not_quoted(no_prompt, hub_home, monkeypatch):
    bad = "hf_" + "Q" * 34
    monkeypatch.setenv("HF_TOKEN", bad)
    from whisper_zh.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        nb.hub_login(required=True)
    assert bad not in str(err.value) and err.value.__suppress_context__
    assert "HF_TOKEN" not in os.environ


def test_hub_login_headless_without_a_token_says_what_to_set(hub_home, monkeypatch):
    import getpass

    def headless(*args, **kwargs):
        raise EOFError("no stdin")

    monkeypatch.setattr(getpass, "getpass", headless)
    from whisper_zh.errors import ConfigError

    with pytest.raises(ConfigError, match="HF_TOKEN"):
        nb.hub_login(required=True)


def test_work_dir_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(nb, "LOCAL_WORK_DIR", str(tmp_path / "home-work"))
    assert nb.prepare_work_dir(None) == str(tmp_path / "home-work")
    assert (tmp_path / "home-work").is_dir()
    work = nb.prepare_work_dir(str(tmp_path / "w"))
    assert nb.path_in(work, "cache") == os.path.join(work, "cache")
    assert nb.path_in(work, "/abs/out") == "/abs/out"


def _release_archive(path: Path, zh_cv_mini: Path, top: str) -> Path:
    """A one-clip Common Voice archive, as the Data Collective ships them, at ``path``."""
    import shutil
    import tarfile

    release = path.parent / f".src-{path.name}" / top / "zh-CN"
    (release / "clips").mkdir(parents=True)
    clip = sorted((zh_cv_mini / "clips").iterdir())[0]
    shutil.copy(clip, release / "clips")
    (release / "train.tsv").write_text(f"path\tsentence\n{clip.name}\t你好\n", encoding="utf-8")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(release.parent, arcname=top)
    shutil.rmtree(path.parent / f".src-{path.name}")
    return path


def test_find_dataset_by_content(tmp_path, zh_cv_mini):
    with pytest.raises(FileNotFoundError, match="MDC_DATASET_ID.*datacollective"):
        nb.find_dataset(str(tmp_path))
    (tmp_path / "cv-corpus-99.0-zh-CN.tar.gz").write_bytes(b"")  # a name is not a release
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError):
        nb.find_dataset(str(tmp_path))
    _release_archive(tmp_path / "cv-corpus-20.0-2024-12-06-zh-CN.tar.gz", zh_cv_mini, "cv-corpus-20.0-2024-12-06")
    _release_archive(tmp_path / "mcv-scripted-zh-CN-v24.0.tar.gz", zh_cv_mini, "mcv-scripted-zh-CN-v24.0")
    assert nb.find_dataset(str(tmp_path)).endswith("mcv-scripted-zh-CN-v24.0.tar.gz")
    extracted = tmp_path / "extracted" / "zh-CN"  # an extracted release beats an archive
    (extracted / "clips").mkdir(parents=True)
    (extracted / "dev.tsv").write_text("path\tsentence\n")
    assert nb.find_dataset(str(tmp_path)) == str(tmp_path / "extracted")
    (tmp_path / "mine").mkdir()
    assert nb.find_dataset(str(tmp_path), "mine") == str(tmp_path / "mine")
    assert nb.find_dataset(str(tmp_path), "someone/common-voice-zh") == "someone/common-voice-zh"


def test_the_collectives_client_takes_what_download_release_passes():
    """The stand-in below mirrors the real client's call and where it reads the key."""
    import inspect

    datacollective = pytest.importorskip("datacollective")
    from datacollective import api_utils

    parameters = inspect.signature(datacollective.download_dataset).parameters
    assert list(parameters)[0] == "dataset_id" and {"download_directory", "show_progress"} <= set(parameters)
    assert api_utils.ENV_API_KEY == "MDC_API_KEY"


@pytest.fixture
def collective(monkeypatch, tmp_path, zh_cv_mini):
    """A stand-in for the Data Collective's client (``datacollective``): it checks the key
    where the real one reads it and "downloads" an archive built here."""
    calls = []

    def download_dataset(dataset_id, download_directory=None, show_progress=True, **kwargs):
        assert os.environ.get("MDC_API_KEY") == "mdc-" + "k3y" * 8
        calls.append((dataset_id, download_directory))
        return _release_archive(Path(download_directory) / f"{dataset_id}.tar.gz", zh_cv_mini,
                                "cv-corpus-24.0-2025-12-05")

    monkeypatch.setitem(sys.modules, "datacollective", types.SimpleNamespace(download_dataset=download_dataset))
    monkeypatch.delenv("MDC_API_KEY", raising=False)
    return calls


def test_download_release_with_the_collectives_client(tmp_path, collective, tiny_whisper, monkeypatch, capsys):
    from whisper_zh.train.data import prepare_data

    work = tmp_path / "work"
    work.mkdir()
    assert nb.download_release("", str(work)) is None and not collective
    from whisper_zh.errors import ConfigError

    with pytest.raises(ConfigError, match="MDC_API_KEY"):
        nb.download_release("mcv-scripted-zh-CN-v24.0", str(work))
    key = "mdc-" + "k3y" * 8
    monkeypatch.setenv("MDC_API_KEY", key)
    archive = nb.download_release("mcv-scripted-zh-CN-v24.0", str(work))
    assert archive == str(work / "mcv-scripted-zh-CN-v24.0.tar.gz") and len(collective) == 1
    # there already: not again
    assert nb.download_release("mcv-scripted-zh-CN-v24.0", str(work)) == archive and len(collective) == 1
    # prepared, then the archive gone (a new runtime): not again, and the cache serves
    config = nb.make_config(str(work), None, model_name_or_path=str(tiny_whisper), eval_split="", test_split="")
    assert config.dataset == archive
    prepare_data(config)
    os.remove(archive)
    assert nb.download_release("mcv-scripted-zh-CN-v24.0", str(work)) is None and len(collective) == 1
    again = nb.make_config(str(work), None, model_name_or_path=str(tiny_whisper), eval_split="", test_split="")
    assert again.dataset == archive and prepare_data(again).stats["train"].prepared_now == 0
    assert key not in capsys.readouterr().out


def test_gpu_report_on_cpu(capsys):
    import torch

    from whisper_zh.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("checks the CPU report")
    report = nb.gpu_report()
    assert report == {"device": "CPU", "memory_gib": None, "precision": "fp32", "gradient_checkpointing": False}
    assert "no GPU" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no GPU.*REQUIRE_GPU = False"):
        nb.gpu_report(require=True)


def test_notebook_stops_without_a_gpu_when_it_requires_one(tmp_path, zh_cv_mini, tiny_whisper):
    """Run all on a CPU runtime with REQUIRE_GPU (the Colab default): the run stops at the
    GPU check, with the reason, before anything is downloaded, prepared or trained."""
    import papermill as pm
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                parameters=dict(WORK_DIR=str(tmp_path / "drive"), DATASET=str(zh_cv_mini),
                                                BASE_MODEL=str(tiny_whisper), REQUIRE_GPU=True),
                                cwd=str(tmp_path), progress_bar=False, execution_timeout=300)
    assert err.value.ename == "ConfigError" and "no GPU" in err.value.evalue
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    ran = [c.source for c in executed.cells if c.cell_type == "code" and c.execution_count]
    assert ran[-1].startswith("from whisper_zh import notebook as nb")
    assert not (tmp_path / "drive" / "cache").exists()


LOG_HISTORY = [
    {"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2},
    {"eval_loss": 2.4, "eval_cer": 0.9, "eval_wer": 1.0, "step": 2},
    {"loss": 2.0, "step": 3}, {"loss": 1.5, "step": 4},
    {"eval_loss": 1.6, "eval_cer": 0.5, "eval_wer": 0.8, "step": 4},
    {"train_runtime": 1.0, "train_loss": 2.25, "step": 4},
]


def test_history_table_and_plot(tmp_path):
    table = nb.history_table(LOG_HISTORY)
    assert list(table.index) == [1, 2, 3, 4]
    assert table.loc[4, "training loss"] == 1.5 and table.loc[4, "eval CER"] == 0.5
    assert table["eval CER"].notna().sum() == 2
    fig = nb.plot_history(LOG_HISTORY, str(tmp_path))
    loss_ax, cer_ax = fig.axes
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [4, 2]
    assert list(cer_ax.lines[0].get_ydata()) == [90.0, 50.0]
    assert (tmp_path / nb.CURVES_NAME).stat().st_size > 0


def test_prepare_stats_table():
    from whisper_zh.train.data import PrepareStats

    stats = {"train": PrepareStats(kept=7, dropped=Counter(too_long=2, undecodable=1), audio_seconds=7200,
                                   cache_bytes=3 * 2**20, prepared_now=10),
             "dev": PrepareStats(kept=5)}
    table = nb.prepare_stats_table(stats)
    assert table.loc["train", "dropped"] == 3
    assert table.loc["train", "why dropped"] == "too_long 2, undecodable 1"
    assert table.loc["train", "hours"] == 2.0 and table.loc["train", "cache MiB"] == 3.0
    assert table.loc["dev", "why dropped"] == "-" and table.loc["dev", "prepared now"] == 0


def test_show_results(tmp_path, capsys):
    from whisper_zh.train.trainer import TrainResult

    result = TrainResult(output_dir=str(tmp_path), global_step=8, best_checkpoint=str(tmp_path / "checkpoint-4"),
                         eval_cer=0.25, test_metrics={"test_cer": 0.3, "test_wer": 0.6, "test_runtime": 9.0},
                         resumed_from=str(tmp_path / "checkpoint-4"), log_history=[],
                         zero_shot_metrics={"zero_shot_cer": 0.5})
    summary = nb.show_results(result)
    assert json.loads((tmp_path / nb.RESULTS_NAME).read_text()) == summary
    assert summary["test_cer"] == 0.3 and summary["zero_shot_cer"] == 0.5 and "test_runtime" not in summary
    shown = capsys.readouterr().out
    assert "30.00%" in shown and "50.00%" in shown
    # what train() wrote is what is shown and returned
    (tmp_path / nb.RESULTS_NAME).write_text(json.dumps({**summary, "train_clips": 7}))
    assert nb.show_results(result)["train_clips"] == 7


def test_make_config_keeps_the_pipelines_defaults(tmp_path, zh_cv_mini):
    from whisper_zh.train.config import TrainConfig

    archive = _release_archive(tmp_path / "cv-corpus-1.0-zh-CN.tar.gz", zh_cv_mini, "cv-corpus-1.0")
    config = nb.make_config(str(tmp_path), None, max_steps=None, save_steps=0, eval_steps=0, max_train_samples=0,
                            per_device_train_batch_size=8)
    default = TrainConfig()
    assert (config.max_steps, config.save_steps, config.eval_steps) == (default.max_steps, None, None)
    assert config.max_train_samples is None
    assert config.per_device_train_batch_size == 8 and config.model_name_or_path == default.model_name_or_path
    assert config.output_dir == str(tmp_path / default.output_dir) and config.cache_dir == str(tmp_path / "cache")
    assert config.dataset == str(archive)
    # the smoke run: short, its own folder, nothing pushed, whatever the other parameters say
    smoke = nb.make_config(str(tmp_path), None, output_dir="whisper-small-zh", smoke_run=True, max_steps=1600,
                           hub_model_id="you/whisper-small-zh", test_split="test")
    assert smoke.output_dir == str(tmp_path / "smoke-run") and smoke.hub_model_id is None
    assert (smoke.max_steps, smoke.test_split, smoke.zero_shot_eval) == (20, "", False)


def test_storage_budget_matches_the_checkpoints_written(first_run, capsys):
    """The estimate's checkpoint size is what the Trainer wrote (the tiny model's
    checkpoint of the notebook run): fp32 weights 4P bytes, Adam state 8P."""
    from whisper_zh.train.config import TrainConfig

    config = TrainConfig(dataset="x", model_name_or_path=str(first_run["model"]))
    budget = nb.storage_budget(config, str(first_run["drive"]), 1000)
    # any checkpoint the notebook runs left (the rerun rotates checkpoint-4 away)
    checkpoint = sorted((first_run["drive"] / "whisper-small-zh").glob("checkpoint-*"))[-1]
    weights = (checkpoint / "model.safetensors").stat().st_size
    optimizer = (checkpoint / "optimizer.pt").stat().st_size
    params = budget["parameters"]
    assert abs(weights - 4 * params) / weights < 0.05 and abs(optimizer - 8 * params) / optimizer < 0.05
    assert budget["parts"]["prepared cache"] == 1000 * nb.CACHE_BYTES_PER_CLIP
    assert budget["needed"] == sum(budget["parts"].values()) and budget["free"] > 0
    assert "free there" in capsys.readouterr().out
    # four saves (1600 steps, one every 400): three optimizer states and two checkpoints
    # deleted during the run wait in Drive's bin, which counts against the quota
    config = TrainConfig(dataset="x", model_name_or_path=str(first_run["model"]), max_steps=1600, save_steps=400)
    budget = nb.storage_budget(config, str(first_run["drive"]), 100_000)
    assert budget["parts"]["Drive's bin (deleted, kept 30 days)"] == 3 * 8 * params + 2 * 4 * params


def _plan_config(tmp_path, dataset, model, **overrides):
    from whisper_zh.train.config import TrainConfig

    return TrainConfig(dataset=str(dataset), model_name_or_path=str(model), cache_dir=str(tmp_path / "cache"),
                       output_dir=str(tmp_path / "out"), max_train_samples=8, per_device_train_batch_size=4,
                       max_steps=10, save_steps=5, eval_split="", test_split="", **overrides)


def test_training_plan_takes_the_hub_checkpoint_when_the_output_dir_has_none(
        tmp_path, zh_cv_mini, tiny_whisper, monkeypatch, capsys):
    import whisper_zh.train.checkpoints as train_module

    fetched = []

    def fetch_hub_checkpoint(repo_id, output_dir):  # stands in for the download from the Hub
        fetched.append((repo_id, output_dir))
        path = os.path.join(output_dir, "checkpoint-5")
        os.makedirs(path)
        return path

    monkeypatch.setattr(train_module, "fetch_hub_checkpoint", fetch_hub_checkpoint)
    config = _plan_config(tmp_path, zh_cv_mini, tiny_whisper, hub_model_id="someone/whisper-zh-test")
    plan = nb.training_plan(config)
    assert fetched == [("someone/whisper-zh-test", config.output_dir)]
    assert plan["resume from"] == os.path.join(config.output_dir, "checkpoint-5")
    assert plan["training clips"] == 8 and plan["steps"] == 10 and plan["checkpoint every"] == 5
    assert "training resumes at step 5 of 10" in capsys.readouterr().out


def test_training_plan_without_hub_or_checkpoint_starts_afresh(tmp_path, zh_cv_mini, tiny_whisper, monkeypatch, capsys):
    import whisper_zh.train.checkpoints as train_module

    def no_hub(*args):
        raise AssertionError("asked the Hub without a Hub repo")

    monkeypatch.setattr(train_module, "fetch_hub_checkpoint", no_hub)
    plan = nb.training_plan(_plan_config(tmp_path, zh_cv_mini, tiny_whisper))
    assert plan["resume from"] is None
    assert "starts from the base model" in capsys.readouterr().out
