"""What every benchmark records about where it ran, and where it finds its inputs."""

from __future__ import annotations

import os
import platform


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
