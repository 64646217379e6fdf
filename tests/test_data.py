"""Data in: Common Voice folders and tarballs, datasets directories, bad clips, the cache."""

import csv
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from whisper_zh.train.config import TrainConfig
from whisper_zh.errors import DataError
from whisper_zh.train.data import (LabelEncoder, PrepareOptions, list_splits, open_source, prepare_split, read_cv_split)
from whisper_zh.media import ffmpeg_exe, load_audio

CV_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents",
              "locale", "segment"]


def write_tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CV_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: "" for c in CV_COLUMNS}, "client_id": "x", "locale": "zh-CN", **row})


def make_release(root, zh_cv_mini, splits):
    """A Common Voice-layout release under root/cv-corpus-test/zh-CN with the given
    {split: [rows]} (rows as dicts with path and sentence); real clips are copied from zh-cv-mini."""
    release = root / "cv-corpus-test" / "zh-CN"
    (release / "clips").mkdir(parents=True)
    for split, rows in splits.items():
        write_tsv(release / f"{split}.tsv", rows)
        for row in rows:
            src = zh_cv_mini / "clips" / row["path"]
            if src.exists():
                shutil.copy(src, release / "clips" / row["path"])
    return release


@pytest.fixture(scope="module")
def labels(whisper_base):
    return LabelEncoder(str(whisper_base), "zh", "transcribe")


@pytest.fixture(scope="module")
def mini_rows(zh_cv_mini):
    return {split: read_cv_split(str(zh_cv_mini), split) for split in ("train", "dev", "test")}


def test_read_cv_split_has_paths_and_sentences(mini_rows):
    assert [len(mini_rows[s]) for s in ("train", "dev", "test")] == [400, 50, 50]
    assert mini_rows["test"][0]["path"].endswith(".mp3") and mini_rows["test"][0]["sentence"]


def test_release_folder_found_from_any_parent(tmp_path, zh_cv_mini, mini_rows):
    release = make_release(tmp_path, zh_cv_mini, {"test": mini_rows["test"][:3]})
    for given in (tmp_path, tmp_path / "cv-corpus-test", release):
        source = open_source(str(given))
        assert source.kind == "cv" and source.location == str(release)


def test_a_release_is_named_by_its_version_and_locale(tmp_path, zh_cv_mini):
    release = tmp_path / "cv-corpus-23.0-2025-09-05" / "zh-CN"
    (release / "clips").mkdir(parents=True)
    write_tsv(release / "train.tsv", [])
    assert open_source(str(tmp_path)).release_name == "cv-corpus-23.0 zh-CN"
    tarball = tmp_path / "cv-corpus-23.0-2025-09-05-zh-CN.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(release.parent, arcname=release.parent.name)
    assert open_source(str(tarball)).release_name == "cv-corpus-23.0 zh-CN"
    # anything else by its own name, never by a local path
    assert open_source(str(zh_cv_mini)).release_name == "zh-cv-mini"
    assert open_source("someone/common-voice-zh").release_name == "someone/common-voice-zh"


def test_splits_of_a_release(zh_cv_mini):
    assert list_splits(open_source(str(zh_cv_mini)), "unused") == {"train": 400, "dev": 50, "test": 50,
                                                                   "validated": 500}


def test_prepare_options_come_from_the_training_config():
    config = TrainConfig(dataset="x", text_column="text", max_duration_s=20.0, prepare_shard_size=7,
                         preprocessing_num_workers=3, max_train_samples=5)
    assert PrepareOptions.from_config(config) == PrepareOptions(text_column="text", max_duration_s=20.0,
                                                                shard_size=7, num_workers=3)
    assert PrepareOptions.from_config(config, max_samples=5).max_samples == 5
    assert PrepareOptions.from_config(TrainConfig()) == PrepareOptions(), "one set of defaults"


def test_withdrawn_common_voice_id_explains_what_to_do():
    with pytest.raises(DataError, match="withdrawn.*Mozilla Data Collective.*tar.gz"):
        open_source("mozilla-foundation/common_voice_11_0")


