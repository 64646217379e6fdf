"""Live transcription (whisper_zh.streaming and the app's Live tab handlers).

The agreement and trimming logic is checked exactly against a scripted engine whose
"speech" is known; then real Mandarin clips are streamed in small pieces through the
real whisper-base (CTranslate2 int8, as on the Space) -- through the class, and through
the app's handlers the way Gradio calls them, 48 kHz int16 pieces from the browser.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from _checks import is_chinese
from _ct2_base import joined
from _media_helpers import plain_clips
from whisper_zh.audio import SAMPLE_RATE as SR
from whisper_zh.media import load_media
from whisper_zh.serve.live import LiveTranscriber, _aligned_prefix, _units
from whisper_zh.media import StreamResampler
from whisper_zh.text import normalize
from whisper_zh.serve.types import Segment, TranscribeOptions, Word
from whisper_zh.serve.engine import Transcriber

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# -- the algorithm, against a scripted engine -------------------------------------------

SPOKEN = ("今天天气很好我们去公园散步吧路上人很多大家都很开心晚上回家吃饭然后看书睡觉明天还要上班"
          "物业公司把西门给锁死了观察中国新增人口曲线会发现自动驾驶汽车的实现越来越多的汽车公司开始思考")
CHAR_S = 0.25  # the scripted speaker says one character every 0.25 s
SENTENCE = 8  # characters per segment


def stream_clock(seconds: float) -> np.ndarray:
    """Audio whose every sample holds its own stream time (scaled into [-1, 1]), so the
    scripted engine can tell which stretch of the stream a buffer is."""
    return (np.arange(int(seconds * SR), dtype=np.float64) / SR / 1000.0).astype(np.float32)


class ScriptedEngine:
    """Hears SPOKEN: the characters whose time lies inside the buffer, in segments of
    SENTENCE characters; the character being spoken at the buffer's end is misheard
    (the last one or two characters of any hypothesis are unreliable in real Whisper
    too). ``stubborn=True`` mishears a different character on every call, so no two
    hypotheses ever agree."""

    def __init__(self, stubborn: bool = False):
        self.options = TranscribeOptions()
        self.stubborn = stubborn
        self.calls: list[tuple[float, float]] = []  # (buffer start, seconds) per decode
        self.prompts: list[str] = []  # options.prompt per decode

    def iter_segments(self, audio, options=None, progress=None):
        start = round(float(audio[0]) * 1000.0, 3)
        end = start + len(audio) / SR
        self.calls.append((start, len(audio) / SR))
        self.prompts.append((options or self.options).prompt)
        first, last = int(round(start / CHAR_S)), min(int(end / CHAR_S), len(SPOKEN))
        heard = list(SPOKEN[first:last])
        if heard and last < len(SPOKEN):
            heard[-1] = "错"
        if self.stubborn:
            heard = [SPOKEN[(i + len(self.calls)) % len(SPOKEN)] for i in range(first, last)]
        segments = []
        for i in range(first, last, SENTENCE):
            j = min(i + SENTENCE, last)
            text = "".join(heard[i - first:j - first])
            segments.append(Segment(start=i * CHAR_S - start, end=j * CHAR_S - start, text=text))
        return iter(segments)


def feed_all(live: LiveTranscriber, audio: np.ndarray, piece_s: float = 0.5, sample_rate: int = SR):
    updates = []
    step = int(piece_s * sample_rate)
    for i in range(0, len(audio), step):
        updates.append(live.feed(audio[i:i + step], sample_rate))
    return updates


def test_local_agreement_confirms_only_what_two_hypotheses_share():
    engine = ScriptedEngine()
    live = LiveTranscriber(engine, min_chunk_s=1.0, trim_s=4.0, max_buffer_s=8.0, keep_up=False)
    updates = feed_all(live, stream_clock(len(SPOKEN) * CHAR_S))
    confirmed = [u.confirmed_text for u in updates]
    assert all(b.startswith(a) for a, b in zip(confirmed, confirmed[1:])), "confirmed text changed"
    assert "错" not in confirmed[-1]  # a misheard last character is never confirmed
    assert all(SPOKEN.startswith(c) for c in confirmed)
    # text is confirmed one decode after it is first heard: it trails the speaker by ~2 s
    for u in updates:
        if u.decoded_s:
            assert len(u.confirmed_text) >= (u.audio_s - 2.5) / CHAR_S - 1, (u.audio_s, u.confirmed_text)
    # each decode reads the unconfirmed tail and a little context, never the whole stream
    assert max(seconds for _, seconds in engine.calls) <= 4.0 + 1.0
    assert engine.calls[-1][0] > len(SPOKEN) * CHAR_S / 2
    segments = live.finish()
    assert "".join(s.text for s in segments) == SPOKEN
    # segments end where the engine's did, at confirmed sentence ends, with their times
    assert [s.text for s in segments][:3] == [SPOKEN[:8], SPOKEN[8:16], SPOKEN[16:24]]
    assert segments[1].start == pytest.approx(8 * CHAR_S, abs=0.01)
    assert segments[1].end == pytest.approx(16 * CHAR_S, abs=0.01)
    assert all(len(s.words) == len(s.text) for s in segments)
    with pytest.raises(RuntimeError):
        live.feed(np.zeros(100, np.float32))


def test_buffer_stays_bounded_when_hypotheses_never_agree():
    engine = ScriptedEngine(stubborn=True)
    live = LiveTranscriber(engine, min_chunk_s=1.0, trim_s=4.0, max_buffer_s=6.0, keep_up=False)
    updates = feed_all(live, stream_clock(len(SPOKEN) * CHAR_S))
    assert max(seconds for _, seconds in engine.calls) <= 6.0 + 1.0
    # forced confirmation still moves the text forward, by whole segments
    assert len(updates[-1].confirmed_text) >= SENTENCE
    assert len("".join(s.text for s in live.finish())) >= len(SPOKEN) - SENTENCE


def test_each_decode_is_prompted_with_the_confirmed_text_before_its_buffer():
    engine = ScriptedEngine()
    options = TranscribeOptions(prompt="以下是普通话。", hotwords="精武 陈真")
    live = LiveTranscriber(engine, options, min_chunk_s=1.0, trim_s=4.0, max_buffer_s=8.0, context_chars=10,
                           keep_up=False)
    feed_all(live, stream_clock(len(SPOKEN) * CHAR_S))
    live.finish()
    cut = [(start, prompt) for (start, _), prompt in zip(engine.calls, engine.prompts) if start > 0]
    assert len(cut) > 10
    for start, prompt in cut:
        before = SPOKEN[:int(round(start / CHAR_S))]  # everything before a cut is confirmed
        assert prompt == "以下是普通话。 " + before[-10:], (start, prompt)
    # until the first cut, only the options' own prompt; the hotwords stay where they were
    assert engine.prompts[0] == "以下是普通话。" and live.options.hotwords == "精武 陈真"
    # context_chars 0: every decode gets the options' prompt alone
    engine = ScriptedEngine()
    feed_all(LiveTranscriber(engine, options, min_chunk_s=1.0, trim_s=4.0, max_buffer_s=8.0, context_chars=0,
                             keep_up=False), stream_clock(len(SPOKEN) * CHAR_S))
    assert set(engine.prompts) == {"以下是普通话。"}


def test_live_tab_takes_the_pages_script_and_hotwords():
    from whisper_zh.serve.app import Handlers
    from whisper_zh.serve.settings import ServeSettings

    handlers = Handlers(ServeSettings(), transcriber=ScriptedEngine())
    state, status, _ = handlers.live_feed(None, (SR, np.zeros(SR // 10, np.int16)), "taiwan", " 精武 陈真 ")
    assert state.options.script == "taiwan" and state.options.hotwords == "精武 陈真"
    state, _, _ = handlers.live_feed(None, (SR, np.zeros(SR // 10, np.int16)), "simplified", "")
    assert state.options.hotwords is None


def test_units_are_characters_and_whole_latin_words():
    words = (Word(0.0, 0.4, "我"), Word(0.4, 0.8, "用"), Word(0.8, 1.6, " iPhone"), Word(1.6, 2.4, " 3.5"),
             Word(2.4, 2.8, "年，"), Word(2.8, 3.0, "好"))
    segment = Segment(start=0.0, end=3.0, text="我用 iPhone 3.5年，好", words=words)
    units = _units(segment, offset=10.0, language="zh")
    assert [(u.text, u.key) for u in units] == [("我", "我"), ("用", "用"), (" iPhone", "iphone"),
                                                (" 3.5", "35"), ("年，", "年"), ("好", "好")]
    assert [(u.start, u.end) for u in units] == [(10.0, 10.4), (10.4, 10.8), (10.8, 11.6), (11.6, 12.4),
                                                 (12.4, 12.8), (12.8, 13.0)]  # the aligned words' times
    assert [u.ends_segment for u in units] == [False] * 5 + [True]
    # without word times (or when they spell something else), spread evenly over the segment
    plain = _units(Segment(start=1.0, end=3.0, text="你好，世界"), offset=0.0, language="zh")
    assert [(u.text, u.start, u.end) for u in plain] == [("你", 1.0, 1.4), ("好，", 1.4, 1.8), ("世", 2.2, 2.6),
                                                         ("界", 2.6, 3.0)]


def test_confirmed_text_is_found_again_in_a_changed_hypothesis():
    hypothesis = _units(Segment(start=0.0, end=3.0, text="今天天汽很好我们"), offset=0.0, language="zh")
    # one character heard differently this time: the confirmed part still ends after 好
    assert _aligned_prefix(list("今天天气很好"), hypothesis, done_end=2.2) == (6, [(0, 0), (1, 1), (2, 2), (3, 3),
                                                                               (4, 4), (5, 5)])
    prefix, pairs = _aligned_prefix(list("今天很好"), hypothesis, done_end=2.2)  # 天 heard twice now
    assert prefix == 6 and [(i, j) for i, j in pairs if i != 1] == [(0, 0), (2, 4), (3, 5)]
    assert _aligned_prefix([], hypothesis, done_end=0.0) == (0, [])


class Deaf:
    """An engine that never hears anything."""

    options = TranscribeOptions()

    def __init__(self):
        self.reads: list[float] = []

    def iter_segments(self, audio, options=None):
        self.reads.append(len(audio) / SR)
        return iter(())


def test_silence_is_dropped_from_the_buffer():
    engine = Deaf()
    live = LiveTranscriber(engine, min_chunk_s=1.0, trim_s=4.0, max_buffer_s=8.0, keep_up=False)
    updates = feed_all(live, np.zeros(30 * SR, np.float32))
    assert len(engine.reads) == 30 and max(engine.reads) <= 4.0 + 1.0
    assert updates[-1].text == "" and live.finish() == []


def test_resampler_streams_without_seams():
    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    resampler = StreamResampler(48000)
    pieces = [resampler(tone[i:i + 4800]) for i in range(0, len(tone), 4800)] + [resampler(tone[:0], last=True)]
    streamed = np.concatenate(pieces)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(streamed)) / SR)
    assert streamed.dtype == np.float32 and abs(len(streamed) - 2 * SR) <= 1
    # away from the very start (the filter's delay), it is the same tone at 16 kHz
    assert np.max(np.abs(streamed[800:-800] - expected[800:-800])) < 0.01
    stereo = np.stack([tone, tone], axis=1)
    assert np.allclose(StreamResampler(SR)(stereo[:SR]), tone[:SR] / 32768.0)


# -- real speech, whisper-base ----------------------------------------------------------

@pytest.fixture(scope="module")
def engine(whisper_base_ct2) -> Transcriber:
    return Transcriber(str(whisper_base_ct2), backend="ct2", device="cpu")


@pytest.fixture(scope="module")
def clips(zh_cv_mini) -> list[tuple[np.ndarray, str]]:
    return [(load_media(zh_cv_mini / "clips" / row["path"]), row["sentence"]) for row in plain_clips(zh_cv_mini, 3)]


class Recording:
    """The engine, recording how much audio each decode reads."""

    def __init__(self, inner: Transcriber):
        self.inner, self.options, self.reads = inner, inner.options, []

    def iter_segments(self, audio, options=None, **kwargs):
        self.reads.append(len(audio) / SR)
        return self.inner.iter_segments(audio, options, **kwargs)


@pytest.mark.slow
def test_live_transcriber_on_real_speech(engine, clips):
    """The mechanics on real output; what holds whatever the model writes. (How well live
    transcription does is measured by bench/live.py: it can lose a sentence now and then.)"""
    audio = joined([a for a, _ in clips[:3]])
    recording = Recording(engine)
    # greedy and a decode every 2.5 s of audio: the same mechanics at a third of the cost
    live = LiveTranscriber(recording, TranscribeOptions(beam_size=1), min_chunk_s=2.5, trim_s=4.0,
                           max_buffer_s=8.0, keep_up=False)
    updates = feed_all(live, audio, piece_s=0.5)
    confirmed = [u.confirmed_text for u in updates]
    assert all(b.startswith(a) for a, b in zip(confirmed, confirmed[1:])), "confirmed text changed"
    # The first words are confirmed while the speaker goes on: decodes at 2.5, 5, 7.5 and
    # 10 s; two that agree confirm text at 5 s, and the 10 s one reads more than
    # max_buffer_s, which confirms what it heard whether or not the decodes agreed.
    first = next(u.audio_s for u in updates if u.confirmed_text)
    assert first <= 10.0 + 1e-6 and len(audio) / SR > 12.0
    assert max(recording.reads) <= 8.0 + 2.5 + 0.5
    whole = len(audio) // (SR // 2)  # the whole 0.5 s pieces: a decode after every fifth
    assert [u.decoded_s > 0 for u in updates[:whole]] == [(k + 1) % 5 == 0 for k in range(whole)]
    segments = live.finish()
    text = "".join(s.text for s in segments)
    assert is_chinese(text), text
    assert normalize(text).startswith(normalize(confirmed[-1]))  # what was confirmed stays
    assert all(a.end <= b.start + 0.05 for a, b in zip(segments, segments[1:]))
    assert segments[-1].end <= len(audio) / SR + 0.05


@pytest.mark.slow
def test_live_tab_handlers(engine, clips):
    import soxr
    import srt
    import webvtt

    from whisper_zh.serve.app import Handlers
    from whisper_zh.serve.settings import ServeSettings
    from whisper_zh.text import to_traditional

    audio = joined([a for a, _ in clips[:2]])
    # what the browser sends: 48 kHz int16, in 0.5 s pieces
    browser = (np.clip(soxr.resample(audio, SR, 48000), -1, 1) * 32767).astype(np.int16)
    handlers = Handlers(ServeSettings(), transcriber=engine)
    # The page's first event (no audio yet) starts the recording's LiveTranscriber. Live, it
    # waits as long as a decode took before decoding again (keep_up), so what it shows
    # depends on the machine's load; here it decodes every min_chunk_s of audio instead.
    state, status, text = handlers.live_feed(None, None, "traditional")
    assert isinstance(state, LiveTranscriber) and "Listening" in status and text == ""
    state.keep_up = False
    texts = []
    for i in range(0, len(browser), 24000):
        state, status, text = handlers.live_feed(state, (48000, browser[i:i + 24000]), "traditional")
        texts.append(text)
    assert "Listening" in status and any(texts[:len(texts) // 2])  # text while the person speaks
    live = state
    finishing = handlers.live_finish(state)
    state, status, text, rows, files, _ = next(finishing)
    try:
        assert state is None and "of live audio" in status
        assert live.audio_s == pytest.approx(len(audio) / SR, abs=0.002)  # resampled, nothing lost
        assert text == to_traditional(text)  # the script chosen when the recording started
        assert is_chinese(text), text
        srt_file, vtt_file, txt_file, json_file = (Path(f) for f in files)
        cues = list(srt.parse(srt_file.read_text(encoding="utf-8")))
        # the same subtitles as an upload: Chinese lines laid out from the same segments
        assert cues and normalize("".join(c.content for c in cues)) == normalize(text)
        assert [c.text for c in webvtt.read(str(vtt_file))] == [c.content for c in cues]
        assert txt_file.read_text(encoding="utf-8").split() == [row[2] for row in rows]
    finally:
        finishing.close()
    assert not srt_file.exists()  # the request's folder is gone once Gradio has the files
    assert next(handlers.live_finish(None))[1] == "Nothing was recorded."


class _NoEngine:
    """A live transcriber that is never asked to decode (pieces under MIN_CHUNK_S)."""

    options = TranscribeOptions()

    def iter_segments(self, *args, **kwargs):
        raise AssertionError("no decode expected")


@pytest.mark.parametrize("piece, rate, error, message", [
    (np.zeros(40000, np.int16), 1, "AudioDecodeError", "1 Hz is not supported"),
    (np.zeros(100, np.int16), 0, "AudioDecodeError", "0 Hz is not supported"),
    (np.zeros(100, np.int16), -16000, "AudioDecodeError", "-16000 Hz"),
    (np.zeros(100, np.int16), 1e9, "AudioDecodeError", "1e\\+09 Hz"),
    (np.zeros(100, np.int16), 2**31, "AudioDecodeError", "Hz is not supported"),
    (np.zeros(100, np.int16), float("nan"), "AudioDecodeError", "nan Hz"),
    (np.zeros(100, np.int16), "16000", "AudioDecodeError", "must be a number"),
    (np.zeros((2, 48000), np.int16), 48000, "AudioDecodeError", r"shape \(2, 48000\)"),
    (np.zeros((10, 2, 2), np.float32), 48000, "AudioDecodeError", "shape"),
    (np.array([object()] * 10), 16000, "AudioDecodeError", "integers or floats"),
    (np.zeros(600 * 16000, np.int16), 16000, "MediaLimitError", "600.0 s: pieces may be at most 5 s"),
], ids=["1Hz", "0Hz", "negative", "1e9", "2**31", "nan-rate", "text-rate", "channels-first", "3-D", "objects",
        "600s"])
def test_live_pieces_are_checked_before_resampling(piece, rate, error, message):
    """The probe's pieces: a 1 Hz header took the server from 1.2 to 5.7 GB (upsampled
    to hours before any limit), others gave raw ValueErrors or were cut silently. Each is
    refused, by name, before anything is resampled or kept."""
    import whisper_zh.errors as errors

    live = LiveTranscriber(_NoEngine())
    with pytest.raises(getattr(errors, error), match=message):
        live.feed(piece, rate)
    assert live.audio_s == 0 and live._resampler is None


def test_live_pieces_that_are_not_finite_become_silence():
    """4 s of a tone, then NaN and infinite pieces (57.6 s to decode 6 s in the probe):
    the buffer the engine reads is finite and within full scale, at 16 and 48 kHz."""
    for rate in (16000, 48000):
        live = LiveTranscriber(_NoEngine(), min_chunk_s=60, keep_up=False)
        t = np.arange(rate // 2) / rate
        for _ in range(4):
            live.feed((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
        for value in (np.nan, np.inf, -np.inf, 1e30):
            live.feed(np.full(rate // 2, value, np.float32), rate)
        assert np.isfinite(live._audio).all() and np.abs(live._audio).max() <= 1.0
        assert live.audio_s == pytest.approx(4.0, abs=0.1)


def test_the_live_route_shows_why_a_piece_is_refused():
    """Gradio shows an API client the text of a gr.Error only: the live handler turns the
    library's errors into one, as the other handlers do."""
    import gradio as gr

    from whisper_zh.serve.app import Handlers, _live_handler
    from whisper_zh.serve.settings import ServeSettings

    feed = _live_handler(Handlers(ServeSettings(model_id="stand-in"), _NoEngine()))
    with pytest.raises(gr.Error, match="1 Hz is not supported"):
        feed(None, (1, np.zeros(40000, np.int16)), "simplified")
    state, status, _ = feed(None, (48000, np.zeros(4800, np.int16)), "simplified")
    assert state.audio_s == pytest.approx(0.1, abs=0.01)
