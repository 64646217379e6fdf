"""Live transcription: audio arrives a little at a time, text grows while the person speaks.

    >>> live = LiveTranscriber(get_transcriber(model_dir))
    >>> for sample_rate, chunk in microphone:                 # e.g. Gradio's (sr, int16) pieces
    ...     update = live.feed(chunk, sample_rate)
    ...     show(update.confirmed_text, update.tentative_text)
    >>> segments = live.finish()                               # the whole recording's segments

The algorithm is ufal/whisper_streaming's LocalAgreement-2 (Macháček, Dabre and Bojar,
2023, "Turning Whisper into Real-Time Transcription System"). The engine re-decodes an
audio buffer that starts where the last *confirmed* segment ended; the part of a new
hypothesis that the previous hypothesis also had (their longest common prefix) is
confirmed and never changes again, the rest is shown as tentative. Once the buffer is
longer than ``trim_s``, it is cut at the end of the last segment whose text is wholly
confirmed, so each decode reads only the unconfirmed tail plus a little confirmed
context, whatever the length of the recording.

Differences from whisper_online.py, for Chinese and for this engine:

* Agreement is over *units*: one CJK character, or one Latin word or number (never
  split), punctuation attached to the unit before it and ignored when comparing (the
  model adds and drops commas between decodes), compared after :func:`whisper_zh.text.normalize`.
* The confirmed units still inside the buffer are located in each new hypothesis by
  aligning texts (edit distance), not by timestamps, which for characters are only as
  good as the cross-attention alignment (or, without word times, interpolated).
* A buffer that grows past ``max_buffer_s`` without a confirmed segment end to cut at
  (a model that keeps changing its mind, or talk without pauses) has its older segments
  confirmed as they stand, so the decode cost stays bounded.

whisper_online.py also prompts each decode with the confirmed text the buffer no longer
holds; here that is ``context_chars`` (after the options' own prompt and before their
hotwords), off by default: on many voices it made whisper-base worse (see
:data:`CONTEXT_CHARS`). The options' prompt and hotwords are in every decode's prompt.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError
from whisper_zh.media import StreamResampler
from whisper_zh.serve.engine import Transcriber
from whisper_zh.serve.types import Segment, TranscribeOptions, Word
from whisper_zh.text import normalize

logger = logging.getLogger(__name__)

# Decode when at least this much audio has arrived since the last decode -- and at least
# as much as the last decode took to run: pieces keep arriving in real time while the
# engine works (Gradio queues them), so decoding more often than that would fall ever
# further behind. whisper_online gets the same cadence by reading whatever has arrived.
MIN_CHUNK_S = 1.0
# whisper_online's "segment" trimming threshold is 15 s; shorter keeps decodes cheaper on
# 2 cores and still leaves a few seconds of confirmed context before the tentative tail.
TRIM_S = 10.0
# Hard bound on the audio one decode reads (below Whisper's 30 s window, so the engine
# never splits it): past it, older segments are confirmed as they stand.
MAX_BUFFER_S = 20.0
# Of a buffer in which nothing at all was heard, keep this much: a word may be starting.
_KEEP_UNHEARD_S = 1.0
# Characters of confirmed text before the buffer that prompt each decode (whisper_online
# keeps 200 of English). Off: on zh-multi-dev fed live (bench/live.py, whisper-base ct2),
# 100 characters raised CER from 0.171 to 0.219 and 30 (on its first 2 minutes) from
# 0.220 to 0.260: the model copies the prompt's last words into the next sentence.
CONTEXT_CHARS = 0

# A Latin word or a number, kept whole (3.14, 1,000, 12:30, don't, e-mail), or any other
# single character; leading spaces stay with the unit so that joining units restores the text.
_LATIN = r"[0-9A-Za-z\u00C0-\u024F]"
_UNIT = re.compile(rf"\s*(?:{_LATIN}+(?:[.,:'’\-]{_LATIN}+)*|\S)")


@dataclass
class _Unit:
    """What agreement compares: a character or a Latin word, with its time."""

    start: float
    end: float
    text: str  # as written, punctuation after it and any leading space included
    key: str  # normalised, without punctuation: what is compared
    ends_segment: bool = False


@dataclass(frozen=True)
class LiveUpdate:
    """The state of the transcript after one :meth:`LiveTranscriber.feed`.

    Attributes:
        confirmed_text: text that will not change any more (it only ever grows).
        tentative_text: the latest hypothesis for the audio after it; may still change.
        segments: the confirmed text as timed segments (seconds from the stream's start).
        audio_s: seconds of audio received so far.
        decoded_s: seconds of audio the engine read in this feed (0.0: it did not run).
        decode_s: wall time of that decode in seconds (0.0 when it did not run).
    """

    confirmed_text: str
    tentative_text: str
    segments: list[Segment]
    audio_s: float
    decoded_s: float = 0.0
    decode_s: float = 0.0

    @property
    def text(self) -> str:
        return self.confirmed_text + self.tentative_text


class LiveTranscriber:
    """Transcribe one live recording, fed piece by piece. Gradio-free; one per recording.

    Args:
        transcriber: the engine (anything with :meth:`Transcriber.iter_segments`).
        options: decoding options (default: the engine's).
        min_chunk_s, trim_s, max_buffer_s, context_chars: see :data:`MIN_CHUNK_S`,
            :data:`TRIM_S`, :data:`MAX_BUFFER_S`, :data:`CONTEXT_CHARS` (0: no context).
        keep_up: wait for as much new audio as the last decode took to run (live use);
            False decodes every ``min_chunk_s`` whatever the machine's speed, as
            whisper_online's "computationally unaware" simulation (reproducible runs).
    """

    def __init__(self, transcriber: Transcriber, options: Optional[TranscribeOptions] = None, *,
                 min_chunk_s: float = MIN_CHUNK_S, trim_s: float = TRIM_S, max_buffer_s: float = MAX_BUFFER_S,
                 context_chars: int = CONTEXT_CHARS, keep_up: bool = True):
        if not 0 < trim_s <= max_buffer_s:
            raise ConfigError(f"need 0 < trim_s <= max_buffer_s, got {trim_s} and {max_buffer_s}")
        self.transcriber = transcriber
        self.options = options or transcriber.options
        self.min_chunk_s = min_chunk_s
        self.trim_s = trim_s
        self.max_buffer_s = max_buffer_s
        self.context_chars = context_chars
        self.keep_up = keep_up
        self._resampler: Optional[StreamResampler] = None
        self._audio = np.zeros(0, np.float32)  # the buffer the engine reads
        self._offset = 0.0  # stream time of the buffer's first sample, seconds
        self._received = 0  # samples received, at 16 kHz
        self._undecoded = 0  # samples received since the last decode
        self._last_decode_s = 0.0  # wall time the last decode took
        self._committed: list[_Unit] = []  # everything confirmed, in order
        self._in_buffer: list[_Unit] = []  # the confirmed units the buffer still holds
        self._tentative: list[_Unit] = []  # the last hypothesis after its confirmed part
        self._finished = False
        self._view: Optional[tuple[str, str, list[Segment]]] = None  # what _update shows, until a decode

    # -- public API ---------------------------------------------------------

    def feed(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> LiveUpdate:
        """Add a piece of the recording and, once :attr:`min_chunk_s` of new audio has
        arrived, re-decode the unconfirmed part.

        Args:
            samples: shape ``(n,)`` or ``(n, channels)``; int16 (as browsers and Gradio
                send it) or float in [-1, 1].
            sample_rate: of ``samples``, in Hz; resampled to 16 kHz when different.
        """
        if self._finished:
            raise RuntimeError("this recording is finished; start a new LiveTranscriber")
        self._append(self._resample(samples, sample_rate))
        decoded_s = decode_s = 0.0
        wait_s = max(self.min_chunk_s, self._last_decode_s) if self.keep_up else self.min_chunk_s
        if self._undecoded >= wait_s * SAMPLE_RATE:
            decoded_s, decode_s = self._process()
        return self._update(decoded_s, decode_s)

    def finish(self) -> list[Segment]:
        """Decode what is left and confirm everything: the whole recording's segments."""
        if not self._finished:
            if self._resampler is not None:
                self._append(self._resampler(np.zeros(0, np.float32), last=True))
            if self._undecoded:
                self._process()
            if self._tentative:
                self._tentative[-1].ends_segment = True
            self._committed += self._tentative
            self._tentative = []
            self._finished = True
        return self.segments

    @property
    def segments(self) -> list[Segment]:
        """The confirmed text as segments, split where the engine ended its segments."""
        return _to_segments(self._committed)

    @property
    def audio_s(self) -> float:
        return self._received / SAMPLE_RATE

    @property
    def buffer_s(self) -> float:
        """Seconds of audio the next decode will read."""
        return len(self._audio) / SAMPLE_RATE

    # -- internals ----------------------------------------------------------

    def _resample(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        if self._resampler is None or self._resampler.sample_rate != sample_rate:
            self._resampler = StreamResampler(int(sample_rate))
        return self._resampler(samples)

    def _append(self, audio: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, audio])
        self._received += len(audio)
        self._undecoded += len(audio)

    def _update(self, decoded_s: float, decode_s: float) -> LiveUpdate:
        # browsers send ~10 pieces a second and most do not decode: the text of an hour
        # of talk is rebuilt only when it changed
        if self._view is None:
            tentative = _join(self._tentative)
            self._view = (_join(self._committed).strip(), tentative if self._committed else tentative.strip(),
                          self.segments)
        confirmed, tentative, segments = self._view
        return LiveUpdate(confirmed_text=confirmed, tentative_text=tentative, segments=segments,
                          audio_s=self.audio_s, decoded_s=decoded_s, decode_s=decode_s)

    def _process(self) -> tuple[float, float]:
        """One decode of the buffer, agreement, trimming; returns (seconds read, seconds taken)."""
        decoded_s = self.buffer_s
        options, context = self.options, self._context()
        if context:
            options = replace(options, prompt=" ".join(p for p in (options.prompt, context) if p))
        started = time.perf_counter()
        segments = list(self.transcriber.iter_segments(self._audio, options))
        elapsed = time.perf_counter() - started
        self._undecoded, self._last_decode_s, self._view = 0, elapsed, None
        hypothesis = [unit for segment in segments
                      for unit in _units(segment, self._offset, self.options.language)]
        if hypothesis:
            # the buffer's end, not a segment end the engine found (finish() marks the last)
            hypothesis[-1].ends_segment = False
        # the confirmed text the buffer still holds comes first; what follows is new
        last_end = self._in_buffer[-1].end if self._in_buffer else self._offset
        done, pairs = _aligned_prefix([u.key for u in self._in_buffer], hypothesis, last_end)
        for i, j in pairs:
            # a confirmed unit heard again (maybe differently: its text stays as confirmed):
            # where its segment ends is the latest word on that, and working on the confirmed
            # unit itself lets a cut mark where subtitles break
            self._in_buffer[i].ends_segment = hypothesis[j].ends_segment
            hypothesis[j] = self._in_buffer[i]
        new = hypothesis[done:]
        agreed = _common_prefix([u.key for u in self._tentative], [u.key for u in new])
        self._committed += new[:agreed]
        self._tentative = new[agreed:]
        confirmed = done + agreed  # hypothesis[:confirmed] is confirmed text
        self._in_buffer = hypothesis[:confirmed]
        logger.debug("decoded %.1f s from %.1f s in %.2f s: +%r, tentative %r", decoded_s, self._offset,
                     elapsed, _join(new[:agreed]), _join(self._tentative))
        self._trim(hypothesis, confirmed)
        return decoded_s, elapsed

    def _context(self) -> str:
        """The last :attr:`context_chars` characters of the confirmed text before the buffer."""
        if not self.context_chars:
            return ""  # the default: no walk through the buffer's units on every decode
        text = ""
        for unit in reversed(self._committed):
            if unit.end > self._offset:
                continue  # still in the buffer: it is decoded again, not a prompt
            if len(text) + len(unit.text) > self.context_chars:
                break
            text = unit.text + text
        return text.strip()

    def _trim(self, hypothesis: list[_Unit], confirmed: int) -> None:
        """Once the buffer is longer than :attr:`trim_s`, drop its audio up to the end of
        the last wholly confirmed segment; never let it exceed :attr:`max_buffer_s`."""
        if self.buffer_s <= self.trim_s:
            return
        end = self._offset + self.buffer_s
        if not hypothesis:
            # nothing heard (silence, noise): no reason to decode it again
            self._cut(end - _KEEP_UNHEARD_S, hypothesis, 0, 0)
            return
        ends = [i + 1 for i, unit in enumerate(hypothesis) if unit.ends_segment]
        done = [q for q in ends if q <= confirmed]
        if done and end - hypothesis[done[-1] - 1].end <= self.max_buffer_s:
            self._cut(hypothesis[done[-1] - 1].end, hypothesis, done[-1], confirmed)
            return
        if self.buffer_s <= self.max_buffer_s:
            return
        # Over the bound, no segment confirmed to its end close enough: confirm the fewest
        # tentative segments that bring it under, as they stand. Cuts stay at segment ends
        # (pauses): a time inside a segment is only estimated, and Whisper garbles audio
        # that starts in the middle of a word.
        later = [q for q in ends if q > confirmed and end - hypothesis[q - 1].end <= self.max_buffer_s]
        q = later[0] if later else len(hypothesis)
        forced = self._tentative[:q - confirmed]
        logger.debug("buffer over %.0f s without agreement: confirming %r", self.max_buffer_s, _join(forced))
        self._committed += forced
        self._tentative = self._tentative[q - confirmed:]
        self._cut(hypothesis[q - 1].end, hypothesis, q, q)

    def _cut(self, at: float, hypothesis: list[_Unit], q: int, confirmed: int) -> None:
        """Drop the buffer's audio before stream time ``at``, which is where
        ``hypothesis[:q]`` (confirmed) ends."""
        at = min(max(at, self._offset), self._offset + self.buffer_s)
        if q:
            # subtitles break here too: the text before and after come from different decodes
            hypothesis[q - 1].ends_segment = True
        self._audio = self._audio[int(round((at - self._offset) * SAMPLE_RATE)):]
        self._offset = at
        self._in_buffer = hypothesis[q:confirmed]


def _units(segment: Segment, offset: float, language: str) -> list[_Unit]:
    """A segment's text as units with times, ``offset`` added; the last ends the segment."""
    text = segment.text
    times = _char_times(segment)
    units: list[_Unit] = []
    pending = ""  # punctuation before the first unit
    for match in _UNIT.finditer(text):
        piece = match.group()
        key = normalize(piece, language)
        if not key:
            if units:
                units[-1].text += piece
            else:
                pending += piece
            continue
        first = match.start() + len(piece) - len(piece.lstrip())
        units.append(_Unit(start=round(offset + times[first][0], 3), end=round(offset + times[match.end() - 1][1], 3),
                           text=pending + piece, key=key))
        pending = ""
    if units:
        units[-1].ends_segment = True
    return units


def _char_times(segment: Segment) -> list[tuple[float, float]]:
    """(start, end) of each character of ``segment.text``: from the aligned words when
    they spell the text character for character, else spread evenly over the segment."""
    text = segment.text
    if segment.words:
        spelled = "".join(w.word for w in segment.words)
        times = [(w.start, w.end) for w in segment.words for _ in w.word]
        lead = len(spelled) - len(spelled.lstrip())
        spelled, times = spelled.strip(), times[lead:lead + len(spelled.strip())]
        # script conversion (Simplified <-> Traditional) keeps the length character for character
        if len(spelled) == len(text):
            return times
    n = max(len(text), 1)
    step = (segment.end - segment.start) / n
    return [(segment.start + i * step, segment.start + (i + 1) * step) for i in range(len(text))]


def _aligned_prefix(done: Sequence[str], hypothesis: Sequence[_Unit], done_end: float
                    ) -> tuple[int, list[tuple[int, int]]]:
    """Where ``done`` (the keys of the confirmed units still in the buffer) was heard
    again at the start of ``hypothesis``.

    Returns:
        ``(prefix, pairs)``: ``hypothesis[:prefix]`` is the prefix with the smallest edit
        distance to ``done`` (among equals, the one ending nearest ``done_end``, stream
        seconds); ``pairs`` are the ``(index in done, index in hypothesis)`` of the units
        this alignment puts in the same place (the same, or heard differently).
    """
    if not done:
        return 0, []
    keys = [u.key for u in hypothesis]
    rows = [list(range(len(keys) + 1))]  # distance of done[:0] to keys[:j] (j insertions)
    for i, key in enumerate(done, start=1):
        previous, row = rows[-1], [i] + [0] * len(keys)
        for j, other in enumerate(keys, start=1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (key != other))
        rows.append(row)
    best = min(rows[-1])
    ties = [j for j, distance in enumerate(rows[-1]) if distance == best]
    prefix = min(ties, key=lambda j: abs((hypothesis[j - 1].end if j else -1e9) - done_end))
    pairs, i, j = [], len(done), prefix
    while i and j:
        same = done[i - 1] == keys[j - 1]
        if rows[i][j] == rows[i - 1][j - 1] + (not same):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif rows[i][j] == rows[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return prefix, pairs[::-1]


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _join(units: Sequence[_Unit]) -> str:
    return "".join(u.text for u in units)


def _to_segments(units: Sequence[_Unit]) -> list[Segment]:
    segments, group = [], []
    for unit in units:
        group.append(unit)
        if unit.ends_segment:
            segments.append(_segment(group))
            group = []
    if group:
        segments.append(_segment(group))
    return segments


def _segment(units: list[_Unit]) -> Segment:
    return Segment(start=units[0].start, end=max(units[-1].end, units[0].start), text=_join(units).strip(),
                   words=tuple(Word(u.start, u.end, u.text) for u in units))