def test_missing_local_path_is_explained(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope" / "cv-corpus"))
    with pytest.raises(DataError, match="no dataset given"):
        open_source("")


def test_prepare_folder_and_tarball_agree_and_cache_is_compact(tmp_path, zh_cv_mini, mini_rows, labels):
    rows = {"dev": mini_rows["dev"][:12], "test": mini_rows["test"][:12]}
    make_release(tmp_path / "src", zh_cv_mini, rows)
    tar_path = tmp_path / "cv-corpus-test-zh-CN.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cv-corpus-test", arcname="cv-corpus-test")

    opts = PrepareOptions(shard_size=5)
    from_dir, dir_stats = prepare_split(open_source(str(tmp_path / "src")), "dev+test", str(tmp_path / "c1"),
                                        labels, opts)
    tar_source = open_source(str(tar_path))
    assert tar_source.kind == "cv-tar"
    from_tar, tar_stats = prepare_split(tar_source, "dev+test", str(tmp_path / "c2"), labels, opts)
    assert len(from_dir) == len(from_tar) == 24 == dir_stats.kept == tar_stats.kept
    assert from_dir["sentence"] == from_tar["sentence"] == [r["sentence"] for r in rows["dev"] + rows["test"]]
    assert from_dir["labels"] == from_tar["labels"]
    # labels: <|startoftranscript|><|zh|><|transcribe|><|notimestamps|> sentence-as-written <|endoftext|>
    tok = labels.tokenizer
    assert tok.decode(from_dir[0]["labels"], skip_special_tokens=True) == rows["dev"][0]["sentence"]
    assert from_dir[0]["labels"][:4] == tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"])
    # the cache holds the original compressed clip: decoding it gives the source audio
    original = load_audio(tmp_path / "src" / "cv-corpus-test" / "zh-CN" / "clips" / rows["dev"][0]["path"])
    np.testing.assert_allclose(load_audio(from_dir[0]["audio"]), original, atol=1e-6)
    # compact: well under a tenth of the 0.96 MB a precomputed log-mel would cost per clip
    assert dir_stats.cache_bytes < 24 * 960_000 / 10
    # the tarball was extracted once, into the cache; a second run reuses everything
    again, stats = prepare_split(tar_source, "dev+test", str(tmp_path / "c2"), labels, opts)
    assert stats.prepared_now == 0 and len(again) == 24


def test_bad_clips_are_dropped_and_counted(tmp_path, zh_cv_mini, mini_rows, labels):
    good = mini_rows["train"][:4]
    release = make_release(tmp_path, zh_cv_mini, {"train": good})
    clips = release / "clips"
    (clips / "zero.mp3").write_bytes(b"")
    (clips / "text.mp3").write_text("this is not audio, just text named .mp3\n" * 20)
    long_clip = clips / "long.mp3"
    sources = [str(zh_cv_mini / "clips" / r["path"]) for r in mini_rows["train"][:12]]
    inputs = sum((["-i", s] for s in sources), [])
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *inputs, "-filter_complex",
                    f"concat=n={len(sources)}:v=0:a=1", str(long_clip)], check=True)
    assert len(load_audio(long_clip)) / 16000 > 40
    bad = [
        {"path": "gone.mp3", "sentence": "这个文件不存在"},
        {"path": "zero.mp3", "sentence": "零字节"},
        {"path": "text.mp3", "sentence": "文本文件"},
        {"path": good[0]["path"], "sentence": ""},
        {"path": "long.mp3", "sentence": "四十秒以上的录音"},
    ]
    write_tsv(release / "train.tsv", good + bad)
    dataset, stats = prepare_split(open_source(str(release)), "train", str(tmp_path / "cache"), labels,
                                   PrepareOptions(shard_size=3))
    assert stats.kept == len(dataset) == 4
    assert dict(stats.dropped) == {"missing": 1, "empty_file": 1, "undecodable": 1, "empty_sentence": 1,
                                   "too_long": 1}
    summary = stats.summary("train")
    assert "4 of 9 clips kept" in summary and "too_long 1" in summary


