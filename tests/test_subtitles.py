"""SRT / WebVTT / TXT writers."""

from __future__ import annotations

import re

import pytest

from whisper_zh.subtitles import format_timestamp, to_srt, to_txt, to_vtt, write_all, write_subtitles
from whisper_zh.transcribe import Segment

SEGMENTS = [
    Segment(0.0, 2.5, "你好，世界"),
    Segment(2.5, 61.04, "  第二句\n换行了  "),
    Segment(61.04, 61.04, "   "),  # blank: dropped
    Segment(3599.9996, 3725.4, "一小时以后"),
]


@pytest.mark.parametrize("seconds, marker, expected", [
    (0.0, ".", "00:00:00.000"),
    (2.5, ",", "00:00:02,500"),
    (61.04, ".", "00:01:01.040"),
    (1.9995, ".", "00:00:02.000"),  # rounded, never 00:00:01.1000
    (3725.4, ",", "01:02:05,400"),
    (-0.3, ".", "00:00:00.000"),
    (36000.0, ".", "10:00:00.000"),
])
def test_format_timestamp(seconds, marker, expected):
    assert format_timestamp(seconds, decimal_marker=marker) == expected


def test_format_timestamp_without_hours():
    assert format_timestamp(65.25, always_include_hours=False) == "01:05.250"
    assert format_timestamp(3725.0, always_include_hours=False) == "01:02:05.000"


def test_srt_layout():
    srt = to_srt(SEGMENTS)
    blocks = srt.strip().split("\n\n")
    assert len(blocks) == 3
    assert blocks[0] == "1\n00:00:00,000 --> 00:00:02,500\n你好，世界"
    assert blocks[1] == "2\n00:00:02,500 --> 00:01:01,040\n第二句 换行了"  # no blank line inside a cue
    assert blocks[2] == "3\n01:00:00,000 --> 01:02:05,400\n一小时以后"
    assert srt.endswith("\n")


def test_vtt_layout():
    vtt = to_vtt(SEGMENTS)
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt[len("WEBVTT\n\n"):].strip().split("\n\n")
    assert cues[0] == "00:00:00.000 --> 00:00:02.500\n你好，世界"
    assert len(cues) == 3
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+", cue) for cue in cues)


def test_txt_one_segment_per_line():
    assert to_txt(SEGMENTS) == "你好，世界\n第二句 换行了\n一小时以后\n"


def test_end_never_before_start():
    assert "00:00:05,000 --> 00:00:05,000" in to_srt([Segment(5.0, 4.0, "x")])


def test_write_files(tmp_path):
    paths = write_all(SEGMENTS, tmp_path, stem="talk")
    assert {p.name for p in paths.values()} == {"talk.srt", "talk.vtt", "talk.txt"}
    assert paths["srt"].read_text(encoding="utf-8") == to_srt(SEGMENTS)
    assert write_subtitles(SEGMENTS, tmp_path / "x.VTT").read_text(encoding="utf-8") == to_vtt(SEGMENTS)
    with pytest.raises(ValueError, match="unknown subtitle format"):
        write_subtitles(SEGMENTS, tmp_path / "x.ass")
