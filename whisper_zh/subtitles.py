"""Subtitle and transcript files: SRT, WebVTT and plain text.

Writers take any sequence of objects with ``start`` and ``end`` (seconds, float) and
``text`` (str) -- :class:`whisper_zh.transcribe.Segment`, or faster-whisper's segments --
and return the file's text, so the app, the CLI and tests share one implementation:

    >>> from types import SimpleNamespace as S
    >>> print(to_srt([S(start=0.0, end=2.5, text="你好"), S(start=2.5, end=61.04, text="世界")]))
    1
    00:00:00,000 --> 00:00:02,500
    你好
    <BLANKLINE>
    2
    00:00:02,500 --> 00:01:01,040
    世界
    <BLANKLINE>
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol, Sequence

FORMATS = ("srt", "vtt", "txt")


class TimedText(Protocol):
    start: float  # seconds
    end: float  # seconds
    text: str


def format_timestamp(seconds: float, *, always_include_hours: bool = True, decimal_marker: str = ".") -> str:
    """3725.4 -> '01:02:05.400'. Negative times are clamped to zero; milliseconds are
    rounded, not truncated, so 1.9995 s is '00:00:02.000' rather than '00:00:01.999'."""
    milliseconds = max(0, int(round(seconds * 1000.0)))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    hours_part = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def _cues(segments: Iterable[TimedText]) -> list[tuple[float, float, str]]:
    """(start, end, text) with blank segments dropped, text on one line (a blank line
    inside a cue would end it early in both SRT and VTT) and end >= start."""
    cues = []
    for segment in segments:
        text = " ".join(segment.text.split())
        if text:
            cues.append((float(segment.start), max(float(segment.end), float(segment.start)), text))
    return cues


def to_srt(segments: Iterable[TimedText]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, a blank line after each cue."""
    blocks = [
        f"{index}\n{format_timestamp(start, decimal_marker=',')} --> "
        f"{format_timestamp(end, decimal_marker=',')}\n{text}\n"
        for index, (start, end, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Iterable[TimedText]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm`` times."""
    blocks = [f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n"
              for start, end, text in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(segments: Iterable[TimedText]) -> str:
    """Plain text, one segment per line."""
    return "".join(f"{text}\n" for _, _, text in _cues(segments))


WRITERS = {"srt": to_srt, "vtt": to_vtt, "txt": to_txt}


def write_subtitles(segments: Sequence[TimedText], path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``segments`` to ``path`` in ``fmt`` (default: the file's extension), UTF-8.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in WRITERS:
        raise ValueError(f"unknown subtitle format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(WRITERS[fmt](segments), encoding="utf-8")
    return path


def write_all(segments: Sequence[TimedText], out_dir: str | os.PathLike, stem: str = "transcript",
              formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write ``out_dir/stem.{srt,vtt,txt}``; returns {format: path}."""
    return {fmt: write_subtitles(segments, Path(out_dir) / f"{stem}.{fmt}", fmt) for fmt in formats}
