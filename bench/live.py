"""Live transcription (the app's 🔴 Live tab): accuracy and delay of
:class:`whisper_zh.streaming.LiveTranscriber` on a real recording fed in small pieces,
with and without the confirmed text before the buffer as the prompt
(``context_chars``), against transcribing the same recording as one upload.

The recording is ``bench/transcribe.py``'s ``multi``: every zh-multi-dev clip (~50
voices, 6.7 min) joined with 0.3 s pauses, or its first ``--minutes``. It is fed in
0.5 s pieces, and the engine decodes every ``--every`` seconds of new audio whatever
it costs (whisper_online's "computationally unaware" simulation: reproducible, and on
2 cores a ct2 decode of the <= 20 s buffer takes about as long as the default cadence,
so a real session decodes about as often).

Reported per configuration: CER of the confirmed text at the end, sentences lost;
delay (seconds of audio between a character's end and the piece after which it was
confirmed; median and 90th percentile); decodes and the seconds of audio each read
(mean); wall time.

    python bench/live.py                 # whole recording, no context (the default) and 100 characters
    python bench/live.py --minutes 1     # quick run

Prints a markdown table and writes ``bench/results/live-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from transcribe import DEFAULT_MODEL, MULTI_DATA, build_recording, device_tag, machine, per_clip_text  # noqa: E402
from whisper_zh.audio import SAMPLE_RATE  # noqa: E402
from whisper_zh.text import cer, normalize  # noqa: E402

PIECE_S = 0.5


def simulate(engine, recording, context_chars: int, every_s: float) -> dict:
    """Feed ``recording`` to a LiveTranscriber piece by piece; score what it confirmed."""
    from whisper_zh.serve.live import LiveTranscriber

    reads: list[float] = []

    class Reading:  # records how much audio each decode reads
        options = engine.options

        def iter_segments(self, audio, options=None, **kwargs):
            reads.append(len(audio) / SAMPLE_RATE)
            return engine.iter_segments(audio, options, **kwargs)

    live = LiveTranscriber(Reading(), min_chunk_s=every_s, context_chars=context_chars, keep_up=False)
    step = int(PIECE_S * SAMPLE_RATE)
    confirmed_at: list[float] = []  # stream time at which each confirmed character was shown
    started = time.perf_counter()
    for i in range(0, len(recording.audio), step):
        update = live.feed(recording.audio[i:i + step])
        grown = len(normalize(update.confirmed_text)) - len(confirmed_at)
        confirmed_at += [update.audio_s] * max(0, grown)
    segments = live.finish()
    wall = time.perf_counter() - started
    # each confirmed character's own end, from the units' times
    ends = [w.end for s in segments for w in s.words for _ in normalize(w.word)]
    delays = [shown - end for shown, end in zip(confirmed_at, ends)]
    clips = per_clip_text(recording, [(s.start, s.end, s.text) for s in segments])
    text = "".join(s.text for s in segments)
    return {
        "context_chars": context_chars,
        "cer": round(cer(["".join(recording.sentences)], [text]), 4),
        "sentences_lost": sum(not normalize(t) for t in clips),
        "delay_median_s": round(statistics.median(delays), 2) if delays else None,
        "delay_p90_s": round(float(np.percentile(delays, 90)), 2) if delays else None,
        "decodes": len(reads),
        "mean_read_s": round(statistics.mean(reads), 2) if reads else 0.0,
        "wall_s": round(wall, 1),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "text_head": text[:80],
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{Path(result['model']).name}, {result['backend']} on {result['device']}: {m['cpu_model']}, "
             f"{m['cpu_count']} cores ({result['date']}); {result['audio_s'] / 60:.1f} min of zh-multi-dev "
             f"({result['clips']} clips) in {PIECE_S} s pieces, a decode every {result['every_s']:g} s of audio", "",
             "| configuration | CER | sentences lost | delay median s | delay p90 s | decodes | mean read s | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        name = f"live, context {row['context_chars']} characters" if row["context_chars"] else "live, no context"
        lines.append(f"| {name} | {row['cer']:.3f} | {row['sentences_lost']} | {row['delay_median_s']} | "
                     f"{row['delay_p90_s']} | {row['decodes']} | {row['mean_read_s']} | {row['wall_s']} |")
    upload = result["upload"]
    lines.append(f"| the same audio as one upload | {upload['cer']:.3f} | {upload['sentences_lost']} | – | – | – | – "
                 f"| {upload['wall_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from whisper_zh.serve.live import CONTEXT_CHARS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="Whisper directory or Hub id")
    parser.add_argument("--backend", default="ct2", help="engine backend (ct2: the Space's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=str(MULTI_DATA), help="zh-multi-dev (Common Voice layout)")
    parser.add_argument("--minutes", type=float, default=None, help="only the first minutes of the recording")
    parser.add_argument("--every", type=float, default=2.0, help="seconds of new audio between decodes")
    parser.add_argument("--contexts", type=int, nargs="+", default=sorted({CONTEXT_CHARS, 100}),
                        help="context_chars values to compare (default: the default and 100)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/live-<device>.json)")
    args = parser.parse_args(argv)

    from whisper_zh.serve.engine import Transcriber

    recording = build_recording("multi", Path(args.data), ("dev", "test"), args.minutes)
    engine = Transcriber(args.model, backend=args.backend, device=args.device)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
              "backend": engine.backend.name, "device": args.device, "machine": machine(args.device),
              "audio_s": round(recording.seconds, 2), "clips": len(recording.sentences), "every_s": args.every,
              "rows": []}
    out = Path(args.out or REPO / "bench" / "results" / f"live-{device_tag(args.device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    transcript = engine.transcribe(recording.audio)
    clips = per_clip_text(recording, [(s.start, s.end, s.text) for s in transcript.segments])
    result["upload"] = {"cer": round(cer(["".join(recording.sentences)], [transcript.text]), 4),
                        "sentences_lost": sum(not normalize(t) for t in clips),
                        "wall_s": round(time.perf_counter() - started, 1)}
    for context_chars in args.contexts:
        result["rows"].append(simulate(engine, recording, context_chars, args.every))
        result["markdown"] = markdown(result)
        out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(result["markdown"], flush=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
