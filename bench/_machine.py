"""What every benchmark records about where it ran, and where it finds its inputs."""

from __future__ import annotations

import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package reads the CPU; appended, not put first: an installed whisper_zh is used where
# there is one, and a bare interpreter (bench/install.py measures installs from nothing)
# still finds the checkout's (whisper_zh.cpu needs only the standard library).
if ROOT not in sys.path:
    sys.path.append(ROOT)

from whisper_zh.cpu import cpu_flags as all_cpu_flags, cpuinfo_field  # noqa: E402

# Inputs, found beside the checkout (../shared) here, or staged into the repo for a GPU
# machine, which has no ../shared (`bench/train_throughput.py --stage`).
STAGE_DIR = os.path.join(ROOT, "outputs", "bench-gpu")
DATA_CANDIDATES = [os.path.join(os.path.dirname(ROOT), "shared", "data", "zh-cv-mini"),
                   os.path.join(STAGE_DIR, "zh-cv-mini")]
PROCESSOR_CANDIDATES = [os.path.join(os.path.expanduser("~"), ".cache", "whisper-zh", "whisper-base"),
                        os.path.join(STAGE_DIR, "processor")]


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC ..."), as ``lscpu`` shows it."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction sets that decide how fast int8 and float matrix products run (and which
# kernels CTranslate2 picks): the same 2 cores of two vendors gave the engine different
# speed-ups over faster-whisper (bench/README.md, "On an Intel Xeon").
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of :data:`MATRIX_FLAGS` the CPU has (``/proc/cpuinfo``; empty elsewhere)."""
    have = all_cpu_flags()
    return [flag for flag in MATRIX_FLAGS if flag in have]


def first_existing(paths: list[str]) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)
