"""``whisper-zh evaluate``: the real whisper-base, zero-shot, on zh-cv-mini's test split."""

import csv
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_zero_shot_whisper_base_decodes_mandarin(tmp_path, zh_cv_mini, whisper_base):
    tsv = tmp_path / "per-clip.tsv"
    run = subprocess.run(
        [sys.executable, "-m", "whisper_zh", "evaluate", "--model", str(whisper_base), "--dataset", str(zh_cv_mini),
         "--split", "test", "--cache-dir", str(tmp_path / "cache"), "--batch-size", "25", "--output-tsv", str(tsv)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(l for l in run.stdout.splitlines() if " on test (ct2): CER " in l)  # auto: ct2 on a CPU
    print(line)
    cer = float(re.search(r"CER ([\d.]+)%", line).group(1)) / 100
    assert 0 < cer < 0.5, line
    assert re.search(r"on 50 clips .* clips/s", line)
    with open(tsv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 50 and set(rows[0]) == {"path", "reference", "hypothesis", "cer"}
    assert all(r["path"].endswith(".mp3") and r["reference"] for r in rows)
    # corpus CER weighs clips by length; the per-clip values must be consistent with it
    per_clip = [float(r["cer"]) for r in rows]
    assert min(per_clip) <= cer <= max(per_clip)
