"""What this machine's CPU is, as Linux's ``/proc/cpuinfo`` says: its model name and its
instruction-set flags. The serving code asks it whether bfloat16 runs on AMX tiles
(:mod:`whisper_zh.serve.bf16_encoder`); the benchmarks record it beside their numbers."""

from __future__ import annotations

from typing import Optional

CPUINFO = "/proc/cpuinfo"


def cpuinfo_field(field: str, cpuinfo: str = CPUINFO) -> Optional[str]:
    """The value of the first ``field`` line of ``cpuinfo``; None where there is none (or no
    such file: not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The CPU's instruction-set flags ("avx512f", "amx_bf16" ...); empty where unknown."""
    return frozenset((cpuinfo_field("flags", cpuinfo) or "").split())
