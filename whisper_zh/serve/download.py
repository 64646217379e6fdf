"""Links in, a media file out: YouTube or any page yt-dlp supports, within a budget.

:func:`download_audio` checks the link (:func:`whisper_zh.serve.netguard.check_url`),
then runs yt-dlp with its own downloaders only, inside
:func:`whisper_zh.serve.netguard.guarded_thread`, and counts what it costs: wall-clock
time, requests and bytes received after decompression (:class:`_Budget`).
"""

from __future__ import annotations

import functools
import http.cookiejar
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from whisper_zh.errors import DownloadError, MediaLimitError, MissingExtraError, UnsafeURLError
from whisper_zh.media import _too_long
from whisper_zh.serve.netguard import _guard, check_url, guarded_thread
from whisper_zh.serve.settings import Limits

logger = logging.getLogger(__name__)

# Requests one link may cost while yt-dlp reads its pages (a YouTube video takes ~10);
# two pages refreshing to each other stop here. The download itself may add one request
# per second of the duration limit (HLS/DASH fragments are seconds long).
_MAX_PAGE_REQUESTS = 32


_READ_BYTES = 1 << 20  # the most one read of a response returns, so a gzip bomb is counted as it expands


_MAX_COOKIES_BYTES = 1 << 20

# plain HTTP(S) and yt-dlp's native HLS/DASH: the protocols it downloads itself
_NATIVE = "[protocol~='^(https?|m3u8_native|http_dash_segments)$']"
# audio-only when the site has it (a tenth of a video's bytes); a muxed file otherwise
# (its audio track is decoded)
AUDIO_FORMAT = f"bestaudio{_NATIVE}/best{_NATIVE}"
# For a page that plays the video beside its subtitles: one file with both pictures and
# sound ("best" is a muxed format), since joining separate video and audio streams takes
# ffmpeg, which links may not run; at most 480 lines, which a player shows well and the
# byte limit allows for. A site without such a file gives what AUDIO_FORMAT picks.
def video_format(max_bytes: Optional[int]) -> str:
    """That selector within ``max_bytes``: a long video whose file the site says is over
    the limit gives way to its audio (a tenth of the bytes), which may fit."""
    within = "" if max_bytes is None else f"[filesize<?{max_bytes}][filesize_approx<?{max_bytes}]"
    return f"best[height<=?480]{within}{_NATIVE}/{AUDIO_FORMAT}"


VIDEO_FORMAT = video_format(None)


