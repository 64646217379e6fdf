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

One home for resampling too (:func:`resample`, :class:`StreamResampler`): the training data,
the decoders here and the live microphone all go through it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisper_zh.errors import AudioDecodeError, ConfigError, InputNotFoundError, MediaLimitError

logger = logging.getLogger(__name__)

AudioSource = Union[str, os.PathLike, bytes]


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


# Only the first audio stream is decoded. Mapping it is not enough: while probing the
# input, before any mapping, ffmpeg decodes a frame of *every* stream to learn its
# parameters, so one 16384x16000 picture in a video stream cost 2 GB and 18 s. Every
# decoder ffmpeg opens for this input may allocate frames of at most this many pixels,
# which makes a video stream's pictures fail at once, whatever their size or number;
# audio decoders ignore it.
_MAX_PIXELS = 16
_INPUT_OPTIONS = ("-max_pixels", str(_MAX_PIXELS))
_AUDIO_ONLY = ("-map", "0:a:0?", "-vn", "-sn", "-dn")


# What ffmpeg's log says beyond its errors (``-loglevel level+verbose`` tags each line):
# how much of the input the demuxer read, how many packets failed to decode, whether
# the input has a video stream.
_LOG_LEVEL = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?")
_BYTES_READ = re.compile(r"Statistics: (\d+) bytes read")
_DECODE_ERRORS = re.compile(r"\(audio\): .*?(\d+) decode errors")
# a stream of moving pictures in ffmpeg's header (a cover picture is not one)
_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?!.*\(attached pic\))")
# A decode that leaves more of the file than this unread has not decoded the file
# (several files joined into one: players, and ffmpeg, stop after the first part).
_UNREAD_NOTE_BYTES = 1 << 20


