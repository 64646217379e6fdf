"""``whisper-zh evaluate``: the real whisper-base, zero-shot, on zh-cv-mini's test split."""

import csv
import re
import subprocess
import sys

import pytest

from whisper_zh.text import normalize


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (substitutions, deletions, insertions of one character)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_edits():
    assert _edits("", "abc") == 3 and _edits("abc", "") == 3
    assert _edits("物业公司", "五夜公司") == 2 and _edits("锁死了", "锁锁死了") == 1 and _edits("ab", "ba") == 2


@pytest.mark.slow
def test_zero_shot_whisper_base_decodes_mandarin(tmp_path, zh_cv_mini, whisper_base, whisper_base_ct2):
    tsv = tmp_path / "per-clip.tsv"
    run = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "evaluate", "--model", str(whisper_base), "--dataset", str(zh_cv_mini),
         "--split", "test", "--cache-dir", str(tmp_path / "cache"), "--max-samples", "24", "--batch-size", "12",
         "--output-tsv", str(tsv)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(l for l in run.stdout.splitlines() if " on test (ct2): CER " in l)  # auto: ct2 on a CPU
    print(line)
    cer = float(re.search(r"CER ([\d.]+)%", line).group(1)) / 100
    # whisper-base scores about 0.19 on the split's 50 clips (about 600 characters); the
    # first 24 of them are scored
    assert 0 < cer < 0.5, line
    assert re.search(r"on 24 clips .* clips/s", line)
    with open(tsv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 24 and set(rows[0]) == {"path", "reference", "hypothesis", "cer"}
    assert all(r["path"].endswith(".mp3") and r["reference"] for r in rows)
    # Each clip's CER is its edits over its reference's length, counted here again; the
    # corpus CER is all the edits over all the characters (not a mean of the clips' CERs).
    edits, lengths = [], []
    for r in rows:
        reference, hypothesis = normalize(r["reference"]), normalize(r["hypothesis"])
        edits.append(_edits(reference, hypothesis))
        lengths.append(len(reference))
        assert float(r["cer"]) == pytest.approx(edits[-1] / lengths[-1], abs=5e-5), r
    assert cer == pytest.approx(sum(edits) / sum(lengths), abs=5e-5)
