"""Preparation speed and cache size: the project's cache against precomputed log-mel features.

Prepares the same clips (zh-cv-mini, all 500 by default) twice, each time into a fresh
folder:

* ``whisper-zh``: the project's pipeline (:func:`whisper_zh.train.prepare_data`): the
  original compressed clip bytes and the label ids in sharded Arrow, clips checked and
  their durations measured on the way;
* ``blog``: the Hugging Face blog recipe (``bench/blog_recipe.py``): ``datasets.map`` of
  ``WhisperFeatureExtractor`` (80 x 3000 float32 log-mel per clip) and the tokenizer, then
  ``save_to_disk``, as users keep it between Colab sessions.

Reported: clips/s (clips prepared per second of wall time, the tokenizer's loading
included), the cache's bytes on disk, bytes per hour of audio, and the ratio of the two
caches. Prints a markdown table and writes ``bench/results/prepare-<host>.json``.

    python bench/prepare.py
    python bench/prepare.py --split train --workers 2 --shard-size 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _machine import DATA_CANDIDATES, PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402
from whisper_zh.train.data import dir_bytes  # noqa: E402








def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=first_existing(DATA_CANDIDATES), help="zh-cv-mini (Common Voice layout)")
    parser.add_argument("--processor-from", default=first_existing(PROCESSOR_CANDIDATES) or "openai/whisper-small",
                        help="Whisper directory or Hub id for the tokenizer and feature extractor")
    parser.add_argument("--split", default="validated", help="split to prepare (default: validated, all clips)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for both pipelines (default: the project's, all cores; "
                             "the blog's num_proc min(4, cores))")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="the project's clips per shard, its unit of parallel work (default: the project's 1000)")
    parser.add_argument("--work-dir", default=None, help="where the two caches go (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/prepare-<host>.json)")
    args = parser.parse_args(argv)
    if not args.data or not os.path.isdir(args.data):
        raise SystemExit("no zh-cv-mini found: pass --data DIR")

    from transformers import WhisperProcessor

    from blog_recipe import precompute_log_mel
    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.data import prepare_data

    work = args.work_dir or tempfile.mkdtemp(prefix="whisper-zh-prepare-")
    project_cache = os.path.join(work, "project-cache")
    blog_cache = os.path.join(work, "blog-log-mel")
    for path in (project_cache, blog_cache):
        shutil.rmtree(path, ignore_errors=True)
    try:
        config = TrainConfig(dataset=args.data, model_name_or_path=args.processor_from, cache_dir=project_cache,
                             train_split=args.split, eval_split="", test_split="",
                             preprocessing_num_workers=args.workers)
        if args.shard_size:
            config.prepare_shard_size = args.shard_size
        started = time.perf_counter()
        prepared = prepare_data(config, splits=["train"], verbose=False)
        project_seconds = time.perf_counter() - started
        stats = prepared.stats[args.split]
        project_bytes = dir_bytes(project_cache)

        num_proc = args.workers or min(4, os.cpu_count() or 1)
        started = time.perf_counter()
        processor = WhisperProcessor.from_pretrained(args.processor_from)
        processor.tokenizer.set_prefix_tokens(language="zh", task="transcribe")
        features, _ = precompute_log_mel(args.data, args.split, processor, blog_cache, num_proc=num_proc)
        blog_seconds = time.perf_counter() - started
        blog_clips = len(features)
        blog_bytes = dir_bytes(blog_cache)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    hours = stats.audio_seconds / 3600
    rows = [
        {"pipeline": "whisper-zh cache (compressed clips + label ids)", "clips": stats.kept,
         "dropped": dict(stats.dropped), "seconds": project_seconds, "clips_per_second": stats.kept / project_seconds,
         "cache_bytes": project_bytes, "bytes_per_audio_hour": project_bytes / hours,
         "workers": min(config.preprocessing_num_workers or os.cpu_count() or 1,
                        -(-(stats.kept + sum(stats.dropped.values())) // config.prepare_shard_size)),
         "shard_size": config.prepare_shard_size},
        {"pipeline": "HF blog: precomputed log-mel (map + save_to_disk)", "clips": blog_clips, "dropped": {},
         "seconds": blog_seconds, "clips_per_second": blog_clips / blog_seconds,
         "cache_bytes": blog_bytes, "bytes_per_audio_hour": blog_bytes / hours, "workers": num_proc},
    ]
    report = {
        "benchmark": "prepare", "host": socket.gethostname(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "data": os.path.basename(args.data.rstrip("/")), "split": args.split, "audio_hours": hours,
        "cache_ratio": project_bytes / blog_bytes, "results": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"\n{report['data']} {args.split}: {stats.kept} clips, {60 * hours:.1f} min of audio; "
          f"{report['cpu']}, {os.cpu_count()} cores\n")
    print("| pipeline | processes | clips/s | cache MiB | GB per hour of audio | size vs log-mel |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pipeline']} | {row['workers']} | {row['clips_per_second']:.1f} | "
              f"{row['cache_bytes'] / 2**20:.1f} | {row['bytes_per_audio_hour'] / 1e9:.3f} | "
              f"{row['cache_bytes'] / blog_bytes:.3f} |")
    out = args.out or os.path.join(HERE, "results", f"prepare-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