@dataclass
class _FfmpegLog:
    errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=3))
    bytes_read: Optional[int] = None
    decode_errors: int = 0
    video: bool = False

    def read(self, stream) -> None:
        # ffmpeg can log without end on a crafted file: only the last errors are kept
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            level = _LOG_LEVEL.search(line)
            if level and level.group(1) in ("panic", "fatal", "error"):
                self.errors.append(line[:level.start()] + line[level.end():])
            elif match := _BYTES_READ.search(line):
                self.bytes_read = int(match.group(1))
            elif match := _DECODE_ERRORS.search(line):
                self.decode_errors += int(match.group(1))
            elif _VIDEO_STREAM.search(line):
                self.video = True

    def notes(self, size: int, seconds: float) -> list[str]:
        """What the user must be told: parts of the file that were not decoded."""
        notes = []
        unread = size - (self.bytes_read or size)
        if not self.video and unread > max(_UNREAD_NOTE_BYTES, size // 10):
            notes.append(f"only the first {format_duration(seconds)} of the file could be read as audio; "
                         f"its other {unread / 2**20:.1f} MB ({100 * unread / size:.0f} %) are not part of that "
                         f"audio (several files joined into one?) and were left out")
        if self.decode_errors:
            notes.append(f"{self.decode_errors} piece{'s' if self.decode_errors > 1 else ''} of the audio could "
                         f"not be decoded and {'were' if self.decode_errors > 1 else 'was'} skipped "
                         f"(a damaged file, or several files joined into one?)")
        return notes


@dataclass(frozen=True)
class DecodedMedia:
    """A decoded input and what the user must know about it: ``notes`` say which parts of
    the file were not decoded (none for a whole, healthy file); ``video``, whether it
    also holds moving pictures (never decoded; a cover picture is not one)."""

    audio: np.ndarray
    notes: tuple[str, ...] = ()
    video: bool = False


class _Samples:
    """Mono float32 samples appended block by block into one array, so that peak
    memory is the result plus one block. Past ``limit`` samples it raises
    :class:`MediaLimitError` at once, while decoding.

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
            raise MediaLimitError(self.message)

    def append(self, block: np.ndarray) -> None:
        self.reserve(len(block))
        self.data[self.size:self.size + len(block)] = block
        self.grew(len(block))

    def result(self) -> np.ndarray:
        self.data.resize(self.size, refcheck=False)
        return self.data


def _mono(block: np.ndarray) -> np.ndarray:
    return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def as_waveform(audio: np.ndarray) -> np.ndarray:
    """A caller's array as the model reads it: float32, mono. Integer PCM is scaled to
    [-1, 1] (int16 as a WAV holds it); a 2-D array is channels and samples either way
    round (the channels being the short axis), averaged. A float32 1-D array comes back
    as it is.

    Raises:
        ConfigError: more than two dimensions, unsigned or complex samples, or not numbers.
    """
    audio = np.asarray(audio)
    if not (np.issubdtype(audio.dtype, np.signedinteger) or np.issubdtype(audio.dtype, np.floating)):
        raise ConfigError(f"a waveform is float or signed integer PCM, not {audio.dtype}")
    if audio.ndim == 2 and audio.size == 0:
        audio = np.zeros(0, np.float32)
    elif audio.ndim == 2:
        audio = audio.mean(axis=int(np.argmin(audio.shape)), dtype=np.float64) / (
            np.iinfo(audio.dtype).max + 1 if np.issubdtype(audio.dtype, np.integer) else 1)
    elif audio.ndim != 1:
        raise ConfigError(f"a waveform is (samples,) or (samples, channels), not an array of shape {audio.shape}")
    elif np.issubdtype(audio.dtype, np.integer):
        audio = audio / (np.iinfo(audio.dtype).max + 1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def clean_samples(audio: np.ndarray) -> int:
    """Make a float waveform safe for the model, in place: NaN and infinities become
    silence and magnitudes past full scale are clipped to [-1, 1], as a sound card would.
    One NaN in a float WAV otherwise turns every window it touches into ``))))``
    at ten times the decoding cost. Block by block, so no mask the size of the input.

    Returns:
        How many samples were not finite.
    """
    bad = 0
    for start in range(0, len(audio), _BLOCK_SAMPLES):
        block = audio[start:start + _BLOCK_SAMPLES]
        finite = np.isfinite(block)
        if not finite.all():
            bad += int(block.size - np.count_nonzero(finite))
            block[~finite] = 0.0
        np.clip(block, -1.0, 1.0, out=block)
    if bad:
        logger.warning("%d samples were not finite numbers (NaN or infinite); they were replaced by silence", bad)
    return bad


def resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """A whole waveform from ``sr`` to ``target_sr`` Hz (soxr, high quality)."""
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
            out.append(resample(_mono(f.read(dtype="float32", always_2d=True)), f.samplerate, sr))
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


def _decode_ffmpeg(source: AudioSource, sr: int, out: _Samples, deadline_s: Optional[float] = None) -> DecodedMedia:
    """Decode with ffmpeg into ``out`` as its output arrives, one pipe buffer at a time;
    ``-t`` stops ffmpeg itself one block past the limit, and the process is killed as
    soon as ``out`` refuses, or once ``deadline_s`` seconds have passed. The notes say
    what ffmpeg's log shows was left out (bytes never read, packets that failed)."""
    data = source if isinstance(source, (bytes, bytearray)) else None
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "level+verbose", "-threads", "0", *_INPUT_OPTIONS,
        "-i", "pipe:0" if data is not None else os.fspath(source),
        *_AUDIO_ONLY, "-ac", "1", "-ar", str(sr), "-f", "f32le",
    ]
    if out.limit is not None:
        cmd += ["-t", f"{(out.limit + _PIPE_BYTES) / sr:.6f}"]
    proc = subprocess.Popen(cmd + ["pipe:1"], stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    log = _FfmpegLog()
    helpers = [threading.Thread(target=log.read, args=(proc.stderr,), daemon=True)]
    if data is not None:
        helpers.append(threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True))
    for thread in helpers:
        thread.start()
    expired = threading.Event()

    def expire() -> None:  # killing ffmpeg ends its output, which ends the loop below
        expired.set()
        proc.kill()

    timer = None if deadline_s is None else threading.Timer(deadline_s, expire)
    if timer is not None:
        timer.start()
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
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for thread in helpers:
            thread.join()
        proc.stderr.close()
    if expired.is_set() and returncode != 0:
        raise MediaLimitError(_too_slow(deadline_s))
    if returncode != 0:
        raise AudioDecodeError(log.errors[-1] if log.errors else f"ffmpeg exited with {returncode}")
    audio = out.result()
    size = len(data) if data is not None else os.path.getsize(source)
    return DecodedMedia(audio, tuple(log.notes(size, len(audio) / sr)), log.video)


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # ffmpeg may stop reading early
        with pipe:
            pipe.write(data)


