"""Whole folders (whisper_zh.folder): finding the media, mirrored outputs, resuming,
failures that do not stop the rest, and the files split over two processes by torchrun
(gloo on a CPU) as training is. Real clips, the real whisper-base (CTranslate2 int8)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from _checks import GREEDY, is_chinese
from _media_helpers import plain_clips, write_wav
from whisper_zh.cli import main as cli_main
from whisper_zh.errors import MissingExtraError
from whisper_zh.media import load_media
from whisper_zh.serve import diarize
from whisper_zh.serve.folder import FAILED
from whisper_zh.serve.jobs import Job
from whisper_zh.serve.folder import MediaFile, find_media, is_folder_job, transcribe_folder
from whisper_zh.serve.subtitles import check_formats, output_paths
from whisper_zh.serve.subtitles import to_srt
from whisper_zh.text import cer
from whisper_zh.serve.types import TranscribeOptions
from whisper_zh.serve.engine import Transcriber

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_find_media(tmp_path):
    for name in ("a/talk.mp3", "a/deep/er/clip.MP4", "b/talk.mp3", "b/Talk.m4a", "b/notes.txt",
                 "b/.hidden.mp3", "a/._talk.mp3", ".cache/x.wav", "c.flac"):
        touch(tmp_path / name)
    found = find_media(tmp_path)
    assert [(str(m.path.relative_to(tmp_path)), str(m.stem)) for m in found] == [
        ("a/deep/er/clip.MP4", "a/deep/er/clip"),
        ("a/talk.mp3", "a/talk"),
        ("b/Talk.m4a", "b/Talk.m4a"),  # side by side with talk.mp3: both keep their extension
        ("b/talk.mp3", "b/talk.mp3"),
        ("c.flac", "c"),
    ]
    assert output_paths("out", found[1].stem, ("srt", "txt")) == {"srt": Path("out/a/talk.srt"), "txt": Path("out/a/talk.txt")}
    # several inputs mirror from the folder they share, so a/talk and b/talk stay apart
    two = find_media([tmp_path / "a" / "talk.mp3", tmp_path / "b" / "talk.mp3"])
    assert [str(m.stem) for m in two] == ["a/talk", "b/talk"]
    # a glob pattern mirrors from its folder part; a folder it matches is searched
    pattern = find_media(str(tmp_path / "*" / "talk.mp3"))
    assert [str(m.stem) for m in pattern] == ["a/talk", "b/talk"]
    assert [str(m.stem) for m in find_media(str(tmp_path / "a*"))] == ["a/deep/er/clip", "a/talk"]
    assert find_media([tmp_path / "a" / "talk.mp3", tmp_path / "a"])[-1] == MediaFile(
        tmp_path / "a" / "talk.mp3", Path("talk"))  # named twice, transcribed once
    # a link to media kept elsewhere takes the link's place in the layout
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "talk.wav").symlink_to(touch(tmp_path / "elsewhere" / "x.wav"))
    assert [str(m.stem) for m in find_media(tmp_path / "linked")] == ["talk"]
    with pytest.raises(FileNotFoundError):
        find_media(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        find_media(str(tmp_path / "*.ogg"))
    assert is_folder_job(str(tmp_path)) and is_folder_job("x/**/*.mp4")
    assert not is_folder_job(str(tmp_path / "c.flac")) and not is_folder_job("https://example.com/a?b=*")


def test_formats_are_checked_against_the_writers():
    assert check_formats(["SRT", "txt", "srt"]) == ("srt", "txt")
    with pytest.raises(ValueError, match="unknown output format docx.*choose from srt"):
        check_formats(["srt", "docx"])


@pytest.fixture(scope="module")
def engine(whisper_base_ct2) -> Transcriber:
    """At temperature 0 (no sampled retries), so that a folder's outputs can be compared
    with the engine's own transcription of each file, exactly."""
    return Transcriber(str(whisper_base_ct2), backend="ct2", device="cpu",
                       options=TranscribeOptions(temperatures=GREEDY))


@pytest.fixture(scope="module")
def rows(zh_cv_mini) -> list[dict]:
    return plain_clips(zh_cv_mini, 4)


def folder_of_clips(root: Path, zh_cv_mini: Path, rows: list[dict], names: list[str]) -> dict[str, str]:
    """Copies of real clips under ``root`` at ``names``; returns {name: reference}."""
    references = {}
    for name, row in zip(names, rows):
        touch(root / name, (zh_cv_mini / "clips" / row["path"]).read_bytes())
        references[name] = row["sentence"]
    return references


