"""Evaluation: CER (and WER) of any Whisper, Hub id or directory, on any prepared split.

``whisper-zh evaluate --model openai/whisper-small --dataset cv-corpus-*/zh-CN --split test``
decodes the split in batches (greedy, language and task from ``generation_config``),
prints the corpus CER/WER and clips/s, and can write one TSV row per clip (path,
reference, hypothesis, CER) so that a zero-shot and a fine-tuned model can be compared
clip by clip on the same audio.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field

import torch

from whisper_zh.features import SpeechCollator, log_mel_spectrogram, mel_filters_of
from whisper_zh.text import error_rates, utterance_cer


@dataclass
class EvalResult:
    cer: float
    wer: float
    n_clips: int
    audio_seconds: float
    seconds: float
    rows: list = field(default_factory=list)  # dicts: path, reference, hypothesis, cer

    @property
    def clips_per_second(self) -> float:
        return self.n_clips / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        return (f"CER {100 * self.cer:.2f}%  WER {100 * self.wer:.2f}%  on {self.n_clips} clips "
                f"({self.audio_seconds / 60:.1f} min of audio) in {self.seconds:.1f} s: "
                f"{self.clips_per_second:.1f} clips/s, {self.audio_seconds / self.seconds:.0f}x real time")


@torch.inference_mode()
def evaluate_model(model, processor, dataset, *, language: str = "zh", task: str = "transcribe",
                   batch_size: int = 16, max_new_tokens: int = 225, num_beams: int = 1) -> EvalResult:
    """Decode every clip of a prepared ``dataset`` (see :func:`whisper_zh.data.prepare_split`)
    with ``model`` and score it against its ``sentence``."""
    device = model.device
    collator = SpeechCollator(model.config.decoder_start_token_id)
    filters = mel_filters_of(processor.feature_extractor).to(device)
    references, hypotheses, paths = [], [], []
    audio_seconds = 0.0
    started = time.perf_counter()
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        batch = collator([{"audio": a} for a in rows["audio"]])
        features = log_mel_spectrogram(batch["input_audio"].to(device), filters).to(model.dtype)
        generated = model.generate(input_features=features, language=language, task=task,
                                   max_new_tokens=max_new_tokens, num_beams=num_beams)
        hypotheses += processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        references += rows["sentence"]
        paths += rows["path"]
        audio_seconds += float(sum(rows["duration"]))
    seconds = time.perf_counter() - started
    rates = error_rates(references, hypotheses, language)
    rows = [{"path": p, "reference": r, "hypothesis": h.strip(), "cer": utterance_cer(r, h, language)}
            for p, r, h in zip(paths, references, hypotheses)]
    return EvalResult(rates["cer"], rates["wer"], len(references), audio_seconds, seconds, rows)


def write_tsv(result: EvalResult, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "reference", "hypothesis", "cer"])
        for row in result.rows:
            writer.writerow([row["path"], row["reference"], row["hypothesis"], f"{row['cer']:.4f}"])


def main(argv: list[str]) -> int:
    from whisper_zh.config import DEFAULT_CACHE_DIR, DEFAULT_MODEL
    from whisper_zh.data import DataError, LabelEncoder, PrepareOptions, open_source, prepare_split
    from whisper_zh.train import load_model_and_processor, resolve_precision
    from whisper_zh.transcribe import default_device

    parser = argparse.ArgumentParser(prog="whisper-zh evaluate", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N clips")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--output-tsv", default=None, help="write path, reference, hypothesis, CER per clip")
    args = parser.parse_args(argv)

    try:
        source = open_source(args.dataset, args.dataset_config)
        labels = LabelEncoder(args.model, args.language, args.task)
        opts = PrepareOptions(language=args.language, task=args.task, audio_column=args.audio_column,
                              text_column=args.text_column)
        dataset, stats = prepare_split(source, args.split, args.cache_dir, labels, opts)
    except DataError as err:
        print(f"whisper-zh evaluate: {err}", file=sys.stderr)
        return 2
    print(stats.summary(args.split), flush=True)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    device = args.device or default_device()
    precision = resolve_precision(args.precision) if device.startswith("cuda") else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model, processor = load_model_and_processor(args.model, args.language, args.task, dtype=dtype)
    model.to(device).eval()
    result = evaluate_model(model, processor, dataset, language=args.language, task=args.task,
                            batch_size=args.batch_size, num_beams=args.num_beams)
    print(f"{args.model} on {args.split}: {result.summary()}", flush=True)
    if args.output_tsv:
        write_tsv(result, args.output_tsv)
        print(f"per-clip results: {args.output_tsv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
