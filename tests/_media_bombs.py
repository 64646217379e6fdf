"""Small files that decode to far more than they weigh, made in seconds with the bundled
ffmpeg (silence and tones compress to almost nothing; long streams are made by stream
copy or by repeating the bytes of a short one, never by encoding hours), and a child
process that decodes one under an address-space cap and reports what it cost.

Shared by tests/test_media.py (small sizes) and bench/media_limits.py (the issue's)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf

from whisper_zh.media import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True)


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _loop(piece: Path, seconds: float, piece_seconds: float, out: Path, *fmt: str) -> Path:
    """``piece`` repeated by stream copy into a container written to a pipe, which
    cannot seek back to write a duration or an index."""
    loops = int(np.ceil(seconds / piece_seconds)) - 1
    with open(out, "wb") as f:
        subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
                        "-stream_loop", str(loops), "-i", str(piece), "-c", "copy", *fmt, "pipe:1"],
                       check=True, stdout=f, stderr=subprocess.PIPE)
    return out


def mkv_flac_silence(out: Path, seconds: float) -> Path:
    """Matroska/FLAC silence without a duration in its header."""
    piece = out.with_suffix(".piece.flac")
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "30", "-c:a", "flac",
            "-compression_level", "12", "-frame_size", "65535", str(piece))
    return _loop(piece, seconds, 30, out, "-f", "matroska")


def webm_opus_silence(out: Path, seconds: float) -> Path:
    """WebM/Opus silence whose header holds no duration, or that of its first 30 s."""
    piece = out.with_suffix(".piece.webm")
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "30", "-c:a", "libopus", "-b:a", "6k",
            str(piece))
    return _loop(piece, seconds, 30, out, "-f", "webm")


def raw_adts(out: Path, seconds: float) -> Path:
    """A raw ADTS AAC stream: 10 s of loud noise at 128 kb/s, then silence at a few
    hundred bytes a second, the bytes of a 10 s piece repeated (ADTS frames stand
    alone). ffmpeg estimates the duration from the first frames' bitrate: far too short."""
    head, piece = out.with_suffix(".head.aac"), out.with_suffix(".piece.aac")
    _ffmpeg("-f", "lavfi", "-i", "anoisesrc=r=16000:a=0.5:d=10", "-c:a", "aac", "-b:a", "128k", "-f", "adts",
            str(head))
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "10", "-c:a", "aac", "-f", "adts", str(piece))
    out.write_bytes(head.read_bytes() + piece.read_bytes() * int(np.ceil(seconds / 10 - 1)))
    return out


def many_channels_flac(out: Path, seconds: float) -> Path:
    """FLAC, 8 channels at 655,350 Hz (the format's most), honest header: small on disk,
    23 MB per second once decoded at its own rate."""
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=655350:cl=7.1", "-t", str(seconds), "-c:a", "flac",
            "-compression_level", "12", str(out))
    return out


def mp3_lying_xing(out: Path, seconds: float, audio: Optional[np.ndarray] = None) -> Path:
    """A 2 s MP3 whose Xing header counts its own frames, followed by ``seconds`` of MP3
    frames (``audio`` repeated, default a tone) that the header does not count."""
    head, tail = out.with_suffix(".head.mp3"), out.with_suffix(".tail.mp3")
    _ffmpeg("-f", "lavfi", "-i", "sine=f=440:r=16000:d=2", "-c:a", "libmp3lame", "-b:a", "32k", str(head))
    wav = out.with_suffix(".tail.wav")
    audio = _tone(seconds) if audio is None else audio
    sf.write(str(wav), audio, 16000, subtype="PCM_16")
    _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0", "-id3v2_version", "0", str(tail))
    frames = tail.read_bytes()
    repeats = max(1, round(seconds * 16000 / len(audio)))
    out.write_bytes(head.read_bytes() + frames * repeats)
    return out


def wav_zero_data_size(out: Path, seconds: float) -> Path:
    """A 16 kHz tone in a WAV whose data chunk says 0 bytes (as some streaming writers
    leave it): libsndfile sees no samples, ffmpeg reads to the end of the file."""
    sf.write(str(out), _tone(seconds), 16000, subtype="PCM_16")
    data = bytearray(out.read_bytes())
    at = data.index(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0)
    out.write_bytes(bytes(data))
    return out