@pytest.mark.slow
def test_folder_transcribes_resumes_and_survives_bad_files(tmp_path, engine, zh_cv_mini, rows):
    import srt

    src, out = tmp_path / "in", tmp_path / "out"
    references = folder_of_clips(src, zh_cv_mini, rows, ["day1/talk.mp3", "day2/talk.mp3"])
    touch(src / "day2" / "broken.mp4", os.urandom(3000))  # not media at all
    sf.write(str(src / "quiet.wav"), np.zeros(16000 * 2, np.float32), 16000)
    touch(src / "day1" / "notes.txt", b"not media")

    summary = transcribe_folder(src, out, ["srt", "txt"], engine)
    assert (len(summary.done), len(summary.skipped), len(summary.failed)) == (3, 0, 1)
    failure, = summary.failed
    assert failure.source.endswith("broken.mp4") and failure.status == FAILED
    assert "AudioDecodeError" in failure.error and "cannot decode" in failure.error
    assert summary.audio_s == pytest.approx(sum(f.duration_s for f in summary.done)) and summary.audio_s > 5
    report = summary.report()
    assert "3 transcribed (1 without speech), 0 skipped (already done), 1 failed" in report
    assert "broken.mp4: AudioDecodeError" in report and "x real time" in report
    for name in references:
        stem = out / Path(name).with_suffix("")
        written = stem.with_suffix(".srt").read_text(encoding="utf-8")
        cues = list(srt.parse(written))
        # the engine's own transcription of the file, laid out as subtitles
        assert written == to_srt(engine.transcribe(src / name).segments), name
        assert cues and is_chinese("".join(c.content for c in cues)), written
        assert stem.with_suffix(".txt").read_text(encoding="utf-8").strip() == "\n".join(c.content for c in cues)
    assert (out / "quiet.srt").read_text(encoding="utf-8") == ""  # no speech: done, with empty outputs
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        ["day1", "day2", "talk.srt", "talk.txt", "talk.srt", "talk.txt", "quiet.srt", "quiet.txt"])

    # a run killed after writing some outputs: only what is missing is redone
    (out / "day2" / "talk.txt").unlink()
    before = (out / "day1" / "talk.srt").stat().st_mtime_ns
    again = transcribe_folder(src, out, ["srt", "txt"], engine, progress=False)
    assert [Path(f.source).name for f in again.done] == ["talk.mp3"] and len(again.skipped) == 2
    assert again.done[0].source.endswith(os.path.join("day2", "talk.mp3"))
    assert len(again.failed) == 1  # failures are tried again
    assert (out / "day1" / "talk.srt").stat().st_mtime_ns == before
    assert (out / "day2" / "talk.txt").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left

    with pytest.raises(ValueError):
        transcribe_folder(src, out, ["srt", "docx"], engine)


