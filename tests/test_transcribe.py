"""The transcription engine: windows, batching and timestamps with a tiny random
Whisper; accuracy, long-form joins, video and silence with the real whisper-base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _checks import GREEDY, is_chinese
from _media_helpers import joined_clips, make_video, plain_clips, serve_directory, write_wav
from whisper_zh.cli import main as cli_main
from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import MediaLimitError
from whisper_zh.media import load_audio
from whisper_zh.serve.subtitles import SEGMENT_STYLE, to_srt
from whisper_zh.text import cer, to_simplified, to_traditional
from whisper_zh.errors import NoSpeechError
from whisper_zh.serve.types import Segment, TranscribeOptions
from whisper_zh.serve.engine import Transcriber, _is_hallucination
from whisper_zh.media import frame_energy_db
from whisper_zh.serve.segmentation import is_silent, plan_windows
from whisper_zh.cli import transcribe_command as main

SR = SAMPLE_RATE
# a random model is unsure of everything: let every window through, once
MECHANICS = TranscribeOptions(temperatures=(0.0,), logprob_threshold=None, no_speech_threshold=None,
                              compression_ratio_threshold=None, drop_hallucinations=False)


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * level).astype(np.float32)


# -- windows ------------------------------------------------------------------------

def test_short_audio_is_one_window():
    assert plan_windows(noise(12.0)) == [(0, 12 * SR)]
    assert plan_windows(noise(30.0)) == [(0, 30 * SR)]


def test_cuts_fall_in_pauses():
    audio = noise(75.0)
    gaps = [(26.8, 27.3), (54.1, 54.6)]
    for start, end in gaps:
        audio[int(start * SR):int(end * SR)] = 0.0
    windows = plan_windows(audio, search_s=5.0)
    assert len(windows) == 3
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    for (start, end), (next_start, _) in zip(windows, windows[1:]):
        assert end == next_start  # contiguous: nothing lost, nothing decoded twice
    for (_, cut), (gap_start, gap_end) in zip(windows, gaps):
        assert gap_start <= cut / SR <= gap_end


def test_windows_without_pauses_still_fit():
    audio = noise(301.0)
    windows = plan_windows(audio)
    assert windows[0][0] == 0 and windows[-1][1] == len(audio)
    assert all(0 < end - start <= 30 * SR for start, end in windows)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    assert len(windows) <= 13  # cuts stay within the last 5 s of each window


def test_energy_and_silence():
    assert frame_energy_db(np.zeros(SR, np.float32)).max() == pytest.approx(-120.0)
    assert frame_energy_db(np.full(SR, 0.5, np.float32)).min() == pytest.approx(20 * np.log10(0.5), abs=0.01)
    assert is_silent(np.zeros(SR, np.float32))
    assert is_silent(noise(2.0, level=0.001))  # about -60 dBFS: a quiet room
    assert not is_silent(noise(2.0, level=0.05))
    assert is_silent(np.zeros(0, np.float32))


def test_hallucination_filter():
    assert _is_hallucination("字幕由Amara.org社群提供")
    assert _is_hallucination("请不吝点赞 订阅 转发 打赏支持明镜与点点栏目")
    assert _is_hallucination("谢谢观看！")
    assert not _is_hallucination("今天我们讨论城市规划，谢谢观看我们节目的每一位朋友对这个问题的关心")
    assert not _is_hallucination("物业公司把西门给锁死了")


# -- mechanics with a tiny random Whisper ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_engine(tiny_whisper):
    return Transcriber(str(tiny_whisper), backend="transformers", device="cpu", options=MECHANICS)


@pytest.fixture
def generate_calls(tiny_engine, monkeypatch):
    """Record the batch shape of every generate call the engine makes."""
    calls = []
    original = tiny_engine.backend.model.generate

    def spy(input_features, **kwargs):
        calls.append(tuple(input_features.shape))
        kwargs["max_new_tokens"] = 24  # random weights would otherwise ramble to the limit
        return original(input_features, **kwargs)

    monkeypatch.setattr(tiny_engine.backend.model, "generate", spy)
    return calls


def test_windows_are_batched_and_silence_skipped(tiny_engine, generate_calls):
    # speech-like noise 0-30 s, silence 30-62 s, noise 62-95 s, with pauses to cut at
    audio = np.concatenate([noise(29.5), np.zeros(int(32.5 * SR), np.float32), noise(33.0, seed=1)])
    windows = plan_windows(audio)
    assert len(windows) == 4
    progress = []
    segments = list(tiny_engine.iter_segments(audio, replace_options(batch_size=2),
                                              progress=lambda f, m: progress.append(f)))
    voiced = [w for w in windows if not is_silent(audio[w[0]:w[1]])]
    assert len(voiced) == 3 and 29.5 * SR <= windows[1][0] < windows[1][1] < 62 * SR
    assert generate_calls == [(2, 80, 3000), (1, 80, 3000)]  # the silent window never reaches the model
    assert progress[0] == 0.0 and progress[-1] == 1.0
    for segment in segments:
        assert any(s / SR <= segment.start <= segment.end <= e / SR + 1e-6 for s, e in voiced)
    assert [s.start for s in segments] == sorted(s.start for s in segments)


def test_batch_size_one_and_three(tiny_engine, generate_calls):
    audio = noise(100.0)
    n = len(plan_windows(audio))
    list(tiny_engine.iter_segments(audio, replace_options(batch_size=3)))
    assert [c[0] for c in generate_calls] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    generate_calls.clear()
    list(tiny_engine.iter_segments(audio, replace_options(batch_size=1)))
    assert [c[0] for c in generate_calls] == [1] * n


def test_window_segments_offsets(tiny_engine):
    """Whisper's per-window times become input times; text read off the padding after
    a window's real end is dropped, and ends are clipped to it."""
    tokenizer = tiny_engine.backend.processor.tokenizer
    tokens = torch.tensor(tokenizer("你好", add_special_tokens=False).input_ids)
    raw = [
        {"start": torch.tensor(0.0), "end": torch.tensor(2.5), "tokens": tokens},
        {"start": torch.tensor(2.5), "end": torch.tensor(9.0), "tokens": tokens},  # ends in padding
        {"start": torch.tensor(8.5), "end": torch.tensor(12.0), "tokens": tokens},  # starts in padding
    ]
    segments = list(tiny_engine.backend._window_segments(raw, offset=60.0, window_end=68.0))
    assert segments == [Segment(60.0, 62.5, "你好"), Segment(62.5, 68.0, "你好")]