def _png(out: Path, width: int, height: int) -> Path:
    """A blank 16-bit RGBA PNG written row by row: ``width * height * 8`` bytes once
    decoded, about a thousandth of that on disk, and never whole in this process."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + width * 8)  # filter byte + pixels
    data = b"".join([*(packer.compress(row) for _ in range(height)), packer.flush()])
    out.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
                    + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return out


def mkv_huge_pictures(out: Path, seconds: float, streams: int = 1, side: int = 4096) -> Path:
    """A tone of ``seconds`` in Matroska with ``streams`` video streams, each one blank
    ``side`` x ``side`` rgba64 PNG picture: 128 MB per picture (side 4096) once
    decoded, stream-copied (the picture is decoded once here, by ffmpeg's probe)."""
    picture = _png(out.with_suffix(".png"), side, side)
    _ffmpeg("-i", str(picture), "-f", "lavfi", "-i", f"sine=f=440:r=16000:d={seconds}",
            *[a for _ in range(streams) for a in ("-map", "0")], "-map", "1", "-c:v", "copy", "-c:a", "pcm_s16le",
            str(out))
    return out


def wav_float_with_nan(out: Path, seconds: float, every_s: float = 0.0) -> Path:
    """A float WAV of a tone with one NaN sample (``every_s`` 0) or one every ``every_s``
    seconds, an infinity and a sample at 1e30 after it."""
    audio = _tone(seconds)
    audio[len(audio) // 2] = np.nan
    if every_s:
        audio[::int(every_s * 16000)] = np.nan
    audio[len(audio) // 2 + 100] = np.inf
    audio[len(audio) // 2 + 200] = 1e30
    sf.write(str(out), audio, 16000, subtype="FLOAT")
    return out


def joined_files(out: Path, first: str, first_s: float, mp3_s: float) -> Path:
    """A ``first`` file ("wav" or "flac") of ``first_s`` seconds of tone with ``mp3_s``
    seconds of MP3 appended, as ``cat a.wav b.mp3 > out`` makes: players (and ffmpeg)
    play the first part only."""
    head = out.with_name(out.stem + "-head." + first)
    sf.write(str(head), _tone(first_s), 16000)
    tail = mp3_tone(out.with_name(out.stem + "-tail.mp3"), mp3_s)
    out.write_bytes(head.read_bytes() + tail.read_bytes())
    head.unlink()
    tail.unlink()
    return out


def mp3_tone(out: Path, seconds: float) -> Path:
    """``seconds`` of a 300 Hz tone as 64 kb/s MP3."""
    _ffmpeg("-f", "lavfi", "-i", f"sine=f=300:d={seconds}:sample_rate=16000", "-b:a", "64k", str(out))
    return out


@dataclass(frozen=True)
class BombClass:
    name: str
    make: Callable[[Path, float], Path]
    suffix: str


BOMBS = [
    BombClass("Matroska/FLAC silence, no duration", mkv_flac_silence, ".mkv"),
    BombClass("raw ADTS aac", raw_adts, ".aac"),
    BombClass("WebM/Opus silence, no duration", webm_opus_silence, ".webm"),
    BombClass("FLAC 8 channels, 655,350 Hz", many_channels_flac, ".flac"),
    BombClass("MP3 with a lying Xing header", mp3_lying_xing, ".mp3"),
    BombClass("WAV with data size 0", wav_zero_data_size, ".wav"),
]

# Runs in a fresh interpreter: imports everything decoding needs, caps the address
# space at what it holds then plus the budget, and decodes. ffmpeg, a process of its
# own whose threads reserve address space by the hundred MB, starts uncapped; its peak
# is sampled apart. Peaks are VmHWM, not ru_maxrss: a child started by vfork inherits
# its parent's ru_maxrss (a test process holding a model would hide everything).
_CHILD = r"""
import functools, json, re, resource, subprocess, sys, threading, time
import numpy as np, soundfile, soxr, imageio_ffmpeg
from whisper_zh import media

def hwm(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024
    except (OSError, AttributeError):  # gone, or a zombie
        return None

watchers, ffmpeg_peaks = [], [0]

def watch(pid):
    while (peak := hwm(pid)) is not None:
        ffmpeg_peaks[0] = max(ffmpeg_peaks[0], peak)
        time.sleep(0.02)

def start(self, *args, _start=subprocess.Popen.__init__, **kwargs):
    _start(self, *args, **kwargs)
    watchers.append(threading.Thread(target=watch, args=(self.pid,), daemon=True))
    watchers[-1].start()

args = json.loads(sys.argv[1])
if args["budget"]:
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + args["budget"], resource.RLIM_INFINITY))
    uncap = lambda: resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    start = functools.partialmethod(start, preexec_fn=uncap)
subprocess.Popen.__init__ = start
before = hwm()
started = time.perf_counter()
try:
    audio = media.load_media(args["path"], max_duration_s=args["limit"], max_bytes=args["max_bytes"])
    seconds, peak = time.perf_counter() - started, hwm()
    result = {"samples": int(audio.size), "rms": float(np.sqrt(np.dot(audio, audio) / max(audio.size, 1))),
              "finite": bool(np.isfinite(audio).all()), "peak_level": float(np.abs(audio).max())}
except BaseException as err:
    seconds, peak = time.perf_counter() - started, hwm()
    result = {"error": type(err).__name__, "message": str(err)}
for watcher in watchers:
    watcher.join()
result.update(seconds=seconds, baseline=before, peak=peak, ffmpeg_peak=ffmpeg_peaks[0])
print(json.dumps(result))
"""


def decode_capped(path: Path, limit: Optional[float], *, budget: int = 0, max_bytes: Optional[int] = None,
                  code: Path = REPO, timeout: float = 600) -> dict:
    """``load_media(path)`` in a child process (importing whisper_zh from ``code``) whose
    address space may grow by ``budget`` bytes beyond what its imports hold (0: no cap).

    Returns:
        {"samples", "rms"} or {"error", "message"}, plus "seconds" (load_media's wall
        time), "baseline" and "peak" (the child's peak RSS in bytes before and after
        load_media) and "ffmpeg_peak" (the largest ffmpeg it ran, sampled every 20 ms, bytes).
    """
    # one malloc arena: each thread's own would reserve 64 MB of the capped address space
    env = dict(os.environ, PYTHONPATH=str(code), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MALLOC_ARENA_MAX="1")
    args = json.dumps({"path": str(path), "limit": limit, "budget": budget, "max_bytes": max_bytes})
    # cwd: ``python -c`` puts it first on sys.path, ahead of PYTHONPATH
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=code)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "message": proc.stderr[-500:], "seconds": None,
                "baseline": None, "peak": None, "ffmpeg_peak": None}
    return json.loads(lines[-1])
