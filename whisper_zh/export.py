"""``whisper-zh export``: convert a (fine-tuned) Whisper to CTranslate2 for fast CPU serving.

The output directory is what faster-whisper loads: ``model.bin`` + ``config.json`` +
``vocabulary.json`` from the converter, plus ``tokenizer.json`` and a flat
``preprocessor_config.json`` (faster-whisper reads ``feature_size`` there, so a
128-mel large-v3 fine-tune gets the right filterbank). A transformers-5 processor
saves ``processor_config.json`` (the feature extractor nested inside it), which
faster-whisper does not read, so the flat file is written from the feature extractor.

By default a local model ``DIR`` is exported to ``DIR/ct2``, where the transcription
engine looks for it (:func:`whisper_zh.ct2.find_ct2_model`)::

    whisper-zh export outputs/whisper-small-zh --ct2 --quantization int8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

# CTranslate2 weight types a user may ask for. int8 is the CPU default: ~4x smaller
# than float32 and the fastest on x86/ARM CPUs; float16 is for GPUs.
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16", "float32")


def default_output_dir(model_name_or_path: str) -> str:
    """``DIR/ct2`` for a local model directory, else ``./<name>-ct2`` for a Hub id."""
    if os.path.isdir(model_name_or_path):
        return os.path.join(model_name_or_path, "ct2")
    return model_name_or_path.rstrip("/").split("/")[-1] + "-ct2"


def looks_local(name: str) -> bool:
    """A path rather than a Hub id ("name" or "org/name"): fail at once instead of asking
    the Hub (which, offline, retries before it fails)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _write_tokenizer(model_name_or_path: str, out_dir: str) -> None:
    local = os.path.join(model_name_or_path, "tokenizer.json")
    if os.path.isfile(local):
        # Copied byte for byte: re-saving through transformers may rewrite it.
        shutil.copyfile(local, os.path.join(out_dir, "tokenizer.json"))
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_name_or_path).save_pretrained(out_dir)
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        raise RuntimeError(f"{model_name_or_path} has no fast tokenizer: faster-whisper needs tokenizer.json")


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
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")
    if not os.path.isdir(model_name_or_path) and looks_local(model_name_or_path):
        raise FileNotFoundError(f"no such model directory: {model_name_or_path}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-zh export",
        description="Convert a Whisper model to CTranslate2 (faster-whisper) for fast CPU serving.",
    )
    parser.add_argument("model", help="fine-tuned model directory (or Hub id)")
    # CTranslate2 is the only export kind, so the flag changes nothing; it is accepted
    # so that the documented `whisper-zh export MODEL --ct2` spelling keeps working.
    parser.add_argument("--ct2", action="store_true",
                        help="export to CTranslate2 (what export always does; accepted for compatibility)")
    parser.add_argument("--quantization", default="int8", choices=QUANTIZATIONS,
                        help="weight type (default int8: fastest on CPU)")
    parser.add_argument("--output-dir", default=None,
                        help="output directory (default MODEL/ct2 for a local MODEL, where the engine finds it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = export_ct2(args.model, args.output_dir, args.quantization)
    except (OSError, ValueError) as err:
        print(f"whisper-zh export: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
