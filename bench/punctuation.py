"""Punctuation without losing accuracy: zero-shot Whisper writes Chinese mostly without
it. Each zh-multi-dev clip (67 real clips, ~50 voices; dev and test splits) is
transcribed by whisper-base (CTranslate2 int8, the Space's backend, defaults) with each
prompt, and scored:

* **ends**: the share of clips whose text ends with a sentence mark (。？！…, or ?!.);
* **marks/100 chars**: punctuation marks per 100 characters of text (the references have
  about 8);
* **CER** after :func:`whisper_zh.text.normalize` (punctuation removed, Simplified).

    python bench/punctuation.py                     # ~4 min on 2 cores
    python bench/punctuation.py --prompt "" "以下是普通话的句子。"

Prints a markdown table and writes ``bench/results/punctuation-<tag>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _machine import PROCESSOR_CANDIDATES, cpu_name  # noqa: E402
from whisper_zh.media import load_audio  # noqa: E402
from whisper_zh.text import cer  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "zh-multi-dev"
ENDS = set("。？！…?!.")


def marks(text: str) -> int:
    return sum(unicodedata.category(c).startswith("P") for c in text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PROCESSOR_CANDIDATES[0] + "-ct2-int8")
    parser.add_argument("--prompt", nargs="*", default=["", "以下是普通话的句子。", "以下是普通话的句子，有标点符号。"])
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.types import TranscribeOptions

    splits = {}
    for split in ("dev", "test"):
        with open(DATA / f"{split}.tsv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        splits[split] = ([load_audio(str(DATA / "clips" / r["path"])) for r in rows], [r["sentence"] for r in rows])
    engine = Transcriber(args.model, backend="ct2")
    results = []
    print("| prompt | split | clips | ends punctuated | marks / 100 chars | CER | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for split, (clips, refs) in splits.items():
        ref_rate = 100 * sum(map(marks, refs)) / sum(map(len, refs))
        print(f"| (references) | {split} | {len(refs)} | {sum(r.strip()[-1:] in ENDS for r in refs) / len(refs):.0%} "
              f"| {ref_rate:.1f} | | |")
        for prompt in args.prompt:
            started = time.perf_counter()
            hyps = engine.decode_clips(clips, TranscribeOptions(prompt=prompt or None))
            elapsed = time.perf_counter() - started
            texts = [h.strip() for h in hyps]
            row = {"prompt": prompt, "split": split, "clips": len(texts),
                   "ends_punctuated": sum(t[-1:] in ENDS for t in texts) / len(texts),
                   "marks_per_100": 100 * sum(map(marks, texts)) / max(sum(map(len, texts)), 1),
                   "cer": cer(refs, texts), "seconds": round(elapsed, 1), "texts": texts}
            results.append(row)
            print(f"| {prompt or '(none)'} | {split} | {len(texts)} | {row['ends_punctuated']:.0%} | "
                  f"{row['marks_per_100']:.1f} | {row['cer']:.3f} | {elapsed:.0f} |", flush=True)
    out = REPO / "bench" / "results" / f"punctuation-{args.tag}.json"
    out.write_text(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(),
                               "cores": os.cpu_count(), "python": platform.python_version(), "model": args.model,
                               "rows": results}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
