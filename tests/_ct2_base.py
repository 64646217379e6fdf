"""Helpers for the tests that run the real whisper-base through CTranslate2."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def base_ct2(whisper_base: Path) -> Path:
    """whisper-base as CTranslate2 int8: the engine's own conversion (``resolve_ct2_model``),
    cached in this test run's HF_HOME, so the whole run converts once (the session fixture
    ``whisper_base_ct2`` is this too)."""
    from whisper_zh.serve.models import resolve_ct2_model

    return Path(resolve_ct2_model(str(whisper_base)))


def joined(clips: list[np.ndarray], gap_s: float = 0.5, sr: int = 16000) -> np.ndarray:
    """Clips back to back with ``gap_s`` of silence after each, as one person talking."""
    gap = np.zeros(int(gap_s * sr), np.float32)
    return np.concatenate([part for clip in clips for part in (clip, gap)])