def test_label_longer_than_limit_is_dropped(tmp_path, zh_cv_mini, mini_rows, labels):
    rows = mini_rows["test"][:3]
    release = make_release(tmp_path, zh_cv_mini, {"test": rows})
    write_tsv(release / "test.tsv", rows[:2] + [{"path": rows[2]["path"], "sentence": "很长" * 300}])
    _, stats = prepare_split(open_source(str(release)), "test", str(tmp_path / "c"), labels, PrepareOptions())
    assert stats.kept == 2 and stats.dropped == {"label_too_long": 1}


def test_interrupted_preparation_resumes_at_first_unfinished_shard(tmp_path, zh_cv_mini, mini_rows, labels):
    release = make_release(tmp_path, zh_cv_mini, {"dev": mini_rows["dev"][:10]})
    source, opts = open_source(str(release)), PrepareOptions(shard_size=4)
    full, _ = prepare_split(source, "dev", str(tmp_path / "cache"), labels, opts)
    target = next((tmp_path / "cache" / "prepared").iterdir())
    shards = sorted(p for p in target.iterdir() if p.name.startswith("shard-"))
    assert len(shards) == 3
    # as a kill would leave it: no done marker, the last shard half-written
    (target / "done.json").unlink()
    shutil.rmtree(shards[2])
    (target / "shard-00002.tmp").mkdir()
    (target / "shard-00002.tmp" / "garbage.arrow").write_bytes(b"partial")
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards[:2]}
    resumed, stats = prepare_split(source, "dev", str(tmp_path / "cache"), labels, opts)
    assert stats.prepared_now == 2  # only the 2 clips of the unfinished shard
    assert {p.name: p.stat().st_mtime_ns for p in shards[:2]} == mtimes
    assert resumed["sentence"] == full["sentence"] and not (target / "shard-00002.tmp").exists()


