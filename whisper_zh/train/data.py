"""Data in: a Common Voice release or a ``datasets`` audio dataset -> a compact, resumable cache.

Sources (:func:`open_source` tells them apart):

* a Common Voice release as the Mozilla Data Collective ships it, found by what it holds
  (a ``<locale>/clips/*.mp3`` folder beside ``train/dev/test/validated.tsv``), whatever
  its name (``cv-corpus-23.0-2025-09-05``, ``mcv-scripted-zh-CN-v24.0``, ...): the
  extracted folder (or any folder above it) or the archive itself. From an archive only
  the TSVs and the clips that the chosen splits list are extracted, to a local disk;
* a local ``datasets`` directory (``save_to_disk``) or data folder, or a Hub dataset id,
  with an audio column and a text column (streaming allowed).

The cache stores, per clip, the original compressed audio bytes (a 5 s Common Voice mp3
is ~15 kB, against the 0.96 MB of a precomputed 80x3000 float32 log-mel; decoded-array
sources are stored as 16 kHz FLAC) and the label token ids. Decoding (~2 ms a clip) and
log-mel happen per batch at training time (:mod:`whisper_zh.train.examples`).

A prepared split is keyed on what it holds: the rows its TSV lists (or, for other sources,
the source's fingerprint), the options and the tokenizer -- not on an archive's path or
mtime. Each prepared split records the sources it was made from (an archive by its size
and the hash of its first and last MiB), so a re-downloaded archive is recognised without
reading it, and once a split is prepared neither training nor evaluation needs the
archive: with the archive deleted, the cache alone serves (a "cached" source).

Preparation is cut into shards of ``shard_size`` clips, each written to a temporary
directory and renamed into place when complete, so a killed preparation resumes at the
first unfinished shard and a half-written shard is never read. Clips that are missing,
empty, undecodable, longer than ``max_duration_s`` or whose label is empty or longer
than ``max_label_tokens`` are dropped and counted, never fatal.
"""

from __future__ import annotations

import csv
import gc
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import AudioDecodeError, DataError
from whisper_zh.hub import looks_local
from whisper_zh.media import load_audio, resample, to_int16
from whisper_zh.train.config import TrainConfig

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached columns change
WITHDRAWN = ("mozilla-foundation/common_voice",)
# The splits of a Common Voice release whose clips are validated and transcribed (a
# release also has other.tsv, invalidated.tsv, ...: unreviewed or rejected clips).
CV_SPLITS = ("train", "dev", "test", "validated")
# How the Collective has named its releases: cv-corpus-23.0-2025-09-05(-zh-CN).tar.gz,
# mcv-scripted-zh-CN-v24.0.tar.gz. Only for naming: a release is found by its content.
_RELEASE_RE = re.compile(r"(cv-corpus-\d+(?:\.\d+)*|mcv-[a-z]+-[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,4})?-v\d+(?:\.\d+)*)")
_LOCALE_RE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,4})?$")
# Bytes read from each end of an archive to recognise it (see _archive_fingerprint).
_FINGERPRINT_BYTES = 1 << 20
# Hub datasets name Common Voice's "dev" split "validation".
SPLIT_ALIASES = {"dev": "validation", "validation": "dev"}

csv.field_size_limit(sys.maxsize)


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


@dataclass
class Source:
    """A resolved dataset argument.

    kind: "cv" (release folder), "cv-tar" (release archive, extracted on demand),
    "disk" (``save_to_disk`` directory), "hub" (Hub id or a data folder for ``load_dataset``),
    "cached" (a dataset that is gone but whose splits the cache holds).
    ``inner``: the release folder's path inside an archive (``cv-corpus-23.0-2025-09-05/zh-CN``);
    ``recorded_name``: the release name a "cached" source had.
    """

    kind: str
    location: str
    fingerprint: str
    config: Optional[str] = None
    inner: Optional[str] = None
    recorded_name: Optional[str] = None

    @property
    def name(self) -> str:
        base = os.path.basename(self.location.rstrip("/")) or self.location
        for suffix in (".tar.gz", ".tgz", ".tar"):
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:60]

    @property
    def release_name(self) -> str:
        """How a model card names the data: ``cv-corpus-23.0 zh-CN`` or
        ``mcv-scripted-zh-CN-v24.0`` for a Common Voice release (folder or archive, whatever
        it is called), the Hub id of a Hub dataset, else the folder's name; never a local path."""
        if self.recorded_name:
            return self.recorded_name
        if self.kind in ("cv", "cv-tar"):
            # the release folder: <release>/<locale>, on disk or inside the archive
            folder = self.location if self.kind == "cv" else (self.inner or "")
            locale = os.path.basename(folder.rstrip("/"))
            match = _RELEASE_RE.search(folder) or _RELEASE_RE.search(os.path.basename(self.location))
            if match:
                release = match.group(1)
            elif _LOCALE_RE.match(locale):
                release = os.path.basename(os.path.dirname(folder.rstrip("/"))) or self.name
            else:
                return self.name
            return release if not _LOCALE_RE.match(locale) or locale in release else f"{release} {locale}"
        if self.kind == "hub" and not os.path.exists(self.location):
            return self.location + (f" ({self.config})" if self.config else "")
        return self.name

    def record(self) -> dict:
        """What a prepared split remembers of the source it was made from."""
        return {"kind": self.kind, "location": self.location, "fingerprint": self.fingerprint,
                "config": self.config, "release_name": self.release_name}


