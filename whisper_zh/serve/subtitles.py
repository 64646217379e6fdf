"""Subtitle and transcript files: SRT, WebVTT, karaoke WebVTT, bilingual SRT, JSON, text.

Writers take any sequence of objects with ``start`` and ``end`` (seconds, float) and
``text`` (str), optionally ``words`` (timed :class:`whisper_zh.serve.types.Word`s) --
:class:`whisper_zh.serve.types.Segment`, or faster-whisper's segments -- and return the
file's text, so the app, the CLI and tests share one implementation.

Chinese subtitles follow the Netflix Simplified Chinese style by default
(:data:`CHINESE_STYLE`): at most 16 full-width characters a line (a Latin letter or digit
counts half), 2 lines a cue, 7 s a cue, at least 5/6 s, two frames between cues; lines
never start with closing punctuation, and pause punctuation (，。、；：) becomes a
full-width space inside a line and disappears at its end. Cues are cut at the words'
times (at characters' times interpolated within the segment when the backend did not
align words), preferring punctuation, pauses and word boundaries; a Latin word or a
number is never split:

    >>> from types import SimpleNamespace as S
    >>> print(to_srt([S(start=0.0, end=6.0, text="今天我们发布了iPhone 15，售价是5999元。大家觉得怎么样？")]))
    1
    00:00:00,000 --> 00:00:06,000
    今天我们发布了iPhone 15
    售价是5999元　大家觉得怎么样？
    <BLANKLINE>

Other languages get :data:`LATIN_STYLE` (42 characters a line); :data:`SEGMENT_STYLE`
keeps one cue per segment on one line, the layout before Chinese rules.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import textwrap
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from whisper_zh.errors import ConfigError

log = logging.getLogger(__name__)


class TimedText(Protocol):
    start: float  # seconds
    end: float  # seconds
    text: str


@dataclass(frozen=True)
class SubtitleStyle:
    """How a transcript is laid out in cues.

    Attributes:
        max_line_width: characters a line; with ``chinese`` a full-width character counts 1
            and a half-width one (Latin letter, digit, space) 1/2, otherwise every character
            counts 1. None: one cue per segment on one line, no other rule applied.
        max_lines: lines a cue.
        max_duration: seconds a cue at most (a single unsplittable token may exceed it).
        min_duration: seconds a cue at least, taken from the silence after it (or before
            it) when there is some; cues stay :data:`MIN_GAP_S` apart.
        keep_punctuation: keep ，。、；： as written instead of spaces / line ends.
        chinese: Chinese widths and punctuation rules.
    """

    max_line_width: Optional[float] = 16
    max_lines: int = 2
    max_duration: float = 7.0
    min_duration: float = 5 / 6  # Netflix: 20 frames at 24 fps
    keep_punctuation: bool = False
    chinese: bool = True

    def __post_init__(self):
        if self.max_line_width is not None and self.max_line_width < 1:
            raise ConfigError(f"max_line_width must be at least 1, not {self.max_line_width}")
        if self.max_lines < 1 or self.max_duration <= 0 or self.min_duration < 0:
            raise ConfigError(f"invalid subtitle style {self}")


CHINESE_STYLE = SubtitleStyle()  # Netflix Simplified Chinese (PRC) timed-text style
LATIN_STYLE = SubtitleStyle(max_line_width=42, chinese=False, keep_punctuation=True)  # Netflix English
SEGMENT_STYLE = SubtitleStyle(max_line_width=None)
BILINGUAL_STYLE = replace(CHINESE_STYLE, max_lines=1)  # the second line is the translation's

_CHINESE_LANGUAGES = frozenset({"zh", "yue"})
# a pause this long ends a cue: text should not sit on screen through silence
MAX_PAUSE_IN_CUE_S = 1.0
MIN_GAP_S = 2 / 24  # Netflix: two frames between cues

_OPENING = frozenset("“‘（《「『〈【〔([{")
_PAUSES = frozenset("，。、；：,.;:")  # read as a pause: a space inside a line, nothing at its end
# a line never starts with these: they stay with the token before them
_NO_LINE_START = frozenset("”’）》」』〉】〕)]}？！?!…‥～·%") | _PAUSES
# inside a Latin word or a number when between two of its characters: 5.2, 3,000, 12:30, e-mail, don't
_JOINERS = frozenset(".,:-'’/")
_SENTENCE_ENDS = frozenset("。？！?!…")
_FULL_WIDTH = str.maketrans("?!,.;:", "？！，。；：")  # after a Han character, in Chinese style
_CHINESE_SPACE = "\u3000"  # one full-width space where a comma or full stop was
# particles close what comes before them: a break after one reads well, before one badly
# (no word segmenter needed; the model's "words" for Chinese are sub-word tokens)
_PARTICLES = frozenset("的了吗呢吧啊呀嘛么着过地得")

# the cost of ending a line after a piece (0 = ideal); ending a cue there costs twice as much
_BREAK_AT_SENTENCE_END = 0.0
_BREAK_AT_PAUSE = 0.5  # a comma, or a silence of _PAUSE_BONUS_S
_BREAK_BETWEEN_WORDS = 3.0
_BREAK_INSIDE_WORD = 8.0  # a multi-character word of the model, e.g. 节目
_BREAK_AFTER_PARTICLE = 1.5
_PAUSE_BONUS_S = 0.5  # a silence this long makes any break as good as a comma
_CUE_COST = 2.0  # fewer, fuller cues unless a better break is worth one more
_BALANCE_COST = 2.0  # per line width of imbalance between the lines of a cue
_SHORT_CUE_COST = 3.0  # for a cue of nothing, less for fuller ones up to half a line: no orphans


@dataclass(frozen=True)
class Piece:
    """The smallest unit a subtitle is cut at: one Chinese character, or a whole Latin word
    or number, with the punctuation that must stay with it."""

    text: str  # as shown inside a line (a pause punctuation already turned into a space)
    start: float
    end: float
    width: float  # of ``text`` in the style's characters
    final_text: str  # as shown at the end of a line
    final_width: float
    break_cost: float  # of a line or cue ending after this piece


@dataclass(frozen=True)
class Cue:
    """One subtitle: its lines, each a tuple of pieces (their times feed karaoke files)."""

    start: float
    end: float
    lines: tuple[tuple[Piece, ...], ...]
    translation: str = ""  # bilingual: the translated text shown under ``lines``

    @property
    def text(self) -> str:
        shown = ["".join(p.text for p in line[:-1]) + line[-1].final_text for line in self.lines]
        if self.translation:
            shown += textwrap.wrap(self.translation, int(LATIN_STYLE.max_line_width))
        return "\n".join(line.strip() for line in shown)


def format_timestamp(seconds: float, *, always_include_hours: bool = True, decimal_marker: str = ".") -> str:
    """3725.4 -> '01:02:05.400'. Negative times are clamped to zero; milliseconds are
    rounded, not truncated, so 1.9995 s is '00:00:02.000' rather than '00:00:01.999'."""
    milliseconds = max(0, int(round(seconds * 1000.0)))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


# -- characters ---------------------------------------------------------------------------

def _is_han(char: str) -> bool:
    return unicodedata.category(char) == "Lo" and unicodedata.east_asian_width(char) == "W"


def _in_word(char: str) -> bool:
    """Part of a Latin word or a number (half- or full-width), which is never split."""
    return unicodedata.category(char)[0] in "LN" and not _is_han(char)


@lru_cache(maxsize=4096)
def _char_width(char: str, chinese: bool) -> float:
    if not chinese:
        return 1.0
    # quotes, ellipsis and dashes are East Asian "ambiguous": full-width in Chinese fonts
    return 1.0 if unicodedata.east_asian_width(char) in "WFA" else 0.5


def text_width(text: str, style: SubtitleStyle = CHINESE_STYLE) -> float:
    """Width of ``text`` in ``style``'s characters: 'iPhone 15手机' is 4.5 + 2 in Chinese."""
    return sum(_char_width(c, style.chinese) for c in text)


