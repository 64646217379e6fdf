"""Test media made on the fly from the real clips in ../shared/data/zh-cv-mini, and a
local HTTP server on 127.0.0.1 for the download path (nothing else is contacted)."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import subprocess
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.media import ffmpeg_exe, load_audio


def read_split(dataset: Path, split: str = "test") -> list[dict]:
    with open(dataset / f"{split}.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def plain_clips(dataset: Path, count: int, split: str = "test") -> list[dict]:
    """The first ``count`` rows whose sentence is Chinese characters only: no Latin
    letters and no digit strings, which Whisper writes as 1307... and a character
    reference scores as all wrong, whatever the model heard."""
    digits = set("零一二三四五六七八九")
    rows = []
    for row in read_split(dataset, split):
        sentence = row["sentence"]
        if any(c.isascii() and c.isalnum() for c in sentence):
            continue
        if sum(c in digits for c in sentence) > len(sentence) / 3:
            continue
        rows.append(row)
        if len(rows) == count:
            break
    return rows


def joined_clips(dataset: Path, seconds: float, split: str = "test") -> tuple[np.ndarray, list[dict], list[float]]:
    """Clips of ``split`` in order, joined back to back until ``seconds`` is reached.

    Returns:
        (waveform of shape (n,), the rows used, start time of each clip in seconds)
    """
    pieces, rows, starts, total = [], [], [], 0
    for row in read_split(dataset, split):
        audio = load_audio(dataset / "clips" / row["path"])
        starts.append(total / SAMPLE_RATE)
        pieces.append(audio)
        rows.append(row)
        total += len(audio)
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(pieces), rows, starts


def two_voices(dataset: Path, turns_each: int = 4) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """A conversation of two real voices taking turns, half a second of silence after each
    turn: Biaobei's (zh-multi-dev, beside ``dataset``) and zh-cv-mini's one speaker.

    Returns:
        (waveform, [(start, end, voice 0 or 1) of each turn])
    """
    multi = dataset.parent / "zh-multi-dev" / "clips"
    voices = [[load_audio(multi / f"zhmd_bb_{k:06d}.mp3") for k in range(1, turns_each + 1)],
              [load_audio(dataset / "clips" / row["path"]) for row in read_split(dataset, "validated")[:turns_each]]]
    parts, turns, at = [], [], 0.0
    for k in range(turns_each):
        for voice in (0, 1):
            piece = voices[voice][k]
            parts += [piece, np.zeros(SAMPLE_RATE // 2, np.float32)]
            turns.append((at, at + len(piece) / SAMPLE_RATE, voice))
            at += len(piece) / SAMPLE_RATE + 0.5
    return np.concatenate(parts), turns


def write_wav(path: Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    sf.write(str(path), audio, sr, subtype="PCM_16")
    return path


def make_video(audio_path: Path, out: Path) -> Path:
    """A video of a still picture with ``audio_path`` as its sound track: an mp4 (MPEG-4
    and AAC), or for an ``out`` named .webm a WebM (VP8 and Opus, which every Chromium
    plays, proprietary codecs or not)."""
    seconds = len(load_audio(audio_path)) / SAMPLE_RATE
    codecs = (["-c:v", "libvpx", "-b:v", "100k", "-c:a", "libopus"] if out.suffix == ".webm"
              else ["-c:v", "mpeg4", "-c:a", "aac"])
    # -t rather than -shortest, which overshoots by seconds against an endless picture
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", "color=c=0x336699:s=320x240:r=5", "-i", str(audio_path),
           "-map", "0:v", "-map", "1:a", *codecs, "-t", f"{seconds:.3f}", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requested.append(self.path)
        if self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path[len("/redirect-to/"):])
            self.end_headers()
            return
        super().do_GET()


@contextlib.contextmanager
def serve_directory(directory: Path, host: str = "127.0.0.1"):
    """Serve ``directory`` over HTTP on ``host`` (a free port) in a thread.

    Yields:
        (base URL such as ``http://127.0.0.1:PORT``, list of paths requested so far)
    """
    requested: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    server = http.server.ThreadingHTTPServer((host, 0), functools.partial(handler, directory=str(directory)))
    with _running(server) as base:
        yield base, requested


@contextlib.contextmanager
def _running(server: http.server.ThreadingHTTPServer):
    """``server`` serving in a daemon thread; yields its base URL, shuts it down after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def stream(total: int, piece: bytes = b"\0" * 65536):
    """A ``serve_routes`` route sending ``total`` bytes without Content-Length: the size is
    known only by receiving it."""
    def handle(request):
        request.send_response(200)
        request.send_header("Content-Type", "audio/mpeg")
        request.end_headers()
        for _ in range(total // len(piece)):
            request.wfile.write(piece)
    return handle


def send(body: bytes, content_type: str = "audio/mpeg", **headers):
    """A ``serve_routes`` route answering 200 with ``body`` (header names: ``_`` for ``-``)."""
    def handle(request):
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        for name, value in headers.items():
            request.send_header(name.replace("_", "-"), value)
        request.end_headers()
        request.wfile.write(body)
    return handle


@contextlib.contextmanager
def serve_routes(routes: dict, host: str = "127.0.0.1"):
    """Serve ``routes`` ({path: handle(request_handler)}) over HTTP on ``host`` (a free
    port) in a thread; anything else is 404.

    Yields:
        (base URL, list of paths requested so far)
    """
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: the end of a body is the end of the stream

        def log_message(self, *args):
            pass

        def do_GET(self):
            requested.append(self.path)
            handle = routes.get(self.path.split("?", 1)[0])
            if handle is None:
                self.send_error(404)
                return
            try:
                handle(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    with _running(server) as base:
        yield base, requested