def test_silence_is_no_speech(tiny_engine, generate_calls, tmp_path):
    for seconds in (0.3, 5.0, 45.0):
        with pytest.raises(NoSpeechError, match="no speech found"):
            tiny_engine.transcribe(np.zeros(int(seconds * SR), np.float32))
    wav = write_wav(tmp_path / "silence.wav", np.zeros(3 * SR, np.float32))
    with pytest.raises(NoSpeechError):
        tiny_engine.transcribe(wav)
    assert generate_calls == []  # Whisper never saw the silence, so it could not invent text


def test_max_duration(tiny_engine, generate_calls, tmp_path):
    """An operator's limit holds where the input comes in (the job flow's open_input),
    before the engine runs; the engine itself decodes whatever it is given."""
    from whisper_zh.serve.jobs import open_input
    from whisper_zh.serve.settings import Limits

    path = write_wav(tmp_path / "long.wav", noise(61.0))
    with pytest.raises(MediaLimitError, match="limit is 1:00"):
        open_input(path, tmp_path, Limits(max_duration_s=60))
    assert generate_calls == []
    assert open_input(path, tmp_path, Limits(max_duration_s=62)).audio.shape == (61 * SR,)


def test_decode_clips_decodes_each_clip_on_its_own(tiny_engine, generate_calls):
    """Clips are batched in one generate call, one window each (no VAD, no completeness
    pass: nothing but the clips is decoded), one text per clip."""
    audio = noise(50.0)
    clips = [audio[:10 * SR], audio[10 * SR:35 * SR], audio[35 * SR:]]
    texts = tiny_engine.decode_clips(clips, replace_options(batch_size=8))
    assert generate_calls == [(3, 80, 3000)]
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="longer than 30 s"):
        tiny_engine.decode_clips([noise(31.0)])


