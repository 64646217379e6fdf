"""This process's place among those of ``accelerate launch`` / ``torchrun``: one home for
the training pipeline and folder jobs, which split work the same way."""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Any, Iterator

# How long a process waits for the others at a barrier or a gather. The others wait while
# the first prepares a release (a first run reads ~21 GB), downloads a checkpoint or pushes
# the model: far past the 10 minutes NCCL allows by default. A hang still ends, after this.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class SingleProcess:
    """The part of accelerate's ``PartialState`` that folder jobs use, for a process that
    runs alone: what :func:`process_state` gives when accelerate is not installed (the
    serving install), where no launcher can have started other processes."""

    process_index: int = 0
    num_processes: int = 1
    is_main_process: bool = True
    # no device of its own: the engine picks one (default_device)
    device: Any = None

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def split_between_processes(self, inputs):
        yield inputs


def process_state():
    """accelerate's ``PartialState`` of this process: alone, or one of a launcher's; a
    :class:`SingleProcess` when accelerate (the ``[train]`` extra) is not installed.

    ``cpu=True`` on GPU-less machines: accelerate then also joins torchrun's processes
    (gloo) instead of looking for a GPU per process. The process group, made by the
    first call, waits :data:`PROCESS_GROUP_TIMEOUT` (transformers' ``ddp_timeout`` comes
    too late: its state is this one)."""
    try:
        import torch
        from accelerate import PartialState
    except ImportError:
        return SingleProcess()
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)
