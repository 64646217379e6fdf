"""Decoding audio and video to the 16 kHz mono float32 waveform Whisper reads.

Two decoders, tried in order:

* soundfile + soxr, in-process: wav/flac/ogg/mp3 (libsndfile >= 1.1). ~1 ms for a
  5 s Common Voice clip, so preparing a whole release stays CPU-cheap.
* ffmpeg, the binary shipped in ``imageio-ffmpeg`` (no system ffmpeg needed):
  everything else (m4a, mp4, mkv, webm, mov, ...).

Neither touches torchcodec, which datasets >= 4 would otherwise require.
"""

from __future__ import annotations

import io
import os
import subprocess
from typing import Union

import numpy as np

SAMPLE_RATE = 16000  # Hz, what Whisper's feature extractor expects

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


def from_int16(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1]."""
    return np.asarray(pcm, dtype=np.float32) / 32767.0