def _decode(source: AudioSource, sr: int, max_duration_s: Optional[float],
            deadline_s: Optional[float] = None) -> DecodedMedia:
    limit = None if max_duration_s is None else int(max_duration_s * sr) + sr // 10  # rounding slack
    message = "" if max_duration_s is None else _too_long(None, max_duration_s)
    audio = None
    try:
        audio = _decode_soundfile(source, sr, limit, message)
    except MediaLimitError:
        raise
    except Exception as err:  # not a format libsndfile reads, or corrupt: ffmpeg's turn
        logger.debug("soundfile could not decode the input (%s); trying ffmpeg", type(err).__name__)
    if audio is not None:
        return DecodedMedia(audio)
    # outside the except block, so that the failed attempt's buffers are already freed
    try:
        return _decode_ffmpeg(source, sr, _Samples(limit, 0, message), deadline_s)
    except AudioDecodeError as err:
        raise AudioDecodeError(f"cannot decode {_name(source)}: {err}") from None


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a media file (path or bytes) to a mono waveform.

    Returns:
        float32 array of shape ``(n_samples,)`` at ``sr`` Hz, values in [-1, 1].

    Raises:
        FileNotFoundError: the path does not exist.
        AudioDecodeError: empty file, not media, or media without an audio track.
    """
    return _waveform(_checked_decode(source, sr, None), source)


def _name(source: AudioSource) -> str:
    return "audio data" if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def _waveform(decoded: DecodedMedia, source: AudioSource) -> np.ndarray:
    """The audio of a decode whose caller gets no notes: they are logged as warnings
    instead (callers of :func:`decode_media` show them themselves)."""
    for note in decoded.notes:
        logger.warning("%s: %s", _name(source), note)
    return decoded.audio


def _checked_decode(source: AudioSource, sr: int, max_duration_s: Optional[float],
                    deadline_s: Optional[float] = None) -> DecodedMedia:
    if not isinstance(source, (bytes, bytearray)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputNotFoundError(f"no such file: {path}")
        if os.path.getsize(path) == 0:
            raise AudioDecodeError(f"empty file: {path}")
    elif len(source) == 0:
        raise AudioDecodeError("empty audio data")
    decoded = _decode(source, sr, max_duration_s, deadline_s)
    if decoded.audio.size == 0:
        raise AudioDecodeError("the input has no audio samples")
    clean_samples(decoded.audio)
    return decoded


def frame_energy_db(audio: np.ndarray, sr: int = SAMPLE_RATE, frame_s: float = 0.02) -> np.ndarray:
    """RMS level of consecutive ``frame_s`` frames in dBFS (0 = full scale); shape
    ``(ceil(n_samples / frame),)``. Digital silence gives -120 rather than -inf."""
    frame = max(1, int(round(frame_s * sr)))
    padded = np.pad(audio.astype(np.float32), (0, (-len(audio)) % frame))
    rms = np.sqrt(np.mean(padded.reshape(-1, frame) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6))


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 PCM (half the bytes; what the training cache stores)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def probe_duration(path: Union[str, os.PathLike], deadline_s: Optional[float] = None) -> Optional[float]:
    """Duration of a media file in seconds from its header, without decoding it.

    None when the container does not say (a live stream, a raw pipe) or the file is
    not media; callers then fall back to checking the decoded length.

    Raises:
        MediaLimitError: ffmpeg took longer than ``deadline_s`` seconds to read the header.
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
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *_INPUT_OPTIONS, "-i", path],
                              capture_output=True, timeout=deadline_s)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise MediaLimitError(_too_slow(deadline_s)) from None
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
               max_bytes: Optional[int] = None, deadline_s: Optional[float] = None,
               sr: int = SAMPLE_RATE) -> np.ndarray:
    """:func:`decode_media`'s waveform (its notes are logged as warnings)."""
    return _waveform(decode_media(path, max_duration_s=max_duration_s, max_bytes=max_bytes, deadline_s=deadline_s,
                                  sr=sr), path)


