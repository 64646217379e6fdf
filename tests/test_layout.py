"""The package's layers: each module imports only modules of the layers before it,
function-level imports included, so there is no import circle, and serving never
imports the training side. The order is the data's two journeys (see whisper_zh/__init__.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "whisper_zh"

LAYERS = [
    # used by both journeys
    ["errors"], ["audio", "logs", "allocator", "cpu"], ["hub"], ["text"], ["media"], ["distributed"],
    # serve: settings and types -> media in -> segmentation -> backends -> engine -> speakers -> files -> jobs -> app
    ["serve.settings"], ["serve.types"], ["serve.netguard"], ["serve.download"], ["serve.segmentation"],
    ["serve.bf16_encoder"], ["serve.models"], ["serve.transformers_backend", "serve.ct2_backend"], ["serve.engine"], ["serve.diarize"],
    ["serve.subtitles"], ["serve.jobs"], ["serve.uploads"], ["serve.folder", "serve.live", "serve.api"], ["serve.app"],
    # train: configuration -> data -> examples -> trainer -> checkpoints -> evaluate -> publish -> pipeline
    ["train.config"], ["train.data"], ["train.examples"], ["train.trainer"], ["train.checkpoints"],
    ["train.evaluate"], ["train.publish"], ["train.pipeline"],
    # the edges: nothing below imports them
    ["testing"], ["notebook"], ["cli"], ["__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if not name.endswith("__init__"):
            found[name] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every whisper_zh module ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("whisper_zh."):
                short = name[len("whisper_zh."):]
                if short in known:
                    out.add(short)
            elif name == "whisper_zh" and isinstance(node, ast.ImportFrom):
                pass  # `from whisper_zh import __version__`: the facade, checked below
    return out


def test_every_module_has_a_layer():
    assert set(_modules()) == set(RANK), "add new modules to LAYERS (and say where in whisper_zh/__init__.py)"


def test_each_layer_imports_only_the_layers_before_it():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for imported in _imports(path, set(modules)):
            if RANK[imported] >= RANK[name]:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_edges_import_the_package_facade():
    """``whisper_zh/__init__.py`` re-exports the public API lazily; library modules import
    from the module that defines a name, so patching and reading stay unambiguous."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "whisper_zh" and name not in ("cli", "__main__"):
                offenders.append(name)
    assert not offenders


def test_the_facade_names_resolve():
    import whisper_zh

    for name in whisper_zh.__all__:
        assert getattr(whisper_zh, name) is not None, name
    assert issubclass(whisper_zh.ConfigError, whisper_zh.WhisperZhError)


def test_only_the_edges_read_the_environment():
    """Library code takes settings as arguments; the app and the command line read them."""
    readers = set()
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if "os.environ" in text or "os.getenv" in text or "from_env(" in text:
            readers.add(name)
    # serve.settings defines from_env; notebook and cli are edges; the app reads its settings
    # when none are given (build_app, launch_options)
    assert readers <= {"serve.settings", "serve.app", "notebook", "cli"}, readers


@pytest.mark.parametrize("argv", [["--help"], ["prepare", "--help"], ["transcribe", "--help"]])
def test_help_and_prepare_import_no_torch(argv):
    code = ("import sys\nfrom whisper_zh.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'transformers' not in sys.modules, 'transformers imported'\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
