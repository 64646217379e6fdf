"""What every benchmark records about where it ran, and where it finds its inputs."""

from __future__ import annotations

import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Inputs, found beside the checkout (../shared) here, or staged into the repo for a GPU
# machine, which has no ../shared (`bench/train_throughput.py --stage`).
STAGE_DIR = os.path.join(ROOT, "outputs", "bench-gpu")
DATA_CANDIDATES = [os.path.join(os.path.dirname(ROOT), "shared", "data", "zh-cv-mini"),
                   os.path.join(STAGE_DIR, "zh-cv-mini")]
PROCESSOR_CANDIDATES = [os.path.join(os.path.expanduser("~"), ".cache", "whisper-zh", "whisper-base"),
                        os.path.join(STAGE_DIR, "processor")]


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC ..."), as ``lscpu`` shows it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def first_existing(paths: list[str]) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)
