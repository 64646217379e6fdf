"""Evaluation: the error rate of any Whisper, Hub id or directory, on any prepared split.

``whisper-zh evaluate --model openai/whisper-small --dataset cv-corpus-*/zh-CN --split test``
(:mod:`whisper_zh.cli`) decodes the split with the transcription engine (:class:`whisper_zh.serve.engine.Transcriber`:
the same backends, batching and decoding as the app, so the score is the score of what
is served), prints the corpus CER (WER for space-delimited languages) and the speed,
and can write one TSV row per clip (path, reference, hypothesis, error rate) so that a
zero-shot and a fine-tuned model can be compared clip by clip on the same audio.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from tqdm.auto import tqdm

from whisper_zh.serve.engine import Transcriber
from whisper_zh.serve.types import TranscribeOptions
from whisper_zh.text import cer, uses_cer, utterance_cer, wer
from whisper_zh.train.examples import decode_clip

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
class SplitScore:
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
             *, show_progress: bool = True) -> SplitScore:
    """Decode every clip of a prepared ``dataset`` (see :func:`whisper_zh.train.data.prepare_split`:
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
    return SplitScore(metric, corpus, len(references), audio_seconds, seconds, clips)


def write_tsv(result: SplitScore, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "reference", "hypothesis", result.metric.lower()])
        for clip in result.clips:
            writer.writerow([clip.path, clip.reference, clip.hypothesis, f"{clip.error_rate:.4f}"])