def decode_media(path: Union[str, os.PathLike], *, max_duration_s: Optional[float] = None,
                 max_bytes: Optional[int] = None, deadline_s: Optional[float] = None,
                 sr: int = SAMPLE_RATE) -> DecodedMedia:
    """:func:`load_audio` with limits checked *before* decoding, so a 10-hour upload is
    refused in milliseconds instead of filling memory (one hour is 230 MB of float32),
    and again *while* decoding, for the headers that say nothing or lie: decoding stops
    as soon as it passes ``max_duration_s``, so peak memory stays near that of the
    decoded limit whatever the file expands to. ffmpeg's reading of the header and its
    decoding each stop after ``deadline_s`` seconds. Video streams are never decoded.

    A file a player stops early in (a WAV or FLAC with an hour of MP3 appended: each
    plays its first part) is decoded as a player would, and the notes say so.

    Returns:
        ``audio``: float32 array of shape ``(n_samples,)`` at ``sr`` Hz, finite, within
        [-1, 1] (:func:`clean_samples`); ``notes``: the parts of the file not decoded.

    Raises:
        MediaLimitError: larger than ``max_bytes``, longer than ``max_duration_s``, or
            slower to read than ``deadline_s``.
        AudioDecodeError, FileNotFoundError: as :func:`load_audio`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputNotFoundError(f"no such file: {path}")
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise MediaLimitError(
            f"the file is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    if max_duration_s is not None and size > 0:
        duration = probe_duration(path, deadline_s)
        if duration is not None and duration > max_duration_s:
            raise MediaLimitError(_too_long(duration, max_duration_s))
    return _checked_decode(path, sr, max_duration_s, deadline_s)


def _too_long(duration: Optional[float], limit: float) -> str:
    """``duration`` None: refused while decoding, the length unknown beyond the limit."""
    if duration is None:
        return f"the input is longer than the limit of {format_duration(limit)} (set MAX_DURATION_S to change it)"
    return (f"the input is {format_duration(duration)} long; the limit is {format_duration(limit)} "
            f"(set MAX_DURATION_S to change it)")


def _too_slow(deadline_s: float) -> str:
    return (f"reading the input took longer than {deadline_s:g} s and was stopped "
            "(set DECODE_DEADLINE_S to change the limit)")


@dataclass
class StreamResampler:
    """Any rate, integer or float, mono or multi-channel -> float32 mono at 16 kHz.

    One soxr stream per recording: resampling each small chunk on its own would leave
    the filter's edge effects at every chunk boundary."""

    sample_rate: int
    _stream: object = field(default=None, repr=False)

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        samples = np.asarray(samples)
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        samples = np.array(samples, dtype=np.float32)  # a copy: cleaned in place
        clean_samples(samples)  # before soxr, whose filter would spread a NaN over its neighbours
        if self.sample_rate == SAMPLE_RATE:
            return samples
        if self._stream is None:
            import soxr

            self._stream = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        # the filter rings past full scale next to a clipped edge
        return np.clip(self._stream.resample_chunk(samples, last=last), -1.0, 1.0)
