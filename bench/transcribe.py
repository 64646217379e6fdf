"""Long-form transcription speed and accuracy: whisper-zh against what users would
otherwise run, in one run on one machine.

A recording of at least ``--minutes`` of real Mandarin is built by joining zh-cv-mini
clips (test split first, then dev and train) with short pauses, and transcribed by:

* the whisper-zh engine (``Transcriber``) with each backend at its defaults:
  CTranslate2 (int8 on a CPU, float16 on a GPU; 8 lanes, beam 5) and transformers (fp32
  on a CPU, fp16 on a GPU; 8 windows per batch, greedy); the ct2 backend also greedy,
  and without previous-text conditioning (``ct2_transcribe(...,
  condition_on_previous_text=False)``, to show what the lanes buy);
* the transformers ASR pipeline, ``chunk_length_s=30``, otherwise default settings;
* faster-whisper's ``WhisperModel.transcribe`` called directly, with its defaults
  (beam 5, sequential 30 s windows conditioned on the previous text).

Each system is loaded, warmed up on 5 s of audio, then timed on the whole recording
(model loading and audio decoding excluded). CER is over the whole recording: all
reference sentences joined against all output text, after :func:`whisper_zh.text.normalize`.

    python bench/transcribe.py                          # 10 minutes, whisper-base, CPU
    python bench/transcribe.py --minutes 1              # quick run
    python bench/transcribe.py --minutes all --only ct2 direct engine   # all 42 min of zh-cv-mini
    python bench/transcribe.py --model openai/whisper-small --device cuda

Prints a markdown table and writes ``bench/results/transcribe-<device>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from whisper_zh.media import SAMPLE_RATE, load_audio  # noqa: E402
from whisper_zh.text import cer  # noqa: E402

DEFAULT_DATA = Path(first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0])
DEFAULT_MODEL = Path(PROCESSOR_CANDIDATES[0])  # the offline whisper-base, weights included
GAP_S = 0.3
WARMUP_S = 5.0

# zh-cv-mini's references read numbers out as characters ("一三零七"); zero-shot Whisper
# writes them as digits or characters depending on context. The second CER column maps
# digits to characters first, to show how much of a difference is only that.
_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")


def build_recording(data_dir: Path, minutes: float | None, gap_s: float = GAP_S) -> tuple[np.ndarray, list[str]]:
    """Join real clips into one recording of at least ``minutes`` (None: every clip).

    Returns:
        ``(audio, sentences)``: float32 waveform of shape ``(n_samples,)`` at 16 kHz, and
        the reference sentences in order.
    """
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    parts, sentences, samples = [], [], 0
    for split in ("test", "dev", "train"):
        with open(data_dir / f"{split}.tsv", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                audio = load_audio(data_dir / "clips" / row["path"])
                parts += [audio, gap]
                sentences.append(row["sentence"])
                samples += len(audio) + len(gap)
                if minutes is not None and samples >= minutes * 60 * SAMPLE_RATE:
                    return np.concatenate(parts), sentences
    if minutes is None and parts:
        return np.concatenate(parts), sentences
    raise SystemExit(f"{data_dir} holds only {samples / SAMPLE_RATE / 60:.1f} minutes; ask for fewer")


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_name()}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    import ctranslate2
    import faster_whisper
    import torch
    import transformers

    info["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__}
    info["torch_threads"] = torch.get_num_threads()
    return info


def device_tag(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return "cuda-" + torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def prepare_model_dir(model: str, work: Path, device: str) -> tuple[Path, float]:
    """A private model directory (symlinks to ``model``'s files) with a fresh CTranslate2
    export in ``ct2/``, so the engine's ct2 backend finds it. Returns it and the export's
    seconds."""
    from whisper_zh.export import export_ct2

    src = Path(model)
    if not src.is_dir():
        from huggingface_hub import snapshot_download

        src = Path(snapshot_download(model))
    model_dir = work / "model"
    model_dir.mkdir()
    for item in src.iterdir():
        if item.is_file() and not item.name.startswith("."):
            (model_dir / item.name).symlink_to(item.resolve())
    started = time.perf_counter()
    export_ct2(str(model_dir), quantization="float16" if device.startswith("cuda") else "int8")
    return model_dir, time.perf_counter() - started


def systems(model_dir: Path, device: str) -> list[tuple[str, Callable[[], Callable[[np.ndarray], str]]]]:
    """(name, loader) pairs; a loader returns ``transcribe(audio) -> text``."""
    cuda = device.startswith("cuda")
    ct2_dir = str(model_dir / "ct2")

    def engine(backend: str, **overrides):
        def load():
            from whisper_zh.transcribe import Transcriber

            transcriber = Transcriber(str(model_dir), backend=backend, device=device)
            return lambda audio: transcriber.transcribe(audio, **overrides).text
        return load

    def hf_pipeline():
        import torch
        from transformers import pipeline

        pipe = pipeline("automatic-speech-recognition", model=str(model_dir), chunk_length_s=30,
                        device=device, dtype=torch.float16 if cuda else torch.float32)
        return lambda audio: pipe(audio.copy(), generate_kwargs={"language": "zh", "task": "transcribe"})["text"]

    def ct2_without_previous_text():
        from whisper_zh.ct2 import ct2_transcribe, load_ct2

        model = load_ct2(ct2_dir, device=device, compute_type="float16" if cuda else "int8")
        return lambda audio: "".join(s["text"] for s in ct2_transcribe(model, audio,
                                                                      condition_on_previous_text=False))

    def faster_whisper_direct():
        from faster_whisper import WhisperModel

        model = WhisperModel(ct2_dir, device=device, compute_type="float16" if cuda else "int8")
        return lambda audio: "".join(s.text for s in model.transcribe(audio, language="zh")[0])

    engine_ct2, engine_hf = [], []
    try:
        import whisper_zh.transcribe  # noqa: F401  (the engine rows need it)

        weights = "fp16" if cuda else "fp32"
        quant = "float16" if cuda else "int8"
        engine_ct2 = [
            (f"whisper-zh engine, ct2 {quant} (defaults: 8 lanes, beam 5)", engine("ct2")),
            (f"whisper-zh engine, ct2 {quant} (8 lanes, greedy)", engine("ct2", beam_size=1)),
            (f"whisper-zh ct2 {quant}, 8 chunks, beam 5, no previous text", ct2_without_previous_text),
        ]
        engine_hf = [(f"whisper-zh engine, transformers {weights} (defaults: batch 8, greedy)",
                      engine("transformers"))]
    except ImportError as err:
        print(f"(no engine rows: {err})", file=sys.stderr)
    # fastest first: a run cut short still has them
    return engine_ct2 + [
        (f"faster-whisper {'float16' if cuda else 'int8'} direct (defaults: beam 5)", faster_whisper_direct),
    ] + engine_hf + [
        (f"transformers pipeline, {'fp16' if cuda else 'fp32'} (chunk_length_s=30, defaults)", hf_pipeline),
    ]


def run(args: argparse.Namespace, save: Callable[[dict], None] = lambda result: None) -> dict:
    audio, sentences = build_recording(Path(args.data), None if args.minutes == "all" else float(args.minutes))
    duration = len(audio) / SAMPLE_RATE
    reference = "".join(sentences)
    print(f"recording: {duration / 60:.2f} min, {len(sentences)} clips from {args.data}", file=sys.stderr)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model),
        "device": args.device,
        "audio_s": round(duration, 2),
        "clips": len(sentences),
        "machine": machine(args.device),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="whisper-zh-bench-") as work:
        model_dir, export_s = prepare_model_dir(args.model, Path(work), args.device)
        result["ct2_export_s"] = round(export_s, 2)
        print(f"exported to CTranslate2 in {export_s:.1f} s", file=sys.stderr)
        for name, load in systems(model_dir, args.device):
            if args.only and not any(key in name for key in args.only):
                continue
            transcribe = load()
            transcribe(audio[: int(WARMUP_S * SAMPLE_RATE)])
            load_before = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            text = transcribe(audio)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = {
                "system": name,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "x_realtime": round(duration / wall, 2),
                "cer": round(cer([reference], [text]), 4),
                "cer_digits_as_characters": round(cer([reference], [text.translate(_DIGITS)]), 4),
                # other processes on the machine slow everything down: say how busy it was
                "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "text_head": text[:80],
            }
            result["rows"].append(row)
            save(result)
            print(f"{name}: {row['wall_s']} s, {row['x_realtime']}x real time, CER {row['cer']:.3f}",
                  file=sys.stderr, flush=True)
            del transcribe
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu_model']}, {m['cpu_count']} cores"
    lines = [
        f"{result['audio_s'] / 60:.1f} min of Mandarin ({result['clips']} zh-cv-mini clips), "
        f"{Path(result['model']).name}, {result['device']}: {where} ({result['date']})",
        "",
        "| system | wall s | CPU s | × real time | CER | CER, digits as characters | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['system']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['x_realtime']:.1f} "
                     f"| {row['cer']:.3f} | {row['cer_digits_as_characters']:.3f} "
                     f"| {row['loadavg_1min'][0]:.1f}–{row['loadavg_1min'][1]:.1f} |")
    lines += ["", f"load avg: the machine's 1-minute load average before–after the row; above "
              f"{m['cpu_count']} means other processes were competing for the {m['cpu_count']} cores."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="transformers Whisper directory or Hub id (default: the offline whisper-base)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--minutes", default="10", help="length of the joined recording, or 'all' clips")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a Common Voice-layout folder of clips")
    parser.add_argument("--only", nargs="*", help="run only the systems whose name contains one of these")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/transcribe-<device>.json)")
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "bench" / "results" / f"transcribe-{device_tag(args.device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        result["markdown"] = markdown(result)
        out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    result = run(args, save)
    print(markdown(result))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
