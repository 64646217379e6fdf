"""Who is speaking: accuracy and cost of :func:`whisper_zh.serve.diarize.diarize` on
conversations built from real voices with known turns.

Conversations (16 kHz, turns separated by 0.3-0.8 s of silence):

* ``2v-long``: Biaobei's voice (8 clips, zh-multi-dev) and zh-cv-mini's AISHELL voice, two
  clips a turn (~6 s) -- two women reading;
* ``2v-short``: SoulX's podcast man and woman, cut into turns of ~2 s at quiet points;
* ``2v-pod``: MOSS-TTSD's podcast man and woman, turns of ~4 s;
* ``3v-mixed``: Biaobei, FireRedTTS2's podcast speaker 1 and MOSS's livestream speaker 1,
  turns of ~3 s;
* ``3v-short``: MOSS's livestream speakers 1 and 2 and the Sichuan film voice, ~2 s turns;
* ``real-dialog``: zh-multi-dev's one real two-person conversation (with overlaps): its
  turns are unknown, so only the number of speakers is scored.

Each is transcribed by whisper-base (CTranslate2 int8, the Space's backend, defaults),
then diarized with the number of speakers found automatically and given. Scored: the
share of reference speech time whose label is right after the best one-to-one mapping of
labels (the label at a moment is the one of the word nearest to it), the number of
speakers found, and the cost of diarization relative to transcription (both wall time,
models loaded and warmed first).

    python bench/diarize.py            # ~2 min on 2 cores
    python bench/diarize.py --threshold 0.25 0.3 0.35   # choose DEFAULT_THRESHOLD

Prints a markdown table and writes ``bench/results/diarize-<tag>.json``.
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from whisper_zh.audio import SAMPLE_RATE  # noqa: E402
from whisper_zh.media import frame_energy_db, load_audio  # noqa: E402

MULTI = REPO.parent / "shared" / "data" / "zh-multi-dev" / "clips"
CV = Path(first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0])


def clip(name: str) -> np.ndarray:
    return load_audio(str(MULTI / name))


def cut(audio: np.ndarray, turn_s: float) -> list[np.ndarray]:
    """``audio`` in pieces of about ``turn_s``, each cut at the quietest 20 ms within
    0.5 s of the target (so that words are rarely split)."""
    db = frame_energy_db(audio)
    frame = int(0.02 * SAMPLE_RATE)
    pieces, start = [], 0
    while len(audio) - start > 1.5 * turn_s * SAMPLE_RATE:
        target = (start + int(turn_s * SAMPLE_RATE)) // frame
        lo, hi = max(target - 25, start // frame + 1), min(target + 25, len(db) - 1)
        at = (lo + int(np.argmin(db[lo:hi]))) * frame
        pieces.append(audio[start:at])
        start = at
    pieces.append(audio[start:])
    return pieces


def converse(voices: list[list[np.ndarray]], seed: int = 0):
    """Turns taken in rotation from each voice's pieces until all are used; -> audio and
    the reference turns [(start s, end s, voice index)]."""
    rng = np.random.default_rng(seed)
    queues = [list(v) for v in voices]
    parts, turns, at = [], [], 0.0
    while any(queues):
        for index, queue in enumerate(queues):
            if not queue:
                continue
            piece = queue.pop(0)
            gap = np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), np.float32)
            parts += [piece, gap]
            turns.append((at, at + len(piece) / SAMPLE_RATE, index))
            at += (len(piece) + len(gap)) / SAMPLE_RATE
    return np.concatenate(parts), turns


def conversations() -> dict[str, tuple[np.ndarray, list]]:
    with open(CV / "validated.tsv", encoding="utf-8") as f:
        cv_names = [row["path"] for row in csv.DictReader(f, delimiter="\t")][:16]
    cv_clips = [load_audio(str(CV / "clips" / n)) for n in cv_names]
    bb = [clip(f"zhmd_bb_{k:06d}.mp3") for k in range(1, 9)]
    pairs = lambda clips: [np.concatenate([a, np.zeros(4000, np.float32), b]) for a, b in zip(clips[::2], clips[1::2])]
    return {
        "2v-long": converse([pairs(bb), pairs(cv_clips)]),
        "2v-short": converse([cut(clip("zhmd_soulx_male_mandarin.mp3"), 2.0),
                              cut(clip("zhmd_soulx_female_mandarin.mp3"), 2.0)]),
        "2v-pod": converse([cut(clip("zhmd_moss_pod_m_enhanced.mp3"), 4.0),
                            cut(clip("zhmd_moss_pod_f_enhanced.mp3"), 4.0)]),
        "3v-mixed": converse([bb[:4], cut(clip("zhmd_frpod_S1.mp3"), 3.0),
                              cut(clip("zhmd_moss_zh_spk1_moon.mp3"), 3.0)]),
        "3v-short": converse([cut(clip("zhmd_moss_zh_spk1_moon.mp3"), 2.0),
                              cut(clip("zhmd_moss_zh_spk2_moon.mp3"), 2.0),
                              cut(clip("zhmd_higgs_zh_man_sichuan.mp3"), 2.0)]),
        "real-dialog": (clip("zhmd_moss_single_reference.mp3"), []),
    }


def accuracy(turns, segments) -> float:
    """Share of reference speech time labelled right, after the best mapping of labels."""
    from scipy.optimize import linear_sum_assignment

    words = [(w.start, w.end, w.speaker or s.speaker) for s in segments for w in (s.words or ())] or \
            [(s.start, s.end, s.speaker) for s in segments]
    if not words:
        return 0.0
    middles = np.array([(a + b) / 2 for a, b, _ in words])
    labels = sorted({w[2] for w in words})
    refs = sorted({t[2] for t in turns})
    overlap = np.zeros((len(refs), len(labels)))
    total = 0.0
    for start, end, voice in turns:
        for t in np.arange(start, end, 0.01):
            label = words[int(np.argmin(np.abs(middles - t)))][2]
            overlap[refs.index(voice), labels.index(label)] += 0.01
            total += 0.01
    rows, cols = linear_sum_assignment(-overlap)
    return float(overlap[rows, cols].sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PROCESSOR_CANDIDATES[0] + "-ct2-int8")
    parser.add_argument("--threshold", type=float, nargs="*", default=None)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    from whisper_zh.serve import diarize as D
    from whisper_zh.serve.engine import Transcriber

    engine = Transcriber(args.model, backend="ct2")
    encoder = D.get_encoder()
    warm = clip("zhmd_bb_000001.mp3")
    list(engine.iter_segments(warm))
    encoder.embed(np.zeros((2, D.WINDOW_FRAMES * D.HOP), np.float32))
    thresholds = args.threshold or [D.DEFAULT_THRESHOLD]
    rows = []
    for name, (audio, turns) in conversations().items():
        started = time.perf_counter()
        segments = list(engine.iter_segments(audio))
        transcribe_s = time.perf_counter() - started
        truth = len({t[2] for t in turns}) if turns else 2
        for threshold in thresholds:
            for given in (None, truth):
                result = D.diarize(audio, segments, given, encoder=encoder, threshold=threshold)
                rows.append({"conversation": name, "seconds": round(len(audio) / SAMPLE_RATE, 1),
                             "voices": truth, "turns": len(turns), "threshold": threshold,
                             "num_speakers_given": given, "speakers_found": result.num_speakers,
                             "accuracy": round(accuracy(turns, result.segments), 4) if turns else None,
                             "transcribe_s": round(transcribe_s, 2), "diarize_s": round(result.elapsed_s, 2),
                             "cost": round(result.elapsed_s / transcribe_s, 3)})
                r = rows[-1]
                shown = "" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
                print(f"| {name} | {r['seconds']} | {truth} | {len(turns)} | {threshold} | {given or 'auto'} | "
                      f"{r['speakers_found']} | {shown} | "
                      f"{r['transcribe_s']:.1f} | {r['diarize_s']:.2f} | {100 * r['cost']:.1f} % |", flush=True)
    out = REPO / "bench" / "results" / f"diarize-{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(),
        "cores": os.cpu_count(), "python": platform.python_version(), "model": args.model,
        "rows": rows}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