@pytest.mark.slow
def test_cli_exit_status_and_summary(tmp_path, engine, zh_cv_mini, rows, capsys):
    src = tmp_path / "in"
    folder_of_clips(src, zh_cv_mini, rows[:1], ["one.mp3"])
    model = str(engine.model_id)
    assert cli_main(["transcribe", str(src), "-o", str(tmp_path / "out"), "--model", model, "--formats", "vtt",
                 "--summary-json", str(tmp_path / "summary.json")]) == 0
    assert "1 file: 1 transcribed, 0 skipped (already done), 0 failed" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["done"] == 1 and summary["files"][0]["outputs"] == [str(tmp_path / "out" / "one.vtt")]
    touch(src / "bad.wav", b"RIFF....WAVEfmt nonsense")
    assert cli_main(["transcribe", str(src), "-o", str(tmp_path / "out"), "--model", model, "--formats", "vtt"]) == 1
    assert "1 skipped (already done), 1 failed" in capsys.readouterr().out
    assert cli_main(["transcribe", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"), "--model", model]) == 1
    assert "no such file" in capsys.readouterr().err


def test_what_was_not_transcribed_is_said_for_folders_and_one_file(tmp_path, engine, zh_cv_mini, rows, capsys):
    """A real clip as WAV with a few MB of MP3 appended (``cat``): decoded as a player plays
    it, and both the folder summary and a single-file run say the rest was left out."""
    import soundfile as sf

    import _media_bombs as bombs
    from whisper_zh.media import load_audio

    src = tmp_path / "in"
    src.mkdir()
    clip = src / "clip.wav"
    sf.write(str(clip), load_audio(zh_cv_mini / "clips" / rows[0]["path"]), 16000)
    joined = src / "joined.wav"
    joined.write_bytes(clip.read_bytes() + bombs.mp3_tone(tmp_path / "tail.mp3", 300).read_bytes())
    clip.unlink()
    summary = transcribe_folder(src, tmp_path / "out", ("txt",), engine, progress=False)
    (result,) = summary.done
    assert len(result.notices) == 1 and "could be read as audio" in result.notices[0], result.notices
    assert f"{joined}: {result.notices[0]}" in summary.report()
    assert (tmp_path / "out" / "joined.txt").read_text(encoding="utf-8").strip()  # the WAV part's text
    assert cli_main(["transcribe", str(joined), "--model", str(engine.model_id), "--txt", str(tmp_path / "one.txt")]) == 0
    assert f"{joined}: {result.notices[0]}" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_splits_files_between_processes(tmp_path, engine, zh_cv_mini, rows):
    """Two processes (gloo on a CPU): each file transcribed exactly once, one summary, and
    each file's text in its own outputs (nearer its own sentence than any other's)."""
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a/1.mp3", "b/1.mp3", "b/2.mp3"]  # split 2 + 1
    references = folder_of_clips(src, zh_cv_mini, rows, names)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "whisper_zh", "transcribe",
         str(src), "-o", str(out), "--model", str(engine.model_id), "--formats", "srt,txt",
         "--summary-json", str(tmp_path / "summary.json")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.count("3 files: 3 transcribed") == 1, run.stdout  # one summary, from the main process
    assert "on 2 processes" in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    sources = [Path(f["source"]).relative_to(src.resolve()).as_posix() for f in summary["files"]]
    assert sorted(sources) == sorted(names)  # each file exactly once
    by_process = {f["process_index"] for f in summary["files"]}
    assert by_process == {0, 1}  # both processes worked
    for name, reference in references.items():
        text = "".join((out / Path(name).with_suffix(".txt")).read_text(encoding="utf-8").split())
        # whisper-base scores ~0.2 on its own sentence and ~0.9 on another: which is nearest
        # does not hang on a character or two
        scores = {other: cer([sentence], [text]) for other, sentence in references.items()}
        assert min(scores, key=scores.get) == name, (name, text, scores)


def _needs_diarize_extra():
    # not imported: the package's own module needs pkg_resources (see serve/diarize.py)
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip('speaker labels need pip install "whisper-zh[diarize]"')


@pytest.mark.slow
def test_folder_labels_speakers_as_one_file_does(tmp_path, engine, zh_cv_mini, rows, conversation, capsys):
    """--diarize on a folder: each file's outputs are those of the same file through the
    one job flow alone, speakers included; a conversation's two voices are told apart
    and one voice is one speaker; --num-speakers reaches every file."""
    _needs_diarize_extra()
    audio, turns = conversation
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "talks").mkdir(parents=True)
    write_wav(src / "talks" / "two.wav", audio)
    folder_of_clips(src, zh_cv_mini, rows[:1], ["one.mp3"])
    formats = ["srt", "vtt", "txt", "json"]

    summary = transcribe_folder(src, out, formats, engine, diarize=True, progress=False)
    assert (len(summary.done), len(summary.failed)) == (2, 0), summary.report()
    for name in ("talks/two.wav", "one.mp3"):
        job = Job(engine, engine.options, formats, diarize=True)
        alone = job.write(job.run(load_media(src / name)),
                          output_paths(tmp_path / "alone", Path(name).with_suffix(""), formats))
        for fmt, path in alone.items():
            folder = out / Path(name).with_suffix(f".{fmt}")
            assert folder.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (name, fmt)

    cues = [c.content for c in _srt(out / "talks" / "two.srt")]
    assert cues and all(re.match("S[12]：", c) for c in cues), cues
    segments = json.loads((out / "talks" / "two.json").read_text(encoding="utf-8"))["segments"]
    # each segment's speaker is the voice of the turn it lies in, after naming the voices
    # (measured: every one; a margin of one)
    voice_of = [next(v for a, b, v in turns if a - 0.5 <= (s["start"] + s["end"]) / 2 <= b + 0.5) for s in segments]
    naming = {voice: next(s["speaker"] for s, v in zip(segments, voice_of) if v == voice) for voice in (0, 1)}
    assert naming[0] != naming[1], segments
    assert sum(s["speaker"] == naming[v] for s, v in zip(segments, voice_of)) >= len(segments) - 1, segments
    assert {c.content[:3] for c in _srt(out / "one.srt")} == {"S1："}

    # the command line: no longer refused, and the count given reaches each file
    assert cli_main(["transcribe", str(src / "talks"), "-o", str(tmp_path / "cli"), "--model", str(engine.model_id),
                     "--formats", "json", "--diarize", "--num-speakers", "1"]) == 0
    assert "1 file: 1 transcribed" in capsys.readouterr().out
    labelled = json.loads((tmp_path / "cli" / "two.json").read_text(encoding="utf-8"))["segments"]
    assert labelled and {s["speaker"] for s in labelled} == {"S1"}


def test_folder_without_the_diarize_extra_stops_before_the_first_file(tmp_path, engine, zh_cv_mini, rows,
                                                                      monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(diarize.importlib.util, "find_spec",
                        lambda name, *args: None if name == "resemblyzer" else find_spec(name, *args))
    folder_of_clips(tmp_path / "in", zh_cv_mini, rows[:1], ["one.mp3"])
    with pytest.raises(MissingExtraError, match=r"whisper-zh\[diarize\]"):
        transcribe_folder(tmp_path / "in", tmp_path / "out", ["srt"], engine, diarize=True, progress=False)
    assert not (tmp_path / "out").exists()


def _srt(path: Path) -> list:
    import srt

    return list(srt.parse(path.read_text(encoding="utf-8")))
