"""Long-form transcription speed and accuracy: whisper-zh against what users would
otherwise run, in one run on one machine.

Recordings are built by joining real clips with 0.3 s pauses, so that every output
segment can be assigned to the clip it came from (by its middle):

* ``multi``: all 67 clips of zh-multi-dev (~50 voices from 18 sources: read,
  spontaneous, accented, podcast; 6.7 min) -- the set defaults are chosen on;
* ``cv``: the first ``--minutes`` of zh-cv-mini (one speaker; test, dev, train order);
* ``runs``: issue 19's failure class, four recordings (``runs-1`` ...) where a run of
  short clips from other sources of zh-multi-dev (a voice command, a read sentence, a
  long spontaneous one) follows a minute or so of zh-cv-mini's read speech, in several
  orders and at several positions in a 30 s chunk, then more read speech.

Each is transcribed by:

* the whisper-zh engine (``Transcriber``) with each backend at its defaults: CTranslate2
  (int8 on a CPU, float16 on a GPU; 8 lanes, beam 5) and transformers (fp32 on a CPU,
  fp16 on a GPU; 8 windows per batch, greedy); the ct2 backend also greedy;
* faster-whisper called directly: ``WhisperModel.transcribe`` (sequential 30 s windows
  conditioned on the previous text) and ``BatchedInferencePipeline`` (VAD chunks, batch
  8), each at its defaults (beam 5) and greedy, loaded as its users load it; sequential
  also with ``cpu_threads=1`` (its fastest setting on the 2-core AMD EPYC host, its slowest
  on a 2-core Intel Xeon, where CTranslate2 uses MKL) and loaded as the engine loads its
  model (in a thread that ends with the load: whisper-zh's fix, not one faster-whisper
  makes), the strictest comparison;
* optionally (``--pipeline``) the transformers ASR pipeline at its defaults, which is slow.

Each system is loaded, warmed up on 5 s of audio, then timed on the recording (model
loading and audio decoding excluded), each in a fresh process (a model's threads outlive
it and would slow the next system); with ``--repeat N`` the row is the median of N runs
(``--interleave``: every system loaded at once in this process and their runs
interleaved, so that a noisy neighbour on a shared host slows each alike; but two
CTranslate2 models in one process slow each other). Under each table: how many times
faster the engine is than each faster-whisper sequential row at beam 5. Measured: wall
time, the process's CPU time, the steal time (CPU time the hypervisor gave to other
machines: the host's load), × real time, time to the first segment (a generator's first
item), CER over the whole recording (after
:func:`whisper_zh.text.normalize`), *sentences lost*: clips that got no text at all
(segments assigned by their middle), and *clips lost*: clips that no output segment
overlaps by at least 0.3 s. With ``--profile``, also where each system's time went: the
seconds in the model's ``encode`` (and how many 30 s windows), ``generate`` and
``align`` calls, the VAD and the completeness pass (:class:`CallProfile`).

    python bench/transcribe.py                          # both recordings, whisper-base, CPU
    python bench/transcribe.py --minutes 1 --only engine   # quick run
    python bench/transcribe.py --model openai/whisper-small --device cuda
    python bench/transcribe.py --recordings runs --only "engine, ct2 int8 (defaults" \
        "transformers" "sequential (defaults"          # issue 19's check (~5 min on 2 cores)
    python bench/transcribe.py --recordings runs multi --repeat 3 --malloc glibc   # the C library's malloc defaults
    python bench/transcribe.py --recordings runs multi --only "engine, ct2 int8 (defaults" \
        "sequential (defaults" --profile    # where the time goes: encoder, decoder, alignment, VAD, refills

Every system runs with glibc's malloc set as ``whisper-zh transcribe`` and ``app.py`` set
it (:func:`whisper_zh.allocator.reuse_freed_memory`: freed buffers reused, not faulted in
again), faster-whisper included (its users can set the same in the environment:

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

``--malloc glibc`` leaves the C library's defaults, as a plain faster-whisper user has them.

Prints markdown tables and writes ``bench/results/transcribe-<device>.json``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import datetime
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_flags, cpu_name, first_existing  # noqa: E402
from whisper_zh.audio import SAMPLE_RATE  # noqa: E402
from whisper_zh.media import load_audio  # noqa: E402
from whisper_zh.text import cer, normalize  # noqa: E402

MULTI_DATA = Path(REPO.parent / "shared" / "data" / "zh-multi-dev")
CV_DATA = Path(first_existing(DATA_CANDIDATES) or DATA_CANDIDATES[0])
DEFAULT_MODEL = Path(PROCESSOR_CANDIDATES[0])  # the offline whisper-base, weights included
GAP_S = 0.3
WARMUP_S = 5.0
MIN_OVERLAP_S = 0.3  # a clip no segment overlaps by this much is lost

# Issue 19's failure class: (seconds of zh-cv-mini read speech before the run, the run's
# zh-multi-dev clips in order). The lead lengths put the run at different places in a
# 30 s chunk; the runs mix a short command, short read or synthetic sentences and long
# spontaneous speech, in several orders.
RUNS = [
    (55.0, ["zhmd_a3_SSB02990372.mp3", "zhmd_valle_zh-1.mp3", "zhmd_frpod_S1.mp3"]),
    (62.0, ["zhmd_higgs_zh_man_sichuan.mp3", "zhmd_parrots_tushuguan.mp3", "zhmd_srlib_chinese.mp3"]),
    (48.0, ["zhmd_baidu_16k.mp3", "zhmd_kimi_asr_example.mp3", "zhmd_cosy_zero_shot_prompt.mp3"]),
    (70.0, ["zhmd_funasr_sample.mp3", "zhmd_bb_000004.mp3", "zhmd_stepx_vad_prompt.mp3",
            "zhmd_a3_SSB00330433.mp3"]),
]
TAIL_S = 20.0  # read speech after the run

# zh-cv-mini's references read numbers out as characters ("一三零七"); zero-shot Whisper
# writes them as digits or characters depending on context. The second CER column maps
# digits to characters first, to show how much of a difference is only that.
_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")


@dataclass
class Recording:
    name: str
    audio: np.ndarray  # float32, 16 kHz
    sentences: list[str]
    spans: list[tuple[int, int]]  # each clip's samples in ``audio``

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_recording(name: str, data_dir: Path, splits: Sequence[str], minutes: float | None,
                    gap_s: float = GAP_S) -> Recording:
    """Join real clips into one recording of at least ``minutes`` (None: every clip)."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    parts, sentences, spans, samples = [], [], [], 0
    for split in splits:
        with open(data_dir / f"{split}.tsv", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if minutes is not None and samples >= minutes * 60 * SAMPLE_RATE:
                    break
                audio = load_audio(data_dir / "clips" / row["path"])
                parts += [audio, gap]
                sentences.append(row["sentence"])
                spans.append((samples, samples + len(audio)))
                samples += len(audio) + len(gap)
    if minutes is not None and samples < minutes * 60 * SAMPLE_RATE:
        raise SystemExit(f"{data_dir} holds only {samples / SAMPLE_RATE / 60:.1f} minutes; ask for fewer")
    return Recording(name, np.concatenate(parts), sentences, spans)


def _rows(data_dir: Path, splits: Sequence[str]) -> list[dict]:
    rows = []
    for split in splits:
        with open(data_dir / f"{split}.tsv", encoding="utf-8") as f:
            rows += list(csv.DictReader(f, delimiter="\t"))
    return rows


def build_runs(cv_dir: Path, multi_dir: Path, gap_s: float = GAP_S) -> list[Recording]:
    """The ``runs`` recordings (:data:`RUNS`): read speech of one voice, a run of short
    clips from other sources, read speech again. Each takes the next zh-cv-mini clips."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    cv = iter(_rows(cv_dir, ("test", "dev", "train")))
    multi = {row["path"]: row for row in _rows(multi_dir, ("dev", "test"))}
    recordings = []
    for n, (lead_s, run) in enumerate(RUNS, 1):
        parts, sentences, spans, samples = [], [], [], 0

        def add(audio, sentence):
            nonlocal samples
            parts.extend([audio, gap])
            sentences.append(sentence)
            spans.append((samples, samples + len(audio)))
            samples += len(audio) + len(gap)

        for seconds in (lead_s, None, TAIL_S):
            if seconds is None:
                for path in run:
                    add(load_audio(multi_dir / "clips" / path), multi[path]["sentence"])
                continue
            target = samples + seconds * SAMPLE_RATE
            while samples < target:
                row = next(cv)
                add(load_audio(cv_dir / "clips" / row["path"]), row["sentence"])
        recordings.append(Recording(f"runs-{n}", np.concatenate(parts), sentences, spans))
    return recordings


def clips_lost(recording: Recording, segments: Sequence[tuple[float, float, str]]) -> list[int]:
    """The clips no segment with text overlaps by at least :data:`MIN_OVERLAP_S`."""
    lost = []
    for i, (a, b) in enumerate(recording.spans):
        start, end = a / SAMPLE_RATE, b / SAMPLE_RATE
        if not any(min(end, e) - max(start, s) >= MIN_OVERLAP_S for s, e, text in segments if normalize(text)):
            lost.append(i)
    return lost


def per_clip_text(recording: Recording, segments: Sequence[tuple[float, float, str]]) -> list[str]:
    """The text of the segments whose middle falls in each clip (or the pause after it)."""
    starts = [start for start, _ in recording.spans]
    texts = [""] * len(starts)
    for start, end, text in segments:
        clip = max(0, bisect.bisect_right(starts, (start + end) / 2 * SAMPLE_RATE) - 1)
        texts[clip] += text
    return texts


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_name(), "cpu_flags": cpu_flags()}
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
    from whisper_zh.serve.models import export_ct2

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


Transcribe = Callable[[np.ndarray], Iterator[tuple[float, float, str]]]


def systems(model_dir: Path, device: str, with_pipeline: bool) -> list[tuple[str, Callable[[], Transcribe]]]:
    """(name, loader) pairs; a loader returns ``transcribe(audio) -> iterator of (start, end, text)``."""
    cuda = device.startswith("cuda")
    ct2_dir = str(model_dir / "ct2")
    quant = "float16" if cuda else "int8"

    def engine(backend: str, ramp: bool = True, encoder: str = "auto", **overrides):
        def load():
            from whisper_zh.serve import ct2_backend
            from whisper_zh.serve.types import TranscribeOptions
            from whisper_zh.serve.engine import Transcriber

            transcriber = Transcriber(str(model_dir), backend=backend, device=device, encoder=encoder)
            options = TranscribeOptions(**overrides)

            def transcribe(audio):
                # the lanes' ramp (1, 2, 4, 8 chunks in the first steps) against every lane
                # from the first step: what the first text's earlier arrival costs in total
                plan = ct2_backend.lane_plan
                if not ramp:
                    ct2_backend.lane_plan = _lanes_at_once
                try:
                    yield from ((s.start, s.end, s.text) for s in transcriber.iter_segments(audio, options))
                finally:
                    ct2_backend.lane_plan = plan
            return transcribe
        return load

    def faster_whisper(batched: bool, loaded_by: str = "faster-whisper", cpu_threads: int = 0, **overrides):
        def load():
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            from whisper_zh.serve.ct2_backend import load_ct2

            if loaded_by == "whisper-zh":
                # as the engine loads it: in a thread that ends with the load (a decoder twice
                # as fast on 2 cores; bench/README.md, "Threads and memory"), which faster-whisper
                # itself does not do
                model = load_ct2(ct2_dir, device=device, compute_type=quant)
            else:  # as its users load it, in the calling thread
                kind, _, index = device.partition(":")
                model = WhisperModel(ct2_dir, device=kind, device_index=int(index or 0), compute_type=quant,
                                     cpu_threads=cpu_threads, local_files_only=True)
            runner = BatchedInferencePipeline(model) if batched else model
            return lambda audio: ((s.start, s.end, s.text)
                                  for s in runner.transcribe(audio, language="zh", **overrides)[0])
        return load

    def hf_pipeline():
        import torch
        from transformers import pipeline

        pipe = pipeline("automatic-speech-recognition", model=str(model_dir), chunk_length_s=30,
                        device=device, dtype=torch.float16 if cuda else torch.float32)

        def transcribe(audio):
            out = pipe(audio.copy(), return_timestamps=True, generate_kwargs={"language": "zh", "task": "transcribe"})
            return ((c["timestamp"][0] or 0.0, c["timestamp"][1] or 0.0, c["text"]) for c in out["chunks"])
        return transcribe

    weights = "fp16" if cuda else "fp32"
    rows = [
        (f"whisper-zh engine, ct2 {quant} (defaults: 8 lanes, beam 5)", engine("ct2")),
        (f"whisper-zh engine, ct2 {quant} (8 lanes, greedy)", engine("ct2", beam_size=1)),
        (f"whisper-zh engine, ct2 {quant} (8 lanes from the first step, no ramp; beam 5)", engine("ct2", ramp=False)),
        # the default on a CPU with AMX is the bfloat16 encoder; this row keeps CTranslate2's
        *([] if cuda else [(f"whisper-zh engine, ct2 {quant} (CTranslate2's encoder; beam 5)",
                            engine("ct2", encoder="ct2"))]),
        (f"faster-whisper {quant} sequential (defaults: beam 5)", faster_whisper(False)),
        # its fastest setting on the 2-core AMD host (0: CTranslate2's choice, and 2, are
        # slower there; on a 2-core Intel Xeon with MKL it is the slowest); on a GPU, the
        # same model
        *([] if cuda else [(f"faster-whisper {quant} sequential (beam 5, cpu_threads=1)",
                            faster_whisper(False, cpu_threads=1))]),
        (f"faster-whisper {quant} sequential (beam 5, loaded as whisper-zh loads)",
         faster_whisper(False, loaded_by="whisper-zh")),
        (f"faster-whisper {quant} sequential (greedy)", faster_whisper(False, beam_size=1)),
        (f"faster-whisper {quant} BatchedInferencePipeline (defaults: batch 8, beam 5)", faster_whisper(True)),
        (f"faster-whisper {quant} BatchedInferencePipeline (batch 8, greedy)", faster_whisper(True, beam_size=1)),
        (f"whisper-zh engine, transformers {weights} (defaults: batch 8, greedy)", engine("transformers")),
    ]
    if with_pipeline:
        rows.append((f"transformers pipeline, {weights} (chunk_length_s=30, defaults)", hf_pipeline))
    return rows


def _lanes_at_once(n_chunks: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """The lane plan before the ramp: every lane from the first step, consecutive chunks
    dealt as evenly as they go."""
    lanes = min(max(batch_size, 1), n_chunks)
    per_lane, extra = divmod(n_chunks, lanes) if lanes else (0, 0)
    plan, first = [], 0
    for j in range(lanes):
        length = per_lane + (1 if j < extra else 0)
        plan.append((0, list(range(first, first + length))))
        first += length
    return plan


class CallProfile:
    """Where a system's time goes (``--profile``): seconds and calls inside the CTranslate2
    model's ``encode`` (and the windows it encoded), ``generate`` and ``align``, and inside
    the engine's VAD and completeness pass (whose own model calls are counted in both); the
    bfloat16 encoder's calls count as ``encode``.

    Installed in the system's own process before it loads: every ``faster_whisper.WhisperModel``
    created after it (the engine's ct2 backend loads one too) gets its CTranslate2 model
    wrapped, and the engine's ``speech_chunks``/``complete`` are timed where both backends
    call them.
    """

    PHASES = ("vad", "encode", "generate", "align", "completeness")

    def __init__(self):
        self.installed = False
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = {k: 0.0 for k in self.PHASES}
        self.calls: dict[str, int] = {k: 0 for k in self.PHASES}
        self.windows = 0

    def snapshot(self) -> dict:
        return {"seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "calls": dict(self.calls),
                "windows_encoded": self.windows}

    def timed(self, phase: str, function: Callable) -> Callable:
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
                self.calls[phase] += 1
        return call

    def encoder(self, encode: Callable, features_at: int) -> Callable:
        """``encode`` timed as "encode", counting the windows of its log-mel argument (the
        ``features_at``-th positional one)."""
        timed = self.timed("encode", encode)

        def call(*args, **kwargs):
            self.windows += int(args[features_at].shape[0])
            return timed(*args, **kwargs)
        return call

    def install(self) -> None:
        import faster_whisper
        from whisper_zh.serve import bf16_encoder, ct2_backend, transformers_backend

        if self.installed:  # wrapping twice would count every call twice
            return
        self.installed = True
        profile, init = self, faster_whisper.WhisperModel.__init__

        class TimedModel:  # CTranslate2's model cannot take attributes; this stands in for it
            def __init__(self, model):
                self._model = model
                self.generate = profile.timed("generate", model.generate)
                self.align = profile.timed("align", model.align)
                self.encode = profile.encoder(model.encode, 0)

            def __getattr__(self, name):
                return getattr(self._model, name)

        def wrapped_init(model, *args, **kwargs):
            init(model, *args, **kwargs)
            model.model = TimedModel(model.model)

        faster_whisper.WhisperModel.__init__ = wrapped_init
        bf16_encoder.BF16Encoder.__call__ = self.encoder(bf16_encoder.BF16Encoder.__call__, 1)  # (self, features)
        for module in (ct2_backend, transformers_backend):
            module.speech_chunks = self.timed("vad", module.speech_chunks)
            module.complete = self.timed("completeness", module.complete)


def measure(transcribe: Transcribe, recording: Recording, keep_segments: bool = False,
            profile: CallProfile | None = None) -> dict:
    """One system on one recording: speed, CER and sentences lost (and, with
    ``keep_segments``, its ``(start, end, text)`` segments under ``"segments"``; with
    ``profile``, where the time went under ``"profile"``)."""
    if profile is not None:
        profile.reset()
    load_before, steal = os.getloadavg()[0], _steal_s()
    wall, cpu = time.perf_counter(), time.process_time()
    segments, first = [], None
    for segment in transcribe(recording.audio):
        if first is None:
            first = time.perf_counter() - wall
        segments.append(segment)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steal = _steal_s() - steal
    clips = per_clip_text(recording, segments)
    text = "".join(clips)
    reference = "".join(recording.sentences)
    lost = [i for i, t in enumerate(clips) if not normalize(t)]
    missing = clips_lost(recording, segments)
    return {
        "recording": recording.name,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "first_segment_s": round(first, 2) if first is not None else None,
        "x_realtime": round(recording.seconds / wall, 2),
        "cer": round(cer([reference], [text]), 4),
        "cer_digits_as_characters": round(cer([reference], [text.translate(_DIGITS)]), 4),
        "sentences_lost": len(lost),
        "lost": [recording.sentences[i] for i in lost],
        "clips_lost": len(missing),
        "clips_lost_text": [recording.sentences[i] for i in missing],
        # other processes on the machine slow everything down: say how busy it was
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # CPU time the hypervisor took from this machine while the row ran (all CPUs)
        "steal_s": round(steal, 2),
        "text_head": text[:80],
        **({"segments": segments} if keep_segments else {}),
        **({"profile": profile.snapshot()} if profile is not None else {}),
    }


def run(args: argparse.Namespace, save: Callable[[dict], None] = lambda result: None) -> dict:
    minutes = None if args.minutes == "all" else float(args.minutes)
    recordings = []
    if "multi" in args.recordings:
        recordings.append(build_recording("multi", Path(args.multi_data), ("dev", "test"), None))
    if "cv" in args.recordings:
        recordings.append(build_recording("cv", Path(args.data), ("test", "dev", "train"), minutes))
    if "runs" in args.recordings:
        recordings += build_runs(Path(args.data), Path(args.multi_data))
    for r in recordings:
        print(f"recording {r.name}: {r.seconds / 60:.2f} min, {len(r.sentences)} clips", file=sys.stderr)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model),
        "device": args.device,
        "recordings": {r.name: {"audio_s": round(r.seconds, 2), "clips": len(r.sentences)} for r in recordings},
        "machine": machine(args.device),
        "malloc": args.malloc,
        "repeat": args.repeat,
        "interleaved": args.interleave,
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="whisper-zh-bench-") as work:
        model_dir, export_s = prepare_model_dir(args.model, Path(work), args.device)
        result["ct2_export_s"] = round(export_s, 2)
        print(f"exported to CTranslate2 in {export_s:.1f} s", file=sys.stderr)
        chosen = [(name, load) for name, load in systems(model_dir, args.device, args.pipeline)
                  if not args.only or any(key in name for key in args.only)]
        if args.interleave:
            # every system loaded at once and the repeats interleaved, so that a noisy
            # neighbour (the machine's steal time) slows each system alike; but several
            # CTranslate2 models in one process slow each other (each keeps an OpenMP team)
            loaded = [(name, load()) for name, load in chosen]
            for _, transcribe in loaded:
                list(transcribe(recordings[0].audio[: int(WARMUP_S * SAMPLE_RATE)]))
            runs: dict = {}
            for repeat in range(args.repeat):
                for recording in recordings:
                    for name, transcribe in loaded:
                        runs.setdefault((name, recording.name), []).append(measure(transcribe, recording))
                # the rows so far after every round: a run stopped early keeps what it measured
                result["rows"] = []
                for name, _ in loaded:
                    for recording in recordings:
                        _add_row(result, name, recording, runs[name, recording.name], quiet=repeat < args.repeat - 1)
                save(result)
            return result
        for name, _ in chosen:
            # each system in a fresh process: a model's threads outlive it (libgomp keeps a
            # team for the thread that loaded it), and would slow the systems after it
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                runs = pool.submit(_measure_system, model_dir, args.device, args.pipeline, name, recordings,
                                   args.repeat, args.malloc, args.profile).result()
            for recording, runs_of_one in zip(recordings, runs):
                _add_row(result, name, recording, runs_of_one)
            save(result)
    return result


def _measure_system(model_dir: Path, device: str, with_pipeline: bool, name: str, recordings: list[Recording],
                    repeat: int, malloc: str, with_profile: bool = False) -> list[list[dict]]:
    """In a process of its own: one system, warmed up, then its runs on each recording."""
    if malloc == "reuse":
        from whisper_zh.allocator import reuse_freed_memory

        reuse_freed_memory()
    profile = CallProfile() if with_profile else None
    if profile is not None:
        profile.install()
    transcribe = dict(systems(model_dir, device, with_pipeline))[name]()
    list(transcribe(recordings[0].audio[: int(WARMUP_S * SAMPLE_RATE)]))
    return [[measure(transcribe, recording, profile=profile) for _ in range(repeat)] for recording in recordings]


def _add_row(result: dict, name: str, recording: Recording, runs: list[dict], quiet: bool = False) -> None:
    """One system's row on one recording: its median run by wall time (of an even number,
    the slower of the middle two)."""
    runs = sorted(runs, key=lambda r: r["wall_s"])
    row = {"system": name, **runs[len(runs) // 2], "wall_s_runs": [r["wall_s"] for r in runs]}
    if "BatchedInferencePipeline" in name:
        # its segments are whole VAD chunks of up to 30 s, many clips each: which
        # clips came back empty cannot be told from them
        row["sentences_lost"], row["lost"] = None, []
        row["clips_lost"], row["clips_lost_text"] = None, []
    result["rows"].append(row)
    if quiet:
        return
    print(f"{name} on {recording.name}: {row['wall_s']} s (runs {row['wall_s_runs']}), {row['x_realtime']}x real "
          f"time, CER {row['cer']:.3f}, lost {row['sentences_lost']}, clips lost {row['clips_lost']} "
          f"{row['clips_lost_text']}, steal {row['steal_s']} s", file=sys.stderr, flush=True)


def _steal_s() -> float:
    """Seconds the hypervisor gave this machine's CPUs to others (/proc/stat), 0 elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _speedups(rows: list[dict]) -> list[str]:
    """How many times faster the engine (ct2 defaults) is than each faster-whisper
    sequential row at beam 5, on one recording."""
    engine = next((r for r in rows if r["system"].startswith("whisper-zh engine, ct2") and "(defaults" in r["system"]),
                  None)
    peers = [r for r in rows if "sequential" in r["system"] and "beam 5" in r["system"]]
    if engine is None or not peers:
        return []
    return ["", "engine (ct2 defaults) against faster-whisper sequential: " + "; ".join(
        f"{peer['wall_s'] / engine['wall_s']:.2f}× faster than {peer['system'].partition('sequential ')[2]}"
        for peer in peers)]


def _profile_table(rows: list[dict]) -> list[str]:
    """With ``--profile``: the seconds (and calls) each system spent in each phase; "–"
    where it made no such call (faster-whisper has no completeness pass, the transformers
    backend no CTranslate2 model)."""
    profiled = [r for r in rows if r.get("profile")]
    if not profiled:
        return []
    lines = ["", "| system | wall s | VAD s | encode s (windows) | generate s (calls) | align s (calls) "
                 "| completeness pass s (calls) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in profiled:
        s, n = row["profile"]["seconds"], row["profile"]["calls"]

        def cell(phase: str, count: int | None = None) -> str:
            if not n[phase]:
                return "–"
            return f"{s[phase]:.2f}" + ("" if phase == "vad" else f" ({n[phase] if count is None else count})")
        lines.append(f"| {row['system']} | {row['wall_s']:.1f} | {cell('vad')} "
                     f"| {cell('encode', row['profile']['windows_encoded'])} | {cell('generate')} "
                     f"| {cell('align')} | {cell('completeness')} |")
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu_model']}, {m['cpu_count']} cores" + (
        f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else "")
    lines = [f"{Path(result['model']).name}, {result['device']}: {where} ({result['date']}); malloc: "
             f"{result.get('malloc', 'glibc')}; each row the median of {result.get('repeat', 1)} run(s)"]
    for name, info in result["recordings"].items():
        lines += [
            "", f"**{name}**: {info['audio_s'] / 60:.1f} min, {info['clips']} clips joined with {GAP_S} s pauses",
            "",
            "| system | wall s | CPU s | first segment s | × real time | CER | CER, digits as characters "
            "| sentences lost | clips lost | load avg | steal s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = [r for r in result["rows"] if r["recording"] == name]
        for row in rows:
            first = f"{row['first_segment_s']:.1f}" if row["first_segment_s"] is not None else "–"
            cpu = "–" if row.get("cpu_s") is None else f"{row['cpu_s']:.1f}"
            lines.append(f"| {row['system']} | {row['wall_s']:.1f} | {cpu} | {first} "
                         f"| {row['x_realtime']:.1f} "
                         f"| {row['cer']:.3f} | {row['cer_digits_as_characters']:.3f} "
                         f"| {'–' if row['sentences_lost'] is None else row['sentences_lost']} "
                         f"| {'–' if row.get('clips_lost') is None else row['clips_lost']} "
                         f"| {row['loadavg_1min'][0]:.1f}–{row['loadavg_1min'][1]:.1f} "
                         f"| {'–' if row.get('steal_s') is None else format(row['steal_s'], '.1f')} |")
        lines += _speedups(rows)
        lines += _profile_table(rows)
    lines += ["", f"load avg: the machine's 1-minute load average before–after the row; above "
              f"{m['cpu_count']} means other processes were competing for the {m['cpu_count']} cores. "
              f"CPU s: the process's CPU time (all threads). steal s: CPU time the hypervisor gave to "
              f"other machines during the row (a shared host); with --repeat, a row is the median run."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="transformers Whisper directory or Hub id (default: the offline whisper-base)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recordings", nargs="+", default=["multi", "cv"], choices=["multi", "cv", "runs"])
    parser.add_argument("--minutes", default="10", help="length of the zh-cv-mini recording, or 'all' clips")
    parser.add_argument("--data", default=str(CV_DATA), help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--multi-data", default=str(MULTI_DATA), help="zh-multi-dev (Common Voice layout)")
    parser.add_argument("--pipeline", action="store_true", help="also the (slow) transformers ASR pipeline")
    parser.add_argument("--only", nargs="*", help="run only the systems whose name contains one of these")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/transcribe-<device>.json)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time each system on each recording this many times; the row is the median run")
    parser.add_argument("--interleave", action="store_true",
                        help="load every system at once and interleave their repeats (fairer under a noisy "
                             "neighbour, but CTranslate2 models in one process slow each other)")
    parser.add_argument("--malloc", choices=["reuse", "glibc"], default="reuse",
                        help="reuse: freed memory kept for the next call, as the CLI and app.py set it "
                             "(whisper_zh.allocator), for every system; glibc: the C library's defaults")
    parser.add_argument("--profile", action="store_true",
                        help="also time the model's encode/generate/align calls, the VAD and the completeness "
                             "pass of each system (a table under each recording's)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.profile and args.interleave:
        parser.error("--profile times one system per process: it cannot be used with --interleave")
    if args.malloc == "reuse":
        from whisper_zh.allocator import reuse_freed_memory

        reuse_freed_memory()  # before the models and their threads
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
