"""The Hugging Face blog recipe ("Fine-Tune Whisper For Multilingual ASR with Transformers"),
the baseline the benchmarks compare whisper-zh with.

What users would otherwise run: ``prepare_dataset`` maps every clip to its 80 x 3000
log-mel (``WhisperFeatureExtractor``) and label ids, stored in the dataset (Arrow, float32
as nested lists: ~0.96 MB a clip); ``DataCollatorSpeechSeq2SeqWithPadding`` pads them
per batch; the Trainer runs fp16, batch 16, gradient checkpointing, eager attention.

The one change: the blog decodes audio through ``datasets.Audio`` (torchcodec in
``datasets`` >= 4); here the same decode happens inside ``prepare_dataset`` with the
project's decoder (:func:`whisper_zh.media.load_audio`, also what the project's
preparation uses), so the comparison is of what is stored and trained on, not of decoders.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def cv_split_dataset(release_dir: str, split: str):
    """A Common Voice split (tsv + clips/) -> ``datasets.Dataset`` with ``path`` (absolute) and ``sentence``."""
    import datasets

    from whisper_zh.train.data import read_cv_split

    rows = read_cv_split(release_dir, split)
    return datasets.Dataset.from_dict({
        "path": [os.path.join(release_dir, "clips", r["path"]) for r in rows],
        "sentence": [r["sentence"] for r in rows],
    })


def make_prepare_dataset(feature_extractor, tokenizer):
    """The blog's ``prepare_dataset``: one clip -> ``input_features`` (80 x 3000 log-mel) and ``labels``."""
    from whisper_zh.media import load_audio

    def prepare_dataset(batch):
        # blog: audio = batch["audio"] (decoded by datasets.Audio at 16 kHz)
        audio = {"array": load_audio(batch["path"]), "sampling_rate": 16000}
        batch["input_features"] = feature_extractor(
            audio["array"], sampling_rate=audio["sampling_rate"]).input_features[0]
        batch["labels"] = tokenizer(batch["sentence"]).input_ids
        return batch

    return prepare_dataset


def precompute_log_mel(release_dir: str, split: str, processor, out_dir: str, num_proc: int = 1):
    """Prepare ``split`` the blog's way and ``save_to_disk`` it to ``out_dir``.

    Returns ``(dataset, seconds)``: the memory-mapped dataset read back from ``out_dir``
    (columns ``input_features``, ``labels``) and the wall time of map + save, in s."""
    import datasets

    started = time.perf_counter()
    ds = cv_split_dataset(release_dir, split)
    ds = ds.map(make_prepare_dataset(processor.feature_extractor, processor.tokenizer),
                remove_columns=ds.column_names, num_proc=num_proc if num_proc > 1 else None)
    ds.save_to_disk(out_dir)
    seconds = time.perf_counter() - started
    return datasets.load_from_disk(out_dir), seconds


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The blog's collator, verbatim."""

    processor: Any
    decoder_start_token_id: int

    def __call__(self, features):
        # split inputs and labels since they have to be of different lengths and need different padding methods
        # first treat the audio inputs by simply returning torch tensors
        input_features = [{"input_features": feature["input_features"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")

        # get the tokenized label sequences
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        # pad the labels to max length
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")

        # replace padding with -100 to ignore loss correctly
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)

        # if bos token is appended in previous tokenization step,
        # cut bos token here as it's append later anyways
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]

        batch["labels"] = labels
        return batch
