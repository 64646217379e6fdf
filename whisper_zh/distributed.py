"""This process's place among those of ``accelerate launch`` / ``torchrun``: one home for
the training pipeline and folder jobs, which split work the same way."""

from __future__ import annotations


def process_state():
    """accelerate's ``PartialState`` of this process: alone, or one of a launcher's.

    ``cpu=True`` on GPU-less machines: accelerate then also joins torchrun's processes
    (gloo) instead of looking for a GPU per process."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
