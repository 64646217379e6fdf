"""Models for the engine: a CTranslate2 copy found, downloaded or converted once.

:func:`export_ct2` converts a transformers Whisper to CTranslate2 (the training
pipeline publishes one as ``ct2/``); :func:`resolve_ct2_model` finds the copy that
belongs to any model id or folder: OpenAI's own models have published conversions
(:data:`OFFICIAL_CT2`), a pushed model ships ``ct2/``, and any other is converted once
and cached (that alone needs torch and transformers: the ``[transformers]`` extra).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Optional

from whisper_zh.errors import ConfigError, MissingExtraError, ModelNotFoundError
from whisper_zh.hub import looks_local
from whisper_zh.serve.bf16_encoder import ENCODER_FILE, cpu_has_amx_bf16, save_bf16_encoder, torch_whisper_installed

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "model.encoder."  # where a WhisperForConditionalGeneration checkpoint keeps the encoder

# CTranslate2 weight types a user may ask for. int8 is the CPU default: ~4x smaller
# than float32 and the fastest on x86/ARM CPUs; float16 is for GPUs.
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16", "float32")

# The CTranslate2 conversions of OpenAI's Whisper models that faster-whisper itself loads
# (``faster_whisper.utils._MODELS``): served as published, so the default model needs
# neither torch nor a conversion. float16 weights, cast to int8 on load on a CPU.
OFFICIAL_CT2 = {
    "openai/whisper-tiny": "Systran/faster-whisper-tiny",
    "openai/whisper-base": "Systran/faster-whisper-base",
    "openai/whisper-small": "Systran/faster-whisper-small",
    "openai/whisper-medium": "Systran/faster-whisper-medium",
    "openai/whisper-large-v2": "Systran/faster-whisper-large-v2",
    "openai/whisper-large-v3": "Systran/faster-whisper-large-v3",
    "openai/whisper-large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}
# The files of such a repo a model needs (``faster_whisper.utils.download_model``'s list):
# the repos hold other copies and formats that would multiply the download.
CT2_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")


def default_output_dir(model_name_or_path: str) -> str:
    """``DIR/ct2`` for a local model directory, else ``./<name>-ct2`` for a Hub id."""
    if os.path.isdir(model_name_or_path):
        return os.path.join(model_name_or_path, "ct2")
    return model_name_or_path.rstrip("/").split("/")[-1] + "-ct2"


def _write_tokenizer(model_name_or_path: str, out_dir: str) -> None:
    local = os.path.join(model_name_or_path, "tokenizer.json")
    if os.path.isfile(local):
        # Copied byte for byte: re-saving through transformers may rewrite it.
        shutil.copyfile(local, os.path.join(out_dir, "tokenizer.json"))
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_name_or_path).save_pretrained(out_dir)
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        raise ConfigError(f"{model_name_or_path} has no fast tokenizer: faster-whisper needs tokenizer.json")


def _write_preprocessor_config(model_name_or_path: str, out_dir: str) -> None:
    from transformers import AutoFeatureExtractor

    # Reads preprocessor_config.json or a transformers-5 processor_config.json alike;
    # saving a bare feature extractor writes the flat preprocessor_config.json.
    AutoFeatureExtractor.from_pretrained(model_name_or_path).save_pretrained(out_dir)


def export_ct2(model_name_or_path: str, output_dir: str | None = None, quantization: str = "int8") -> str:
    """Convert a transformers Whisper (directory or Hub id) to a CTranslate2 directory.

    Args:
        model_name_or_path: a directory saved with ``save_pretrained`` (model, tokenizer,
            feature extractor) or a Hub id.
        output_dir: where to write; default :func:`default_output_dir`. Replaced if it
            exists. The conversion runs in a sibling temporary directory that is renamed
            into place at the end, so a crash never leaves a half-written export where
            the engine would pick it up.
        quantization: CTranslate2 weight type, one of :data:`QUANTIZATIONS`.

    Returns:
        The output directory (loadable by ``faster_whisper.WhisperModel``).
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")
    if not os.path.isdir(model_name_or_path) and looks_local(model_name_or_path):
        raise ModelNotFoundError(f"no such model directory: {model_name_or_path}")
    if not can_convert():
        raise MissingExtraError.of("transformers", f"converting {model_name_or_path} to CTranslate2")
    from ctranslate2.converters import TransformersConverter

    output_dir = os.path.abspath(output_dir or default_output_dir(model_name_or_path))
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        # ctranslate2 >= 4.6 loads with from_pretrained(dtype=...), the transformers-5
        # spelling, and takes lang_ids from generation_config.lang_to_id: it converts a
        # transformers-5 Whisper as is. The config's own dtype is kept at load time;
        # the weights are cast to ``quantization`` on save.
        converter = TransformersConverter(model_name_or_path, low_cpu_mem_usage=True)
        converter.convert(tmp, quantization=quantization, force=True)
        write_bf16_encoder(model_name_or_path, tmp)
        _write_tokenizer(model_name_or_path, tmp)
        _write_preprocessor_config(model_name_or_path, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
            os.rename(output_dir, os.path.join(old, "x"))
            os.rename(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def write_bf16_encoder(model_name_or_path: str, output_dir: str) -> str:
    """Write the encoder's weights in bfloat16 into a CTranslate2 export
    (:data:`~whisper_zh.serve.bf16_encoder.ENCODER_FILE`): what the CTranslate2 backend
    encodes with on a CPU with AMX (:mod:`whisper_zh.serve.bf16_encoder`)."""
    return save_bf16_encoder(*_encoder_weights(model_name_or_path), output_dir)


def _encoder_weights(model_name_or_path: str) -> tuple[dict, str]:
    """The encoder's ``state_dict`` and the model's config (JSON). From a local safetensors
    checkpoint (one file or shards) the encoder's tensors are read alone: the export's
    converter has just built the whole model once, and a large-v3 is 6 GB in float32.
    Anything else (a Hub id, a ``pytorch_model.bin``, a checkpoint whose encoder is not
    the one its config describes) is loaded with ``from_pretrained``."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if os.path.isdir(model_name_or_path):
        config = WhisperConfig.from_pretrained(model_name_or_path)
        found = _checkpoint_tensors(model_name_or_path, ENCODER_PREFIX)
        if found is not None:
            with torch.device("meta"):
                expected = set(WhisperEncoder(config).state_dict())
            if set(found) == expected:
                return found, config.to_json_string()
            logger.info("%s: its checkpoint's encoder tensors are not the ones its config describes; "
                        "loading the model for them", model_name_or_path)
    model = WhisperForConditionalGeneration.from_pretrained(model_name_or_path, low_cpu_mem_usage=True)
    return model.get_encoder().state_dict(), model.config.to_json_string()


def _checkpoint_tensors(model_dir: str, prefix: str) -> Optional[dict]:
    """The tensors of a safetensors checkpoint in ``model_dir`` whose names start with
    ``prefix`` (the prefix taken off); None where the checkpoint is not safetensors."""
    from safetensors import safe_open

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted({file for name, file in json.load(f)["weight_map"].items() if name.startswith(prefix)})
    elif os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        return None
    tensors = {}
    for file in files:
        with safe_open(os.path.join(model_dir, file), framework="pt") as f:
            for name in f.keys():
                if name.startswith(prefix):
                    tensors[name[len(prefix):]] = f.get_tensor(name)
    return tensors


def find_ct2_model(model_name_or_path: str) -> str | None:
    """The CTranslate2 export that belongs to a model, if there is one.

    Returns ``DIR/ct2`` when ``DIR/ct2/model.bin`` exists (where ``whisper-zh export``
    writes by default), ``DIR`` when ``DIR/model.bin`` exists (``DIR`` is itself an
    export), else ``None`` (also for Hub ids: nothing is downloaded).
    """
    path = os.fspath(model_name_or_path)
    if not os.path.isdir(path):
        return None
    for candidate in (os.path.join(path, "ct2"), path):
        if os.path.isfile(os.path.join(candidate, "model.bin")):
            return candidate
    return None


def ct2_cache_dir() -> str:
    """Where conversions made at load time are kept: beside the Hugging Face cache
    (``$HF_HOME/whisper-zh-ct2``), so a Space's persistent storage keeps them too."""
    from huggingface_hub import constants

    return os.path.join(constants.HF_HOME, "whisper-zh-ct2")


def _conversion_key(model_dir: str) -> str:
    """A name for a model directory's conversion that changes when its weights do."""

    weights = sorted(f for f in os.listdir(model_dir) if f.endswith((".safetensors", ".bin", ".json")))
    stamp = [(f, os.stat(os.path.join(model_dir, f)).st_size, os.stat(os.path.join(model_dir, f)).st_mtime_ns)
             for f in weights]
    digest = hashlib.sha256(repr((os.path.realpath(model_dir), stamp)).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in os.path.basename(os.path.normpath(model_dir)))
    return f"{name}-{digest}"


def can_convert() -> bool:
    """Whether a transformers Whisper can be converted here (torch and transformers installed)."""
    return torch_whisper_installed()


def download_model(model_id: str, *, name: str | None = None, **kwargs) -> str:
    """``huggingface_hub.snapshot_download``, its failures turned into one
    :class:`ModelNotFoundError` line naming the model (``name``, default the repo id),
    what failed and what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    name = name or repr(model_id)
    elsewhere = "or give a local model folder instead (--model / MODEL_ID)"
    try:
        return snapshot_download(model_id, **kwargs)
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(f"model {name} is not on the Hugging Face Hub (or is private or gated): "
                                 f"check the id (e.g. openai/whisper-small), log in for a private one, "
                                 f"{elsewhere}") from err
    except LocalEntryNotFoundError as err:
        # what snapshot_download raises when the Hub cannot be reached (or HF_HUB_OFFLINE
        # is set) and nothing of the repo is in the local cache
        raise ModelNotFoundError(f"model {name} could not be downloaded: the Hugging Face Hub is "
                                 f"unreachable and the model is not in the local cache; check the network "
                                 f"(and HF_ENDPOINT, HF_HUB_OFFLINE), {elsewhere}") from err
    except HFValidationError as err:
        raise ModelNotFoundError(f"{name} is neither a model folder nor a Hub id (org/name): "
                                 f"check the spelling, {elsewhere}") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "an error"
        raise ModelNotFoundError(f"model {name} could not be downloaded: the Hugging Face Hub answered "
                                 f"{status}; try again later, {elsewhere}") from err


def resolve_ct2_model(model_id: str, quantization: str = "int8") -> str:
    """The CTranslate2 model for any Whisper, found, downloaded or converted once.

    In order: a local folder's own export (``DIR/ct2`` or ``DIR`` itself); for OpenAI's
    models (:data:`OFFICIAL_CT2`), their published conversion (only :data:`CT2_FILES`
    are downloaded); a Hub repo's ``ct2/`` folder (only that folder is downloaded: what
    ``whisper-zh train`` pushes); a conversion made earlier and cached in
    :func:`ct2_cache_dir`; else the model is converted now (``quantization``, int8: the
    fastest on a CPU) and cached, so the next start skips it. Logs which of these
    happened and how long it took.

    Raises:
        ModelNotFoundError: no such folder, or the Hub does not have the model or
            cannot be reached (:func:`download_model`).
        MissingExtraError: the model must be converted and the ``[transformers]`` extra
            is not installed (checked before its weights are downloaded).
    """
    started = time.perf_counter()
    found = find_ct2_model(model_id)
    if found:
        logger.info("%s: using its CTranslate2 export %s", model_id, found)
        return found
    must_convert = MissingExtraError.of(
        "transformers", f"{model_id} has no CTranslate2 copy; converting it (once, then cached)")
    if os.path.isdir(model_id):
        source = model_id
    elif looks_local(model_id):
        raise ModelNotFoundError(f"no such model directory: {model_id}")
    elif model_id.lower() in OFFICIAL_CT2:
        repo = OFFICIAL_CT2[model_id.lower()]
        found = find_ct2_model(download_model(repo, name=f"{model_id!r} (its CTranslate2 conversion {repo})",
                                              allow_patterns=list(CT2_FILES)))
        if not found:
            raise ModelNotFoundError(f"{repo}, the CTranslate2 conversion of {model_id}, has no model.bin")
        logger.info("%s: using its published CTranslate2 conversion %s (%.1f s)", model_id, repo,
                    time.perf_counter() - started)
        return found
    else:
        found = find_ct2_model(download_model(model_id, allow_patterns=["ct2/*"]))
        if found:
            logger.info("%s: downloaded its CTranslate2 export in %.1f s", model_id, time.perf_counter() - started)
            return found
        if not can_convert():
            raise must_convert
        source = download_model(model_id)  # its snapshot folder is named by the commit
    out = os.path.join(ct2_cache_dir(), _conversion_key(source), quantization)
    if os.path.isfile(os.path.join(out, "model.bin")):
        logger.info("%s: using the CTranslate2 conversion cached in %s", model_id, out)
        if not os.path.isfile(os.path.join(out, ENCODER_FILE)) and cpu_has_amx_bf16() and can_convert():
            # a conversion cached before the file existed, on a CPU that would use it
            try:
                write_bf16_encoder(source, out)
            except OSError as err:  # a read-only cache: it serves as it is
                logger.warning("could not add %s to %s (%s); CTranslate2 encodes", ENCODER_FILE, out, err)
        return out
    if not can_convert():
        raise must_convert
    logger.info("%s has no CTranslate2 export: converting it to %s once (cached in %s)", model_id,
                quantization, out)
    export_ct2(source, out, quantization)
    logger.info("%s: converted to CTranslate2 %s in %.1f s", model_id, quantization, time.perf_counter() - started)
    return out
