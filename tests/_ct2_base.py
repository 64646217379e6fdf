"""Helpers for the tests that run the real whisper-base through CTranslate2 (the export
itself is the session fixture ``whisper_base_ct2`` in conftest.py, made once per run)."""

from __future__ import annotations

import numpy as np


def joined(clips: list[np.ndarray], gap_s: float = 0.5, sr: int = 16000) -> np.ndarray:
    """Clips back to back with ``gap_s`` of silence after each, as one person talking."""
    gap = np.zeros(int(gap_s * sr), np.float32)
    return np.concatenate([part for clip in clips for part in (clip, gap)])
