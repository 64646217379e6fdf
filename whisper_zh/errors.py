"""The errors whisper-zh raises on purpose: one family, :class:`WhisperZhError`.

Each says what went wrong and what to do in its message, for a person: the command
line prints it as one line (exit 2 for a configuration or data mistake, 1 otherwise)
and the app shows it on the page. Anything that is *not* a ``WhisperZhError`` is a bug
and keeps its traceback.

The classes also derive from the built-in error a caller would expect (``ValueError``
for bad input, ``FileNotFoundError`` for a missing file), so ``except ValueError``
written against an earlier release still catches them.
"""

from __future__ import annotations


class WhisperZhError(Exception):
    """Base of every error whisper-zh raises on purpose."""

    exit_code = 1


class ConfigError(WhisperZhError, ValueError):
    """A configuration or option that cannot work as given; the message says what to change."""

    exit_code = 2


class DataError(WhisperZhError, ValueError):
    """The dataset argument cannot be used as given; the message says what to do."""

    exit_code = 2


class InputNotFoundError(WhisperZhError, FileNotFoundError):
    """A file, folder or model directory named by the user does not exist."""


class ModelNotFoundError(InputNotFoundError):
    """A model id or directory that names no usable Whisper (or no CTranslate2 copy of one)."""


class AudioDecodeError(WhisperZhError, ValueError):
    """The input exists but is not decodable audio (or video with an audio track)."""


class MediaLimitError(WhisperZhError, ValueError):
    """The input is over an operator's limit: longer than the duration limit or larger
    than the byte limit."""


class NoSpeechError(WhisperZhError, ValueError):
    """The input holds no speech (silence, noise, an empty recording)."""

    def __init__(self, message: str = "no speech found"):
        super().__init__(message)


class DownloadError(WhisperZhError, RuntimeError):
    """A link could not be downloaded; the message is meant for the person who pasted it."""


class UnsafeURLError(DownloadError):
    """A link was refused before any request: wrong scheme, or a host inside our own network."""


class MissingExtraError(WhisperZhError, ImportError):
    """A feature needs packages of an extra that is not installed; the message names the
    ``pip install`` command."""


__all__ = ["WhisperZhError", "ConfigError", "DataError", "InputNotFoundError", "ModelNotFoundError",
           "AudioDecodeError", "MediaLimitError", "NoSpeechError", "DownloadError", "UnsafeURLError",
           "MissingExtraError"]
