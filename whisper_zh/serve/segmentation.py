"""Where the speech is, and how long audio is cut for decoding.

Two ways to cut, one per backend: energy windows cut in pauses (:func:`plan_windows`,
the transformers backend's, with timestamps), and Silero VAD speech grouped into chunks
of at most 30 s (:func:`speech_chunks`, the ct2 backend's lanes). Both backends then
check what the decoder skipped (:func:`missed_speech`) and recover subtitle-sized
segments from timed words (:func:`split_words`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from whisper_zh.audio import CHUNK_LENGTH, SAMPLE_RATE
from whisper_zh.media import frame_energy_db
from whisper_zh.serve.types import Segment, Word

CUT_SEARCH_S = 5.0  # a cut before the 30 s mark looks this far back for a pause


def is_silent(audio: np.ndarray, threshold_db: float = -45.0, sr: int = SAMPLE_RATE) -> bool:
    """True when no 20 ms frame of ``audio`` is louder than ``threshold_db`` dBFS."""
    return audio.size == 0 or float(frame_energy_db(audio, sr).max()) < threshold_db


def plan_windows(audio: np.ndarray, sr: int = SAMPLE_RATE, window_s: float = float(CHUNK_LENGTH),
                 search_s: float = CUT_SEARCH_S) -> list[tuple[int, int]]:
    """Cut points for long audio: ``[(start_sample, end_sample), ...]``, contiguous,
    non-overlapping, each at most ``window_s`` long, covering the whole input.

    Every cut but the last is at the quietest 20 ms frame (energy smoothed over 100 ms)
    within ``search_s`` before the ``window_s`` mark, so it lands in a pause.
    """
    n = len(audio)
    window = int(window_s * sr)
    if n <= window:
        return [(0, n)]
    frame = int(0.02 * sr)
    energy = frame_energy_db(audio, sr)
    smooth = np.convolve(energy, np.ones(5) / 5, mode="same")
    windows, start = [], 0
    while n - start > window:
        lo = (start + window - int(search_s * sr)) // frame + 1
        hi = (start + window) // frame  # frames [lo, hi) end before the window does
        # latest minimum: a longer window means fewer windows
        best = lo + int(np.flatnonzero(smooth[lo:hi] == smooth[lo:hi].min())[-1]) if hi > lo else hi
        cut = min(max(best * frame + frame // 2, start + 1), start + window)
        windows.append((start, cut))
        start = cut
    windows.append((start, n))
    return windows


# Batched decoding reads whole chunks of at most 30 s without timestamp tokens (with
# them, whisper-base dropped whole sentences in batched mode: CER 0.17 vs 0.12 on
# zh-cv-mini, digits aside). Subtitle-sized segments are recovered from the VAD's
# pauses and the words' cross-attention times: a segment ends at a pause of at least
# PAUSE_S, after sentence-final punctuation, or before it would exceed MAX_SEGMENT_S.
PAUSE_S = 0.3


MAX_SEGMENT_S = 10.0


VAD_PAD_S = 0.1  # speech padding of the VAD's pieces; the default 0.4 s would hide short pauses


# Silence kept around each chunk: whisper-base skipped a whole sentence when a chunk
# began right at the speech onset.
CHUNK_PAD_S = 0.4


# Speech the decoder skipped is decoded again on its own (missed_speech): at least this
# much of it, between words, with a word taken to be at most MAX_WORD_S long.
MIN_MISSED_S = 1.0


MAX_WORD_S = 1.0


_SENTENCE_END = tuple("。！？!?；;")


@dataclass
class SpeechMap:
    """Where a recording holds speech, and how it is grouped for decoding.

    Attributes:
        chunks: contiguous ``(start, end)`` spans in seconds, each at most the chunk
            length, covering all detected speech (inner pauses included, so times inside
            a chunk are real times).
        speech: the VAD's ``(start, end)`` speech pieces, in seconds, in order.
    """

    chunks: list[tuple[float, float]]
    speech: list[tuple[float, float]]

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """The ``(start, end)`` gaps between consecutive speech pieces."""
        return [(a_end, b_start) for (_, a_end), (b_start, _) in zip(self.speech, self.speech[1:]) if b_start > a_end]

    def speech_within(self, start: float, end: float) -> float:
        """Seconds of detected speech between ``start`` and ``end``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.speech)