def test_datasets_directory_with_audio_column(tmp_path, zh_cv_mini, mini_rows, labels):
    import datasets

    rows = mini_rows["test"][:6]
    clips = [str(zh_cv_mini / "clips" / r["path"]) for r in rows]
    arrays = [load_audio(c) for c in clips]
    ds = datasets.DatasetDict({
        # one split with encoded files (as the Hub stores Common Voice; decode=False since datasets >= 4
        # would need torchcodec to decode), one with decoded arrays in a plain column
        "test": datasets.Dataset.from_dict({"audio": clips, "text": [r["sentence"] for r in rows]})
        .cast_column("audio", datasets.Audio(decode=False)),
        "validation": datasets.Dataset.from_dict({
            "audio": [{"array": a, "sampling_rate": 16000} for a in arrays[:3]],
            "text": [r["sentence"] for r in rows[:3]]}),
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    source = open_source(str(tmp_path / "ds"))
    assert source.kind == "disk"
    opts = PrepareOptions(text_column="text")
    test, stats = prepare_split(source, "test", str(tmp_path / "c"), labels, opts)
    assert stats.kept == 6 and test["sentence"] == [r["sentence"] for r in rows]
    np.testing.assert_allclose(load_audio(test[0]["audio"]), arrays[0], atol=1e-6)
    dev, _ = prepare_split(source, "dev", str(tmp_path / "c"), labels, opts)  # "dev" finds "validation"
    assert len(dev) == 3
    np.testing.assert_allclose(load_audio(dev[0]["audio"]), arrays[0], atol=1e-3)
    with pytest.raises(DataError, match="no column 'sentence'"):
        prepare_split(source, "test", str(tmp_path / "c"), labels, PrepareOptions())


def test_prepare_command_prints_counts_and_cache(tmp_path, zh_cv_mini, mini_rows, whisper_base):
    release = make_release(tmp_path, zh_cv_mini, {"train": mini_rows["train"][:5], "dev": mini_rows["dev"][:3],
                                                 "test": mini_rows["test"][:3]})
    out = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "prepare", "--dataset", str(release), "--cache_dir",
         str(tmp_path / "cache"), "--model_name_or_path", str(whisper_base)],
        capture_output=True, text=True, check=True).stderr  # progress is logged, on stderr
    assert "train (train): 5 of 5 clips kept" in out and "eval (dev): 3 of 3" in out and "MiB" in out
    assert "clips/s" in out
    bad = subprocess.run([sys.executable, "-m", "whisper_zh", "prepare", "--dataset",
                          "mozilla-foundation/common_voice_11_0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "withdrawn" in bad.stderr


def test_streaming_a_data_folder_matches_the_downloaded_read(tmp_path, zh_cv_mini, mini_rows, labels):
    """A folder of parquet files (as a Hub dataset repo holds them), read with and without streaming."""
    import datasets

    rows = mini_rows["test"][:5]
    ds = datasets.Dataset.from_dict({
        "audio": [str(zh_cv_mini / "clips" / r["path"]) for r in rows],
        "sentence": [r["sentence"] for r in rows]}).cast_column("audio", datasets.Audio(decode=False))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    source = open_source(str(tmp_path / "repo"))
    streamed, s_stats = prepare_split(source, "test", str(tmp_path / "c1"), labels,
                                      PrepareOptions(streaming=True, shard_size=2))
    loaded, _ = prepare_split(source, "test", str(tmp_path / "c2"), labels, PrepareOptions(shard_size=2))
    assert s_stats.kept == 5 and streamed["sentence"] == loaded["sentence"] == [r["sentence"] for r in rows]
    assert streamed["audio"] == loaded["audio"]
    # a streamed preparation killed after its first shard resumes after it
    target = next((tmp_path / "c1" / "prepared").iterdir())
    (target / "done.json").unlink()
    for shard in ("shard-00001", "shard-00002"):
        shutil.rmtree(target / shard)
    resumed, stats = prepare_split(source, "test", str(tmp_path / "c1"), labels,
                                   PrepareOptions(streaming=True, shard_size=2))
    assert stats.prepared_now == 3 and resumed["sentence"] == streamed["sentence"]


# --------------------------------------------------------------------------------------
# Releases as the Mozilla Data Collective ships them: found by content, whatever the name
# --------------------------------------------------------------------------------------


def make_archive(path, release_root, arcname):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(release_root, arcname=arcname)
    return path


@pytest.mark.parametrize("top, archive_name, expected", [
    ("cv-corpus-23.0-2025-09-05", "cv-corpus-23.0-2025-09-05-zh-CN.tar.gz", "cv-corpus-23.0 zh-CN"),
    ("mcv-scripted-zh-CN-v24.0", "mcv-scripted-zh-CN-v24.0.tar.gz", "mcv-scripted-zh-CN-v24.0"),
    # the archive named by the download, the release by its folder inside
    ("cv-corpus-24.0-2025-12-05", "mcv-scripted-zh-CN-v24.0.tar.gz", "cv-corpus-24.0 zh-CN"),
    ("my-voices", "download", "my-voices zh-CN"),  # unknown names, no extension at all
])
def test_a_release_is_found_by_content_and_named(tmp_path, zh_cv_mini, mini_rows, top, archive_name, expected):
    release = tmp_path / "src" / top / "zh-CN"
    (release / "clips").mkdir(parents=True)
    write_tsv(release / "train.tsv", mini_rows["train"][:1])
    shutil.copy(zh_cv_mini / "clips" / mini_rows["train"][0]["path"], release / "clips")
    folder = open_source(str(tmp_path / "src"))
    assert folder.kind == "cv" and folder.location == str(release) and folder.release_name == expected
    archive = make_archive(tmp_path / archive_name, release.parent, top)
    source = open_source(str(archive))
    assert source.kind == "cv-tar" and source.inner == f"{top}/zh-CN" and source.release_name == expected
    assert list_splits(source, str(tmp_path / "cache")) == {"train": 1}


def test_an_archive_without_a_release_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no clips here")
    archive = make_archive(tmp_path / "cv-corpus-23.0-zh-CN.tar.gz", tmp_path / "notes", "notes")
    with pytest.raises(DataError, match="not a Common Voice archive"):
        open_source(str(archive))
    (tmp_path / "plain.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a Common Voice archive"):
        open_source(str(tmp_path / "plain.tar.gz"))


def test_from_an_archive_only_the_listed_clips_are_extracted_and_the_cache_outlives_it(
        tmp_path, zh_cv_mini, mini_rows, labels):
    rows = {"train": mini_rows["train"][:6], "dev": mini_rows["dev"][:3], "test": mini_rows["test"][:3]}
    release = make_release(tmp_path / "src", zh_cv_mini, rows)
    write_tsv(release / "validated.tsv", rows["train"] + rows["dev"] + rows["test"])
    download = tmp_path / "download"
    download.mkdir()
    archive = make_archive(download / "mcv-scripted-zh-CN-v24.0.tar.gz", release.parent, "mcv-scripted-zh-CN-v24.0")
    cache, local = str(tmp_path / "drive" / "cache"), str(tmp_path / "local")
    source = open_source(str(archive))
    opts = PrepareOptions(shard_size=4)
    dev, stats = prepare_split(source, "dev", cache, labels, opts, extract_dir=local)
    assert stats.prepared_now == 3 and len(dev) == 3
    # the TSVs and the three dev clips came out, not the train or test clips
    extracted = sorted(p.name for p in (tmp_path / "local").rglob("*.mp3"))
    assert extracted == sorted(r["path"] for r in rows["dev"])
    assert not list((tmp_path / "local").rglob("*.part"))
    shards = {p: p.stat().st_mtime_ns for p in (tmp_path / "drive" / "cache" / "prepared").glob("*/shard-*/*")}

    # The archive downloaded again: a new file (new path, new mtime), the same bytes, and the
    # local disk wiped as by a new Colab runtime. The cache is reused without reading the archive.
    shutil.rmtree(local)
    again = tmp_path / "download2" / "mcv-scripted-zh-CN-v24.0.tar.gz"
    again.parent.mkdir()
    shutil.copyfile(archive, again)
    archive.unlink()
    source = open_source(str(again))
    dev2, stats = prepare_split(source, "dev", cache, labels, opts, extract_dir=local)
    assert stats.prepared_now == 0 and dev2["audio"] == dev["audio"]
    assert {p: p.stat().st_mtime_ns for p in shards} == shards and not (tmp_path / "local").exists()

    # The archive deleted: the config still names it, and the cache alone serves.
    again.unlink()
    cached = open_source(str(again), cache_dir=cache)
    assert cached.kind == "cached" and cached.release_name == "mcv-scripted-zh-CN-v24.0"
    dev3, stats = prepare_split(cached, "dev", cache, labels, opts, extract_dir=local)
    assert stats.prepared_now == 0 and dev3["sentence"] == dev["sentence"]
    with pytest.raises(DataError, match="is gone.*no split 'train'"):
        prepare_split(cached, "train", cache, labels, opts, extract_dir=local)
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(again))  # without the cache to look in


def test_a_release_named_by_its_parent_folder_is_served_from_the_cache_once_gone(tmp_path, zh_cv_mini, mini_rows,
                                                                              labels):
    """The README lets a parent folder name the release; a new Colab runtime loses it."""
    release = make_release(tmp_path / "content", zh_cv_mini, {"dev": mini_rows["dev"][:3]})
    cache = str(tmp_path / "drive" / "cache")
    source = open_source(str(tmp_path / "content"))
    assert source.location == str(release)
    dev, _ = prepare_split(source, "dev", cache, labels, PrepareOptions(shard_size=4))
    shutil.rmtree(tmp_path / "content")
    for named in (tmp_path / "content", release):
        cached = open_source(str(named), cache_dir=cache)
        assert cached.kind == "cached" and cached.location == str(release)
        again, stats = prepare_split(cached, "dev", cache, labels, PrepareOptions(shard_size=4))
        assert stats.prepared_now == 0 and again["sentence"] == dev["sentence"]
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "elsewhere"), cache_dir=cache)


