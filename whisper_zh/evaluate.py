"""Evaluation: the error rate of any Whisper, Hub id or directory, on any prepared split.

``whisper-zh evaluate --model openai/whisper-small --dataset cv-corpus-*/zh-CN --split test``
decodes the split with the transcription engine (:class:`whisper_zh.transcribe.Transcriber`:
the same backends, batching and decoding as the app, so the score is the score of what
is served), prints the corpus CER (WER for space-delimited languages) and the speed,
and can write one TSV row per clip (path, reference, hypothesis, error rate) so that a
zero-shot and a fine-tuned model can be compared clip by clip on the same audio.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from tqdm.auto import tqdm

from whisper_zh.cli import ArgumentParser
from whisper_zh.config import DEFAULT_CACHE_DIR, DEFAULT_MODEL, TrainConfig
from whisper_zh.features import decode_clip
from whisper_zh.text import cer, utterance_cer, uses_cer, wer
from whisper_zh.transcribe import BACKENDS, TranscribeOptions, Transcriber

logger = logging.getLogger(__name__)

# Clips decoded per call of the engine: bounds the audio held in memory at once.
CLIPS_PER_CALL = 64


@dataclass
class ClipScore:
    path: str
    reference: str
    hypothesis: str
    error_rate: float


@dataclass
class EvalResult:
    """Corpus scores of one model on one split.

    Attributes:
        metric: "CER" for Chinese and other unsegmented languages, else "WER".
        error_rate: the corpus ``metric`` (0.12 = 12%).
    """

    metric: str
    error_rate: float
    n_clips: int
    audio_seconds: float
    seconds: float
    clips: list[ClipScore] = field(default_factory=list)

    @property
    def speed(self) -> float:
        """Seconds of audio per second of wall time ("x real time")."""
        return self.audio_seconds / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        return (f"{self.metric} {100 * self.error_rate:.2f}% on {self.n_clips} clips "
                f"({self.audio_seconds / 60:.1f} min of audio) in {self.seconds:.1f} s: "
                f"{self.n_clips / self.seconds:.1f} clips/s, {self.speed:.0f}x real time")


def evaluate(transcriber: Transcriber, dataset, options: Optional[TranscribeOptions] = None,
             *, show_progress: bool = True) -> EvalResult:
    """Decode every clip of a prepared ``dataset`` (see :func:`whisper_zh.data.prepare_split`:
    columns ``audio``, ``sentence``, ``path``, ``duration``) with ``transcriber``, each
    clip on its own, and score the text against its ``sentence``."""
    options = replace(options or transcriber.options, script="simplified")
    metric = "CER" if uses_cer(options.language) else "WER"
    score = utterance_cer if metric == "CER" else (lambda r, h, language: wer([r], [h], language))
    references, hypotheses, paths = [], [], []
    audio_seconds = 0.0
    started = time.perf_counter()
    with tqdm(total=len(dataset), unit="clip", desc="evaluating", disable=not show_progress) as bar:
        for first in range(0, len(dataset), CLIPS_PER_CALL):
            rows = dataset[first:first + CLIPS_PER_CALL]
            hypotheses += transcriber.transcribe_clips([decode_clip(a) for a in rows["audio"]], options)
            references += rows["sentence"]
            paths += rows["path"]
            audio_seconds += float(sum(rows["duration"]))
            bar.update(len(rows["sentence"]))
    seconds = time.perf_counter() - started
    corpus = (cer if metric == "CER" else wer)(references, hypotheses, options.language)
    clips = [ClipScore(p, r, h, score(r, h, options.language)) for p, r, h in zip(paths, references, hypotheses)]
    return EvalResult(metric, corpus, len(references), audio_seconds, seconds, clips)


def write_tsv(result: EvalResult, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "reference", "hypothesis", result.metric.lower()])
        for clip in result.clips:
            writer.writerow([clip.path, clip.reference, clip.hypothesis, f"{clip.error_rate:.4f}"])


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="whisper-zh evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Whisper Hub id or local directory")
    parser.add_argument("--dataset", required=True, help="Common Voice release (folder or .tar.gz), "
                        "local datasets directory or Hub dataset id")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="test", help="split(s), '+'-joined (default: test)")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--language", default="zh")
    parser.add_argument("--task", default="transcribe")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default): ct2 on a CPU, transformers on a GPU")
    parser.add_argument("--batch-size", type=int, default=TranscribeOptions.batch_size,
                        help="clips decoded together (default: %(default)s)")
    parser.add_argument("--beam-size", "--num-beams", type=int, default=None,
                        help="1 = greedy (default: the backend's, as the app decodes)")
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N clips")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--output-tsv", default=None, help="write path, reference, hypothesis, error rate per clip")
    return parser


def main(argv: list[str]) -> int:
    from whisper_zh.data import LabelEncoder, PrepareOptions, open_source, prepare_split

    args = build_parser().parse_args(argv)
    source = open_source(args.dataset, args.dataset_config)
    labels = LabelEncoder(args.model, args.language, args.task)
    opts = PrepareOptions.from_config(TrainConfig(language=args.language, task=args.task,
                                                  audio_column=args.audio_column, text_column=args.text_column))
    dataset, stats = prepare_split(source, args.split, args.cache_dir, labels, opts)
    logger.info(stats.summary(args.split))
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    transcriber = Transcriber(args.model, backend=args.backend, device=args.device)
    options = TranscribeOptions(language=args.language, task=args.task, batch_size=args.batch_size,
                                beam_size=args.beam_size)
    result = evaluate(transcriber, dataset, options)
    print(f"{args.model} on {args.split} ({transcriber.backend.name}): {result.summary()}", flush=True)
    if args.output_tsv:
        write_tsv(result, args.output_tsv)
        logger.info("per-clip results: %s", args.output_tsv)
    return 0
