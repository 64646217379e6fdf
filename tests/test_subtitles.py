"""Subtitle writers: the Chinese layout on hand-made segments and on a real transcription
(whisper-base through faster-whisper with word timestamps), checked by parsing the files
with real subtitle parsers (``srt``, ``webvtt-py``) and by ffmpeg reading them."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest
import srt
import webvtt

from whisper_zh.serve.subtitles import (CHINESE_STYLE, FORMATS, LATIN_STYLE, MIN_GAP_S, SEGMENT_STYLE, SUFFIXES, SubtitleStyle, bilingual_cues, default_style, format_of, format_timestamp, make_cues, text_width, to_bilingual_srt, to_json, to_karaoke_vtt, to_srt, to_txt, to_vtt, write_all, write_subtitles)
from whisper_zh.text import convert_script
from whisper_zh.serve.types import Segment, Word

SEGMENTS = [
    Segment(0.0, 2.5, "你好，世界"),
    Segment(2.5, 61.04, "  第二句\n换行了  "),
    Segment(61.04, 61.04, "   "),  # blank: dropped
    Segment(3599.9996, 3725.4, "一小时以后"),
]
CLOSING = set("，。、；：？！”’）》」』〉】…,.;:?!)")
OPENING = set("“‘（《「『〈【(")
PAUSES = "，。、；：,.;:"


def _words(pieces: list[tuple[str, float, float]]) -> tuple[Word, ...]:
    return tuple(Word(start, end, text) for text, start, end in pieces)


def _even_words(text: str, start: float, end: float, sizes=None) -> tuple[Word, ...]:
    """``text`` cut into words of ``sizes`` characters (default: one each), evenly timed."""
    sizes = sizes or [1] * len(text)
    step, words, k = (end - start) / len(sizes), [], 0
    for n, size in enumerate(sizes):
        words.append(Word(start + n * step, start + (n + 1) * step, text[k:k + size]))
        k += size
    assert k == len(text)
    return tuple(words)


def _pauses_shown(text: str) -> set[str]:
    """The pause punctuation in ``text`` that the Chinese layout should have removed: all
    of it but ``, . :`` between two letters or digits (9,999  3.5  12:30 stay whole)."""
    return set(re.sub(r"(?<=[0-9A-Za-z])[,.:](?=[0-9A-Za-z])", "", text)) & set(PAUSES)


def _lines(cues) -> list[str]:
    return [line for cue in cues for line in cue.text.split("\n")]


def _check_chinese_rules(cues, style: SubtitleStyle = CHINESE_STYLE) -> None:
    for cue in cues:
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= style.max_lines, cue.text
        for line in lines:
            assert text_width(line) <= style.max_line_width, line
            assert line and line[0] not in CLOSING, line
            assert line[-1] not in OPENING, line
            assert not re.search("[\u4e00-\u9fff] [\u4e00-\u9fff]", line), line  # whisperX issue 597
            if not style.keep_punctuation:
                assert not _pauses_shown(line), line
    for a, b in zip(cues, cues[1:]):
        assert a.end <= b.start + 1e-9


# -- timestamps and the layout before Chinese rules ------------------------------------------

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


def test_segment_style_keeps_one_cue_per_segment():
    blocks = to_srt(SEGMENTS, SEGMENT_STYLE).strip().split("\n\n")
    assert blocks == ["1\n00:00:00,000 --> 00:00:02,500\n你好，世界",
                      "2\n00:00:02,500 --> 00:01:01,040\n第二句 换行了",  # no blank line inside a cue
                      "3\n01:00:00,000 --> 01:02:05,400\n一小时以后"]
    vtt = to_vtt(SEGMENTS, SEGMENT_STYLE)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n你好，世界\n\n")
    assert "00:00:05,000 --> 00:00:05,000" in to_srt([Segment(5.0, 4.0, "x")], SEGMENT_STYLE)


def test_txt_one_segment_per_line_and_a_paragraph_after_a_long_pause():
    assert to_txt(SEGMENTS) == "你好，世界\n第二句 换行了\n\n一小时以后\n"


# -- the Chinese layout on hand-made segments ------------------------------------------------

def test_default_style_follows_the_language_or_the_text():
    assert default_style(SEGMENTS) is CHINESE_STYLE
    assert default_style([Segment(0, 1, "Hello there, 你好")]) is LATIN_STYLE
    assert default_style([Segment(0, 1, "Hello")], language="zh") is CHINESE_STYLE
    assert default_style(SEGMENTS, language="en") is LATIN_STYLE


def test_text_width_counts_latin_as_half():
    assert text_width("iPhone 15手机") == pytest.approx(4.5 + 2)
    assert text_width("“你好”") == 4
    assert text_width("iPhone", LATIN_STYLE) == 6


def test_long_segment_becomes_two_line_cues_without_sentence_punctuation():
    text = "我们今天要讨论的问题是，人工智能会不会改变每个人的工作方式。有人说会，有人说不会！你怎么看？"
    cues = make_cues([Segment(10.0, 24.0, text)])
    _check_chinese_rules(cues)
    assert len(cues) > 1 and max(len(cue.text.split("\n")) for cue in cues) == 2
    shown = "".join(_lines(cues)).replace("\u3000", "")
    assert shown == re.sub(f"[{PAUSES}]", "", text)  # every character kept, in order
    assert "！" in shown and "？" in shown  # question and exclamation marks stay
    assert cues[0].start == 10.0 and cues[-1].end == 24.0
    assert all(cue.end - cue.start <= CHINESE_STYLE.max_duration for cue in cues)
    # a comma inside a line is a full-width space; cuts prefer punctuation
    assert any("\u3000" in line for line in _lines(cues))
    # every cue but the last ends where the text had punctuation
    shown_at = [k for k, c in enumerate(text) if c not in PAUSES]  # the shown characters' places in text
    done = 0
    for cue in cues[:-1]:
        done += len(re.sub(r"\s", "", cue.text))
        assert text[shown_at[done - 1]] in "！？" or text[shown_at[done - 1] + 1] in PAUSES, cue.text


def test_latin_words_and_numbers_are_never_split():
    text = "我在2023年买了iPhone 15 Pro Max，价格是9,999元，比去年的iPhone 14贵了3.5%。"
    # the model's tokens cut Latin words and numbers into pieces: "i" "Phone", "20" "23"
    tokens = ["我", "在", "20", "23", "年", "买", "了", "i", "Phone", " 15", " Pro", " Max", "，", "价", "格",
              "是", "9", ",", "999", "元", "，", "比", "去", "年", "的", "i", "Phone", " 14", "贵", "了",
              "3", ".", "5", "%", "。"]
    assert "".join(tokens) == text
    segment = Segment(0.0, 12.0, text, words=_even_words(text, 0.0, 12.0, [len(t) for t in tokens]))
    for width in (4, 6, 16):
        style = SubtitleStyle(max_line_width=width)
        lines = _lines(make_cues([segment], style))
        for atom in ("2023", "iPhone", "9,999", "3.5%", "Max", "Pro"):
            assert any(atom in line for line in lines), (atom, lines)
        assert not any(line[0] in CLOSING for line in lines), lines
    # one cue of two lines at 16: the space between Latin words stays a half-width space
    assert "iPhone 15 Pro Max" in "".join(_lines(make_cues([segment])))


def test_closing_punctuation_stays_with_what_it_closes():
    text = "他说：“我读完了《三体》。”然后呢？（笑）她回答：“好的！”"
    for width in (3, 5, 8):
        cues = make_cues([Segment(0.0, 8.0, text)], SubtitleStyle(max_line_width=width, max_lines=1))
        for line in _lines(cues):
            assert line[0] not in CLOSING and line[-1] not in OPENING, line
        assert "《三体》" in "".join(_lines(cues))  # book-title marks kept


def test_keep_punctuation_option():
    text = "你好，世界。今天天气很好，我们出去走走吧。"
    cues = make_cues([Segment(0.0, 5.0, text)], SubtitleStyle(keep_punctuation=True))
    assert "".join(_lines(cues)) == text
    cues = make_cues([Segment(0.0, 5.0, "你好, world. 今天?")], SubtitleStyle(keep_punctuation=True))
    assert cues[0].text == "你好， world. 今天？"  # half-width marks after Han characters become full-width


def test_cuts_follow_word_times_and_pauses():
    # "今天天气很好" spoken 0-1.2 s, a 0.8 s pause, then "我们出去玩吧" 2.0-3.2 s: one segment,
    # the pause is the cut (rather than the full line 今天天气很好我们); cue times are the words'
    first = _even_words("今天天气很好", 0.0, 1.2, [2, 2, 1, 1])
    second = _even_words("我们出去玩吧", 2.0, 3.2, [2, 2, 1, 1])
    segment = Segment(0.0, 3.2, "今天天气很好我们出去玩吧", words=first + second)
    assert [cue.text for cue in make_cues([segment], SubtitleStyle(max_line_width=8))] == ["今天天气很好\n我们出去玩吧"]
    cues = make_cues([segment], SubtitleStyle(max_line_width=8, max_lines=1))
    assert [cue.text for cue in cues] == ["今天天气很好", "我们出去玩吧"]
    assert (cues[0].start, cues[0].end, cues[1].start, cues[1].end) == (0.0, 1.2, 2.0, 3.2)
    # a pause of a second or more always ends a cue, even when the text would fit
    long_pause = Segment(0.0, 4.0, "好的谢谢", words=_words([("好的", 0.0, 0.6), ("谢谢", 2.0, 2.6)]))
    assert [cue.text for cue in make_cues([long_pause])] == ["好的", "谢谢"]
    # a multi-character word is cut only when nothing else fits
    words = _even_words("人工智能改变世界", 0.0, 2.0, [4, 2, 2])
    lines = _lines(make_cues([Segment(0.0, 2.0, "人工智能改变世界", words=words)], SubtitleStyle(max_line_width=6)))
    assert lines[0] == "人工智能"


def test_duration_limits():
    # 30 characters spoken over 20 s: no cue longer than 7 s
    text = "这是一个非常非常慢的句子我们一个字一个字地读出来看看字幕怎么切"
    cues = make_cues([Segment(0.0, 20.0, text)])
    assert all(cue.end - cue.start <= 7.0 + 1e-9 for cue in cues) and len(cues) >= 3
    # a 0.2 s word gets 5/6 s from the silence after it, but never overlaps the next cue
    cues = make_cues([Segment(1.0, 1.2, "好"), Segment(5.0, 6.0, "我们走吧")])
    assert cues[0].end == pytest.approx(1.0 + 5 / 6)
    cues = make_cues([Segment(1.0, 1.2, "好"), Segment(1.5, 3.0, "我们走吧")], SubtitleStyle(max_line_width=2))
    assert cues[1].start - cues[0].end == pytest.approx(MIN_GAP_S)  # two frames apart, as Netflix asks
    assert cues[0].end - cues[0].start == pytest.approx(5 / 6)  # taken from the silence before
    # cues that touch get two frames between them, taken from the first
    cues = make_cues([Segment(1.0, 2.2, "好的好的"), Segment(2.2, 3.0, "我们走吧")], SubtitleStyle(4, max_lines=1))
    assert (cues[0].end, cues[1].start) == (pytest.approx(2.2 - MIN_GAP_S), 2.2)


def test_converted_text_keeps_the_words_times():
    # words in the model's Simplified; the text converted to Taiwan's standard, where
    # s2twp turns U盘 into 隨身碟 (one character more)
    simplified = "插上U盘然后拔出来"
    words = _even_words(simplified, 3.0, 5.25)
    text = convert_script(simplified, "taiwan")
    assert len(text) == len(simplified) + 1 and "隨身碟" in text
    cues = make_cues([Segment(3.0, 5.25, text, words=words)], SubtitleStyle(max_line_width=5, max_lines=1))
    assert [cue.text for cue in cues] == ["插上隨身碟", "然後拔出來"]
    assert cues[0].start == 3.0 and cues[-1].end == 5.25
    assert 3.0 + 4 * 0.25 <= cues[1].start <= 3.0 + 5 * 0.25  # 然 is the 5th of 9 characters spoken
    # character for character conversions keep each character's own time
    text = convert_script(simplified, "traditional")
    words = _even_words(simplified, 3.0, 7.5)
    cues = make_cues([Segment(3.0, 7.5, text, words=words)], SubtitleStyle(max_line_width=3, max_lines=1))
    assert len(cues) == 3 and "".join(c.text for c in cues) == text
    assert [c.start for c in cues] == [3.0 + text.index(c.text) * 0.5 for c in cues]


def test_latin_style_for_english():
    text = ("This is a fairly long English sentence, spoken quickly, that needs to be wrapped "
            "into lines of at most forty-two characters.")
    cues = make_cues([Segment(0.0, 6.0, text)])
    assert all(len(line) <= 42 for line in _lines(cues))
    assert " ".join(_lines(cues)) == text  # punctuation and spaces kept


def test_karaoke_vtt_tags_are_increasing_and_inside_their_cue():
    text = "我们今天学习Python编程"
    segment = Segment(0.0, 3.0, text, words=_even_words(text, 0.0, 3.0, [2, 2, 2, 1, 5, 2]))
    vtt = to_karaoke_vtt([segment])
    # a tag before each character (the words' times shared out) and before each Latin word, whole
    assert "<00:00:00.500>今<00:00:00.750>天" in vtt and "<00:00:01.500>Python<00:00:02.500>编" in vtt
    for cue in re.findall(r"(\S+) --> (\S+)\n(.+?)(?:\n\n|\n?$)", vtt, re.S):
        start, end, body = cue
        tags = re.findall(r"<(\d\d:\d\d:\d\d\.\d{3})>", body)
        assert tags == sorted(tags) and len(set(tags)) == len(tags)
        assert all(start < tag < end for tag in tags)


def test_json_has_words_and_utf8():
    words = (Word(0.0, 0.5, "你", 0.9), Word(0.5, 1.0, "好", 0.8))
    segment = Segment(0.0, 1.0, "你好", no_speech_prob=0.01, words=words)
    text = to_json([segment, Segment(1.0, 2.0, "世界")])
    assert "你好" in text  # not \\u escapes
    data = json.loads(text)
    assert data["segments"][0]["words"][1] == {"start": 0.5, "end": 1.0, "word": "好", "probability": 0.8}
    assert data["segments"][1]["words"] == []


def test_bilingual_shares_each_translation_over_its_cues():
    chinese = [Segment(0.0, 6.0, "我们今天讨论人工智能，它会不会改变我们每个人的工作方式？"),
               Segment(6.5, 8.0, "我不知道。")]
    english = [Segment(0.0, 5.5, "Today we discuss AI: will it change the way each of us works?"),
               Segment(5.5, 8.0, "I don't know.")]
    cues = bilingual_cues(chinese, english)
    assert len(cues) >= 3
    for cue in cues:
        lines = cue.text.split("\n")
        assert re.search("[\u4e00-\u9fff]", lines[0]) and text_width(lines[0]) <= 16
        assert all(not re.search("[\u4e00-\u9fff]", line) for line in lines[1:])
    assert " ".join(c.translation for c in cues if c.translation) == " ".join(s.text for s in english)
    assert cues[-1].translation == "I don't know."
    # a translated segment that owns no cue joins the one it overlaps most
    cues = bilingual_cues([Segment(0.0, 4.0, "好的好的")], [Segment(0.0, 3.0, "OK,"), Segment(3.0, 4.0, "OK.")])
    assert [c.translation for c in cues] == ["OK, OK."]
    assert to_bilingual_srt(chinese, english).startswith("1\n00:00:00,000 --> ")


def test_write_files_and_formats(tmp_path):
    paths = write_all(SEGMENTS, tmp_path, stem="talk")
    assert {p.name for p in paths.values()} == {"talk.srt", "talk.vtt", "talk.txt"}
    assert paths["srt"].read_text(encoding="utf-8") == to_srt(SEGMENTS)
    paths = write_all(SEGMENTS, tmp_path, "talk", FORMATS, translation=[Segment(0.0, 2.5, "Hello, world")])
    assert sorted(p.name for p in paths.values()) == sorted(f"talk{SUFFIXES[f]}" for f in FORMATS)
    assert format_of(paths["karaoke"]) == "karaoke" and format_of(paths["bilingual"]) == "bilingual"
    assert write_subtitles(SEGMENTS, tmp_path / "x.VTT").read_text(encoding="utf-8") == to_vtt(SEGMENTS)
    with pytest.raises(ValueError, match="unknown subtitle format"):
        write_subtitles(SEGMENTS, tmp_path / "x.ass")
    with pytest.raises(ValueError, match="translation"):
        write_all(SEGMENTS, tmp_path, "talk", ["bilingual"])
    with pytest.raises(ValueError):
        SubtitleStyle(max_line_width=0)


# -- a real transcription ------------------------------------------------------------------
#
# The layout is checked on real whisper-base output recorded once (tests/data/, with the
# script that made it): what a decoder writes changes with the CPU's int8 arithmetic and
# library releases, and a test of the layout must not change with it. One test runs the
# real model end to end and checks only what holds whatever it writes.

DATA = Path(__file__).resolve().parent / "data"
CLIPS = ["zhmd_spark_prompt_audio.mp3", "zhmd_moss_single_reference.mp3"]  # 31 s, ads and talk


def _recorded(items: list[dict]) -> list[Segment]:
    return [Segment(s["start"], s["end"], s["text"], s["no_speech_prob"],
                    tuple(Word(w["start"], w["end"], w["word"], w["probability"]) for w in s["words"]))
            for s in items]


@pytest.fixture(scope="module")
def real():
    """whisper-base (CTranslate2 int8, the engine's ct2 backend, word timestamps) on two
    zh-multi-dev clips joined, prompted to write punctuation so that the punctuation rules
    meet real output; and its translation into English, for bilingual files. Recorded by
    tests/data/record_real_transcription.py (its header says with what)."""
    data = json.loads((DATA / "real_transcription.json").read_text(encoding="utf-8"))
    segments, translation = _recorded(data["segments"]), _recorded(data["translation"])
    # what the tests below need of the recording: words, pause punctuation, Latin or digits,
    # and a segment too long for one cue of two lines
    assert segments and all(s.words for s in segments) and translation
    assert set("".join(s.text for s in segments)) & set(PAUSES)
    assert re.search("[0-9A-Za-z]", "".join(s.text for s in segments))
    assert max(text_width(s.text) for s in segments) > 2 * CHINESE_STYLE.max_line_width
    return segments, translation


def _ffmpeg(*args: str) -> subprocess.CompletedProcess:
    import imageio_ffmpeg

    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                          capture_output=True, text=True, encoding="utf-8")


def _without_pauses(text: str) -> str:
    """What the Chinese layout shows of ``text``, spaces aside: the pause punctuation goes
    (a space inside a line, nothing at its end), except ``, . :`` between two letters or
    digits, which belong to a number or a word (9,999  3.5  12:30); ? and ! are shown
    full-width."""
    text = re.sub(r"(?<![0-9A-Za-z])[,.:]|[,.:](?![0-9A-Za-z])", "", text)
    return re.sub(r"[\s\u3000，。、；：;]", "", text).translate(str.maketrans("?!", "？！"))


def test_without_pauses():
    assert _without_pauses("你好, 世界。价格是9,999元，涨了3.5%: 好吗?") == "你好世界价格是9,999元涨了3.5%好吗？"
    assert _pauses_shown("价格是9,999元 涨了3.5%") == set() and _pauses_shown("好, 12:30.") == {",", "."}


def test_real_subtitles_follow_the_chinese_rules(real, tmp_path):
    segments, translation = real
    paths = write_all(segments, tmp_path, "talk", FORMATS, translation=translation)
    cues = list(srt.parse(paths["srt"].read_text(encoding="utf-8")))
    char_starts = {round(w.start + k * (w.end - w.start) / len(w.word.strip()), 3)
                   for s in segments for w in s.words for k in range(len(w.word.strip()))}
    for cue, following in zip(cues, cues[1:] + [None]):
        lines = cue.content.split("\n")
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert len(lines) <= 2 and all(text_width(line) <= 16 for line in lines), cue.content
        assert all(line[0] not in CLOSING for line in lines) and not _pauses_shown(cue.content)
        assert not re.search("[\u4e00-\u9fff] [\u4e00-\u9fff]", cue.content)  # whisperX issue 597
        assert end - start <= 7.0 + 1e-3
        if following is not None:
            assert end <= following.start.total_seconds()
            gap = following.start.total_seconds() - end
            assert gap >= MIN_GAP_S - 1e-3  # Netflix: two frames between cues
            assert end - start >= 5 / 6 - 1e-3 or gap <= MIN_GAP_S + 1e-3
        assert start in char_starts or end - start == pytest.approx(5 / 6, abs=2e-3)  # cut at a character's time
    # the long segment was cut into several cues
    longest = max(segments, key=lambda s: text_width(s.text))
    assert sum(longest.start <= c.start.total_seconds() < longest.end for c in cues) >= 2
    # every character the model wrote is shown, in order, less the pause punctuation
    shown = _without_pauses("".join(c.content for c in cues))
    assert shown == _without_pauses("".join(s.text for s in segments))

    # WebVTT, karaoke WebVTT: webvtt-py reads the same cues
    for fmt in ("vtt", "karaoke"):
        captions = webvtt.read(str(paths[fmt]))
        assert [(c.start, c.end) for c in captions] == [(format_timestamp(c.start.total_seconds()),
                                                         format_timestamp(c.end.total_seconds())) for c in cues]
        assert [c.text for c in captions] == [c.content for c in cues]
    # karaoke: the tags are characters' times, increasing, strictly inside their cue
    karaoke = paths["karaoke"].read_text(encoding="utf-8")
    blocks = re.findall(r"(\S+) --> (\S+)\n(.+?)(?:\n\n|\n?$)", karaoke, re.S)
    assert len(blocks) == len(cues)
    tagged = 0
    for start, end, body in blocks:
        tags = re.findall(r"<(\d\d:\d\d:\d\d\.\d{3})>", body)
        assert tags == sorted(tags) and len(set(tags)) == len(tags) and all(start < tag < end for tag in tags)
        seconds = [sum(float(x) * 60 ** k for k, x in enumerate(reversed(tag.split(":")))) for tag in tags]
        assert all(any(abs(t - c) <= 0.0015 for c in char_starts) for t in seconds), body
        tagged += bool(tags)
    assert tagged, "no karaoke tags at all"

    # ffmpeg reads every subtitle file: converted to ASS it has one dialogue per cue
    bilingual = list(srt.parse(paths["bilingual"].read_text(encoding="utf-8")))
    for fmt in ("srt", "vtt", "karaoke", "bilingual"):
        out = tmp_path / f"{fmt}.ass"
        result = _ffmpeg("-i", str(paths[fmt]), str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        dialogues = [line for line in out.read_text(encoding="utf-8").splitlines() if line.startswith("Dialogue:")]
        assert len(dialogues) == len(bilingual if fmt == "bilingual" else cues), fmt

    # JSON: the words with their times, inside their segments
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert len(data["segments"]) == len(segments)
    for segment in data["segments"]:
        assert segment["words"] and "".join(w["word"] for w in segment["words"]).strip()
        assert all(segment["start"] - 0.01 <= w["start"] <= w["end"] <= segment["end"] + 0.01 for w in segment["words"])


def test_real_bilingual_subtitles(real, tmp_path):
    segments, translation = real
    path = write_subtitles(segments, tmp_path / "talk.bilingual.srt", translation=translation)
    cues = list(srt.parse(path.read_text(encoding="utf-8")))
    chinese = make_cues(segments, SubtitleStyle(max_lines=1))
    assert [c.content.split("\n")[0] for c in cues] == [c.text for c in chinese]  # Chinese line first, times from it
    assert [c.start.total_seconds() for c in cues] == pytest.approx([c.start for c in chinese], abs=1e-3)
    english = " ".join(line for c in cues for line in c.content.split("\n")[1:])
    assert english.split() == " ".join(s.text for s in translation).split()  # all of it, in order


@pytest.mark.slow
def test_real_model_end_to_end(whisper_base_ct2, zh_cv_mini, tmp_path):
    """The real whisper-base through the engine into every subtitle format: what holds
    whatever it writes (the files parse, every cue keeps the rules, the text is Chinese,
    times run forward). The layout's details are checked on the recording above."""
    import numpy as np

    from whisper_zh.audio import SAMPLE_RATE
    from whisper_zh.media import load_audio
    from whisper_zh.serve.types import TranscribeOptions
    from whisper_zh.serve.engine import Transcriber

    clips = zh_cv_mini.parent / "zh-multi-dev" / "clips"
    gap = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([part for name in CLIPS for part in (load_audio(clips / name), gap)])
    engine = Transcriber(str(whisper_base_ct2), backend="ct2", device="cpu")
    segments = engine.transcribe(audio, TranscribeOptions(prompt="以下是普通话的句子。")).segments
    duration = len(audio) / SAMPLE_RATE
    assert segments and all(0.0 <= s.start <= s.end <= duration + 1e-6 for s in segments)
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    text = "".join(s.text for s in segments)
    assert len(re.findall("[\u4e00-\u9fff]", text)) >= len(re.sub(r"\s", "", text)) / 2, text

    paths = write_all(segments, tmp_path, "talk", ("srt", "vtt", "karaoke", "json"))
    cues = list(srt.parse(paths["srt"].read_text(encoding="utf-8")))
    assert cues
    _check_chinese_rules([type("Cue", (), {"text": c.content, "start": c.start.total_seconds(),
                                           "end": c.end.total_seconds()}) for c in cues])
    assert all(c.start < c.end for c in cues)
    for fmt in ("vtt", "karaoke"):
        assert [c.text for c in webvtt.read(str(paths[fmt]))] == [c.content for c in cues]
    result = _ffmpeg("-i", str(paths["srt"]), str(tmp_path / "talk.ass"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads(paths["json"].read_text(encoding="utf-8"))["segments"]) == len(segments)


def test_markup_and_arrows_in_the_text_are_escaped():
    segment = Segment(0.0, 2.0, "A<B & C --> D")
    assert "A&lt;B &amp; C --&gt; D" in to_vtt([segment])
    karaoke = to_karaoke_vtt([segment]).split("\n", 3)[3]
    assert "&lt;B" in karaoke and "<B" not in karaoke and "-->" not in karaoke
    assert "C -> D" in to_srt([segment]) and "-->" not in to_srt([segment]).split("\n", 2)[2]
    captions = webvtt.from_string(to_vtt([segment])).captions
    assert len(captions) == 1 and html.unescape(captions[0].text) == "A<B & C --> D"


# -- speakers -------------------------------------------------------------------------------

DIALOG = [
    Segment(0.0, 2.0, "你好，今天天气怎么样？", speaker="S1", words=_even_words("你好今天天气怎么样", 0.0, 2.0)),
    Segment(2.0, 3.5, "挺好的。", speaker="S2"),
    Segment(3.5, 5.0, "我们出去走走吧。", speaker="S2"),
    Segment(5.2, 6.0, "好啊。", speaker="S1"),
]


def test_speakers_in_every_format():
    srt = to_srt(DIALOG)
    cues = [block.split("\n")[2:] for block in srt.strip().split("\n\n")]
    assert all(re.match(r"S[12]：", lines[0]) for lines in cues)
    assert [lines[0][:3] for lines in cues] == ["S1：", "S2：", "S1："]  # S2's two segments share a cue

    vtt = to_vtt(DIALOG)
    assert vtt.count("<v S1>S1：") == 2 and vtt.count("<v S2>S2：") == 1
    karaoke = to_karaoke_vtt(DIALOG)
    assert karaoke.count("<v S1>S1：") == 2 and karaoke.count("<v S2>S2：") == 1

    data = json.loads(to_json(DIALOG))
    assert [s["speaker"] for s in data["segments"]] == ["S1", "S2", "S2", "S1"]
    assert {w["speaker"] for w in data["segments"][0]["words"]} == {"S1"}

    assert to_txt(DIALOG) == "S1：你好，今天天气怎么样？\n\nS2：挺好的。\n我们出去走走吧。\n\nS1：好啊。\n"
    english = [Segment(0.0, 2.0, "Hello there.", speaker="S1"), Segment(2.5, 4.0, "Hi.", speaker="S2")]
    assert to_txt(english) == "S1: Hello there.\n\nS2: Hi.\n"
    assert to_srt(english).split("\n")[2] == "S1: Hello there."


def test_no_speaker_fields_without_speakers():
    assert "speaker" not in to_json(SEGMENTS) and "<v " not in to_vtt(SEGMENTS)


def test_a_cue_never_spans_a_change_of_speaker():
    # short turns that the layout would otherwise gladly put in one cue
    turns = [Segment(k * 1.0, k * 1.0 + 0.9, "好的" if k % 2 else "是吗", speaker=f"S{k % 2 + 1}") for k in range(8)]
    cues = make_cues(turns)
    assert len(cues) == 8
    for cue in cues:
        spoken = [t for t in turns if t.start < cue.end and t.end > cue.start and
                  min(t.end, cue.end) - max(t.start, cue.start) > 0.2]
        assert {t.speaker for t in spoken} == {cue.speaker}
        assert cue.text.startswith(cue.speaker + "：")
    for style in (CHINESE_STYLE, SEGMENT_STYLE, LATIN_STYLE):
        assert [c.speaker for c in make_cues(turns, style)] == [t.speaker for t in turns]
    # the label leaves the first line no wider than a line
    long = [Segment(0.0, 6.0, "我们今天讨论人工智能，它会不会改变我们每个人的工作方式？", speaker="S12")]
    for cue in make_cues(long):
        assert all(text_width(line) <= 16 for line in cue.text.split("\n"))