def find_release_dir(path: str) -> Optional[str]:
    """The folder under ``path`` (itself included) holding ``clips/`` and a ``*.tsv``.

    Prefers a ``zh-CN`` folder when a release holds several locales."""
    candidates = []
    for root, dirs, files in os.walk(path):
        if "clips" in dirs and any(f.endswith(".tsv") for f in files):
            candidates.append(root)
            dirs[:] = []
        elif root.count(os.sep) - path.count(os.sep) >= 3:
            dirs[:] = []
    if not candidates:
        return None
    candidates.sort(key=lambda d: (os.path.basename(d) != "zh-CN", d))
    return candidates[0]


def _stat_fingerprint(paths: Iterable[str]) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def _archive_fingerprint(path: str) -> str:
    """An archive's identity by content, read in constant time: its size and the hash of
    its first and last MiB (a gzip stream ends with the CRC and size of all it holds).
    The same archive downloaded again (new path, new mtime) has the same fingerprint."""
    size = os.path.getsize(path)
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()


def _release_dir_of(member_name: str) -> Optional[str]:
    """``a/zh-CN`` for an archive member ``a/zh-CN/clips/x.mp3`` or ``a/zh-CN/train.tsv``."""
    parent, base = posixpath.split(member_name)
    if base.endswith(".tsv"):
        return parent
    if posixpath.basename(parent) == "clips" and base:
        return posixpath.dirname(parent)
    return None