@dataclass
class _Budget:
    """What one link may cost: wall-clock time, requests, and bytes received (after any
    content decoding), counted by :class:`_BudgetedYoutubeDL` on every request yt-dlp
    makes -- pages, manifests, media and fragments alike."""

    deadline_s: float
    max_bytes: Optional[int]
    max_requests: float = _MAX_PAGE_REQUESTS
    fragments: bool = False  # the pages are read; what is left is the media's (HLS/DASH fragments)
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
        if self.requests > self.max_requests and self.fragments:
            self._refuse(MediaLimitError(
                "the stream is cut into more pieces (HLS or DASH fragments) than its duration limit allows, "
                "one a second (set MAX_DURATION_S to change it); stopped"))
        if self.requests > self.max_requests:
            self._refuse(DownloadError(
                f"the link needed more than {self.max_requests} requests (pages redirecting to each other?); "
                "stopped"))

    def received_bytes(self, count: int) -> None:
        self.received += count
        if self.max_bytes is not None and self.received > self.max_bytes:
            self._refuse(MediaLimitError(
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


def _private_cookies(cookies: str, out_dir: Path) -> tuple[str, set[str]]:
    """A checked copy of a Netscape cookies.txt inside this request's directory: yt-dlp
    reads and rewrites the copy, so the operator's ``YTDLP_COOKIES`` is never written,
    and the request's directory takes it away. A malformed file is refused by line
    number here, before yt-dlp would print the offending line, values and all.

    Exporters disagree on the include-subdomains flag of a ``.example.com`` domain;
    http.cookiejar requires it to match the leading dot, and otherwise raises an error
    that quotes the whole line. The copy sets the flag from the domain, as browsers mean it.

    Returns:
        The copy's path, and the cookies' values (which no message may show).
    """
    try:
        size = os.path.getsize(cookies)
    except OSError:
        raise DownloadError(f"cookies file not found: {cookies}") from None
    if size > _MAX_COOKIES_BYTES:
        raise DownloadError("the cookies file is larger than 1 MB; export only the site's cookies")
    try:
        lines = Path(cookies).read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM some editors write
    except UnicodeDecodeError:
        raise DownloadError("the cookies file is not text; a Netscape cookies.txt is expected") from None
    if not lines or not http.cookiejar.NETSCAPE_MAGIC_RGX.match(lines[0]):
        raise DownloadError("the cookies file does not start with '# Netscape HTTP Cookie File'; "
                            "export it in the Netscape (cookies.txt) format")
    values: set[str] = set()
    for number, line in enumerate(lines, 1):
        entry = line.removeprefix("#HttpOnly_")
        if not entry.strip() or entry.lstrip().startswith(("#", "$")):
            continue
        fields = entry.split("\t")
        if len(fields) != 7 or not re.fullmatch(r"(\d+(\.\d+)?)?", fields[4]):
            raise DownloadError(f"line {number} of the cookies file is not a cookies.txt entry "
                                "(7 tab-separated fields); the file was not used")
        fields[1] = "TRUE" if fields[0].startswith(".") else "FALSE"
        lines[number - 1] = line[:len(line) - len(entry)] + "\t".join(fields)
        values.add(fields[6])
    copy = out_dir / "cookies.txt"
    with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(copy), values


_COOKIES_UNUSABLE = "the cookies file could not be used; export it again (its lines are not shown: they hold secrets)"


def _may_quote_cookies(message: str, secrets: set[str]) -> bool:
    """True when an error's text holds a cookie value, or comes from reading the file
    (http.cookiejar quotes the line it refuses)."""
    return any(secret and secret in message for secret in secrets) or "cookies file" in message.lower()


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
                   video: bool = False,
                   cookies: Optional[str] = None,
                   max_duration_s: Optional[float] = None,
                   max_bytes: Optional[int] = None,
                   allow_private: bool = False,
                   progress: Optional[Callable[[float, str], None]] = None,
                   timeout_s: float = 30.0,
                   deadline_s: float = Limits.download_deadline_s) -> Path:
    """Download the audio of a YouTube video or any page yt-dlp supports into ``out_dir``.

    Only the best audio-only format is fetched when the site offers one (a tenth of the
    bytes of the video); a direct link to a media file is fetched as is. With ``video``, a
    video with its sound in one file, of at most 480 lines, when the site has one
    (:data:`VIDEO_FORMAT`), for a page to play; its audio alone otherwise. Playlists are
    refused (one link, one transcript). ``out_dir`` should be a per-request temporary
    directory, which the caller deletes.

    yt-dlp runs with its own downloaders only (plain HTTP, native HLS and DASH): never
    an external program, ffmpeg included, which would resolve host names past the
    address check.

    Args:
        video: fetch a video to watch rather than audio alone (the same limits hold).
        cookies: path of a Netscape cookies.txt (the app's ``YTDLP_COOKIES``), the way
            through YouTube's "confirm you're not a bot" check. Checked, then copied into
            ``out_dir``: the file itself is never written.
        max_duration_s: refuse media longer than this, before downloading when the site
            reports a duration.
        max_bytes: refuse (or abort) downloads larger than this, counted on the bytes
            actually received, after decompression.
        progress: called with (fraction in [0, 1], message) while downloading.
        timeout_s: the longest wait for a connection or a single read.
        deadline_s: the longest the whole download may take.
        allow_private: let the link reach loopback and private addresses.

    Returns:
        Path of the downloaded file inside ``out_dir``.

    Raises:
        UnsafeURLError: the link is refused by :func:`check_url`.
        DownloadError: anything else; the message says what happened in plain words.
        MediaLimitError: longer than ``max_duration_s`` or larger than ``max_bytes``.
    """
    url = check_url(url, allow_private=allow_private)
    out_dir = Path(out_dir)
    if cookies and not os.path.isfile(cookies):
        raise DownloadError(f"cookies file not found: {cookies}")
    out_dir.mkdir(parents=True, exist_ok=True)
    secrets: set[str] = set()
    if cookies:
        cookies, secrets = _private_cookies(cookies, out_dir)
    budget = _Budget(deadline_s, max_bytes)

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
        "format": video_format(max_bytes) if video else AUDIO_FORMAT,
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
    try:
        import yt_dlp
    except ImportError as err:
        raise MissingExtraError.of("app", "downloading links (yt-dlp)") from err

    try:
        with guarded_thread(not allow_private, budget.deadline), _budgeted_youtubedl()(options, budget) as ydl:
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
                raise MediaLimitError(_too_long(float(duration), max_duration_s))
            size = info.get("filesize") or info.get("filesize_approx")
            if max_bytes is not None and size and size > max_bytes:
                raise MediaLimitError(
                    f"the media is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            fragments = math.inf if max_duration_s is None else int(max_duration_s)
            budget.max_requests = budget.requests + _MAX_PAGE_REQUESTS + fragments
            budget.fragments = True
            info = ydl.process_ie_result(info, download=True)
    except (DownloadError, MediaLimitError):
        raise
    except yt_dlp.utils.YoutubeDLError as err:
        if getattr(_guard, "refused", None):
            raise UnsafeURLError(f"the link led to {_guard.refused}, an internal address; refused") from None
        if budget.spent is not None:
            raise budget.spent from None
        cause = err.exc_info[1] if getattr(err, "exc_info", None) else None
        if isinstance(cause, (DownloadError, MediaLimitError)):
            raise cause from None
        if _may_quote_cookies(str(err), secrets):
            raise DownloadError(_COOKIES_UNUSABLE) from None
        raise DownloadError(_explain_ytdlp_error(str(err), url)) from None
    except Exception as err:  # not yt-dlp's: a bug keeps its traceback, unless that may show a cookie
        if _may_quote_cookies(str(err), secrets):
            raise DownloadError(_COOKIES_UNUSABLE) from None
        raise
    if budget.spent is not None:  # an error yt-dlp reported and went on from
        raise budget.spent
    files = [p for p in out_dir.iterdir()
             if p.is_file() and p.name.startswith("download.") and not p.name.endswith((".part", ".ytdl"))]
    if not files:
        # yt-dlp skips (rather than fails) a download over max_filesize
        if max_bytes is not None:
            raise MediaLimitError(f"the media is larger than the limit of {max_bytes / 2**20:.0f} MB")
        raise DownloadError(f"nothing was downloaded from {url}")
    return max(files, key=lambda p: p.stat().st_size)
