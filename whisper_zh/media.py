"""Decoding audio and video to the 16 kHz mono float32 waveform Whisper reads.

Two decoders, tried in order:

* soundfile + soxr, in-process: wav/flac/ogg/mp3 (libsndfile >= 1.1). ~1 ms for a
  5 s Common Voice clip, so preparing a whole release stays CPU-cheap.
* ffmpeg, the binary shipped in ``imageio-ffmpeg`` (no system ffmpeg needed):
  everything else (m4a, mp4, mkv, webm, mov, ...).

Neither touches torchcodec, which datasets >= 4 would otherwise require.

Links (YouTube or any page yt-dlp supports) are downloaded by :func:`download_audio`
after :func:`check_url` has refused non-http(s) schemes and hosts inside our own
network, so that a public Space cannot be used as a proxy into it.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import socket
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from whisper_zh.audio import SAMPLE_RATE

AudioSource = Union[str, os.PathLike, bytes]


class AudioDecodeError(ValueError):
    """The input exists but is not decodable audio (or video with an audio track)."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, sr, target_sr, quality="HQ")


def _decode_soundfile(source: AudioSource, sr: int) -> np.ndarray:
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    audio, file_sr = sf.read(handle, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return np.ascontiguousarray(_resample(audio, file_sr, sr), dtype=np.float32)


def _decode_ffmpeg(source: AudioSource, sr: int) -> np.ndarray:
    data = source if isinstance(source, (bytes, bytearray)) else None
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
        "-i", "pipe:0" if data is not None else os.fspath(source),
        "-vn", "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(sr), "-",
    ]
    proc = subprocess.run(cmd, input=data, capture_output=True)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioDecodeError(message[-1] if message else f"ffmpeg exited with {proc.returncode}")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a media file (path or bytes) to a mono waveform.

    Returns:
        float32 array of shape ``(n_samples,)`` at ``sr`` Hz, values in [-1, 1].

    Raises:
        FileNotFoundError: the path does not exist.
        AudioDecodeError: empty file, not media, or media without an audio track.
    """
    if not isinstance(source, (bytes, bytearray)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        if os.path.getsize(path) == 0:
            raise AudioDecodeError(f"empty file: {path}")
    elif len(source) == 0:
        raise AudioDecodeError("empty audio data")
    try:
        audio = _decode_soundfile(source, sr)
    except Exception:
        try:
            audio = _decode_ffmpeg(source, sr)
        except AudioDecodeError as err:
            name = "audio data" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
            raise AudioDecodeError(f"cannot decode {name}: {err}") from None
    if audio.size == 0:
        raise AudioDecodeError("the input has no audio samples")
    return audio


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 PCM (half the bytes; what the training cache stores)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)


# ---------------------------------------------------------------------------
# Probing, size limits, and downloading from links (yt-dlp)
# ---------------------------------------------------------------------------



class MediaTooLongError(ValueError):
    """The input is longer than the configured limit (seconds) or larger than the byte limit."""


class DownloadError(RuntimeError):
    """A link could not be downloaded; the message is meant for the person who pasted it."""


class UnsafeURLError(DownloadError):
    """A link was refused before any request: wrong scheme, or a host inside our own network."""


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def probe_duration(path: Union[str, os.PathLike]) -> Optional[float]:
    """Duration of a media file in seconds from its header, without decoding it.

    None when the container does not say (a live stream, a raw pipe) or the file is
    not media; callers then fall back to checking the decoded length.
    """
    path = os.fspath(path)
    try:
        import soundfile as sf

        info = sf.info(path)
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:
        pass
    # ffmpeg with no output prints the header and exits 1 ("At least one output file")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path], capture_output=True)
    match = _DURATION_RE.search(proc.stderr.decode("utf-8", "replace"))
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def format_duration(seconds: float) -> str:
    """3725.4 -> '1:02:05'; 65 -> '1:05'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def load_media(path: Union[str, os.PathLike], *, max_duration_s: Optional[float] = None,
               max_bytes: Optional[int] = None, sr: int = SAMPLE_RATE) -> np.ndarray:
    """:func:`load_audio` with limits checked *before* decoding, so a 10-hour upload is
    refused in milliseconds instead of filling memory (one hour is 230 MB of float32).

    Returns:
        float32 array of shape ``(n_samples,)`` at ``sr`` Hz.

    Raises:
        MediaTooLongError: larger than ``max_bytes`` or longer than ``max_duration_s``.
        AudioDecodeError, FileNotFoundError: as :func:`load_audio`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise MediaTooLongError(
            f"the file is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    if max_duration_s is not None and size > 0:
        duration = probe_duration(path)
        if duration is not None and duration > max_duration_s:
            raise MediaTooLongError(_too_long(duration, max_duration_s))
    audio = load_audio(path, sr)
    if max_duration_s is not None and audio.size / sr > max_duration_s:
        raise MediaTooLongError(_too_long(audio.size / sr, max_duration_s))
    return audio


def _too_long(duration: float, limit: float) -> str:
    return (f"the input is {format_duration(duration)} long; the limit is {format_duration(limit)} "
            f"(set MAX_DURATION_S to change it)")


def is_url(text: str) -> bool:
    """True for anything with a URL scheme (``https://``, ``file://``, ``ftp://``...), so
    that unsupported schemes reach :func:`check_url` and get refused by name rather than
    being treated as a missing local file."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text.strip()))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified)


def check_url(url: str, *, allow_private: Optional[bool] = None) -> str:
    """Refuse links that would turn a public Space into a proxy into its own network.

    Only ``http``/``https`` are accepted, and every address the host resolves to must be
    public: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
    (169.254/16 -- the cloud metadata service), multicast and reserved ranges are refused
    unless ``allow_private`` (default: the ``ALLOW_PRIVATE_URLS=1`` environment variable).

    Returns:
        The stripped URL.

    Raises:
        UnsafeURLError: with a message naming the reason.
    """
    url = url.strip()
    if allow_private is None:
        allow_private = _env_flag("ALLOW_PRIVATE_URLS")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeURLError(f"only http:// and https:// links are accepted, not {parts.scheme or 'this'}://")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("the link has no host name")
    if parts.username or parts.password:
        raise UnsafeURLError("links with a user name or password are not accepted")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeURLError("the link has an invalid port") from None
    try:
        infos = _system_getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise DownloadError(f"cannot find the host {host!r}: check the link") from None
    if not allow_private:
        for *_, sockaddr in infos:
            if _is_internal(sockaddr[0]):
                raise UnsafeURLError(
                    f"{host} resolves to a private, loopback or link-local address ({sockaddr[0]}); "
                    "such links are refused (set ALLOW_PRIVATE_URLS=1 to allow them on a machine you trust)")
    return url


_guard = threading.local()
_system_getaddrinfo = socket.getaddrinfo


class _RefusedAddress(socket.gaierror):
    pass


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    infos = _system_getaddrinfo(host, port, *args, **kwargs)
    if getattr(_guard, "active", False):
        for *_, sockaddr in infos:
            if _is_internal(sockaddr[0]):
                _guard.refused = f"{host} ({sockaddr[0]})"
                raise _RefusedAddress(socket.EAI_NONAME, f"refused to connect to internal address {sockaddr[0]}")
    return infos


@contextlib.contextmanager
def _public_addresses_only(active: bool = True):
    """While active, every host name this thread resolves -- the pasted link, pages and
    media URLs an extractor finds, each redirect, and each re-resolution (DNS rebinding)
    -- must resolve to public addresses; otherwise the connection fails before a single
    packet is sent. yt-dlp and urllib3 both connect through ``socket.getaddrinfo``, so
    the check sits there, gated per thread so that nothing else in the process is
    affected."""
    if socket.getaddrinfo is not _guarded_getaddrinfo:
        socket.getaddrinfo = _guarded_getaddrinfo
    previous = getattr(_guard, "active", False)
    _guard.active, _guard.refused = active, None
    try:
        yield
    finally:
        _guard.active = previous


def _explain_ytdlp_error(message: str, url: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)
    text = re.sub(r"^ERROR:\s*", "", text.strip())
    lower = text.lower()
    if "confirm you" in lower and "bot" in lower or "sign in to confirm" in lower and "age" not in lower:
        return ("YouTube asked for a sign-in to prove this is not a bot. Pass a cookies.txt file "
                "exported from a logged-in browser: upload it under 'YouTube cookies', or set "
                "YTDLP_COOKIES=/path/to/cookies.txt (CLI: --cookies).")
    if "age" in lower and "sign in" in lower:
        return "this video is age-restricted; pass a cookies file of a logged-in account (YTDLP_COOKIES or --cookies)."
    if "private video" in lower:
        return "this video is private."
    if "removed" in lower or "unavailable" in lower or "does not exist" in lower or "terminated" in lower:
        return f"this video is unavailable (removed or blocked): {text}"
    if "http error 404" in lower or "404: not found" in lower:
        return "the link returned 404 Not Found."
    if re.search(r"http error (401|403)", lower):
        return f"the server refused the download ({text}); if it needs a login, pass a cookies file."
    if "unsupported url" in lower:
        return "no audio or video was found at this link (unsupported site or not a media page)."
    if "is live" in lower or "live event" in lower:
        return "live streams cannot be transcribed; try again when the recording is available."
    if "max_filesize" in lower or "larger than max-filesize" in lower or "file is larger" in lower:
        return "the media at this link is larger than the upload limit."
    if any(k in lower for k in ("timed out", "connection refused", "name or service", "unreachable",
                                "failed to resolve", "getaddrinfo", "connection reset")):
        return f"the site could not be reached: {text}"
    return text or f"cannot download {url}"


def download_audio(url: str, out_dir: Union[str, os.PathLike], *,
                   cookies: Optional[str] = None,
                   max_duration_s: Optional[float] = None,
                   max_bytes: Optional[int] = None,
                   allow_private: Optional[bool] = None,
                   progress: Optional[Callable[[float, str], None]] = None,
                   timeout_s: float = 30.0) -> Path:
    """Download the audio of a YouTube video or any page yt-dlp supports into ``out_dir``.

    Only the best audio-only format is fetched when the site offers one (a tenth of the
    bytes of the video); a direct link to a media file is fetched as is. Playlists are
    refused (one link, one transcript). ``out_dir`` should be a per-request temporary
    directory, which the caller deletes.

    Args:
        cookies: path of a Netscape cookies.txt (default: ``$YTDLP_COOKIES``), the way
            through YouTube's "confirm you're not a bot" check.
        max_duration_s: refuse media longer than this, before downloading when the site
            reports a duration.
        max_bytes: refuse (or abort) downloads larger than this.
        progress: called with (fraction in [0, 1], message) while downloading.

    Returns:
        Path of the downloaded file inside ``out_dir``.

    Raises:
        UnsafeURLError: the link is refused by :func:`check_url`.
        DownloadError: anything else; the message says what happened in plain words.
        MediaTooLongError: longer than ``max_duration_s``.
    """
    if allow_private is None:
        allow_private = _env_flag("ALLOW_PRIVATE_URLS")
    url = check_url(url, allow_private=allow_private)
    cookies = cookies or os.environ.get("YTDLP_COOKIES") or None
    if cookies and not os.path.isfile(cookies):
        raise DownloadError(f"cookies file not found: {cookies}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import yt_dlp

    def hook(status: dict) -> None:
        if progress is None or status.get("status") != "downloading":
            return
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        done = status.get("downloaded_bytes") or 0
        if total:
            progress(min(done / total, 1.0), f"downloading {done / 2**20:.1f}/{total / 2**20:.1f} MB")
        else:
            progress(0.0, f"downloading {done / 2**20:.1f} MB")

    class _Quiet:
        # yt-dlp prints to the console by default; errors reach us as exceptions instead
        def debug(self, msg):
            pass

        info = warning = debug

        def error(self, msg):
            pass

    options = {
        # audio-only when the site has it; a muxed file otherwise (we decode its audio track)
        "format": "bestaudio/best",
        "outtmpl": {"default": str(out_dir / "download.%(ext)s")},
        "paths": {"home": str(out_dir), "temp": str(out_dir)},
        "noplaylist": True,
        "playlist_items": "1",
        "noprogress": True,
        "quiet": True,
        "no_warnings": True,
        "logger": _Quiet(),
        "progress_hooks": [hook],
        "socket_timeout": timeout_s,
        "retries": 2,
        "fragment_retries": 2,
        "fixup": "never",
        "overwrites": True,
        "cachedir": False,
        "cookiefile": cookies,
        "max_filesize": max_bytes,
        "concurrent_fragment_downloads": 1,  # fragments in this thread, under its address guard
        "restrictfilenames": True,
    }
    try:
        with _public_addresses_only(not allow_private), yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=False)
            if info is None:
                raise DownloadError(f"no media found at {url}")
            if info.get("_type") in ("playlist", "multi_video"):
                entries = [e for e in (info.get("entries") or []) if e]
                if not entries:
                    raise DownloadError("the link is an empty playlist")
                info = entries[0]
            if info.get("is_live"):
                raise DownloadError("live streams cannot be transcribed")
            duration = info.get("duration")
            if max_duration_s is not None and duration and duration > max_duration_s:
                raise MediaTooLongError(_too_long(float(duration), max_duration_s))
            size = info.get("filesize") or info.get("filesize_approx")
            if max_bytes is not None and size and size > max_bytes:
                raise MediaTooLongError(
                    f"the media is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            info = ydl.process_ie_result(info, download=True)
    except (DownloadError, MediaTooLongError):
        raise
    except yt_dlp.utils.YoutubeDLError as err:
        if getattr(_guard, "refused", None):
            raise UnsafeURLError(f"the link led to an internal address, {_guard.refused}; refused") from None
        cause = err.exc_info[1] if getattr(err, "exc_info", None) else None
        if isinstance(cause, (DownloadError, MediaTooLongError)):
            raise cause from None
        raise DownloadError(_explain_ytdlp_error(str(err), url)) from None
    files = [p for p in out_dir.iterdir()
             if p.is_file() and p.name.startswith("download.") and not p.name.endswith((".part", ".ytdl"))]
    if not files:
        # yt-dlp skips (rather than fails) a download over max_filesize
        if max_bytes is not None:
            raise MediaTooLongError(f"the media is larger than the limit of {max_bytes / 2**20:.0f} MB")
        raise DownloadError(f"nothing was downloaded from {url}")
    return max(files, key=lambda p: p.stat().st_size)