def archive_release(path: str, max_members: int = 1000) -> Optional[str]:
    """The release folder inside archive ``path`` (``cv-corpus-23.0-2025-09-05/zh-CN``), by
    its first clip or TSV; None when ``path`` is no tar archive or holds neither among
    its first ``max_members`` files (reading stops there: an archive is ~20 GB)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for i, member in enumerate(tar):
                if i >= max_members:
                    break
                if member.isfile() and (found := _release_dir_of(member.name)) is not None:
                    return found
    except (tarfile.TarError, OSError, EOFError):
        return None
    return None


def open_source(dataset: str, config: Optional[str] = None, cache_dir: Optional[str] = None) -> Source:
    """Resolve the ``dataset`` argument (see the module docstring) without reading any audio.

    A local dataset that no longer exists but whose splits ``cache_dir`` holds is a
    "cached" source: training and evaluation go on from the cache alone."""
    if not dataset:
        raise DataError("no dataset given: pass a Common Voice release folder or .tar.gz, "
                        "a local datasets directory, or a Hub dataset id")
    if dataset.startswith(WITHDRAWN):
        raise DataError(
            f"{dataset} was withdrawn from the Hugging Face Hub and no longer loads with datasets >= 4. "
            "Download the Common Voice zh-CN release from the Mozilla Data Collective "
            "(https://datacollective.mozillafoundation.org, a cv-corpus-*-zh-CN.tar.gz) and pass "
            "its path: the .tar.gz itself or the extracted folder."
        )
    path = os.path.expanduser(dataset)
    if os.path.isfile(path):
        inner = archive_release(path)
        if inner is None:
            raise DataError(f"{path} is not a Common Voice archive (a tar holding <locale>/clips/*.mp3 "
                            "and the split TSVs)")
        return Source("cv-tar", os.path.abspath(path), _archive_fingerprint(path), inner=inner)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
            os.path.join(path, "state.json")
        ):
            files = glob.glob(os.path.join(path, "**", "*.json"), recursive=True)
            return Source("disk", os.path.abspath(path), _stat_fingerprint(files))
        release = find_release_dir(path)
        if release:
            return Source("cv", release, _stat_fingerprint(glob.glob(os.path.join(release, "*.tsv"))))
        files = [f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.isfile(f)]
        if not files:
            raise DataError(f"{path} is an empty folder")
        return Source("hub", os.path.abspath(path), _stat_fingerprint(files[:1000]), config)
    if os.path.exists(path):
        raise DataError(f"{path} is neither a folder nor a Common Voice archive")
    if looks_local(dataset):
        # the release itself, or the folder it was found under (a parent may be given)
        here = os.path.abspath(path)
        recorded = [r["source"] for r in prepared_records(cache_dir)
                    if r["source"]["location"] == here or r["source"]["location"].startswith(here + os.sep)
                    ] if cache_dir else []
        locations = sorted({r["location"] for r in recorded})
        if len(locations) > 1:
            raise DataError(f"{dataset} is gone, and splits of several releases under it are prepared in "
                            f"{cache_dir}: name one of {', '.join(locations)}")
        if recorded:
            logger.info("%s is gone: using the splits prepared from it in %s", dataset, cache_dir)
            return Source("cached", recorded[0]["location"], recorded[0]["fingerprint"], recorded[0]["config"],
                          recorded_name=recorded[0]["release_name"])
        raise DataError(f"{dataset} does not exist")
    return Source("hub", dataset, hashlib.sha1(f"{dataset}:{config}".encode()).hexdigest(), config)


def default_extract_dir(cache_dir: str) -> str:
    return os.path.join(os.path.expanduser(cache_dir), "releases")


def extract_release(tar_path: str, extract_root: str, clips: Optional[Iterable[str]] = None) -> str:
    """The release folder of archive ``tar_path`` under ``extract_root``, holding its TSVs
    and (given ``clips``, names from a TSV's ``path`` column) those clips; nothing else.

    The TSVs are extracted once (one pass over the archive, into
    ``<name>-<fingerprint>.partial``, renamed when finished so an interrupted pass starts
    again); each call with ``clips`` extracts those not there yet in one more pass, which
    ends when the last is out. A clip is written beside its final name and renamed, so a
    killed extraction leaves no truncated clip."""
    fingerprint = _archive_fingerprint(tar_path)
    final = os.path.join(extract_root, f"{Source('cv-tar', tar_path, '').name}-{fingerprint[:10]}")
    index = os.path.join(final, "release.json")
    if not os.path.isfile(index):
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        logger.info("reading the split lists of %s -> %s", tar_path, final)
        seen: dict[str, set] = {}
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                inner = _release_dir_of(member.name) if member.isfile() else None
                if inner is None:
                    continue
                if member.name.endswith(".tsv"):
                    tar.extract(member, partial, filter="data")
                    seen.setdefault(inner, set()).add("tsv")
                else:
                    seen.setdefault(inner, set()).add("clips")
        releases = sorted((d for d, kinds in seen.items() if kinds == {"tsv", "clips"}),
                          key=lambda d: (posixpath.basename(d) != "zh-CN", d))
        if not releases:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"{tar_path} holds no Common Voice release (no clips/ folder beside a .tsv)")
        with open(os.path.join(partial, "release.json"), "w") as f:
            json.dump({"release": releases[0]}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    with open(index) as f:
        inner = json.load(f)["release"]
    release = os.path.join(final, *inner.split("/"))
    if clips is not None:
        _extract_clips(tar_path, inner, release, clips)
    return release


def _extract_clips(tar_path: str, inner: str, release: str, clips: Iterable[str]) -> None:
    clips_dir = os.path.join(release, "clips")
    os.makedirs(clips_dir, exist_ok=True)
    # a TSV names files, never paths: anything else is not extracted (and counts as missing)
    wanted = {c for c in clips if c and c == posixpath.basename(c) and c not in (".", "..")
              and not os.path.exists(os.path.join(clips_dir, c))}
    if not wanted:
        return
    logger.info("extracting %d clips from %s", len(wanted), tar_path)
    prefix = f"{inner}/clips/"
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            name = member.name[len(prefix):] if member.name.startswith(prefix) else None
            if not member.isfile() or name not in wanted:
                continue
            target = os.path.join(clips_dir, name)
            with tar.extractfile(member) as src, open(target + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(target + ".part", target)
            wanted.discard(name)
            if not wanted:
                break
    if wanted:
        logger.info("  %d listed clips are not in the archive (counted as missing)", len(wanted))


def release_dir(source: Source, cache_dir: str, extract_dir: Optional[str] = None,
                clips: Optional[Iterable[str]] = None) -> str:
    """The release folder of a Common Voice source; from an archive, the TSVs (and the
    ``clips`` named) are extracted first, once."""
    if source.kind == "cv":
        return source.location
    if source.kind == "cv-tar":
        return extract_release(source.location, extract_dir or default_extract_dir(cache_dir), clips)
    raise DataError(f"{source.location} is not a Common Voice release")


def list_splits(source: Source, cache_dir: str, extract_dir: Optional[str] = None) -> dict[str, Optional[int]]:
    """Split -> clips listed (None where a Hub dataset does not say without downloading).

    A Common Voice release lists its :data:`CV_SPLITS` that it has."""
    import datasets

    if source.kind == "cached":
        return {r["split"]: r["kept"] for r in prepared_records(cache_dir)
                if r["source"]["location"] == source.location}
    if source.kind in ("cv", "cv-tar"):
        release = release_dir(source, cache_dir, extract_dir)
        return {s: len(read_cv_split(release, s)) for s in CV_SPLITS
                if os.path.exists(os.path.join(release, f"{s}.tsv"))}
    if source.kind == "disk":
        loaded = datasets.load_from_disk(source.location)
        return {k: len(v) for k, v in loaded.items()} if isinstance(loaded, datasets.DatasetDict) else {}
    return {s: None for s in datasets.get_dataset_split_names(source.location, source.config)}


def read_cv_split(release_dir: str, split: str) -> list[dict]:
    """Rows of ``<release_dir>/<split>.tsv`` as dicts with at least ``path`` and ``sentence``."""
    tsv = os.path.join(release_dir, f"{split}.tsv")
    if not os.path.exists(tsv):
        have = sorted(f[:-4] for f in os.listdir(release_dir) if f.endswith(".tsv"))
        raise DataError(f"no split {split!r} in {release_dir} (it has: {', '.join(have)})")
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or "path" not in reader.fieldnames or "sentence" not in reader.fieldnames:
            raise DataError(f"{tsv} has no 'path' and 'sentence' columns")
        return [{"path": r["path"] or "", "sentence": r["sentence"] or ""} for r in reader]


def _load_hf(source: Source, split: str, streaming: bool):
    import datasets

    if source.kind == "disk":
        ds = datasets.load_from_disk(source.location)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds and SPLIT_ALIASES.get(split) in ds:
                split = SPLIT_ALIASES[split]
            if split not in ds:
                raise DataError(f"no split {split!r} in {source.location} (it has: {', '.join(ds)})")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(source.location, source.config, split=split, streaming=streaming)
    except ValueError as err:
        alias = SPLIT_ALIASES.get(split)
        if alias and "split" in str(err).lower():
            return datasets.load_dataset(source.location, source.config, split=alias, streaming=streaming)
        raise


# --------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------


@dataclass
class PrepareOptions:
    """What decides the content of a prepared split (and so its cache key). The defaults
    are :class:`~whisper_zh.train.config.TrainConfig`'s; :meth:`from_config` fills one from a
    configuration."""

    language: str = TrainConfig.language
    task: str = TrainConfig.task
    audio_column: str = TrainConfig.audio_column
    text_column: str = TrainConfig.text_column
    max_duration_s: float = TrainConfig.max_duration_s
    max_label_tokens: int = TrainConfig.max_label_tokens
    streaming: bool = TrainConfig.streaming
    shard_size: int = TrainConfig.prepare_shard_size
    num_workers: Optional[int] = TrainConfig.preprocessing_num_workers
    max_samples: Optional[int] = None  # per split: the pipeline caps the training split only

    # fields named differently in TrainConfig
    _CONFIG_NAMES = {"shard_size": "prepare_shard_size", "num_workers": "preprocessing_num_workers"}

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides) -> "PrepareOptions":
        """The options of ``config`` (a :class:`~whisper_zh.train.config.TrainConfig`, or any
        object with its field names), with ``overrides`` (e.g. ``max_samples``)."""
        values = {}
        for f in fields(cls):
            name = cls._CONFIG_NAMES.get(f.name, f.name)
            if hasattr(config, name):
                values[f.name] = getattr(config, name)
        return cls(**{**values, **overrides})


@dataclass
class PrepareStats:
    """Counts of one prepared split. ``dropped`` maps a reason (missing, empty_file,
    undecodable, too_long, empty_sentence, label_too_long: see :func:`_prepare_example`)
    to a count."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    audio_seconds: float = 0.0
    cache_bytes: int = 0
    seconds: float = 0.0  # preparation wall time spent in this call (0 when all was cached)
    prepared_now: int = 0  # clips examined in this call

    def add(self, other: "PrepareStats") -> None:
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.audio_seconds += other.audio_seconds

    def summary(self, name: str) -> str:
        total = self.kept + sum(self.dropped.values())
        lines = [f"{name}: {self.kept} of {total} clips kept, {self.audio_seconds / 3600:.2f} h of audio, "
                 f"cache {self.cache_bytes / 2**20:.1f} MiB"]
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        if self.prepared_now and self.seconds > 0:
            lines.append(f"  prepared {self.prepared_now} clips in {self.seconds:.1f} s "
                         f"({self.prepared_now / self.seconds:.1f} clips/s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "audio_seconds": self.audio_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "PrepareStats":
        return cls(kept=d["kept"], dropped=Counter(d["dropped"]), audio_seconds=d["audio_seconds"])


class LabelEncoder:
    """Sentence -> Whisper label ids: ``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|> text <|endoftext|>``.

    Picklable by name so that preparation workers load the tokenizer once each."""

    def __init__(self, tokenizer_name_or_path: str, language: str, task: str):
        self.name, self.language, self.task = tokenizer_name_or_path, language, task
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import WhisperTokenizer

            self._tokenizer = WhisperTokenizer.from_pretrained(self.name)
            self._tokenizer.set_prefix_tokens(language=self.language, task=self.task)
        return self._tokenizer

    def __getstate__(self):
        return {"name": self.name, "language": self.language, "task": self.task, "_tokenizer": None}

    def __call__(self, sentence: str) -> list[int]:
        return self.tokenizer(sentence).input_ids

    def fingerprint(self) -> str:
        tok = self.tokenizer
        return hashlib.sha1(json.dumps([len(tok), self(""), tok.eos_token_id]).encode()).hexdigest()[:12]


def _encode_flac(audio: np.ndarray) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, to_int16(audio), SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


def _read_media(audio_ref: Any) -> tuple[bytes, np.ndarray]:
    """-> (bytes to cache, decoded 16 kHz waveform). File and byte sources keep their
    original compressed bytes (a Common Voice mp3 is ~3 kB/s); decoded arrays are stored
    as 16 kHz FLAC."""
    if isinstance(audio_ref, dict):  # a datasets Audio(decode=False) value, or a decoded one
        if audio_ref.get("bytes"):
            data = audio_ref["bytes"]
        elif audio_ref.get("array") is not None:
            audio = np.asarray(audio_ref["array"], dtype=np.float32)
            sr = audio_ref.get("sampling_rate") or SAMPLE_RATE
            audio = resample(audio, sr, SAMPLE_RATE)
            if audio.size == 0:
                raise AudioDecodeError("empty audio data")
            return _encode_flac(audio), audio
        else:
            audio_ref = audio_ref.get("path") or ""
    if not isinstance(audio_ref, dict) and not isinstance(audio_ref, (bytes, bytearray)):
        if not audio_ref or not os.path.isfile(audio_ref):
            raise FileNotFoundError(audio_ref)
        with open(audio_ref, "rb") as f:
            data = f.read()
    return data, load_audio(data)


def _prepare_example(audio_ref: Any, sentence: str, opts: PrepareOptions, labels: LabelEncoder):
    """-> (row, None) for a kept clip or (None, reason) for a dropped one."""
    sentence = (sentence or "").strip()
    if not sentence:
        return None, "empty_sentence"
    try:
        data, audio = _read_media(audio_ref)
    except FileNotFoundError:
        return None, "missing"
    except AudioDecodeError as err:
        return None, "empty_file" if str(err).startswith("empty") else "undecodable"
    except Exception:  # any decoder failure on one clip must not stop the run
        return None, "undecodable"
    duration = audio.shape[0] / SAMPLE_RATE
    if duration > opts.max_duration_s:
        return None, "too_long"
    ids = labels(sentence)
    if len(ids) > opts.max_label_tokens:
        return None, "label_too_long"
    return {"sentence": sentence, "audio": data, "labels": ids, "duration": duration}, None


def _features():
    import datasets

    return datasets.Features({
        "path": datasets.Value("string"),
        "sentence": datasets.Value("string"),
        "audio": datasets.Value("binary"),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "duration": datasets.Value("float32"),
    })


def _write_shard(examples: Iterable[tuple[str, Any, str]], shard_dir: str, opts: PrepareOptions,
                 labels: LabelEncoder) -> PrepareStats:
    """Prepare ``(path, audio_ref, sentence)`` examples into ``shard_dir``, atomically."""
    import datasets

    stats = PrepareStats()
    digest = hashlib.sha1()  # of the clips kept, as stored: what the cache holds
    rows: dict[str, list] = {k: [] for k in ("path", "sentence", "audio", "labels", "duration")}
    for path, audio_ref, sentence in examples:
        row, reason = _prepare_example(audio_ref, sentence, opts, labels)
        if row is None:
            stats.dropped[reason] += 1
            continue
        rows["path"].append(path)
        for k, v in row.items():
            rows[k].append(v)
        digest.update(hashlib.sha1(row["audio"]).digest())
        stats.kept += 1
        stats.audio_seconds += row["duration"]
    tmp = shard_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_dict(rows, features=_features()).save_to_disk(tmp)
    with open(os.path.join(tmp, "stats.json"), "w") as f:
        json.dump({**stats.to_dict(), "clips_sha1": digest.hexdigest()}, f)
    shutil.rmtree(shard_dir, ignore_errors=True)
    os.replace(tmp, shard_dir)
    return stats


@dataclass
class ShardJob:
    """One shard to prepare: its folder, the options and the label encoder; subclasses
    say where its examples come from."""

    shard_dir: str
    opts: PrepareOptions
    labels: LabelEncoder

    @property
    def size(self) -> int:
        raise NotImplementedError

    def examples(self) -> Iterable[tuple[str, Any, str]]:
        raise NotImplementedError

    def done(self) -> bool:
        return os.path.exists(os.path.join(self.shard_dir, "stats.json"))

    def run(self) -> PrepareStats:
        return _write_shard(self.examples(), self.shard_dir, self.opts, self.labels)


@dataclass
class CvShardJob(ShardJob):
    """Rows of a Common Voice TSV, clips in ``release_dir/clips``."""

    rows: list = field(default_factory=list)
    release_dir: str = ""

    @property
    def size(self) -> int:
        return len(self.rows)

    def examples(self):
        return ((r["path"], os.path.join(self.release_dir, "clips", r["path"]) if r["path"] else "", r["sentence"])
                for r in self.rows)


@dataclass
class HfShardJob(ShardJob):
    """Rows ``start:stop`` of a ``datasets.Dataset``."""

    dataset: Any = None
    start: int = 0
    stop: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    def examples(self):
        return _hf_examples(self.dataset.select(range(self.start, self.stop)), self.opts)


def _run_job(job: ShardJob) -> PrepareStats:  # a module-level function, for the process pool
    return job.run()


def _hf_examples(ds, opts: PrepareOptions) -> Iterator[tuple[str, Any, str]]:
    for i, ex in enumerate(ds):
        audio = ex[opts.audio_column]
        path = (audio.get("path") if isinstance(audio, dict) else None) or str(i)
        yield os.path.basename(path), audio, ex[opts.text_column]


def _no_decode(ds, opts: PrepareOptions):
    """Check the columns, and keep datasets from decoding audio itself (datasets >= 4
    would need torchcodec for that; :func:`whisper_zh.media.load_audio` does not)."""
    import datasets

    names = ds.column_names
    for column in (opts.audio_column, opts.text_column):
        if names is not None and column not in names:
            raise DataError(f"no column {column!r} (columns: {', '.join(names)}); "
                            "set audio_column / text_column")
    features = ds.features
    if features is not None and isinstance(features.get(opts.audio_column), datasets.Audio):
        ds = ds.cast_column(opts.audio_column, datasets.Audio(decode=False))
    return ds


def _options_digest(source: Source, split: str, opts: PrepareOptions, labels: LabelEncoder) -> str:
    """What, besides the source's content, decides a prepared split."""
    key = json.dumps([CACHE_FORMAT, source.config, split, opts.language, opts.task, opts.audio_column,
                      opts.text_column, opts.max_duration_s, opts.max_label_tokens, opts.shard_size,
                      opts.max_samples, labels.fingerprint()])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _rows_digest(rows: list[dict]) -> str:
    """A Common Voice split's content as listed: its clips' names and sentences, in order."""
    h = hashlib.sha1()
    for r in rows:
        h.update(f"{r['path']}\t{r['sentence']}\n".encode())
    return h.hexdigest()


def cache_path(cache_dir: str, source: Source, split: str, opts: PrepareOptions, labels: LabelEncoder,
               content: Optional[str] = None) -> str:
    """``<cache_dir>/prepared/<source>-<split>-<key>``: the key covers everything that changes
    the content -- ``content`` (a Common Voice split's :func:`_rows_digest`) or else the
    source's fingerprint, the options and the tokenizer; the name is only for people."""
    what = content if content is not None else f"{source.kind}:{source.fingerprint}"
    digest = hashlib.sha1(f"{what}:{_options_digest(source, split, opts, labels)}".encode()).hexdigest()[:10]
    return os.path.join(os.path.expanduser(cache_dir), "prepared", f"{source.name}-{split}-{digest}")


def prepared_records(cache_dir: Optional[str]) -> list[dict]:
    """The finished prepared splits in ``cache_dir``: dicts with ``path``, ``split``,
    ``options`` (see :func:`_options_digest`), ``kept``, ``clips_sha1`` and ``source`` (the
    newest :meth:`Source.record` it was made from) and ``sources`` (all of them)."""
    records = []
    for done in sorted(glob.glob(os.path.join(os.path.expanduser(cache_dir or ""), "prepared", "*", "done.json"))):
        try:
            with open(done) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if info.get("sources"):  # written by this version (older markers name no source)
            records.append({**info, "path": os.path.dirname(done), "source": info["sources"][-1]})
    return records


def _find_prepared(cache_dir: str, source: Source, split: str, options: str) -> Optional[str]:
    """A finished preparation of ``split`` with these options from this very source (the
    same archive content, folder, dataset), found without reading the source."""
    for record in prepared_records(cache_dir):
        if record["split"] != split or record["options"] != options:
            continue
        if source.kind == "cached":
            if any(s["location"] == source.location for s in record["sources"]):
                return record["path"]
        elif any(s["kind"] == source.kind and s["fingerprint"] == source.fingerprint for s in record["sources"]):
            return record["path"]
    return None


def _remember_source(target: str, split: str, options: str, source: Source) -> None:
    with open(os.path.join(target, "done.json")) as f:
        sources = json.load(f).get("sources", [])
    if source.record() not in sources:
        _write_done(target, split, options, source, sources)


def _write_done(target: str, split: str, options: str, source: Source, sources: list[dict]) -> None:
    shard_names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(target, "shard-?????")))
    kept, digest = 0, hashlib.sha1()
    for name in shard_names:
        with open(os.path.join(target, name, "stats.json")) as f:
            shard = json.load(f)
        kept += shard["kept"]
        digest.update(shard.get("clips_sha1", "").encode())
    record = source.record()
    sources = [s for s in sources if (s["fingerprint"], s["location"]) != (record["fingerprint"], record["location"])]
    sources.append(record)
    done_file = os.path.join(target, "done.json")
    with open(done_file + ".tmp", "w") as f:
        json.dump({"shards": shard_names, "split": split, "options": options, "kept": kept,
                   "clips_sha1": digest.hexdigest(), "sources": sources}, f, indent=1)
    os.replace(done_file + ".tmp", done_file)