def test_backend_choice(tiny_whisper, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        Transcriber(str(tiny_whisper), backend="onnx")
    # the environment is read at the edges only: BACKEND reaches the engine through
    # ServeSettings (the app, the command line), never by the engine reading it itself
    from whisper_zh.serve.settings import ServeSettings

    monkeypatch.setenv("BACKEND", "Transformers")
    settings = ServeSettings.from_env()
    assert settings.backend == "transformers"
    assert Transcriber(str(tiny_whisper), backend=settings.backend, device="cpu").backend.name == "transformers"
    assert Transcriber(str(tiny_whisper), device="cpu").backend.name == "ct2"  # auto, whatever BACKEND says
    monkeypatch.delenv("BACKEND")
    assert Transcriber(str(tiny_whisper), device="cuda:0" if torch.cuda.is_available() else "cpu",
                       backend="transformers").backend.name == "transformers"


def test_auto_converts_a_model_once_and_reuses_the_conversion(tiny_whisper, tmp_path, monkeypatch, caplog):
    """On a CPU, auto serves any model through CTranslate2: a local transformers folder
    without ct2/ is converted once into the cache beside the Hugging Face cache, and the
    next start (another process, another engine) loads the conversion without converting."""
    import huggingface_hub.constants
    import whisper_zh.serve.models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path / "hf"))
    model_dir = _linked_copy(tiny_whisper, tmp_path / "tiny")
    conversions = []
    real_export = whisper_zh.serve.models.export_ct2
    monkeypatch.setattr(whisper_zh.serve.models, "export_ct2",
                        lambda *args, **kwargs: conversions.append(args) or real_export(*args, **kwargs))
    monkeypatch.delenv("BACKEND", raising=False)
    with caplog.at_level("INFO", logger="whisper_zh"):
        first = Transcriber(str(model_dir), device="cpu", options=MECHANICS)
        second = Transcriber(str(model_dir), device="cpu", options=MECHANICS)
    assert first.backend.name == second.backend.name == "ct2"
    assert len(conversions) == 1 and not (model_dir / "ct2").exists()  # the user's folder is left alone
    assert first.backend.model_dir == second.backend.model_dir
    assert first.backend.model_dir.startswith(str(tmp_path / "hf" / "whisper-zh-ct2"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("converted to CTranslate2 int8 in" in m for m in messages)
    assert any("using the CTranslate2 conversion cached" in m for m in messages)
    segments = list(second.iter_segments(noise(40.0)))
    assert all(isinstance(s, Segment) and 0.0 <= s.start <= s.end <= 40.0 for s in segments)
    # new weights in the folder (a new fine-tune written over it) mean a new conversion
    (model_dir / "model.safetensors").unlink()
    (model_dir / "model.safetensors").write_bytes((tiny_whisper / "model.safetensors").read_bytes())
    Transcriber(str(model_dir), device="cpu", options=MECHANICS)
    assert len(conversions) == 2


def test_a_hub_repo_with_ct2_is_served_without_its_full_weights(tiny_whisper, tmp_path, monkeypatch):
    """A stand-in Hub: the repo holds what `whisper-zh train` pushes (transformers weights
    and ct2/); the engine asks only for ct2/* and never downloads the full weights."""
    import huggingface_hub
    from whisper_zh.serve.models import export_ct2

    repo = _linked_copy(tiny_whisper, tmp_path / "hub" / "you--whisper-small-zh")
    export_ct2(str(repo))
    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        import fnmatch
        import shutil

        asked.append((repo_id, allow_patterns))
        snapshot = tmp_path / "snapshots" / str(len(asked))
        for path in repo.rglob("*"):
            name = path.relative_to(repo).as_posix()
            if path.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns)):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    engine = Transcriber("you/whisper-small-zh", backend="auto", device="cpu", options=MECHANICS)
    assert engine.backend.name == "ct2"
    assert asked == [("you/whisper-small-zh", ["ct2/*"])]
    assert not list((tmp_path / "snapshots").rglob("model.safetensors"))
    # a repo without ct2/ is downloaded whole and converted once
    for item in (repo / "ct2").iterdir():
        item.unlink()
    (repo / "ct2").rmdir()
    engine = Transcriber("you/whisper-small-zh", backend="auto", device="cpu", options=MECHANICS)
    assert engine.backend.name == "ct2" and asked[-1] == ("you/whisper-small-zh", None)


def replace_options(**changes) -> TranscribeOptions:
    from dataclasses import replace

    return replace(MECHANICS, **changes)


# -- the real whisper-base ----------------------------------------------------------------

