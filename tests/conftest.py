"""Shared fixtures. Tests that need ../shared (real clips, real whisper-base) skip with
the reason when it is missing (a user's fresh clone); CI always has it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tempfile

import pytest

# Conversions the engine caches beside the Hugging Face cache (and anything else written
# there) go to a folder of this run's own, in this process and the ones it starts.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="whisper-zh-test-hf-")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WHISPER_ZH_SHARED", REPO.parent / "shared"))
CACHE = Path(os.environ.get("WHISPER_ZH_TEST_CACHE", Path.home() / ".cache" / "whisper-zh"))


@pytest.fixture(autouse=True)
def _malloc_left_alone(monkeypatch):
    """Tests call the command line in-process: its malloc settings
    (whisper_zh/allocator.py) would then hold for every later test of the session, which
    would run differently depending on the order. tests/test_allocator.py checks them in
    processes of their own."""
    monkeypatch.setattr("whisper_zh.cli.reuse_freed_memory", lambda: False)


def _need_shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"{path} is missing: these tests need the project's shared/ folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def zh_cv_mini() -> Path:
    """The 500-clip Common Voice-layout Mandarin set in ../shared."""
    return _need_shared("data/zh-cv-mini")


@pytest.fixture(scope="session")
def conversation(zh_cv_mini):
    """Two real voices taking turns, four turns each (``_media_helpers.two_voices``):
    (waveform, [(start, end, voice)])."""
    from _media_helpers import two_voices

    _need_shared("data/zh-multi-dev")
    return two_voices(zh_cv_mini)


@pytest.fixture(scope="session")
def whisper_base() -> Path:
    """The real OpenAI whisper-base, transformers format, built offline once per machine."""
    out = Path(os.environ.get("WHISPER_ZH_BASE", CACHE / "whisper-base"))
    if not (out / ".made-by-make_whisper_base").exists():
        tool = _need_shared("tools/make_whisper_base.py")
        subprocess.run([sys.executable, str(tool), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def whisper_base_ct2(whisper_base) -> Path:
    """whisper-base as CTranslate2 int8, converted once per test run for every test that
    needs it. The conversion is the engine's own (``resolve_ct2_model``), cached in this
    run's HF_HOME: every later ``auto``/``ct2`` load of ``whisper_base`` in this run (in
    this process, the app, and the CLI subprocesses, which inherit HF_HOME) finds it there
    instead of converting again. Tests needing ``DIR/ct2`` link it into a copy of ``DIR``."""
    from _ct2_base import base_ct2

    return base_ct2(whisper_base)


@pytest.fixture(scope="session")
def tiny_whisper(whisper_base, tmp_path_factory) -> Path:
    """A random 2-layer Whisper with the real tokenizer and feature extractor."""
    from whisper_zh.testing import make_tiny_whisper

    return Path(make_tiny_whisper(str(tmp_path_factory.mktemp("tiny") / "tiny-whisper"), str(whisper_base)))
