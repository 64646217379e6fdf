"""Decoding audio and video to the 16 kHz mono float32 waveform Whisper reads.

Two decoders, tried in order:

* soundfile + soxr, in-process: wav/flac/ogg/mp3 (libsndfile >= 1.1). ~1 ms for a
  5 s Common Voice clip, so preparing a whole release stays CPU-cheap. Only for headers
  that bound the work (at most 2 channels and 192 kHz, and a frame count that accounts
  for the file's bytes).
* ffmpeg, the binary shipped in ``imageio-ffmpeg`` (no system ffmpeg needed):
  everything else (m4a, mp4, mkv, webm, mov, raw aac, headers that say nothing or lie).

Both write into one growing 16 kHz mono array block by block and stop at the duration
limit while decoding, so a small file that expands to hours is refused with the memory
of the limit, not of the file.

Neither touches torchcodec, which datasets >= 4 would otherwise require.

Links (YouTube or any page yt-dlp supports) are downloaded by :func:`download_audio`
after :func:`check_url` has refused non-http(s) schemes and hosts inside our own
network, so that a public Space cannot be used as a proxy into it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.cookiejar
import io
import ipaddress
import logging
import math
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisper_zh.config import ServeSettings

logger = logging.getLogger(__name__)

AudioSource = Union[str, os.PathLike, bytes]


class AudioDecodeError(ValueError):
    """The input exists but is not decodable audio (or video with an audio track)."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# soundfile decodes in-process only headers that bound what it reads; anything else is
# ffmpeg's, whose output is capped below.
_SANE_CHANNELS = 2
_SANE_RATE = 192_000
# soundfile samples (all channels) decoded, downmixed and resampled at a time: 8 MB, a
# whole Common Voice clip, so that the training path resamples it in one go
_BLOCK_SAMPLES = 1 << 21
_PIPE_BYTES = 1 << 16  # ffmpeg output read at a time (one pipe buffer)
_HEADROOM = _PIPE_BYTES // 4 + 1  # samples: one more read always fits, even one past the limit
# Bytes a header-accounted decode may leave unread (tags, trailing chunks) before the
# header is taken to understate the stream (an MP3 whose Xing frame count lies).
_UNREAD_SLACK = 1 << 16


class _Samples:
    """Mono float32 samples appended block by block into one array, so that peak
    memory is the result plus one block. Past ``limit`` samples it raises
    :class:`MediaTooLongError` at once, while decoding.

    The array is allocated once, at the size the header announces or, with no header to
    trust, at the limit plus one read: ``np.empty`` maps pages that take memory only
    once written, and ``result`` gives the unwritten tail back (a shrinking
    ``realloc``). Growing is the exception (no limit, or a header a little short), as it
    costs memory: ``ndarray.resize`` zero-fills what it adds, and a full array is copied.
    """

    def __init__(self, limit: Optional[int], expected: int = 0, message: str = ""):
        self.limit, self.message, self.size = limit, message, 0
        if expected:
            capacity = expected + _HEADROOM
        else:
            capacity = CHUNK_LENGTH * SAMPLE_RATE if limit is None else limit + 1 + _HEADROOM
        self.data = np.empty(capacity if limit is None else min(capacity, limit + 1 + _HEADROOM), np.float32)

    def reserve(self, count: int) -> None:
        needed = self.size + count
        if needed > len(self.data):
            capacity = max(needed, 2 * len(self.data))
            if self.limit is not None:
                capacity = min(capacity, self.limit + 1 + max(count, _HEADROOM))
            self.data.resize(capacity, refcheck=False)

    def grew(self, count: int) -> None:
        self.size += count
        if self.limit is not None and self.size > self.limit:
            raise MediaTooLongError(self.message)

    def append(self, block: np.ndarray) -> None:
        self.reserve(len(block))
        self.data[self.size:self.size + len(block)] = block
        self.grew(len(block))

    def result(self) -> np.ndarray:
        self.data.resize(self.size, refcheck=False)
        return self.data


