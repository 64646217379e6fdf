"""What an operator sets: the model, the backend and the limits a public server holds.

:class:`ServeSettings` names and parses every environment variable of the app, the
engine and the command line, and is read only at those edges
(``ServeSettings.from_env()`` in :mod:`whisper_zh.serve.app` and :mod:`whisper_zh.cli`).
Library code takes what it needs as arguments: the limits as one :class:`Limits`, with
safe defaults (no private addresses).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Optional

from whisper_zh.errors import ConfigError
from whisper_zh.hub import DEFAULT_MODEL


@dataclass(frozen=True)
class Limits:
    """What one request may cost, held *while* it is worked on (media decoding stops at
    the duration limit, downloads at the byte limit and the deadline).

    Attributes:
        max_duration_s: longest input accepted, seconds (None: no limit).
        max_bytes: largest upload or download, bytes (None: no limit).
        download_deadline_s: the longest one link's download may take, seconds.
        decode_deadline_s: the longest ffmpeg may take to read one input's header, and
            again to decode it, seconds (None: no limit).
        allow_private_urls: links may reach loopback and private addresses.
    """

    max_duration_s: Optional[float] = 3600.0
    max_bytes: Optional[int] = 500 * 2**20
    download_deadline_s: float = 300.0
    # an hour of AAC decodes in about 20 s on 2 CPU cores: a wide margin for slow machines
    decode_deadline_s: Optional[float] = 300.0
    allow_private_urls: bool = False


UNLIMITED = Limits(max_duration_s=None, max_bytes=None)
# multipart framing and the small fields around the file: what a request may carry beyond MAX_UPLOAD_MB
FORM_OVERHEAD = 64 * 2**10


def _env_flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServeSettings:
    """Everything an operator of the app (a Space's "Variables" tab), the engine or the
    command line may set from the environment; each variable is named and parsed here only.

    ``ServeSettings.from_env()`` reads them; the fields' defaults are what an unset
    variable means.
    """

    model_id: str = DEFAULT_MODEL  # MODEL_ID: Hub id or local directory
    backend: str = "auto"  # BACKEND: auto | transformers | ct2
    encoder: str = "auto"  # ENCODER: the ct2 backend's encoder, auto | ct2 | bf16 (serve/bf16_encoder.py)
    max_duration_s: float = Limits.max_duration_s  # MAX_DURATION_S: longest input accepted
    max_upload_mb: float = 500.0  # MAX_UPLOAD_MB: largest upload or download accepted (a whole request's files)
    # MAX_CACHE_MB: uploads the server holds at once, kept and arriving (serve/uploads.py);
    # None: 8 x MAX_UPLOAD_MB
    max_cache_mb: Optional[float] = None
    # CONCURRENCY_LIMIT: transcriptions at once; a second would double peak memory
    concurrency_limit: int = 1
    max_queue: int = 32  # MAX_QUEUE: requests allowed to wait
    batch_size: Optional[int] = None  # BATCH_SIZE: windows per model call (None: the engine's default)
    cookies: Optional[str] = None  # YTDLP_COOKIES: the operator's cookies.txt for YouTube
    allow_private_urls: bool = False  # ALLOW_PRIVATE_URLS: links may reach private addresses
    download_deadline_s: float = Limits.download_deadline_s  # DOWNLOAD_DEADLINE_S: wall-clock limit of one download
    decode_deadline_s: float = Limits.decode_deadline_s  # DECODE_DEADLINE_S: wall-clock limit of one decode
    # API_KEY: the bearer token the OpenAI-style API asks for (None: the API is open, as
    # the page is); kept out of repr so that no log or traceback shows it
    api_key: Optional[str] = field(default=None, repr=False)
    mcp_server: bool = False  # MCP_SERVER: serve the page's transcription as MCP tools (gradio[mcp])

    ENVIRONMENT = {  # field -> variable
        "model_id": "MODEL_ID", "backend": "BACKEND", "encoder": "ENCODER", "max_duration_s": "MAX_DURATION_S",
        "max_upload_mb": "MAX_UPLOAD_MB", "max_cache_mb": "MAX_CACHE_MB", "concurrency_limit": "CONCURRENCY_LIMIT", "max_queue": "MAX_QUEUE",
        "batch_size": "BATCH_SIZE", "cookies": "YTDLP_COOKIES", "allow_private_urls": "ALLOW_PRIVATE_URLS",
        "download_deadline_s": "DOWNLOAD_DEADLINE_S", "decode_deadline_s": "DECODE_DEADLINE_S",
        "api_key": "API_KEY", "mcp_server": "MCP_SERVER",
    }

    @classmethod
    def from_env(cls, environ=None) -> "ServeSettings":
        """The settings the environment gives; unset or empty variables keep the defaults.

        Raises:
            ConfigError: a variable that does not parse, or a size, duration, deadline or
                count that is not a positive finite number, naming it.
        """
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {}
        for name, variable in cls.ENVIRONMENT.items():
            raw = (environ.get(variable) or "").strip()
            if not raw:
                continue
            kind = hints[name]
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
            try:
                values[name] = _env_flag(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ConfigError(f"{variable}={raw!r} is not a valid {kind.__name__}") from None
            # sizes, durations, deadlines and counts: "inf", "nan", 0 or less would turn a
            # limit off, or break the app where it is used
            if kind in (int, float) and not (math.isfinite(values[name]) and values[name] > 0):
                raise ConfigError(f"{variable}={raw!r} must be a positive finite number")
        settings = cls(**values)
        return dataclasses.replace(settings, backend=settings.backend.lower(), encoder=settings.encoder.lower())

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_request_bytes(self) -> int:
        """What one request's body may hold: an input at the upload limit and its form."""
        return self.max_bytes + FORM_OVERHEAD

    @property
    def max_cache_bytes(self) -> int:
        return int(self.max_cache_mb * 2**20) if self.max_cache_mb is not None else 8 * self.max_bytes

    def __post_init__(self):
        # an upload's bytes count twice while they arrive (held, and already in the upload
        # folder): below two uploads' worth, one upload alone would be refused
        if self.max_cache_mb is not None and self.max_cache_bytes < 2 * self.max_request_bytes:
            raise ConfigError(f"MAX_CACHE_MB={self.max_cache_mb:g} must be at least twice MAX_UPLOAD_MB "
                              f"({self.max_upload_mb:g}): an upload counts twice while it arrives")

    @property
    def limits(self) -> Limits:
        """The limits every request of this server holds."""
        return Limits(max_duration_s=self.max_duration_s, max_bytes=self.max_bytes,
                      download_deadline_s=self.download_deadline_s, decode_deadline_s=self.decode_deadline_s,
                      allow_private_urls=self.allow_private_urls)
