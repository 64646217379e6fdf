"""The real whisper-base as a CTranslate2 int8 export (the Space's backend), made once per
machine next to the whisper-base the conftest builds, for the folder and live tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def base_ct2(whisper_base: Path) -> Path:
    """``<whisper-base>-ct2-int8``, exported on first use (export_ct2 renames a finished
    conversion into place, so an interrupted run never leaves half an export)."""
    from whisper_zh.serve.models import export_ct2

    out = whisper_base.parent / f"{whisper_base.name}-ct2-int8"
    if not (out / "model.bin").exists():
        export_ct2(str(whisper_base), str(out), "int8")
    return out


def joined(clips: list[np.ndarray], gap_s: float = 0.5, sr: int = 16000) -> np.ndarray:
    """Clips back to back with ``gap_s`` of silence after each, as one person talking."""
    gap = np.zeros(int(gap_s * sr), np.float32)
    return np.concatenate([part for clip in clips for part in (clip, gap)])