@pytest.fixture(scope="module")
def base_engine(whisper_base):
    return Transcriber(str(whisper_base), backend="transformers", device="cpu")


@pytest.mark.slow
def test_clips_are_transcribed(base_engine, zh_cv_mini):
    """Accuracy as a corpus CER over six clips of Chinese characters with a wide margin:
    whisper-base scores about 0.18 on them (one clip alone can score 0.4 or 0.6 on
    another CPU's arithmetic; six together move much less). Temperature 0: the fallback's
    sampled retries cost time and change nothing this checks."""
    rows = plain_clips(zh_cv_mini, 6)
    texts = []
    for row in rows:
        result = base_engine.transcribe(zh_cv_mini / "clips" / row["path"], temperatures=GREEDY)
        texts.append(result.text)
        assert result.text == to_simplified(result.text)
        assert 0.0 <= result.segments[0].start < result.segments[-1].end <= result.duration + 1e-6
    score = cer([row["sentence"] for row in rows], texts)
    assert score < 0.5, (score, texts)


@pytest.mark.slow
def test_traditional_script(base_engine, zh_cv_mini):
    row = plain_clips(zh_cv_mini, 1)[0]
    audio = load_audio(zh_cv_mini / "clips" / row["path"])
    traditional = base_engine.transcribe(audio, script="traditional", temperatures=(0.0,)).text
    simplified = base_engine.transcribe(audio, script="simplified", temperatures=(0.0,)).text
    assert traditional == to_traditional(simplified) and traditional != simplified


@pytest.mark.slow
def test_joined_clips_lose_nothing_at_the_joins(base_engine, zh_cv_mini):
    """A file of 90 s or more made of clips back to back (18 clips, four windows of at
    most 30 s) comes back as one transcript that is as good as transcribing the clips one
    by one: the joins between clips and between windows lose nothing."""
    audio, rows, starts = joined_clips(zh_cv_mini, 90.0)
    assert len(audio) / SR >= 90.0
    # one greedy pass on both sides: this is about the joins, not the temperature fallback
    greedy = TranscribeOptions(temperatures=(0.0,))
    result = base_engine.transcribe(audio, greedy)
    references = [row["sentence"] for row in rows]
    joined_cer = cer(["".join(references)], [result.text])
    # the same clips one by one: one window each, decoded in batches
    bounds = [round(t * SR) for t in starts] + [len(audio)]
    per_clip = base_engine.decode_clips([audio[a:b] for a, b in zip(bounds, bounds[1:])], greedy)
    per_clip_cer = cer(references, per_clip)
    print(f"\nwhisper-base CER: joined {joined_cer:.3f}, per clip {per_clip_cer:.3f} "
          f"({len(rows)} clips, {len(audio) / SR:.0f} s, {result.speed:.2f}x real time)")
    assert joined_cer < per_clip_cer + 0.05
    assert joined_cer < 0.5

    segments = result.segments
    assert all(a.start <= b.start for a, b in zip(segments, segments[1:]))
    assert all(s.start <= s.end for s in segments)
    assert segments[-1].end <= len(audio) / SR + 1e-6
    assert segments[-1].end > len(audio) / SR - 5.0  # the last clip is there
    # Whisper's segments follow the sentences: most clip starts have a segment start nearby
    aligned = [any(abs(s.start - t) < 1.0 for s in segments) for t in starts[1:]]
    assert sum(aligned) / len(aligned) > 0.6, [round(s.start, 2) for s in segments]
    srt = to_srt(segments, SEGMENT_STYLE)
    assert srt.count(" --> ") == len(segments)


@pytest.mark.slow
def test_video_input(base_engine, zh_cv_mini, tmp_path):
    """A video's sound track is what is transcribed: the track decoded from the mp4 is the
    clip (AAC changes the samples a little, not the waveform), and a video path gives the
    same text as that track given as samples (temperature 0: no sampled retries)."""
    from whisper_zh.media import load_media

    clip = zh_cv_mini / "clips" / plain_clips(zh_cv_mini, 2)[1]["path"]
    video = make_video(clip, tmp_path / "clip.mp4")
    track, source = load_media(video), load_audio(clip)
    assert abs(len(track) - len(source)) <= 0.05 * SR, (len(track), len(source))
    n = min(len(track), len(source))
    assert np.corrcoef(track[:n], source[:n])[0, 1] > 0.9
    result = base_engine.transcribe(video, temperatures=GREEDY)
    assert is_chinese(result.text), result.text
    assert result.text == base_engine.transcribe(track, temperatures=GREEDY).text


