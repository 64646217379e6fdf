"""Whisper's encoder in bfloat16 on a CPU with AMX, for the CTranslate2 backend.

On an Intel Xeon with AMX (Sapphire Rapids and later) PyTorch runs bfloat16 matrix
products on the AMX tiles, and Whisper's encoder takes half the time it takes in
CTranslate2, which has no bfloat16 on a CPU and whose int8 products there are no faster
than its float32 ones (whisper-base, 2 cores, a 30 s window: 0.37 s against 0.74 s
int8 and 0.82 s float32). CTranslate2's ``generate`` and word alignment take an encoder
output as readily as a log-mel, so the decoder stays CTranslate2's int8 and only the
encoder moves (bench/README.md, "The encoder in bfloat16 on a CPU with AMX"). The text is as good: the 67
clips of zh-multi-dev one at a time CER 0.184 against 0.182, the 500 of zh-cv-mini
0.207 against 0.208, 42 min of them joined 0.177 against 0.177.

:func:`export_ct2 <whisper_zh.serve.models.export_ct2>` writes the encoder's weights
beside the CTranslate2 model (:data:`ENCODER_FILE`, bfloat16, its ``WhisperConfig`` in
the file's metadata), so a pushed ``ct2/`` folder carries what the Space needs; the
backend uses it by default where the CPU has AMX (:func:`choose_encoder`). It needs
torch and transformers (the ``[transformers]`` extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
from typing import Optional

import numpy as np

from whisper_zh.cpu import CPUINFO, cpu_flags
from whisper_zh.errors import ConfigError, MissingExtraError

logger = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"

ENCODERS = ("auto", "ct2", "bf16")


def cpu_has_amx_bf16(cpuinfo: str = CPUINFO) -> bool:
    """Whether the CPU multiplies bfloat16 matrices on AMX tiles (Linux's ``cpuinfo``
    flags; False where there is none). AVX-512 BF16 alone is not counted: unmeasured."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def torch_whisper_installed() -> bool:
    """Whether Whisper can run in PyTorch here: torch and transformers installed (the
    ``[transformers]`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def _cannot_run(model_dir: str, device: str) -> Optional[str]:
    """Why the bfloat16 encoder cannot run for ``model_dir`` on ``device``; None if it can."""
    if not device.startswith("cpu"):
        return f"it runs on a CPU, and the model runs on {device}"
    if not os.path.isfile(os.path.join(model_dir, ENCODER_FILE)):
        return (f"{model_dir} has no {ENCODER_FILE} (an export made before it, or a published "
                f"conversion; `whisper-zh export` writes it)")
    if not torch_whisper_installed():
        return "torch and transformers are not installed"
    return None


def check_encoder_choice(choice: str) -> None:
    """Raise :class:`ConfigError` unless ``choice`` is one of :data:`ENCODERS`."""
    if choice not in ENCODERS:
        raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, not {choice!r}")


def choose_encoder(choice: str, model_dir: str, device: str) -> str:
    """Which encoder the CTranslate2 backend runs: "bf16" (:class:`BF16Encoder`) or "ct2"
    (CTranslate2's own). ``choice`` "auto" takes bf16 where it can run and the CPU has
    AMX (logging why not otherwise); "bf16" insists on it.

    Raises:
        ConfigError: an unknown ``choice``, or "bf16" where it cannot run.
        MissingExtraError: "bf16" without torch and transformers.
    """
    check_encoder_choice(choice)
    if choice == "ct2":
        return "ct2"
    blocker = _cannot_run(model_dir, device)
    if choice == "bf16" and blocker:
        if not torch_whisper_installed():
            raise MissingExtraError.of("transformers", "the bfloat16 encoder")
        raise ConfigError(f"the bfloat16 encoder cannot run: {blocker}")
    if choice == "auto" and blocker is None and not cpu_has_amx_bf16():
        blocker = "this CPU has no AMX"
    if blocker:
        logger.info("encoding with CTranslate2: the bfloat16 encoder is not used (%s)", blocker)
        return "ct2"
    logger.info("encoding in bfloat16 with PyTorch%s", " (the CPU has AMX)" if choice == "auto" else "")
    return "bf16"


def save_bf16_encoder(weights: dict, config_json: str, output_dir: str) -> str:
    """Write a Whisper encoder's weights (its ``state_dict``, any dtype) to
    ``output_dir/ENCODER_FILE`` in bfloat16, the model's ``WhisperConfig`` (JSON) in the
    metadata."""
    import torch
    from safetensors.torch import save_file

    weights = {name: tensor.detach().to(torch.bfloat16).contiguous() for name, tensor in weights.items()}
    path = os.path.join(output_dir, ENCODER_FILE)
    # written under a name of its own and renamed into place: a half-written file, or two
    # processes writing at once, must not leave a file the backend fails to load
    fd, tmp = tempfile.mkstemp(prefix=f".{ENCODER_FILE}.", suffix=".tmp", dir=output_dir)
    os.close(fd)
    try:
        save_file(weights, tmp, metadata={"config": config_json})
        os.chmod(tmp, 0o644)  # as the export's other files (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


class BF16Encoder:
    """Whisper's encoder in PyTorch bfloat16: log-mel windows in, the encoder output as a
    CTranslate2 ``StorageView`` (float32) out, what ``Whisper.generate`` and
    ``Whisper.align`` take in place of features."""

    def __init__(self, model_dir: str):
        import torch
        from safetensors import safe_open
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        path = os.path.join(model_dir, ENCODER_FILE)
        with safe_open(path, framework="pt") as f:
            config = WhisperConfig.from_dict(json.loads(f.metadata()["config"]))
            weights = {name: f.get_tensor(name) for name in f.keys()}
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            encoder = WhisperEncoder(config)
        encoder.load_state_dict(weights, assign=True)
        self.encoder = encoder.to(torch.bfloat16).eval()

    def __call__(self, features: np.ndarray):
        import ctranslate2
        import torch

        with torch.inference_mode():
            hidden = self.encoder(torch.from_numpy(np.ascontiguousarray(features)).to(torch.bfloat16))
            output = hidden.last_hidden_state.float().numpy()
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(output))
