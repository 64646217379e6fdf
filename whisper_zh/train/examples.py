"""Features: cached clips -> training examples -> batches of waveforms -> log-mel on the model's device.

Whisper's input is an 80 (or 128) x 3000 log-mel of a zero-padded 30 s window. Storing
it costs 0.96 MB a clip; computing it costs a few milliseconds of STFT. So the cache
keeps compressed audio; :func:`plan_examples` decides which clips make one training
example (clips labelled with timestamps are joined into windows of up to 30 s, each clip
its own segment) and :class:`SpeechCollator` decodes a batch of them to waveforms padded
to the longest (in the DataLoader's worker processes), with their labels;
:func:`log_mel_spectrogram` pads to 30 s and computes the features on whichever device
the model is on (a GPU when there is one), batched. The result matches
``WhisperFeatureExtractor`` to float rounding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from whisper_zh.audio import (
    CHUNK_LENGTH,
    HOP_LENGTH,
    N_FFT,
    N_SAMPLES,
    SAMPLE_RATE,
    TIME_PRECISION,
)
from whisper_zh.errors import ConfigError
from whisper_zh.media import frame_energy_db, load_audio

# A clip's speech ends after its last 20 ms frame within this many dB of its loudest
# frame (Common Voice clips carry up to a second or two of trailing silence).
SPEECH_FLOOR_DB = 35.0


def log_mel_spectrogram(audio: torch.Tensor, mel_filters: torch.Tensor, n_samples: int = N_SAMPLES) -> torch.Tensor:
    """Whisper's log-mel, batched, on ``audio``'s device.

    Args:
        audio: float waveforms at 16 kHz, shape ``(batch, n)`` with ``n <= n_samples``;
            zero-padded (or cut) to ``n_samples`` here.
        mel_filters: shape ``(n_mels, n_fft // 2 + 1)``.

    Returns:
        float32 tensor of shape ``(batch, n_mels, n_samples // 160)``, values in about [-1, 1.5].
    """
    audio = audio.float()
    if audio.shape[-1] < n_samples:
        audio = torch.nn.functional.pad(audio, (0, n_samples - audio.shape[-1]))
    audio = audio[..., :n_samples]
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = mel_filters.to(audio.device, torch.float32) @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    # Per clip: floor at 8 (log10 units) below the clip's own maximum, as Whisper does.
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def mel_filters_of(feature_extractor) -> torch.Tensor:
    """The ``(n_mels, 201)`` filter bank of a ``WhisperFeatureExtractor``."""
    return torch.from_numpy(np.asarray(feature_extractor.mel_filters, dtype=np.float32).T.copy())


def decode_clip(data: Any) -> np.ndarray:
    """A cached ``audio`` value (encoded bytes) or a float array -> float32 16 kHz waveform."""
    if isinstance(data, (bytes, bytearray)):
        return load_audio(data)
    return np.asarray(data, dtype=np.float32)


def speech_span(clip: np.ndarray, floor_db: float = SPEECH_FLOOR_DB) -> tuple[float, float]:
    """Where speech starts and ends in ``clip`` (16 kHz), on Whisper's 0.02 s timestamp grid
    and never beyond the clip: the start of the first and the end of the last 20 ms frame
    within ``floor_db`` of the loudest frame. A silent clip spans its whole (grid-rounded)
    duration; one shorter than a step spans nothing, ``(0.0, 0.0)``."""
    step = int(round(TIME_PRECISION * SAMPLE_RATE))
    n_steps = min(clip.shape[0] // step, int(round(CHUNK_LENGTH / TIME_PRECISION)))
    if n_steps == 0:
        return 0.0, 0.0
    energy_db = frame_energy_db(clip[: n_steps * step], frame_s=TIME_PRECISION)
    if energy_db.max() <= -100:
        return 0.0, round(n_steps * TIME_PRECISION, 2)
    loud = np.flatnonzero(energy_db >= energy_db.max() - floor_db)
    return round(int(loud[0]) * TIME_PRECISION, 2), round((int(loud[-1]) + 1) * TIME_PRECISION, 2)


def example_draw(seed: int, *key: Any) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``key``: the same clip gets the same
    choice in every epoch, after a resume and in every DataLoader worker process."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class ExamplePlan:
    """One training example, by row numbers of a prepared split."""

    rows: tuple[int, ...]  # clips joined as one input, in order
    timestamps: bool = False  # labelled with a timestamped segment per clip, else <|notimestamps|>
    prompt_row: Optional[int] = None  # the clip whose text is the <|startofprev|> prompt


def check_example_options(timestamp_fraction: float, timestamp_window_s: float, prompt_fraction: float) -> None:
    """Raise ValueError, naming the option, for one :func:`plan_examples` cannot follow."""
    for name, value, top in (("timestamp_fraction", timestamp_fraction, 1), ("prompt_fraction", prompt_fraction, 1),
                             ("timestamp_window_s", timestamp_window_s, CHUNK_LENGTH)):
        if not 0 <= value <= top:
            raise ConfigError(f"{name} must be between 0 and {top}, not {value}")


def plan_examples(keys: Sequence[tuple], durations: Sequence[float], label_lengths: Sequence[int], *,
                  timestamp_fraction: float = 0.0, timestamp_window_s: float = float(CHUNK_LENGTH),
                  prompt_fraction: float = 0.0, seed: int = 0, max_length: Optional[int] = None
                  ) -> list[ExamplePlan]:
    """The training examples of a prepared split, from its clips in the split's order.

    A ``timestamp_fraction`` of the clips (each drawn by :func:`example_draw` from its key,
    so the choice survives epochs, resumes and worker processes) is labelled with
    timestamps. Consecutive such clips are joined into one input of at most
    ``timestamp_window_s`` seconds, each clip its own segment, as in the 30 s windows of
    long-form speech Whisper was trained on: the model keeps predicting where a sentence
    starts and ends *inside* a window and where the next one begins, which is what
    long-form transcription reads its segments from (a clip alone only ever shows one
    segment at the start of an input). ``timestamp_window_s`` 0 keeps one clip per example.
    The other clips are examples of their own, labelled ``<|notimestamps|>``. Every clip is
    in exactly one example, so an epoch still sees each clip once.

    A ``prompt_fraction`` of the examples (drawn by their first clip) is conditioned on
    the text of the clip before their first one in the split (``<|startofprev|>``).

    Args:
        keys: per clip, what fixes its draws (its path and sentence).
        durations: per clip, seconds.
        label_lengths: per clip, the length of its cached label ids
            (``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|> text <|endoftext|>``).
        max_length: the decoder's limit on a label, ``<|startoftranscript|>`` included.
    """
    check_example_options(timestamp_fraction, timestamp_window_s, prompt_fraction)
    plans: list[ExamplePlan] = []
    window: list[int] = []
    window_s = window_tokens = 0.0

    def prompt_row(first: int) -> Optional[int]:
        wanted = first > 0 and example_draw(seed, "prompt", *keys[first]) < prompt_fraction
        return first - 1 if wanted else None

    def close_window():
        if window:
            plans.append(ExamplePlan(tuple(window), True, prompt_row(window[0])))
            window.clear()

    for i, (key, seconds, length) in enumerate(zip(keys, durations, label_lengths)):
        if example_draw(seed, "timestamps", *key) >= timestamp_fraction:
            plans.append(ExamplePlan((i,), False, prompt_row(i)))
            continue
        # a clip adds its two timestamps and its text (its cached label less the prefix,
        # <|notimestamps|> and <|endoftext|>) to a label of 4 + sum(length - 3) tokens
        fits = (window and window_s + seconds <= timestamp_window_s
                and (max_length is None or window_tokens + length - 3 <= max_length))
        if not fits:
            close_window()
            window_s, window_tokens = 0.0, 4
        window.append(i)
        window_s += seconds
        window_tokens += length - 3
    close_window()
    return plans


@dataclass(frozen=True)
class Example:
    """What :class:`SpeechCollator` makes one row of a batch of: clips decoded and joined
    as one input, labelled with or without timestamps, optionally after the text before.

    Attributes:
        clips: prepared rows (``audio``: encoded bytes or a waveform; ``labels``: cached ids).
        timestamps: one timestamped segment per clip; without, there is only one clip.
        prompt_labels: cached label ids of the text before, for a ``<|startofprev|>`` prompt.
    """

    clips: tuple[dict, ...]
    timestamps: bool = False
    prompt_labels: Optional[Sequence[int]] = None

    def __post_init__(self):
        if len(self.clips) > 1 and not self.timestamps:
            raise ValueError("clips are joined only with timestamps: each needs a segment of its own")


class TrainingExamples(torch.utils.data.Dataset):
    """A prepared split seen as the :class:`Example`s that :func:`plan_examples` makes of it."""

    def __init__(self, clips, plans: Sequence[ExamplePlan]):
        self.clips = clips
        self.plans = list(plans)

    @classmethod
    def from_split(cls, clips, **plan_options) -> "TrainingExamples":
        """``clips``: a prepared split (``path``, ``sentence``, ``duration``, ``labels``);
        ``plan_options``: those of :func:`plan_examples`."""
        columns = clips.select_columns(["path", "sentence", "duration", "labels"]).to_dict()
        plans = plan_examples(list(zip(columns["path"], columns["sentence"])), columns["duration"],
                              [len(ids) for ids in columns["labels"]], **plan_options)
        return cls(clips, plans)

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, index: int) -> Example:
        plan = self.plans[index]
        prompt = self.clips[plan.prompt_row]["labels"] if plan.prompt_row is not None else None
        return Example(tuple(self.clips[i] for i in plan.rows), plan.timestamps, prompt)

    def describe(self) -> str:
        windows = [p for p in self.plans if p.timestamps]
        stamped = sum(len(p.rows) for p in windows)
        return (f"{len(self.clips)} clips in {len(self.plans)} examples: {stamped} clips with timestamps in "
                f"{len(windows)} windows ({stamped / max(1, len(windows)):.1f} clips each), "
                f"{sum(p.prompt_row is not None for p in self.plans)} examples to follow the text before them")


@dataclass(frozen=True)
class LabelTokens:
    """The special token ids the collator writes labels with."""

    no_timestamps: int
    timestamp_begin: int  # <|0.00|>; <|t|> is timestamp_begin + t / 0.02
    end_of_text: int
    start_of_prev: int
    start_of_transcript: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "LabelTokens":
        ids = tokenizer.convert_tokens_to_ids(
            ["<|notimestamps|>", "<|0.00|>", "<|endoftext|>", "<|startofprev|>", "<|startoftranscript|>"])
        return cls(*ids)


@dataclass
class SpeechCollator:
    """:class:`Example`s (or plain prepared rows, one clip each) -> ``{"input_audio", "labels"}``.

    ``input_audio`` is float32 ``(batch, longest input in samples)``; the trainer turns it
    into ``input_features`` on the device (:func:`log_mel_spectrogram`). ``labels`` are
    padded with -100 (ignored by the loss) and lose their leading
    ``<|startoftranscript|>``, which the model prepends itself when it shifts labels
    right to make decoder inputs (``WhisperForConditionalGeneration.forward`` calls
    ``shift_tokens_right(labels, pad, decoder_start_token_id)`` when no decoder inputs
    are given).

    Timestamps: labels are cached as ``<|notimestamps|> text <|endoftext|>``. An example
    with ``timestamps`` (which needs ``tokens``) is rewritten here, where the audio is at
    hand, to ``<|s1|> text1 <|e1|><|s2|> text2 <|e2|>... <|endoftext|>``: each clip's speech
    start and end (:func:`speech_span`) at its place in the joined input. Clips that would
    take the input past ``n_samples`` or the label past ``max_length`` are left out. The
    cache stays valid for any mix.

    Previous text: an example with ``prompt_labels`` is conditioned on that text as
    Whisper is at inference: ``<|startofprev|> previous text <|startoftranscript|> ...``.
    The prompt is input only: the batch then carries explicit ``decoder_input_ids`` and
    the prompt's positions in ``labels`` are -100.
    """

    decoder_start_token_id: int
    n_samples: int = N_SAMPLES
    tokens: Optional[LabelTokens] = None
    max_length: Optional[int] = None  # the decoder's max_target_positions; None: no limit

    def __call__(self, items: list) -> dict:
        examples = [item if isinstance(item, Example) else Example((item,)) for item in items]
        built = [self.build(example) for example in examples]
        audio = torch.zeros(len(built), max(clip.shape[0] for clip, _ in built), dtype=torch.float32)
        for i, (clip, _) in enumerate(built):
            audio[i, : clip.shape[0]] = torch.from_numpy(clip)
        batch: dict[str, torch.Tensor] = {"input_audio": audio}
        if "labels" in examples[0].clips[0]:
            labels = [ids for _, ids in built]
            prompts = [self.prompt_of(e.prompt_labels) if e.prompt_labels and self.tokens is not None else None
                       for e in examples]
            if any(prompts):
                batch.update(self.prompted(labels, prompts))
            else:
                batch["labels"] = self.pad_labels(labels)
        return batch

    def build(self, example: Example) -> tuple[np.ndarray, Optional[list[int]]]:
        """An example's input waveform and label ids (None for rows without labels)."""
        waves = [decode_clip(clip["audio"]) for clip in example.clips]
        first = example.clips[0]
        if "labels" not in first:
            return waves[0][: self.n_samples], None
        if example.timestamps and self.tokens is not None:
            stamped = self.with_timestamps(example.clips, waves)
            if stamped is not None:
                return stamped
        return waves[0][: self.n_samples], list(first["labels"])

    def _text_of(self, ids: Sequence[int]) -> Optional[list[int]]:
        """The text tokens of a cached label, None if it is not ``... <|notimestamps|> text <|endoftext|>``."""
        ids = list(ids)
        if self.tokens.no_timestamps not in ids or ids[-1] != self.tokens.end_of_text:
            return None
        return ids[ids.index(self.tokens.no_timestamps) + 1:-1]

    def with_timestamps(self, clips: Sequence[dict], waves: Sequence[np.ndarray]
                        ) -> Optional[tuple[np.ndarray, list[int]]]:
        """Clips joined, each labelled ``<|start|> text <|end|>`` at its place; None when not
        even the first clip fits (its plain label is used then)."""
        t = self.tokens
        first = list(clips[0]["labels"])
        if self._text_of(first) is None:
            return None
        ids = first[: first.index(t.no_timestamps)]
        pieces, offset = [], 0
        for clip, wave in zip(clips, waves):
            text = self._text_of(clip["labels"])
            if text is None or offset + wave.shape[0] > self.n_samples:
                break
            if self.max_length is not None and len(ids) + len(text) + 3 > self.max_length:
                break
            start, end = speech_span(wave)
            ids += [self.timestamp_token(offset / SAMPLE_RATE + start), *text,
                    self.timestamp_token(offset / SAMPLE_RATE + end)]
            pieces.append(wave)
            offset += wave.shape[0]
        if not pieces:
            return None
        return np.concatenate(pieces), ids + [t.end_of_text]

    def timestamp_token(self, seconds: float) -> int:
        return self.tokens.timestamp_begin + int(round(seconds / TIME_PRECISION))

    def prompt_of(self, prev_ids: Sequence[int]) -> list[int]:
        """``<|startofprev|>`` + the text tokens of a cached label (special tokens dropped),
        cut from the left to half the decoder's length, as Whisper cuts its prompt."""
        text = [i for i in prev_ids if i < self.tokens.end_of_text]
        if self.max_length is not None:
            text = text[len(text) - min(len(text), self.max_length // 2 - 1):]
        return [self.tokens.start_of_prev] + text

    def prompted(self, labels: list[list[int]], prompts: list[Optional[list[int]]]) -> dict:
        """Decoder inputs and labels for a batch where some rows carry a previous-text prompt."""
        inputs, targets = [], []
        for ids, prompt in zip(labels, prompts):
            if ids and ids[0] != self.decoder_start_token_id:
                ids = [self.decoder_start_token_id] + ids
            prompt = prompt or []
            if self.max_length is not None:  # decoder inputs are prompt + ids less the last token
                room = self.max_length + 1 - len(ids)
                prompt = [] if room < 2 else prompt[:1] + prompt[1:][len(prompt) - min(len(prompt), room):]
            sequence = prompt + ids
            inputs.append(sequence[:-1])
            # The target of position i is token i + 1; nothing is learned about the prompt
            # itself, nor its <|startoftranscript|> (forced at inference).
            targets.append([-100] * len(prompt) + ids[1:])
        width = max(len(x) for x in inputs)
        decoder_input_ids = torch.full((len(inputs), width), self.tokens.end_of_text, dtype=torch.long)
        padded = torch.full((len(inputs), width), -100, dtype=torch.long)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            decoder_input_ids[i, : len(x)] = torch.as_tensor(x)
            padded[i, : len(y)] = torch.as_tensor(y)
        return {"decoder_input_ids": decoder_input_ids, "labels": padded}

    def pad_labels(self, label_lists: list) -> torch.Tensor:
        width = max(len(ids) for ids in label_lists)
        labels = torch.full((len(label_lists), width), -100, dtype=torch.long)
        for i, ids in enumerate(label_lists):
            labels[i, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        return labels