def test_same_split_lists_from_another_archive_reuse_the_cache(tmp_path, zh_cv_mini, mini_rows, labels):
    """Keyed on what the split lists, not on the archive: the same release repacked (other
    bytes, other name) prepares nothing again, and is remembered for next time."""
    rows = {"dev": mini_rows["dev"][:3]}
    release = make_release(tmp_path / "src", zh_cv_mini, rows)
    first = make_archive(tmp_path / "a.tar.gz", release.parent, "cv-corpus-23.0-2025-09-05")
    with tarfile.open(tmp_path / "b.tar", "w") as tar:  # uncompressed, another top folder
        tar.add(release.parent, arcname="mcv-scripted-zh-CN-v23.0")
    cache = str(tmp_path / "cache")
    _, stats = prepare_split(open_source(str(first)), "dev", cache, labels, PrepareOptions())
    assert stats.prepared_now == 3
    second = open_source(str(tmp_path / "b.tar"))
    assert second.fingerprint != open_source(str(first)).fingerprint
    _, stats = prepare_split(second, "dev", cache, labels, PrepareOptions())
    assert stats.prepared_now == 0
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 1
    # a changed list is another preparation
    write_tsv(release / "dev.tsv", rows["dev"][:2])
    _, stats = prepare_split(open_source(str(release)), "dev", cache, labels, PrepareOptions())
    assert stats.prepared_now == 2