# -- command line -----------------------------------------------------------------------

def _greedy_engines(monkeypatch) -> None:
    """Every Transcriber decodes at temperature 0 whatever the options it is given, so that
    what the CLI prints can be compared with the engine's own transcription, exactly."""
    original = Transcriber.iter_segments

    def iter_segments(self, audio, options=None, **kwargs):
        from dataclasses import replace

        return original(self, audio, replace(options or self.options, temperatures=GREEDY), **kwargs)

    monkeypatch.setattr(Transcriber, "iter_segments", iter_segments)


@pytest.mark.slow
def test_cli_file_and_url(whisper_base, base_engine, zh_cv_mini, tmp_path, capsys, monkeypatch):
    """What the CLI prints for a file and for a link to it is the engine's transcription of
    that file (both through the transformers backend, at temperature 0)."""
    row = plain_clips(zh_cv_mini, 3)[2]
    clip = zh_cv_mini / "clips" / row["path"]
    expected = base_engine.transcribe(clip, temperatures=GREEDY).text
    assert is_chinese(expected), expected
    _greedy_engines(monkeypatch)
    srt, vtt = tmp_path / "out.srt", tmp_path / "out.vtt"
    assert main([str(clip), "--model", str(whisper_base), "--srt", str(srt), "--vtt", str(vtt),
                 "--backend", "transformers", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out.strip()
    assert text == expected
    assert srt.read_text(encoding="utf-8").startswith("1\n00:00:0")
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:0")

    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "clip.mp3").write_bytes(clip.read_bytes())
    with serve_directory(tmp_path / "site") as (base, _):
        assert main([f"{base}/clip.mp3", "--model", str(whisper_base), "--script", "traditional",
                     "--backend", "transformers"]) == 0
        out = capsys.readouterr().out.strip()
        assert out == to_traditional(text)
        assert cli_main(["transcribe", f"{base}/missing.mp3", "--model", str(whisper_base)]) == 1
        assert "404" in capsys.readouterr().err


def test_cli_errors(tiny_whisper, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ALLOW_PRIVATE_URLS", raising=False)
    silence = write_wav(tmp_path / "silence.wav", np.zeros(2 * SR, np.float32))
    assert main([str(silence), "--model", str(tiny_whisper)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no speech found" in captured.err
    (tmp_path / "bad.mp3").write_text("not audio")
    assert cli_main(["transcribe", str(tmp_path / "bad.mp3"), "--model", str(tiny_whisper)]) == 1
    assert "cannot decode" in capsys.readouterr().err
    assert cli_main(["transcribe", "file:///etc/passwd", "--model", str(tiny_whisper)]) == 1
    assert "only http:// and https://" in capsys.readouterr().err
    assert cli_main(["transcribe", "http://127.0.0.1:1/a.mp3", "--model", str(tiny_whisper)]) == 1
    assert "private, loopback or link-local" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "FILE_DIR_GLOB_OR_URL" in capsys.readouterr().out


# -- the CTranslate2 backend ------------------------------------------------------------------

def _linked_copy(src, dst):
    """A copy made of symlinks, so that an export written into it leaves the shared
    fixture as other tests see it."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file():
            (dst / item.name).symlink_to(item.resolve())
    return dst


def test_auto_picks_ct2_when_exported(tiny_whisper, tmp_path, monkeypatch):
    pytest.importorskip("faster_whisper")
    from whisper_zh.serve.models import export_ct2

    model_dir = _linked_copy(tiny_whisper, tmp_path / "tiny")
    export_ct2(str(model_dir))
    monkeypatch.delenv("BACKEND", raising=False)
    engine = Transcriber(str(model_dir), device="cpu", options=MECHANICS)
    assert engine.backend.name == "ct2" and engine.backend.model_dir == str(model_dir / "ct2")
    assert Transcriber(str(model_dir / "ct2"), device="cpu").backend.name == "ct2"  # the export itself
    assert Transcriber(str(model_dir), backend="transformers", device="cpu").backend.name == "transformers"
    with pytest.raises(NoSpeechError):
        engine.transcribe(np.zeros(3 * SR, np.float32))
    segments = list(engine.iter_segments(noise(40.0)))
    assert all(isinstance(s, Segment) and 0.0 <= s.start <= s.end <= 40.0 for s in segments)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        Transcriber(str(tmp_path / "missing"), backend="ct2", device="cpu")


@pytest.mark.slow
def test_ct2_backend_transcribes(whisper_base, whisper_base_ct2, zh_cv_mini, tmp_path):
    pytest.importorskip("faster_whisper")
    model_dir = _linked_copy(whisper_base, tmp_path / "base")
    (model_dir / "ct2").symlink_to(whisper_base_ct2, target_is_directory=True)  # as `whisper-zh export` leaves it
    engine = Transcriber(str(model_dir), backend="auto", device="cpu")
    assert engine.backend.name == "ct2" and engine.backend.model_dir == str(model_dir / "ct2")
    row = plain_clips(zh_cv_mini, 1)[0]
    result = engine.transcribe(zh_cv_mini / "clips" / row["path"], script="traditional")
    assert result.backend == "ct2" and result.text == to_traditional(result.text)
    assert is_chinese(result.text), result.text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_both_backends_stream_segments_before_the_end(whisper_base, zh_cv_mini, backend):
    """On a 75 s real recording, the first segment reaches the caller while most of the
    recording is still to be decoded: the engine is a generator on both backends."""
    audio, rows, _ = joined_clips(zh_cv_mini, 75.0)
    engine = Transcriber(str(whisper_base), backend=backend, device="cpu")
    reported = []
    # one window a step: three windows of 30 s at least, so three steps on either backend
    stream = engine.iter_segments(audio, TranscribeOptions(batch_size=1),
                                  progress=lambda fraction, message: reported.append(fraction))
    first = next(stream)
    done_at_first = reported[-1]
    rest = list(stream)
    assert first.text and rest
    assert done_at_first < 0.5, reported  # at most one model step of several was done
    assert reported[-1] == 1.0 and len(set(reported)) >= 3  # progress after every step
    assert cer(["".join(r["sentence"] for r in rows)], ["".join(s.text for s in [first, *rest])]) < 0.5


def test_the_cli_bounds_downloads_not_the_users_own_files(tiny_whisper, tmp_path, capsys, monkeypatch):
    """MAX_UPLOAD_MB is a server's limit on what comes in: the CLI holds it for a link, and
    transcribes a local file of any size (the duration limit still holds while it decodes)."""
    (tmp_path / "site").mkdir()
    clip = write_wav(tmp_path / "site" / "noise.wav", noise(3.0))
    assert clip.stat().st_size > 50 * 2**10
    monkeypatch.setenv("MAX_UPLOAD_MB", "0.05")
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    assert main([str(clip), "--model", str(tiny_whisper), "--backend", "transformers"]) == 0
    assert "limit" not in capsys.readouterr().err
    assert cli_main(["transcribe", str(clip), "--model", str(tiny_whisper), "--max-duration", "1"]) == 1
    assert "limit" in capsys.readouterr().err
    with serve_directory(tmp_path / "site") as (base, _):
        assert cli_main(["transcribe", f"{base}/noise.wav", "--model", str(tiny_whisper)]) == 1
    assert "MB" in capsys.readouterr().err
    for bad in ("nan", "inf", "0", "-1"):  # "nan" turned the limit off
        with pytest.raises(SystemExit):
            main([str(clip), "--model", str(tiny_whisper), "--max-duration", bad])
        assert "not a positive number of seconds" in capsys.readouterr().err


def test_options_the_ct2_backend_takes_work_on_the_transformers_backend_too(tiny_engine, generate_calls):
    """No temperatures (one decode), or no log-probability threshold (so no no-speech
    rule, which needs both): generate failed on each (a TypeError, an UnboundLocalError)."""
    audio = noise(4.0)
    for changes in ({"temperatures": ()}, {"logprob_threshold": None, "no_speech_threshold": 0.6}):
        list(tiny_engine.iter_segments(audio, replace_options(**changes)))
    assert len(generate_calls) == 2


def test_arrays_of_any_common_layout_are_transcribed_and_windows_fit_whisper(tiny_engine, generate_calls):
    from whisper_zh.errors import ConfigError
    from whisper_zh.media import as_waveform

    audio = noise(4.0)
    pcm = np.round(audio * 32767).astype(np.int16)
    np.testing.assert_allclose(as_waveform(pcm), audio, atol=1e-4)
    np.testing.assert_allclose(as_waveform(np.stack([pcm, pcm], axis=1)), audio, atol=1e-4)  # (samples, channels)
    np.testing.assert_allclose(as_waveform(np.stack([audio, audio])), audio)  # (channels, samples)
    assert as_waveform(audio) is audio
    for bad in (np.zeros((2, 2, 2), np.float32), np.zeros(8, np.uint8), np.zeros(8, complex)):
        with pytest.raises(ConfigError):
            as_waveform(bad)
    # an int16 array failed in the silence gate, a stereo one in the VAD
    for array in (pcm, np.stack([pcm, pcm], axis=1)):
        list(tiny_engine.iter_segments(array, MECHANICS))
    assert len(generate_calls) == 2
    # Whisper reads 30 s: a longer window was cut there, and decode_clips lost the rest
    for window_s in (0.0, 31.0, 45.0):
        with pytest.raises(ConfigError, match="window_s"):
            TranscribeOptions(window_s=window_s)


def test_a_folder_job_loads_the_default_backend_when_given_none(tiny_whisper, tmp_path):
    from whisper_zh.serve.folder import transcribe_folder

    (tmp_path / "in").mkdir()
    write_wav(tmp_path / "in" / "noise.wav", noise(3.0))
    summary = transcribe_folder(tmp_path / "in", tmp_path / "out", ["txt"], str(tiny_whisper), MECHANICS,
                                progress=False)
    assert not summary.failed, summary.report()


@pytest.mark.slow
def test_the_transformers_backend_times_words_when_asked(base_engine, zh_cv_mini):
    """word_timestamps: each segment's words from the alignment heads' cross-attention, in
    order, inside their segment, spelling its text (the API's word granularity and the
    karaoke subtitles had none on this backend, the GPU default)."""
    audio, _, _ = joined_clips(zh_cv_mini, 15.0)
    attention = base_engine.backend.model.model.config._attn_implementation
    timed = base_engine.transcribe(audio, temperatures=GREEDY, word_timestamps=True)
    assert timed.segments
    for segment in timed.segments:
        assert segment.words and "".join(w.word for w in segment.words).strip() == segment.text
        assert all(segment.start <= w.start <= w.end <= segment.end for w in segment.words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(segment.words, segment.words[1:]))
    # generate switches the model to eager attention for token timestamps: switched back
    assert base_engine.backend.model.model.config._attn_implementation == attention
    plain = base_engine.transcribe(audio, temperatures=GREEDY)
    assert plain.segments and not any(s.words for s in plain.segments)


def test_the_apis_word_granularity_asks_the_backend_for_words():
    from whisper_zh.serve.api import parse_call
    from whisper_zh.serve.settings import ServeSettings

    class Upload:
        filename = "a.wav"

    fields = {"file": [Upload()], "timestamp_granularities[]": ["word", "segment"]}
    assert parse_call(fields, "transcribe", ServeSettings()).options.word_timestamps
    assert not parse_call({"file": [Upload()]}, "transcribe", ServeSettings()).options.word_timestamps


def test_timed_words_keep_bytes_that_never_make_a_character(whisper_base):
    """A token run that never decodes to whole characters (Whisper writes such) was held
    to the end of the segment and dropped: the words no longer spelled the text."""
    from transformers import WhisperTokenizer

    from whisper_zh.serve.transformers_backend import _timed_words

    tokenizer = WhisperTokenizer.from_pretrained(str(whisper_base))
    hello = tokenizer(" 你好", add_special_tokens=False).input_ids
    stray = tokenizer.convert_tokens_to_ids("ä")  # the first byte of a three-byte character, alone
    timestamp = tokenizer.convert_tokens_to_ids("<|1.00|>")
    tokens = [*hello, stray, timestamp]
    words = list(_timed_words(tokenizer, tokens, [0.0, 0.4, 0.8, 1.0], 10.0, 10.0, 11.0))
    assert "".join(w.word for w in words) == tokenizer.decode(tokens, skip_special_tokens=True)
    assert [round(w.start, 2) for w in words] == [10.0, 10.4, 10.8]
    assert all(10.0 <= w.start <= w.end <= 11.0 for w in words)
