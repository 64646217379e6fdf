"""whisper-zh: fine-tune OpenAI Whisper for Mandarin Chinese, and serve it.

    >>> import whisper_zh
    >>> engine = whisper_zh.Transcriber("you/whisper-small-zh")
    >>> engine.transcribe("talk.mp4").text

The package follows the data's two journeys:

* ``whisper_zh.train`` -- ``config`` -> ``data`` (Common Voice or any ``datasets`` audio
  in, a compact cache out) -> ``examples`` (training examples, collator, log-mel) ->
  ``trainer`` -> ``checkpoints`` -> ``evaluate`` -> ``publish`` (results, card, ct2/,
  the Hub) -> ``pipeline`` (:func:`train`);
* ``whisper_zh.serve`` -- ``settings`` -> ``types`` -> ``netguard`` -> ``download`` (a
  link's audio, or for the page a small video that plays there with its subtitles) ->
  ``segmentation`` -> ``bf16_encoder`` (the encoder in PyTorch bfloat16, for the ct2
  backend on a CPU with AMX) -> ``models`` -> the two backends -> ``engine`` -> ``diarize`` (who
  speaks: ``--diarize``, the page's checkbox, ``Job(..., diarize=True)``; needs the
  ``[diarize]`` extra) -> ``subtitles`` -> ``jobs`` (one flow from input to files) ->
  ``uploads`` (what a server's requests may hold) -> ``folder`` / ``live`` / ``api`` (the OpenAI audio API) -> ``app``;

on a few modules both use (``errors``, ``audio``, ``text``, ``hub``, ``media``,
``distributed``, ``logs``, ``allocator``, ``cpu``), with ``cli`` and ``notebook`` at the edges. Each layer imports
only the ones before it (``tests/test_layout.py`` checks).

Names are imported on first use, so ``import whisper_zh`` stays light: serving never
loads the training stack.
"""

from __future__ import annotations

import importlib

from whisper_zh.errors import (  # noqa: F401  (the public API)
    AudioDecodeError,
    ConfigError,
    DataError,
    DownloadError,
    InputNotFoundError,
    MediaLimitError,
    ModelNotFoundError,
    NoSpeechError,
    UnsafeURLError,
    WhisperZhError,
)

__version__ = "0.1.0"

_LAZY = {
    # serving
    "Transcriber": "whisper_zh.serve.engine",
    "get_transcriber": "whisper_zh.serve.engine",
    "TranscribeOptions": "whisper_zh.serve.types",
    "Transcript": "whisper_zh.serve.types",
    "Segment": "whisper_zh.serve.types",
    "Word": "whisper_zh.serve.types",
    "Job": "whisper_zh.serve.jobs",
    "JobResult": "whisper_zh.serve.jobs",
    "Limits": "whisper_zh.serve.settings",
    "ServeSettings": "whisper_zh.serve.settings",
    "transcribe_folder": "whisper_zh.serve.folder",
    "LiveTranscriber": "whisper_zh.serve.live",
    "write_subtitles": "whisper_zh.serve.subtitles",
    "export_ct2": "whisper_zh.serve.models",
    "load_audio": "whisper_zh.media",
    "load_media": "whisper_zh.media",
    "reuse_freed_memory": "whisper_zh.allocator",
    # training and evaluation
    "TrainConfig": "whisper_zh.train.config",
    "prepare_data": "whisper_zh.train.data",
    "train": "whisper_zh.train.pipeline",
    "TrainResult": "whisper_zh.train.trainer",
    "evaluate": "whisper_zh.train.evaluate",
    "SplitScore": "whisper_zh.train.evaluate",
    # scoring
    "cer": "whisper_zh.text",
    "normalize": "whisper_zh.text",
}

__all__ = sorted([*_LAZY, "__version__", "AudioDecodeError", "ConfigError", "DataError", "DownloadError",
                  "InputNotFoundError", "MediaLimitError", "ModelNotFoundError", "NoSpeechError",
                  "UnsafeURLError", "WhisperZhError"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'whisper_zh' has no attribute {name!r}")


def __dir__():
    return __all__