def default_style(segments: Sequence[TimedText] = (), language: Optional[str] = None) -> SubtitleStyle:
    """:data:`CHINESE_STYLE` for Chinese (by ``language``, else when at least a third of the
    letters are Han characters), :data:`LATIN_STYLE` otherwise."""
    if language is not None:
        return CHINESE_STYLE if language in _CHINESE_LANGUAGES else LATIN_STYLE
    letters = [c for s in segments for c in s.text if unicodedata.category(c)[0] == "L"]
    han = sum(map(_is_han, letters))
    return CHINESE_STYLE if letters and han * 3 >= len(letters) else LATIN_STYLE


# -- segments -> timed characters -> pieces ---------------------------------------------

@dataclass
class _Char:
    char: str
    start: float
    end: float
    word: int  # index of the model's word it belongs to; -1 when unknown
    space_before: bool


def _align(shown: str, written: str, times: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The times of the characters ``shown``, given those of the characters ``written`` by
    the model: equal characters (compared in Simplified) take their own time; a run that
    conversion changed (U盘 -> 隨身碟) shares the time of the run it replaced."""
    from whisper_zh.text import to_simplified

    simple_shown, simple_written = to_simplified(shown), to_simplified(written)
    if len(simple_shown) != len(shown) or len(simple_written) != len(written):
        simple_shown, simple_written = shown, written  # t2s changed a length: compare as they are
    out: list[tuple[float, float, int]] = []
    matcher = difflib.SequenceMatcher(None, simple_shown, simple_written, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out += times[j1:j2]
        elif op != "delete":
            if j1 == j2:  # shown but never written: no time of its own
                at = times[j1 - 1][1] if j1 else times[0][0]
                start, end, word = at, at, times[min(j1, len(times) - 1)][2]
            else:
                start, end = times[j1][0], times[j2 - 1][1]
            step = (end - start) / (i2 - i1)
            for k in range(i2 - i1):
                word = times[j1 + k * (j2 - j1) // (i2 - i1)][2] if j2 > j1 else word
                out.append((start + k * step, start + (k + 1) * step, word))
    return out


def _timed_chars(segment) -> list[_Char]:
    """The characters of ``segment.text`` with times: from its words when it has them (the
    words are in the model's script, the text may have been converted, see :func:`_align`);
    else spread over the segment, Han characters twice as long as a Latin letter or digit,
    punctuation taking no time."""
    shown: list[tuple[str, bool]] = []
    space = False
    for char in segment.text.strip():
        if char.isspace():
            space = True
            continue
        shown.append((char, space))
        space = False
    if not shown:
        return []
    written, source = "", []  # the words' non-space characters; (start, end, word index) of each
    for w_index, word in enumerate(getattr(segment, "words", None) or ()):
        chars = "".join(word.word.split())
        step = (word.end - word.start) / max(len(chars), 1)
        written += chars
        source += [(word.start + k * step, word.start + (k + 1) * step, w_index) for k in range(len(chars))]
    if source:
        times = _align("".join(c for c, _ in shown), written, source)
    else:
        weights = [0.0 if unicodedata.category(c)[0] in "PSZ" else _char_width(c, True) for c, _ in shown]
        total = sum(weights) or 1.0
        span = max(segment.end - segment.start, 0.0)
        times, elapsed = [], 0.0
        for weight in weights:
            start = segment.start + span * elapsed / total
            elapsed += weight
            times.append((start, segment.start + span * elapsed / total, -1))
    return [_Char(c, s, e, w, space) for (c, space), (s, e, w) in zip(shown, times)]


@dataclass
class _Token:  # a Piece under construction
    text: str
    start: float
    end: float
    word: int
    tail: str = ""  # punctuation that follows it
    space_after: bool = False
    segment_end: bool = False


def _tokens(chars: list[_Char]) -> list[_Token]:
    tokens: list[_Token] = []
    opening = ""
    for k, c in enumerate(chars):
        last = tokens[-1] if tokens else None
        following = chars[k + 1].char if k + 1 < len(chars) else ""
        if last is not None and c.space_before:
            last.space_after = True
        if last is not None and not c.space_before and not last.tail and (
                (_in_word(c.char) and _in_word(last.text[-1]))
                or (c.char in _JOINERS and _in_word(last.text[-1]) and following and _in_word(following)
                    and not chars[k + 1].space_before)):
            last.text += c.char
            last.end = max(last.end, c.end)
        elif last is not None and c.char in _NO_LINE_START and not opening:
            last.tail += c.char
        elif c.char in _OPENING or unicodedata.category(c.char) in ("Ps", "Pi"):
            opening += c.char
        else:
            tokens.append(_Token(opening + c.char, c.start, c.end, c.word))
            opening = ""
        if last is not None and tokens[-1] is not last and last.end > tokens[-1].start:
            last.end = max(last.start, tokens[-1].start)  # a word's share of time never overlaps the next
    if opening and tokens:  # an opening mark with nothing after it: keep it rather than lose it
        tokens[-1].tail += opening
    return tokens


def _pieces(segments: Sequence[TimedText], style: SubtitleStyle) -> list[Piece]:
    tokens: list[_Token] = []
    for segment in segments:
        segment_tokens = _tokens(_timed_chars(segment))
        if segment_tokens:
            segment_tokens[-1].segment_end = True
            tokens += segment_tokens
    pieces: list[Piece] = []
    previous_start = 0.0
    for k, token in enumerate(tokens):
        following = tokens[k + 1] if k + 1 < len(tokens) else None
        start = max(token.start, previous_start)  # time never runs backwards between segments
        end = max(token.end, start)
        previous_start = start
        pause = "".join(c for c in token.tail if c in _PAUSES)
        kept = token.tail if style.keep_punctuation else "".join(c for c in token.tail if c not in _PAUSES)
        pause_space = _CHINESE_SPACE if style.chinese else " "
        if pause and not style.keep_punctuation:
            separator = pause_space
        elif token.space_after:
            separator = " "
        elif token.segment_end and not (kept and style.chinese):
            # a segment boundary is a pause in speech: show it as one where the model wrote none
            separator = pause_space
        else:
            separator = ""
        if following is None or token.segment_end or any(c in _SENTENCE_ENDS for c in kept):
            cost = _BREAK_AT_SENTENCE_END
        elif pause or kept:
            cost = _BREAK_AT_PAUSE
        else:
            if (token.word >= 0 and token.word == following.word) or following.text[0] in _PARTICLES:
                cost = _BREAK_INSIDE_WORD
            elif token.text[-1] in _PARTICLES:
                cost = _BREAK_AFTER_PARTICLE
            else:
                cost = _BREAK_BETWEEN_WORDS
            gap = following.start - end
            cost = _BREAK_AT_PAUSE + (cost - _BREAK_AT_PAUSE) * max(0.0, 1.0 - gap / _PAUSE_BONUS_S)
            if following.text[0] in _OPENING or unicodedata.category(following.text[0]) in ("Ps", "Pi"):
                cost = min(cost, _BREAK_AFTER_PARTICLE)
        if style.chinese and _is_han(token.text[-1]):
            kept = kept.translate(_FULL_WIDTH)
        text = token.text + kept + separator
        final_text = token.text + kept
        pieces.append(Piece(text, start, end, text_width(text, style), final_text,
                            text_width(final_text, style), cost))
    return pieces


# -- pieces -> cues ---------------------------------------------------------------------

class _Layout:
    """Cuts pieces into cues and lines: dynamic programming over the cue ends (each cue
    costs :data:`_CUE_COST`, twice the break cost of its last piece and that of its best line
    break), then the lines of each cue by the same costs plus their imbalance. Only cuts
    that fit are considered: a cue fits when its pieces fill at most ``max_lines`` lines,
    last no longer than ``max_duration`` and hold no pause of :data:`MAX_PAUSE_IN_CUE_S`."""

    def __init__(self, pieces: list[Piece], style: SubtitleStyle):
        self.pieces, self.style = pieces, style
        self.width = float(style.max_line_width)
        self.prefix = [0.0]
        for piece in pieces:
            self.prefix.append(self.prefix[-1] + piece.width)
        n = len(pieces)
        # pauses[k]: how many pauses too long to sit inside a cue come before piece k
        self.pauses = [0]
        for before, after in zip(pieces, pieces[1:]):
            self.pauses.append(self.pauses[-1] + (after.start - before.end >= MAX_PAUSE_IN_CUE_S))
        # reach[i]: the end of the longest line starting at piece i (at least one piece);
        # back[j]: the start of the longest line ending at piece j
        self.reach, self.back = [0] * (n + 1), [0] * (n + 1)
        for i in range(n):
            k = i + 1
            while k < n and self.line_width(i, k + 1) <= self.width:
                k += 1
            self.reach[i] = k
            if self.line_width(i, i + 1) > self.width:
                log.debug("%r is wider than a line", pieces[i].final_text)
        for j in range(1, n + 1):
            k = j - 1
            while k > 0 and self.line_width(k - 1, j) <= self.width:
                k -= 1
            self.back[j] = k
        self.break_costs = [piece.break_cost for piece in pieces]

    def line_width(self, i: int, j: int) -> float:
        return self.prefix[j] - self.prefix[i] - self.pieces[j - 1].width + self.pieces[j - 1].final_width

    def cue_cost(self, i: int, j: int) -> Optional[float]:
        """None when pieces i..j do not fit in a cue; else the cost of the best break between
        two lines (not weighed beyond two lines), or on one line that of being short."""
        if j - i > 1:
            if self.pieces[j - 1].end - self.pieces[i].start > self.style.max_duration:
                return None
            if self.pauses[j - 1] - self.pauses[i]:
                return None
        position = i
        for lines in range(1, self.style.max_lines + 1):
            position = self.reach[position]
            if position >= j:
                break
        else:
            return None
        if lines == 1:
            short = max(0.0, 1.0 - self.line_width(i, j) / (self.width / 2))
            return _SHORT_CUE_COST * short
        if lines == 2:  # the break k: line i..k fits and line k..j fits
            return min(self.break_costs[max(i + 1, self.back[j]) - 1:min(self.reach[i], j - 1)], default=0.0)
        return 0.0

    def cue_ends(self) -> list[int]:
        n = len(self.pieces)
        best = [0.0] + [float("inf")] * n
        previous = [0] * (n + 1)
        for j in range(1, n + 1):
            end_cost = 2 * self.pieces[j - 1].break_cost if j < n else 0.0
            for i in range(j - 1, -1, -1):
                lines_cost = self.cue_cost(i, j)
                if lines_cost is None:
                    break  # a cue starting earlier would not fit either
                cost = best[i] + _CUE_COST + end_cost + lines_cost
                if cost < best[j]:
                    best[j], previous[j] = cost, i
        ends, j = [], n
        while j > 0:
            ends.append(j)
            j = previous[j]
        return ends[::-1]

    def lines(self, i: int, j: int) -> list[tuple[int, int]]:
        """The cheapest split of pieces i..j into the fewest lines that fit."""
        total = self.line_width(i, j)
        for count in range(1, self.style.max_lines + 1):
            ideal = total / count

            @lru_cache(maxsize=None)
            def split(start: int, left: int) -> tuple[float, tuple[int, ...]]:
                if left == 1:
                    if self.reach[start] < j and start < j - 1:
                        return float("inf"), ()
                    return abs(self.line_width(start, j) - ideal) / self.width * _BALANCE_COST, (j,)
                options = [(float("inf"), ())]
                for end in range(start + 1, min(self.reach[start], j - 1) + 1):
                    rest_cost, rest = split(end, left - 1)
                    cost = (self.pieces[end - 1].break_cost + rest_cost
                            + abs(self.line_width(start, end) - ideal) / self.width * _BALANCE_COST)
                    options.append((cost, (end,) + rest))
                return min(options, key=lambda option: option[0])

            cost, ends = split(i, count)
            if cost < float("inf"):
                starts = (i,) + ends[:-1]
                return list(zip(starts, ends))
        return [(i, j)]  # not reached: cues are only cut where their pieces fit in max_lines lines


def _timed_cues(raw: list[Cue], style: SubtitleStyle) -> list[Cue]:
    """Cues lengthened to ``min_duration`` into the silence after them (then before them),
    at least :data:`MIN_GAP_S` apart so that a viewer sees a new cue arrive."""
    out: list[Cue] = []
    for k, cue in enumerate(raw):
        next_start = raw[k + 1].start if k + 1 < len(raw) else float("inf")
        start = cue.start
        end = min(max(cue.end, start + style.min_duration), next_start - MIN_GAP_S)
        if end <= start:  # a cue shorter than the gap: keep it, touching the next
            end = min(cue.end, next_start)
        if end - start < style.min_duration:
            start = max(end - style.min_duration, out[-1].end + MIN_GAP_S if out else 0.0, 0.0)
            start = min(start, cue.start)
        out.append(replace(cue, start=start, end=end))
    return out


def make_cues(segments: Sequence[TimedText], style: Optional[SubtitleStyle] = None) -> list[Cue]:
    """Lay ``segments`` out as subtitles in ``style`` (default: :func:`default_style`)."""
    segments = list(segments)
    style = style or default_style(segments)
    if style.max_line_width is None:
        cues = []
        for segment in segments:
            text = " ".join(segment.text.split())
            if text:  # a blank line inside a cue would end it early in both SRT and VTT
                start, end = float(segment.start), max(float(segment.end), float(segment.start))
                cues.append(Cue(start, end, ((Piece(text, start, end, 0.0, text, 0.0, 0.0),),)))
        return cues
    pieces = _pieces(segments, style)
    layout = _Layout(pieces, style)
    raw, start = [], 0
    for end in layout.cue_ends():
        lines = tuple(tuple(pieces[a:b]) for a, b in layout.lines(start, end))
        raw.append(Cue(pieces[start].start, pieces[end - 1].end, lines))
        start = end
    return _timed_cues(raw, style)


# -- writers ----------------------------------------------------------------------------

def _srt(cues: Sequence[Cue]) -> str:
    # an arrow in the text would read as a timing line
    blocks = [f"{index}\n{format_timestamp(cue.start, decimal_marker=',')} --> "
              f"{format_timestamp(cue.end, decimal_marker=',')}\n{cue.text.replace('-->', '->')}\n"
              for index, cue in enumerate(cues, start=1)]
    return "\n".join(blocks)


def _vtt_text(text: str) -> str:
    """WebVTT cue text: &, < and > escaped, else read as markup (and --> as a timing line)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_srt(segments: Sequence[TimedText], style: Optional[SubtitleStyle] = None) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, a blank line after each cue."""
    return _srt(make_cues(segments, style))


def to_vtt(segments: Sequence[TimedText], style: Optional[SubtitleStyle] = None) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm`` times."""
    blocks = [f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n{_vtt_text(cue.text)}\n"
              for cue in make_cues(segments, style)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_karaoke_vtt(segments: Sequence[TimedText], style: Optional[SubtitleStyle] = None) -> str:
    """WebVTT whose cues carry a timestamp tag (``<00:00:01.200>``) before each character or
    word after the first: players that follow the WebVTT spec show the words already
    spoken as past (``:past`` / ``:future`` styling). Tags are strictly increasing and
    strictly inside their cue, as the spec requires."""
    blocks = []
    for cue in make_cues(segments, style):
        shown, last = [], cue.start
        for line in cue.lines:
            parts = []
            for k, piece in enumerate(line):
                text = piece.final_text if k == len(line) - 1 else piece.text
                tag_ms, last_ms, end_ms = (round(t * 1000) for t in (piece.start, last, cue.end))
                if last_ms < tag_ms < end_ms:
                    parts.append(f"<{format_timestamp(piece.start)}>")
                    last = piece.start
                parts.append(_vtt_text(text))
            shown.append("".join(parts).strip())
        blocks.append(f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n" + "\n".join(shown) + "\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(segments: Sequence[TimedText]) -> str:
    """Plain text, one segment per line."""
    return "".join(f"{text}\n" for text in (" ".join(s.text.split()) for s in segments) if text)


def _seconds(value) -> Optional[float]:
    return None if value is None else round(float(value), 3)


def to_json(segments: Sequence[TimedText]) -> str:
    """``{"segments": [{"start", "end", "text", "no_speech_prob", "words": [{"start", "end",
    "word", "probability"}]}]}``, times in seconds; ``words`` is empty where the backend did
    not align words. UTF-8 text, not \\u escapes."""
    data = {"segments": [
        {"start": _seconds(s.start), "end": _seconds(s.end), "text": s.text.strip(),
         "no_speech_prob": getattr(s, "no_speech_prob", None),
         "words": [{"start": _seconds(w.start), "end": _seconds(w.end), "word": w.word,
                    "probability": getattr(w, "probability", None)} for w in getattr(s, "words", None) or ()]}
        for s in segments if s.text.strip()]}
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return min(a_end, b_end) - max(a_start, b_start)


def _share(text: str, weights: Sequence[float]) -> list[str]:
    """``text`` cut at spaces into ``len(weights)`` consecutive parts sized like ``weights``,
    each cut moved to a nearby punctuation mark when there is one."""
    words = text.split()
    if len(weights) == 1 or not words:
        return [text] + [""] * (len(weights) - 1)
    ends, length = [], 0  # ends[k]: characters up to the end of word k
    for word in words:
        length += len(word) + 1
        ends.append(length)
    total, cuts, done = sum(weights) or 1.0, [], 0.0
    for weight in weights[:-1]:
        done += weight
        target = length * done / total
        slack = length / len(weights) / 4

        def badness(k: int) -> float:
            return abs(ends[k] - target) - (slack if words[k][-1] in ",.;:?!" else 0.0)

        lowest = cuts[-1] if cuts else 0
        cuts.append(min(range(lowest, len(words) + 1), key=lambda k: badness(k - 1) if k else abs(target)))
    bounds = [0] + cuts + [len(words)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def bilingual_cues(segments: Sequence[TimedText], translation: Sequence[TimedText],
                   style: SubtitleStyle = BILINGUAL_STYLE) -> list[Cue]:
    """Chinese cues (``style``, one line by default) each with its share of the translation.

    Whisper's translate task times its segments on its own, so the transcription's times
    are kept and the translation is placed on them: each cue belongs to the translated
    segment it overlaps most; a translated segment's text is shared out over the cues that
    belong to it in proportion to their width (cut at spaces, preferring punctuation); a
    translated segment that no cue belongs to joins the cue it overlaps most (or the nearest).
    """
    cues = make_cues(segments, style)
    english = [(float(s.start), float(s.end), " ".join(s.text.split())) for s in translation if s.text.strip()]
    if not cues:
        return []
    owned_by: dict[int, list[int]] = {}  # translated segment -> the cues that belong to it
    for k, cue in enumerate(cues):
        overlaps = [_overlap(cue.start, cue.end, s, e) for s, e, _ in english]
        if overlaps and max(overlaps) > 0:
            owned_by.setdefault(max(range(len(english)), key=overlaps.__getitem__), []).append(k)
    parts: list[list[tuple[float, str]]] = [[] for _ in cues]
    for e_index, (start, end, text) in enumerate(english):
        owned = owned_by.get(e_index)
        if not owned:
            nearest = max(range(len(cues)), key=lambda k: _overlap(cues[k].start, cues[k].end, start, end))
            owned = [nearest]
        shares = _share(text, [max(text_width(cues[k].text, style), 1.0) for k in owned])
        for k, share in zip(owned, shares):
            if share:
                parts[k].append((start, share))
    return [replace(cue, translation=" ".join(t for _, t in sorted(p))) for cue, p in zip(cues, parts)]


def to_bilingual_srt(segments: Sequence[TimedText], translation: Sequence[TimedText],
                     style: SubtitleStyle = BILINGUAL_STYLE) -> str:
    """SubRip with the Chinese line over its English translation in each cue, timed by the
    transcription (see :func:`bilingual_cues`)."""
    return _srt(bilingual_cues(segments, translation, style))


Writer = Callable[[Sequence[TimedText], Optional[SubtitleStyle]], str]
WRITERS: dict[str, Writer] = {
    "srt": to_srt,
    "vtt": to_vtt,
    "txt": lambda segments, style=None: to_txt(segments),
    "json": lambda segments, style=None: to_json(segments),
    "karaoke": to_karaoke_vtt,
}
# file name endings, longest first where one ends another
SUFFIXES = {"karaoke": ".karaoke.vtt", "bilingual": ".bilingual.srt", "srt": ".srt", "vtt": ".vtt",
            "txt": ".txt", "json": ".json"}
FORMATS = ("srt", "vtt", "txt", "json", "karaoke", "bilingual")
DEFAULT_FORMATS = ("srt", "vtt", "txt")


def format_of(path: str | os.PathLike) -> str:
    """The format a file name asks for: 'talk.karaoke.vtt' -> 'karaoke', 'talk.SRT' -> 'srt'."""
    name = Path(path).name.lower()
    for fmt, suffix in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ConfigError(f"unknown subtitle format for {Path(path).name!r}; choose one of {', '.join(FORMATS)}")


def write_subtitles(segments: Sequence[TimedText], path: str | os.PathLike, fmt: Optional[str] = None, *,
                    style: Optional[SubtitleStyle] = None,
                    translation: Optional[Sequence[TimedText]] = None) -> Path:
    """Write ``segments`` to ``path`` in ``fmt`` (default: from the file name, see
    :data:`SUFFIXES`), UTF-8. ``style``: the subtitle layout (default :func:`default_style`);
    ``translation``: the English segments, needed by "bilingual".

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = (fmt or format_of(path)).lower()
    if fmt == "bilingual":
        if translation is None:
            raise ConfigError("bilingual subtitles need the translation's segments")
        text = to_bilingual_srt(segments, translation, style or BILINGUAL_STYLE)
    elif fmt in WRITERS:
        text = WRITERS[fmt](segments, style)
    else:
        raise ConfigError(f"unknown subtitle format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats, lower-cased and without repeats, each one this module can write.

    Raises:
        ConfigError: naming the unknown ones and the available ones.
    """
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown output format{'s' * (len(unknown) > 1)} {', '.join(unknown) or '(none)'}; "
                          f"choose from {', '.join(FORMATS)}")
    return formats


def output_paths(out_dir: str | os.PathLike, stem: str | os.PathLike, formats: Sequence[str]) -> dict[str, Path]:
    """{format: ``out_dir/stem`` + :data:`SUFFIXES`\\ [format]}: the one naming of output
    files, which folder jobs also use to find what a killed run already wrote."""
    return {fmt: Path(out_dir) / f"{stem}{SUFFIXES[fmt]}" for fmt in check_formats(formats)}


def write_atomically(segments: Sequence[TimedText], targets: dict[str, Path], **writer_options) -> dict[str, Path]:
    """Write ``segments`` in each format to its path through a temporary file in the same
    folder renamed into place: a reader (or a resumed run) never sees a partial file.
    ``writer_options`` (``style``, ``translation``) go to :func:`write_subtitles`.
    Returns ``targets``."""
    temporary: dict[str, Path] = {}
    try:
        for fmt, path in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary[fmt] = write_subtitles(segments, path.with_name(f".{path.name}.{os.getpid()}.tmp"), fmt,
                                             **writer_options)
        for fmt, tmp in temporary.items():
            os.replace(tmp, targets[fmt])
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
    return targets


def write_all(segments: Sequence[TimedText], out_dir: str | os.PathLike, stem: str = "transcript",
              formats: Sequence[str] = DEFAULT_FORMATS, *, style: Optional[SubtitleStyle] = None,
              translation: Optional[Sequence[TimedText]] = None) -> dict[str, Path]:
    """Write ``out_dir/stem`` + :data:`SUFFIXES`\\ [format] for each of ``formats``, each
    atomically; returns {format: path}."""
    return write_atomically(segments, output_paths(out_dir, stem, formats), style=style, translation=translation)