def speech_chunks(audio: np.ndarray, chunk_s: float) -> SpeechMap:
    """Find speech with Silero VAD and group it into chunks of at most ``chunk_s`` for
    batched decoding, cut in pauses."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    budget = chunk_s - 2 * CHUNK_PAD_S  # what a chunk may hold before its padding
    # a longer stretch without pauses is cut by the VAD itself (at its quietest 100 ms)
    options = VadOptions(min_silence_duration_ms=160, speech_pad_ms=int(VAD_PAD_S * 1000),
                         max_speech_duration_s=budget)
    pieces = [(p["start"] / SAMPLE_RATE, p["end"] / SAMPLE_RATE) for p in get_speech_timestamps(audio, options)]
    duration = audio.shape[0] / SAMPLE_RATE
    groups: list[list[float]] = []
    for start, end in pieces:
        if groups and end - groups[-1][0] <= budget:
            groups[-1][1] = end
        else:
            groups.append([start, end])
    chunks = []
    for i, (start, end) in enumerate(groups):
        # pad into the silence on both sides, never past the middle of the gap to a neighbour
        low = 0.0 if i == 0 else (groups[i - 1][1] + start) / 2
        high = duration if i == len(groups) - 1 else (end + groups[i + 1][0]) / 2
        chunks.append((max(low, start - CHUNK_PAD_S), min(high, end + CHUNK_PAD_S)))
    return SpeechMap(chunks, pieces)


def missed_speech(words: Sequence[Word], chunk: tuple[float, float], speech: SpeechMap,
                  min_missed_s: float = MIN_MISSED_S) -> list[tuple[float, float]]:
    """The spans of a chunk where the VAD heard at least ``min_missed_s`` of speech but
    the decoder wrote no word: a sentence it skipped or an end of text it emitted early.

    Whisper decoding a 30 s chunk without timestamps sometimes jumps over whole
    sentences (on joined zh-multi-dev clips, 17 s of one chunk). The alignment shows it
    as a long gap between consecutive words, or a word that starts long before it ends
    (it absorbs the skipped stretch): a character is at most ``MAX_WORD_S`` long, so a
    word is taken to start no earlier than that before its end.
    """
    edges = [chunk[0]]
    for word in words:
        edges += [max(word.start, word.end - MAX_WORD_S), word.end]
    edges.append(chunk[1])
    # only the chunk's own speech pieces: a long recording has thousands
    inside = SpeechMap([chunk], [p for p in speech.speech if p[1] > chunk[0] and p[0] < chunk[1]])
    return [(start, end) for start, end in zip(edges[::2], edges[1::2])
            if inside.speech_within(start, end) >= min_missed_s]


def split_words(words: Sequence[Word], pauses: list[tuple[float, float]], pause_s: float = PAUSE_S,
                max_segment_s: float = MAX_SEGMENT_S) -> list[Segment]:
    """Group timed words into subtitle-sized segments.

    Args:
        words: the words of a chunk, in order.
        pauses: ``(start, end)`` silences in seconds (from :func:`speech_chunks`); those of
            at least ``pause_s`` end a segment.

    Whisper's alignment leaves no gaps between words: a pause is absorbed into the
    word after it, whose *end* is reliable and whose *start* is early. So a pause
    splits before the first word that ends after the pause's middle, and that word's
    start is moved to the end of the pause.
    """
    cuts = sorted(p for p in pauses if p[1] - p[0] >= pause_s)
    groups: list[list[Word]] = []
    k = 0  # next pause to place
    for i, word in enumerate(words):
        start, end = float(word.start), float(word.end)
        new = not groups
        while k < len(cuts) and (cuts[k][0] + cuts[k][1]) / 2 < end:
            if i > 0:
                new = True
                start = max(start, min(cuts[k][1], end))
            k += 1
        if groups and not new:
            text = "".join(w.word for w in groups[-1]).strip()
            if text.endswith(_SENTENCE_END) or end - groups[-1][0].start > max_segment_s:
                new = True
        word = replace(word, start=start, end=end)
        if new:
            groups.append([word])
        else:
            groups[-1].append(word)
    segments = []
    for group, following in zip(groups, groups[1:] + [None]):
        # a segment ends where the next begins at the latest
        end = group[-1].end if following is None else max(group[0].start, min(group[-1].end, following[0].start))
        segments.append(Segment(start=group[0].start, end=end, text="".join(w.word for w in group),
                                words=tuple(group)))
    return segments
