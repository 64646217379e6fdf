"""What a call to the OpenAI audio API costs beside the page's, on one server.

    python bench/api_overhead.py              # silence (20 calls a path), 5 s of speech (3 calls) (~3 min on 2 cores)
    python bench/api_overhead.py --runs 10 --seconds 5 20

The app is built and launched as ``python app.py`` does (``build_app`` +
``launch_options``) on 127.0.0.1 with whisper-base as CTranslate2 int8 (the Space's
backend; exported once beside the offline whisper-base). Two inputs: 5 s of silence, which
the engine skips without a model call, so that what is left is each path's own cost (HTTP,
the form or Gradio's upload, the queue, decoding the file, the answer); and real speech, to
show that cost beside the decoding. Each input is transcribed, in turn, by:

- **the work itself**: ``open_input`` + ``Job.run`` in the server's process, no HTTP: the
  floor every way in pays;
- **the API, json**: the official ``openai`` client's ``audio.transcriptions.create``;
- **the API, srt**: the same, answered with the subtitle file the page offers;
- **the API, stream**: ``stream=True``, read to the end (*first segment ms*: when the first
  ``transcript.text.delta`` arrived);
- **the page**: ``gradio_client``'s ``predict`` on ``/transcribe_file``, as a visitor's
  upload goes (upload, queue, progress events, four files written and served).

*median ms* and *min ms* are the client's wall time per call (after one warm-up call of
each), *overhead ms* the median's difference from the work itself's median. Prints a markdown table and writes
``bench/results/api_overhead-<cpu count>core.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, first_existing  # noqa: E402
from transcribe import device_tag, machine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(function, runs: int) -> tuple[list[float], list]:
    """Wall ms of each of ``runs`` calls after a warm-up, and what each returned."""
    function()
    times, values = [], []
    for _ in range(runs):
        started = time.perf_counter()
        values.append(function())
        times.append((time.perf_counter() - started) * 1000)
    return times, values


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="calls a path for each speech input")
    parser.add_argument("--silence-runs", type=int, default=20, help="calls a path for the silent input")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0], help="seconds of speech inputs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import soundfile as sf
    from gradio_client import Client, handle_file
    from openai import OpenAI

    from _ct2_base import base_ct2
    from _media_helpers import joined_clips
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.jobs import Job, open_input
    from whisper_zh.serve.settings import ServeSettings
    from whisper_zh.serve.types import TranscribeOptions

    data, base = first_existing(DATA_CANDIDATES), first_existing(PROCESSOR_CANDIDATES)
    if data is None or base is None:
        raise SystemExit("needs ../shared (zh-cv-mini) and the offline whisper-base (see bench/README.md)")
    model = base_ct2(Path(base))
    engine = Transcriber(str(model), backend="ct2", device="cpu")
    settings = ServeSettings(model_id=str(model), backend="ct2")
    demo = build_app(settings=settings, transcriber=engine)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    url = f"http://127.0.0.1:{port}"
    api = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    page = Client(f"{url}/", verbose=False)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model": str(model), "backend": "ct2", "device": "cpu", "machine": machine("cpu"), "runs": args.runs,
              "silence_runs": args.silence_runs, "load_avg_before": os.getloadavg()[0], "inputs": []}
    try:
        for seconds in [0.0, *args.seconds]:
            if seconds:
                audio, _, _ = joined_clips(Path(data), seconds)
                label, runs = f"{len(audio) / 16000:.1f} s of zh-cv-mini speech", args.runs
            else:
                audio = np.zeros(5 * 16000, np.float32)
                label, runs = "5 s of silence (no model call: each path's own cost)", args.silence_runs
            path = work / f"input-{seconds:g}s.flac"
            sf.write(str(path), audio, 16000, format="FLAC")
            options = TranscribeOptions(batch_size=settings.batch_size or TranscribeOptions.batch_size)

            def direct():
                return Job(engine, options).run(open_input(path, work, settings.limits).audio)

            def api_call(fmt="json"):
                with open(path, "rb") as f:
                    return api.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)

            def api_stream():
                """ms to the first segment's delta; the stream is read to its end."""
                started, first = time.perf_counter(), None
                with open(path, "rb") as f:
                    for event in api.audio.transcriptions.create(model="whisper-1", file=f, stream=True):
                        if first is None and event.type == "transcript.text.delta":
                            first = (time.perf_counter() - started) * 1000
                return first

            def page_call():
                return page.predict(handle_file(str(path)), "simplified", "transcribe", "",
                                    api_name="/transcribe_file")

            rows_out = []
            floor, jobs = _timed(direct, runs)
            rows_out.append(("the work itself (open_input + Job.run, in process)", floor, None))
            for name, function in (("API, json (openai client)", api_call),
                                   ("API, srt (openai client)", lambda: api_call("srt")),
                                   ("API, stream (openai client, read to the end)", api_stream),
                                   ("page (gradio_client, /transcribe_file)", page_call)):
                times, values = _timed(function, runs)
                firsts = [v for v in values if isinstance(v, float)] if function is api_stream else []
                rows_out.append((name, times, statistics.median(firsts) if firsts else None))
            base_ms = statistics.median(floor)
            entry = {"input": label, "runs": runs, "segments": len(jobs[-1].segments), "rows": [
                {"path": path_name, "median_ms": round(statistics.median(times)), "min_ms": round(min(times)),
                 "overhead_ms": round(statistics.median(times) - base_ms),
                 "first_segment_ms": None if first_ms is None else round(first_ms), "all_ms": [round(t) for t in times]}
                for path_name, times, first_ms in rows_out]}
            result["inputs"].append(entry)
    finally:
        demo.close()
    result["load_avg_after"] = os.getloadavg()[0]

    m = result["machine"]
    lines = [f"whisper-base ct2 int8, cpu: {m['cpu_model']}, {m['cpu_count']} cores ({result['date']}); "
             f"load average {result['load_avg_before']:.1f} before, {result['load_avg_after']:.1f} after", ""]
    for entry in result["inputs"]:
        lines += [f"**{entry['input']}**, {entry['segments']} segments, {entry['runs']} calls a path", "",
                  "| path | median ms | min ms | overhead ms | first segment ms |", "|---|---:|---:|---:|---:|"]
        for row in entry["rows"]:
            first_ms = "–" if row["first_segment_ms"] is None else row["first_segment_ms"]
            overhead = "–" if row["path"].startswith("the work") else row["overhead_ms"]
            lines.append(f"| {row['path']} | {row['median_ms']} | {row['min_ms']} | {overhead} | {first_ms} |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    result["table"] = table
    out = Path(args.out or REPO / "bench" / "results" / f"api_overhead-{device_tag('cpu')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