def test_prepared_from_an_archive_then_trained_from_the_cache_alone(tmp_path, zh_cv_mini, mini_rows, tiny_whisper):
    import json

    from whisper_zh.train.data import prepare_data
    from whisper_zh.train.pipeline import train

    rows = {"train": mini_rows["train"][:8], "dev": mini_rows["dev"][:4], "test": mini_rows["test"][:2]}
    release = make_release(tmp_path / "src", zh_cv_mini, rows)
    archive = make_archive(tmp_path / "mcv-scripted-zh-CN-v24.0.tar.gz", release.parent, "mcv-scripted-zh-CN-v24.0")
    config = TrainConfig(dataset=str(archive), model_name_or_path=str(tiny_whisper), cache_dir=str(tmp_path / "cache"),
                         extract_dir=str(tmp_path / "local"), output_dir=str(tmp_path / "out"), max_steps=2,
                         save_steps=2, per_device_train_batch_size=4, eval_max_samples=4, generation_max_length=6,
                         logging_steps=1, ct2_quantization="")
    prepared = prepare_data(config)
    assert {s: st.prepared_now for s, st in prepared.stats.items()} == {"train": 8, "dev": 4, "test": 2}
    # a new runtime: the archive and everything extracted from it are gone
    archive.unlink()
    shutil.rmtree(tmp_path / "local")
    result = train(config)
    assert result.global_step == 2 and result.eval_cer is not None and result.test_metrics
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"] == "mcv-scripted-zh-CN-v24.0" and results["train_clips"] == 8
    assert not (tmp_path / "local").exists()


# A forked preparation worker runs the cyclic garbage collector sooner or later. Here it
# runs it first thing, with a CTranslate2 model left as garbage in the parent (held only
# by itself, as a notebook's can be): the model's destructor would wait forever in the
# worker for threads that were not forked with it.
_GARBAGE_MODEL_BEFORE_WORKERS = r"""
import gc, sys
from dataclasses import dataclass
from whisper_zh.serve.ct2_backend import load_ct2
from whisper_zh.train.data import ShardJob, _run_jobs

@dataclass
class CollectingJob(ShardJob):
    @property
    def size(self):
        return 1

    def run(self):
        gc.collect()

if __name__ == "__main__":
    gc.disable()  # the parent's own collector must not free it first by chance
    model = load_ct2(sys.argv[1])
    model.itself = model
    del model
    print(_run_jobs([CollectingJob(sys.argv[2] + str(i), None, None) for i in range(2)], workers=2))
"""


def test_preparation_workers_are_not_stopped_by_a_model_the_parent_left_as_garbage(whisper_base_ct2, tmp_path):
    script = tmp_path / "garbage_model.py"
    script.write_text(_GARBAGE_MODEL_BEFORE_WORKERS)
    out = subprocess.run([sys.executable, str(script), str(whisper_base_ct2), str(tmp_path / "shard-")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2"]