def dir_bytes(path: str) -> int:
    """Total size in bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def prepare_split(source: Source, split: str, cache_dir: str, labels: LabelEncoder,
                  opts: Optional[PrepareOptions] = None, extract_dir: Optional[str] = None):
    """Prepare one split (``"train"``, or several joined with ``+``: ``"train+dev"``) into the cache.

    Returns ``(dataset, stats)``: a ``datasets.Dataset`` with columns ``path`` (str),
    ``sentence`` (str), ``audio`` (the encoded clip, bytes; decode with
    :func:`whisper_zh.media.load_audio`), ``labels`` (int32 token ids) and ``duration``
    (s), and a :class:`PrepareStats`.
    Finished work is reused; an interrupted preparation resumes at its first unfinished shard.
    """
    import datasets

    opts = opts or PrepareOptions()
    parts, stats = [], PrepareStats()
    for part in split.split("+"):
        ds, part_stats = _prepare_one(source, part.strip(), cache_dir, labels, opts, extract_dir)
        parts.append(ds)
        stats.add(part_stats)
        stats.cache_bytes += part_stats.cache_bytes
        stats.seconds += part_stats.seconds
        stats.prepared_now += part_stats.prepared_now
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return dataset, stats


def _prepare_one(source, split, cache_dir, labels, opts, extract_dir):
    import datasets

    options = _options_digest(source, split, opts, labels)
    started = time.perf_counter()
    prepared_now = 0
    target = _find_prepared(cache_dir, source, split, options)
    if target is not None and source.kind != "cached":
        _remember_source(target, split, options, source)  # so it still serves once this source is gone
    if target is None and source.kind == "cached":
        raise DataError(f"{source.location} is gone and the cache in {cache_dir} holds no split {split!r} "
                        "prepared from it with these options: put the dataset back (or download it again)")
    if target is None:
        rows = None
        if source.kind in ("cv", "cv-tar"):
            release = release_dir(source, cache_dir, extract_dir)
            rows = read_cv_split(release, split)[: opts.max_samples]
            target = cache_path(cache_dir, source, split, opts, labels, _rows_digest(rows))
        else:
            target = cache_path(cache_dir, source, split, opts, labels)
        # the key decides, not the name: the same content under another name (a repacked archive)
        same = glob.glob(os.path.join(os.path.dirname(target), f"*-{target.rsplit('-', 1)[1]}", "done.json"))
        target = os.path.dirname(same[0]) if same else target
        done_file = os.path.join(target, "done.json")
        if os.path.exists(done_file):
            _remember_source(target, split, options, source)
        else:
            os.makedirs(target, exist_ok=True)
            workers = opts.num_workers or os.cpu_count() or 1
            if rows is not None:
                if source.kind == "cv-tar":  # only the clips this split lists leave the archive
                    release = release_dir(source, cache_dir, extract_dir, clips=[r["path"] for r in rows])
                jobs = [CvShardJob(_shard_dir(target, i // opts.shard_size), opts, labels,
                                   rows=rows[i:i + opts.shard_size], release_dir=release)
                        for i in range(0, len(rows), opts.shard_size)]
                prepared_now = _run_jobs(jobs, workers)
            else:
                ds = _no_decode(_load_hf(source, split, opts.streaming), opts)
                if isinstance(ds, datasets.IterableDataset):
                    prepared_now = _prepare_streaming(ds, target, opts, labels)
                else:
                    n = len(ds) if opts.max_samples is None else min(len(ds), opts.max_samples)
                    jobs = [HfShardJob(_shard_dir(target, i // opts.shard_size), opts, labels,
                                       dataset=ds, start=i, stop=min(i + opts.shard_size, n))
                            for i in range(0, n, opts.shard_size)]
                    prepared_now = _run_jobs(jobs, workers)
            _write_done(target, split, options, source, [])
    done_file = os.path.join(target, "done.json")
    with open(done_file) as f:
        shard_names = json.load(f)["shards"]
    stats, parts = PrepareStats(), []
    for name in shard_names:
        shard = os.path.join(target, name)
        with open(os.path.join(shard, "stats.json")) as f:
            shard_stats = PrepareStats.from_dict(json.load(f))
        stats.add(shard_stats)
        if shard_stats.kept:  # a shard whose clips were all dropped adds counts, not rows
            parts.append(datasets.load_from_disk(shard))
    stats.cache_bytes = dir_bytes(target)
    stats.prepared_now = prepared_now
    stats.seconds = time.perf_counter() - started if prepared_now else 0.0
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else \
        datasets.Dataset.from_dict({k: [] for k in _features()}, features=_features())
    return dataset, stats


def _shard_dir(target: str, index: int) -> str:
    return os.path.join(target, f"shard-{index:05d}")


def collect_before_forking() -> None:
    """Free the garbage of this process before it forks workers (preparation's, the
    Trainer's data loaders). Left to the cyclic collector, it would be collected in a
    worker, and a CTranslate2 model among it (a notebook's earlier app, say) waits there
    forever in its destructor for threads that were not forked with it."""
    gc.collect()


def _run_jobs(jobs: list[ShardJob], workers: int) -> int:
    """Run the shard jobs whose shard is not finished yet; return how many clips they held."""
    todo = [job for job in jobs if not job.done()]
    if len(todo) < len(jobs):
        logger.info("  resuming preparation: %d of %d shards already done", len(jobs) - len(todo), len(jobs))
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            job.run()
    else:
        collect_before_forking()
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            list(pool.map(_run_job, todo))
    return sum(job.size for job in todo)


def _prepare_streaming(ds, target: str, opts: PrepareOptions, labels: LabelEncoder) -> int:
    """Streaming sources are read in order; finished shards are skipped on resume."""
    done = 0
    while os.path.exists(os.path.join(_shard_dir(target, done), "stats.json")):
        done += 1
    limit = opts.max_samples
    examples = _hf_examples(ds.skip(done * opts.shard_size), opts)
    count, index = 0, done
    while True:
        take = opts.shard_size if limit is None else min(opts.shard_size, limit - index * opts.shard_size)
        if take <= 0:
            break
        batch = list(itertools.islice(examples, take))
        if not batch:
            break
        _write_shard(batch, _shard_dir(target, index), opts, labels)
        count += len(batch)
        index += 1
    return count


# --------------------------------------------------------------------------------------
# The splits of one training run
# --------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    train: object
    eval: Optional[object]
    test: Optional[object]
    stats: dict = field(default_factory=dict)  # split -> PrepareStats
    release_name: Optional[str] = None  # Source.release_name of the data


def prepare_data(config: TrainConfig, splits: Optional[list[str]] = None, verbose: bool = True) -> PreparedData:
    """Prepare (or reuse) the train, eval and test splits named in ``config`` (``splits``:
    only these roles).

    The eval split is cut to ``eval_max_samples`` clips (a fixed random subset), so
    evaluation during training stays cheap; the test split is used whole."""
    source = open_source(config.dataset, config.dataset_config, config.cache_dir)
    labels = LabelEncoder(config.model_name_or_path, config.language, config.task)
    result = PreparedData(train=None, eval=None, test=None, release_name=source.release_name)
    for role, split in config.split_roles().items():
        if splits is not None and role not in splits:
            continue
        max_samples = config.max_train_samples if role == "train" else None
        opts = PrepareOptions.from_config(config, max_samples=max_samples)
        dataset, stats = prepare_split(source, split, config.cache_dir, labels, opts, config.extract_dir)
        if role == "eval" and len(dataset) > config.eval_max_samples:
            dataset = dataset.shuffle(seed=config.seed).select(range(config.eval_max_samples))
        setattr(result, role, dataset)
        result.stats[split] = stats
        if verbose:
            logger.info("%s", stats.summary(f"{role} ({split})"))
    return result