def _mono(block: np.ndarray) -> np.ndarray:
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def _resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    if sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, sr, target_sr, quality="HQ")


def _decode_soundfile(source: AudioSource, sr: int, limit: Optional[int], message: str) -> Optional[np.ndarray]:
    """Decode with libsndfile when the header bounds the work: at most 2 channels and
    192 kHz, a frame count within the limit, and those frames accounting for the file's
    bytes. None otherwise (ffmpeg's turn). Downmixed and resampled block by block, so a
    long stereo 48 kHz file never sits in memory at its native rate."""
    import soundfile as sf
    import soxr

    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    with stream, sf.SoundFile(stream) as f:
        if not (0 < f.channels <= _SANE_CHANNELS and 0 < f.samplerate <= _SANE_RATE and f.frames > 0):
            return None
        if limit is not None and f.frames * sr > limit * f.samplerate:
            return None  # the header says too long (or lies): ffmpeg decodes up to the limit and refuses
        out = _Samples(limit, -(-f.frames * sr // f.samplerate), message)
        block_frames = _BLOCK_SAMPLES // f.channels
        if f.frames <= block_frames:
            out.append(_resample(_mono(f.read(dtype="float32", always_2d=True)), f.samplerate, sr))
        else:
            resampler = None if f.samplerate == sr else soxr.ResampleStream(
                f.samplerate, sr, 1, dtype="float32", quality="HQ")
            for block in f.blocks(block_frames, dtype="float32", always_2d=True):
                out.append(_mono(block) if resampler is None else resampler.resample_chunk(_mono(block)))
            if resampler is not None:
                out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        size = stream.getbuffer().nbytes if isinstance(stream, io.BytesIO) else os.fstat(stream.fileno()).st_size
        if size - stream.tell() > _UNREAD_SLACK + size // 100:
            logger.info("the header accounts for %d of %d bytes; decoding with ffmpeg", stream.tell(), size)
            return None
        return out.result()


def _decode_ffmpeg(source: AudioSource, sr: int, out: _Samples) -> np.ndarray:
    """Decode with ffmpeg into ``out`` as its output arrives, one pipe buffer at a time;
    ``-t`` stops ffmpeg itself one block past the limit, and the process is killed as
    soon as ``out`` refuses."""
    data = source if isinstance(source, (bytes, bytearray)) else None
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
        "-i", "pipe:0" if data is not None else os.fspath(source),
        "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le",
    ]
    if out.limit is not None:
        cmd += ["-t", f"{(out.limit + _PIPE_BYTES) / sr:.6f}"]
    proc = subprocess.Popen(cmd + ["pipe:1"], stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    errors: collections.deque = collections.deque(maxlen=3)  # ffmpeg can log without end on a crafted file
    helpers = [threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
    if data is not None:
        helpers.append(threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True))
    for thread in helpers:
        thread.start()
    received = 0  # bytes; a float32 sample can arrive split across two reads
    try:
        while True:
            out.reserve(_HEADROOM)
            with memoryview(out.data) as array, array.cast("B") as raw, raw[received:] as free:
                count = proc.stdout.readinto(free[:_PIPE_BYTES])
            if not count:
                break
            received += count
            out.grew(received // 4 - out.size)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for thread in helpers:
            thread.join()
        proc.stderr.close()
    if returncode != 0:
        message = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise AudioDecodeError(message[-1] if message else f"ffmpeg exited with {returncode}")
    return out.result()


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # ffmpeg may stop reading early
        with pipe:
            pipe.write(data)


def _decode(source: AudioSource, sr: int, max_duration_s: Optional[float]) -> np.ndarray:
    limit = None if max_duration_s is None else int(max_duration_s * sr) + sr // 10  # rounding slack
    message = "" if max_duration_s is None else _too_long(None, max_duration_s)
    audio = None
    try:
        audio = _decode_soundfile(source, sr, limit, message)
    except MediaTooLongError:
        raise
    except Exception as err:  # not a format libsndfile reads, or corrupt: ffmpeg's turn
        logger.debug("soundfile could not decode the input (%s); trying ffmpeg", type(err).__name__)
    # outside the except block, so that the failed attempt's buffers are already freed
    if audio is None:
        try:
            audio = _decode_ffmpeg(source, sr, _Samples(limit, 0, message))
        except AudioDecodeError as err:
            name = "audio data" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
            raise AudioDecodeError(f"cannot decode {name}: {err}") from None
    return audio


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a media file (path or bytes) to a mono waveform.

    Returns:
        float32 array of shape ``(n_samples,)`` at ``sr`` Hz, values in [-1, 1].

    Raises:
        FileNotFoundError: the path does not exist.
        AudioDecodeError: empty file, not media, or media without an audio track.
    """
    return _checked_decode(source, sr, None)


def _checked_decode(source: AudioSource, sr: int, max_duration_s: Optional[float]) -> np.ndarray:
    if not isinstance(source, (bytes, bytearray)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        if os.path.getsize(path) == 0:
            raise AudioDecodeError(f"empty file: {path}")
    elif len(source) == 0:
        raise AudioDecodeError("empty audio data")
    audio = _decode(source, sr, max_duration_s)
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
    refused in milliseconds instead of filling memory (one hour is 230 MB of float32),
    and again *while* decoding, for the headers that say nothing or lie: decoding stops
    as soon as it passes ``max_duration_s``, so peak memory stays near that of the
    decoded limit whatever the file expands to.

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
    return _checked_decode(path, sr, max_duration_s)


def _too_long(duration: Optional[float], limit: float) -> str:
    """``duration`` None: refused while decoding, the length unknown beyond the limit."""
    if duration is None:
        return f"the input is longer than the limit of {format_duration(limit)} (set MAX_DURATION_S to change it)"
    return (f"the input is {format_duration(duration)} long; the limit is {format_duration(limit)} "
            f"(set MAX_DURATION_S to change it)")


def is_url(text: str) -> bool:
    """True for anything with a URL scheme (``https://``, ``file://``, ``ftp://``...), so
    that unsupported schemes reach :func:`check_url` and get refused by name rather than
    being treated as a missing local file."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text.strip()))


# Not globally reachable, yet called global by Python 3.11's ``is_global``: the IETF
# protocol assignments (192.0.0.9, 192.0.0.10 and the rest of 192.0.0.0/24), and
# multicast. Addresses inside NAT64, 6to4 and Teredo are judged by the IPv4 they carry.
_NOT_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("224.0.0.0/4"),
               ipaddress.ip_network("ff00::/8"))
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _is_internal(address: str) -> bool:
    """True unless ``address`` is globally reachable: loopback, private, link-local,
    carrier-grade NAT (100.64.0.0/10, where 100.100.100.200 is a cloud metadata
    service), documentation, benchmarking, reserved and multicast ranges all count as
    inside."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is None and any(ip in net for net in _NAT64):
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None and _is_internal(str(carried)):
            return True
    return not ip.is_global or any(ip.version == net.version and ip in net for net in _NOT_PUBLIC)


def check_url(url: str, *, allow_private: Optional[bool] = None) -> str:
    """Refuse links that would turn a public Space into a proxy into its own network.

    Only ``http``/``https`` are accepted, and every address the host resolves to must be
    globally reachable (:func:`_is_internal`): loopback, private (10/8, 172.16/12,
    192.168/16, fc00::/7), link-local (169.254/16 -- the cloud metadata service),
    carrier-grade NAT (100.64/10), multicast and reserved ranges are refused unless
    ``allow_private`` (default: the ``ALLOW_PRIVATE_URLS=1`` environment variable).
    Messages name the host, never the address it resolved to.

    Returns:
        The stripped URL.

    Raises:
        UnsafeURLError: with a message naming the reason.
    """
    url = url.strip()
    if allow_private is None:
        allow_private = ServeSettings.from_env().allow_private_urls
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
    if not allow_private and any(_is_internal(sockaddr[0]) for *_, sockaddr in infos):
        raise UnsafeURLError(_refused_host(host))
    return url


def _refused_host(host: str) -> str:
    return (f"{host} resolves to a private, loopback or link-local address; such links are refused "
            "(set ALLOW_PRIVATE_URLS=1 to allow them on a machine you trust)")


_guard = threading.local()
_system_getaddrinfo = socket.getaddrinfo


class _RefusedAddress(socket.gaierror):
    pass


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    infos = _system_getaddrinfo(host, port, *args, **kwargs)
    if getattr(_guard, "active", False):
        if any(_is_internal(sockaddr[0]) for *_, sockaddr in infos):
            _guard.refused = host
            raise _RefusedAddress(socket.EAI_NONAME, f"refused to connect to {host}: not a public address")
    return infos


def _deadline_bound(recv):
    """``recv``/``recv_into`` of a socket, bounded by this thread's download deadline: a
    server that sends one byte every few seconds satisfies every per-read timeout, so
    each read may wait at most what is left of the deadline, and none starts after it."""

    @functools.wraps(recv)
    def bounded(self, *args, **kwargs):
        deadline = getattr(_guard, "deadline", None)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the download deadline has passed")
            timeout = self.gettimeout()
            if timeout is None or timeout > left:
                self.settimeout(left)
        return recv(self, *args, **kwargs)

    bounded.deadline_bound = True
    return bounded


def _install_guards() -> None:
    if socket.getaddrinfo is not _guarded_getaddrinfo:
        socket.getaddrinfo = _guarded_getaddrinfo
    for cls in (socket.socket, ssl.SSLSocket):
        for name in ("recv", "recv_into"):
            method = cls.__dict__.get(name) or getattr(cls, name)
            if not getattr(method, "deadline_bound", False):
                setattr(cls, name, _deadline_bound(method))


@contextlib.contextmanager
def _guarded_thread(public_only: bool = True, deadline: Optional[float] = None):
    """While active, every host name this thread resolves -- the pasted link, pages and
    media URLs an extractor finds, each redirect, and each re-resolution (DNS rebinding)
    -- must resolve to public addresses; otherwise the connection fails before a single
    packet is sent. yt-dlp and urllib3 both connect through ``socket.getaddrinfo``, so
    the check sits there, gated per thread so that nothing else in the process is
    affected. Every socket read of this thread also ends by ``deadline``
    (``time.monotonic()``), whatever the server's pace."""
    _install_guards()
    previous = getattr(_guard, "active", False), getattr(_guard, "deadline", None)
    _guard.active, _guard.refused, _guard.deadline = public_only, None, deadline
    try:
        yield
    finally:
        _guard.active, _guard.deadline = previous


# Requests one link may cost while yt-dlp reads its pages (a YouTube video takes ~10);
# two pages refreshing to each other stop here. The download itself may add one request
# per second of the duration limit (HLS/DASH fragments are seconds long).
_MAX_PAGE_REQUESTS = 32
_READ_BYTES = 1 << 20  # the most one read of a response returns, so a gzip bomb is counted as it expands
_MAX_COOKIES_BYTES = 1 << 20


@dataclass
class _Budget:
    """What one link may cost: wall-clock time, requests, and bytes received (after any
    content decoding), counted by :class:`_BudgetedYoutubeDL` on every request yt-dlp
    makes -- pages, manifests, media and fragments alike."""

    deadline_s: float
    max_bytes: Optional[int]
    max_requests: float = _MAX_PAGE_REQUESTS
    deadline: float = field(default_factory=time.monotonic)
    requests: int = 0
    received: int = 0
    spent: Optional[Exception] = None

    def __post_init__(self):
        self.deadline += self.deadline_s

    def request(self) -> None:
        self.requests += 1
        if time.monotonic() >= self.deadline:
            self._refuse(DownloadError(
                f"the download took longer than {self.deadline_s:.0f} s and was stopped "
                "(set DOWNLOAD_DEADLINE_S to change the limit)"))
        if self.requests > self.max_requests:
            self._refuse(DownloadError(
                f"the link needed more than {self.max_requests} requests (pages redirecting to each other?); "
                "stopped"))

    def received_bytes(self, count: int) -> None:
        self.received += count
        if self.max_bytes is not None and self.received > self.max_bytes:
            self._refuse(MediaTooLongError(
                f"the download passed the limit of {self.max_bytes / 2**20:.0f} MB "
                "(set MAX_UPLOAD_MB to change it)"))

    def _refuse(self, error: Exception):
        # kept: yt-dlp may wrap or swallow the exception on its way out
        self.spent = error
        raise error


def _budgeted_read(read, budget: _Budget):
    def bounded(amt: Optional[int] = None) -> bytes:
        if amt is None or amt < 0:
            return b"".join(iter(functools.partial(bounded, _READ_BYTES), b""))
        data = read(min(amt, _READ_BYTES))
        budget.received_bytes(len(data))
        return data

    return bounded


@functools.cache
def _budgeted_youtubedl():
    import yt_dlp

    class _BudgetedYoutubeDL(yt_dlp.YoutubeDL):
        """yt-dlp's one door to the network, ``urlopen``, with :class:`_Budget` at it."""

        def __init__(self, params: dict, budget: _Budget):
            self.budget = budget
            super().__init__(params)

        def urlopen(self, req):
            self.budget.request()
            response = super().urlopen(req)
            response.read = _budgeted_read(response.read, self.budget)
            return response

    return _BudgetedYoutubeDL


def _private_cookies(cookies: str, out_dir: Path) -> str:
    """A checked copy of a Netscape cookies.txt inside this request's directory: yt-dlp
    reads and rewrites the copy, so the operator's ``YTDLP_COOKIES`` is never written,
    and the request's directory takes it away. A malformed file is refused by line
    number here, before yt-dlp would print the offending line, values and all."""
    try:
        size = os.path.getsize(cookies)
    except OSError:
        raise DownloadError(f"cookies file not found: {cookies}") from None
    if size > _MAX_COOKIES_BYTES:
        raise DownloadError("the cookies file is larger than 1 MB; export only the site's cookies")
    try:
        lines = Path(cookies).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DownloadError("the cookies file is not text; a Netscape cookies.txt is expected") from None
    if not lines or not http.cookiejar.NETSCAPE_MAGIC_RGX.match(lines[0]):
        raise DownloadError("the cookies file does not start with '# Netscape HTTP Cookie File'; "
                            "export it in the Netscape (cookies.txt) format")
    for number, line in enumerate(lines, 1):
        entry = line.removeprefix("#HttpOnly_")
        if not entry.strip() or entry.lstrip().startswith(("#", "$")):
            continue
        fields = entry.split("\t")
        if len(fields) != 7 or not re.fullmatch(r"(\d+(\.\d+)?)?", fields[4]):
            raise DownloadError(f"line {number} of the cookies file is not a cookies.txt entry "
                                "(7 tab-separated fields); the file was not used")
    copy = out_dir / "cookies.txt"
    with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(copy)


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
    if "ffmpeg" in lower:
        return ("this stream can only be fetched by an external program (ffmpeg), which links are not "
                "allowed to run here; try another link or upload the file.")
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
                   timeout_s: float = 30.0,
                   deadline_s: Optional[float] = None) -> Path:
    """Download the audio of a YouTube video or any page yt-dlp supports into ``out_dir``.

    Only the best audio-only format is fetched when the site offers one (a tenth of the
    bytes of the video); a direct link to a media file is fetched as is. Playlists are
    refused (one link, one transcript). ``out_dir`` should be a per-request temporary
    directory, which the caller deletes.

    yt-dlp runs with its own downloaders only (plain HTTP, native HLS and DASH): never
    an external program, ffmpeg included, which would resolve host names past the
    address check.

    Args:
        cookies: path of a Netscape cookies.txt (default: ``$YTDLP_COOKIES``), the way
            through YouTube's "confirm you're not a bot" check. Checked, then copied into
            ``out_dir``: the file itself is never written.
        max_duration_s: refuse media longer than this, before downloading when the site
            reports a duration.
        max_bytes: refuse (or abort) downloads larger than this, counted on the bytes
            actually received, after decompression.
        progress: called with (fraction in [0, 1], message) while downloading.
        timeout_s: the longest wait for a connection or a single read.
        deadline_s: the longest the whole download may take (default:
            ``$DOWNLOAD_DEADLINE_S``, 300 s).

    Returns:
        Path of the downloaded file inside ``out_dir``.

    Raises:
        UnsafeURLError: the link is refused by :func:`check_url`.
        DownloadError: anything else; the message says what happened in plain words.
        MediaTooLongError: longer than ``max_duration_s`` or larger than ``max_bytes``.
    """
    if allow_private is None:
        allow_private = ServeSettings.from_env().allow_private_urls
    url = check_url(url, allow_private=allow_private)
    out_dir = Path(out_dir)
    cookies = cookies or ServeSettings.from_env().cookies
    if cookies and not os.path.isfile(cookies):
        raise DownloadError(f"cookies file not found: {cookies}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cookies:
        cookies = _private_cookies(cookies, out_dir)
    budget = _Budget(deadline_s if deadline_s is not None else ServeSettings.from_env().download_deadline_s,
                     max_bytes)

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

    # plain HTTP(S) and yt-dlp's native HLS/DASH: the protocols it downloads itself
    native = "[protocol~='^(https?|m3u8_native|http_dash_segments)$']"
    options = {
        # audio-only when the site has it; a muxed file otherwise (we decode its audio track)
        "format": f"bestaudio{native}/best{native}",
        "outtmpl": {"default": str(out_dir / "download.%(ext)s")},
        "paths": {"home": str(out_dir), "temp": str(out_dir)},
        "noplaylist": True,
        "playlist_items": "1",
        "noprogress": True,
        "quiet": True,
        "no_warnings": True,
        "logger": _Quiet(),
        "progress_hooks": [hook],
        "socket_timeout": min(timeout_s, budget.deadline_s),
        "retries": 2,
        "fragment_retries": 2,
        "fixup": "never",
        "overwrites": True,
        "cachedir": False,
        "cookiefile": cookies,
        "max_filesize": max_bytes,
        "concurrent_fragment_downloads": 1,  # fragments in this thread, under its guards
        "restrictfilenames": True,
        # never an external program: "native" for every protocol, and an ffmpeg that
        # does not exist for the HLS streams yt-dlp would otherwise hand to one
        "external_downloader": {"default": "native"},
        "hls_prefer_native": True,
        "ffmpeg_location": str(out_dir / "no-ffmpeg"),
    }
    import yt_dlp

    try:
        with _guarded_thread(not allow_private, budget.deadline), _budgeted_youtubedl()(options, budget) as ydl:
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
            fragments = math.inf if max_duration_s is None else int(max_duration_s)
            budget.max_requests = budget.requests + _MAX_PAGE_REQUESTS + fragments
            info = ydl.process_ie_result(info, download=True)
    except (DownloadError, MediaTooLongError):
        raise
    except yt_dlp.utils.YoutubeDLError as err:
        if getattr(_guard, "refused", None):
            raise UnsafeURLError(f"the link led to {_guard.refused}, an internal address; refused") from None
        if budget.spent is not None:
            raise budget.spent from None
        cause = err.exc_info[1] if getattr(err, "exc_info", None) else None
        if isinstance(cause, (DownloadError, MediaTooLongError)):
            raise cause from None
        raise DownloadError(_explain_ytdlp_error(str(err), url)) from None
    if budget.spent is not None:  # an error yt-dlp reported and went on from
        raise budget.spent
    files = [p for p in out_dir.iterdir()
             if p.is_file() and p.name.startswith("download.") and not p.name.endswith((".part", ".ytdl"))]
    if not files:
        # yt-dlp skips (rather than fails) a download over max_filesize
        if max_bytes is not None:
            raise MediaTooLongError(f"the media is larger than the limit of {max_bytes / 2**20:.0f} MB")
        raise DownloadError(f"nothing was downloaded from {url}")
    return max(files, key=lambda p: p.stat().st_size)
