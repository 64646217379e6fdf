"""CTranslate2 backend: run an exported model (``whisper-zh export --ct2``) with faster-whisper.

On the 2-core CPU of a free Space, CTranslate2 int8 decodes many times faster than
transformers float32 (bench/transcribe.py). The engine (:mod:`whisper_zh.transcribe`)
owns the model's lifetime; nothing here is cached globally.

Long audio is decoded in *lanes* (:func:`decode_chunks`). The Silero VAD (an onnx file
inside the faster-whisper wheel, so it works offline) finds the speech; consecutive
speech is grouped into contiguous chunks of at most 30 s cut in pauses
(:func:`speech_chunks`); the chunks are dealt, in order, into ``batch_size`` lanes of
consecutive chunks, and each generate call decodes the next chunk of every lane
together, each conditioned on the text of the chunk before it in its lane. So the
decoder's matrix products are batched (what makes faster-whisper's
``BatchedInferencePipeline`` fast, on a CPU too) and still almost every chunk is
conditioned on the previous text, as in openai/whisper's sequential long-form decoding
(42 min of joined zh-cv-mini clips, whisper-base int8, beam 5: CER 0.177 with it, 0.188
without), with openai/whisper's temperature fallback for chunks that loop or are unsure.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from whisper_zh.audio import N_SAMPLES as WINDOW_SAMPLES, SAMPLE_RATE

# Batched decoding reads whole chunks of at most 30 s without timestamp tokens (with
# them, whisper-base dropped whole sentences in batched mode: CER 0.17 vs 0.12 on
# zh-cv-mini, digits aside). Subtitle-sized segments are recovered from the VAD's
# pauses and the words' cross-attention times: a segment ends at a pause of at least
# PAUSE_S, after sentence-final punctuation, or before it would exceed MAX_SEGMENT_S.
CHUNK_S = 30.0
PAUSE_S = 0.3
MAX_SEGMENT_S = 10.0
VAD_PAD_S = 0.1  # speech padding of the VAD's pieces; the default 0.4 s would hide short pauses
# Silence kept around each chunk: whisper-base skipped a whole sentence when a chunk
# began right at the speech onset.
CHUNK_PAD_S = 0.4
_SENTENCE_END = tuple("。！？!?；;")
# Beam search is cheap here: on 2 CPU cores, 42 min of zh-cv-mini, whisper-base int8,
# beam 5 took 18% longer than greedy and cut CER from 0.213 to 0.177 (bench/transcribe.py).
BEAM_SIZE = 5
# A lane's next chunk is not conditioned on text decoded this hot (openai/whisper's
# prompt_reset_on_temperature): it is probably wrong, and would pull the next chunk along.
PROMPT_RESET_TEMPERATURE = 0.5
# faster-whisper's defaults for the word alignment
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def find_ct2_model(model_name_or_path: str) -> str | None:
    """The CTranslate2 export that belongs to a model, if there is one.

    Returns ``DIR/ct2`` when ``DIR/ct2/model.bin`` exists (where ``whisper-zh export``
    writes by default), ``DIR`` when ``DIR/model.bin`` exists (``DIR`` is itself an
    export), else ``None`` (also for Hub ids: nothing is downloaded).
    """
    path = os.fspath(model_name_or_path)
    if not os.path.isdir(path):
        return None
    for candidate in (os.path.join(path, "ct2"), path):
        if os.path.isfile(os.path.join(candidate, "model.bin")):
            return candidate
    return None


def load_ct2(model_dir: str, device: str = "cpu", compute_type: str = "int8"):
    """Load a CTranslate2 Whisper export.

    Args:
        model_dir: a directory written by :func:`whisper_zh.export.export_ct2` (or any
            faster-whisper model directory).
        device: "cpu", "cuda" or "auto".
        compute_type: CTranslate2 compute type ("int8", "int8_float16", "float16",
            "float32", "default" = as stored); weights are converted on load if needed.

    Returns:
        A ``faster_whisper.WhisperModel``.
    """
    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        raise FileNotFoundError(f"{model_dir} is not a CTranslate2 export (no model.bin); "
                                f"run `whisper-zh export MODEL --ct2` first")
    from faster_whisper import WhisperModel

    # cpu_threads=0 lets CTranslate2 pick its thread count (measured faster on 2 cores
    # than pinning 2 threads); local_files_only: a local directory never touches the Hub.
    return WhisperModel(model_dir, device=device, compute_type=compute_type, local_files_only=True)


def speech_chunks(audio: np.ndarray, chunk_s: float = CHUNK_S) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Find speech with Silero VAD and group it for batched decoding.

    Returns:
        ``(chunks, pauses)``: chunks are contiguous ``(start, end)`` spans in seconds, each
        at most ``chunk_s`` long, covering all detected speech (inner pauses included, so
        times inside a chunk are real times); pauses are the ``(start, end)`` gaps between
        consecutive speech pieces, in seconds.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    budget = chunk_s - 2 * CHUNK_PAD_S  # what a chunk may hold before its padding
    # a longer stretch without pauses is cut by the VAD itself (at its quietest 100 ms)
    options = VadOptions(min_silence_duration_ms=160, speech_pad_ms=int(VAD_PAD_S * 1000),
                         max_speech_duration_s=budget)
    pieces = [(p["start"] / SAMPLE_RATE, p["end"] / SAMPLE_RATE) for p in get_speech_timestamps(audio, options)]
    pauses = [(a_end, b_start) for (_, a_end), (b_start, _) in zip(pieces, pieces[1:]) if b_start > a_end]
    duration = audio.shape[0] / SAMPLE_RATE
    groups: list[list[float]] = []
    for start, end in pieces:
        if groups and end - groups[-1][0] <= budget:
            groups[-1][1] = end
        else:
            groups.append([start, end])
    chunks = []
    for i, (start, end) in enumerate(groups):
        # pad into the silence on both sides, never past the middle of the gap to a neighbour
        low = 0.0 if i == 0 else (groups[i - 1][1] + start) / 2
        high = duration if i == len(groups) - 1 else (end + groups[i + 1][0]) / 2
        chunks.append((max(low, start - CHUNK_PAD_S), min(high, end + CHUNK_PAD_S)))
    return chunks, pauses


def split_words(words: list, pauses: list[tuple[float, float]], pause_s: float = PAUSE_S,
                max_segment_s: float = MAX_SEGMENT_S) -> list[tuple[float, float, str]]:
    """Group timed words into subtitle-sized ``(start, end, text)`` phrases.

    Args:
        words: objects with ``start``, ``end`` (seconds) and ``word`` (text), in order.
        pauses: ``(start, end)`` silences in seconds (from :func:`speech_chunks`); those of
            at least ``pause_s`` end a phrase.

    Whisper's alignment leaves no gaps between words: a pause is absorbed into the
    word after it, whose *end* is reliable and whose *start* is early. So a pause
    splits before the first word that ends after the pause's middle, and that word's
    start is moved to the end of the pause.
    """
    cuts = sorted(p for p in pauses if p[1] - p[0] >= pause_s)
    groups: list[list] = []  # [start, end, text]
    k = 0  # next pause to place
    for i, word in enumerate(words):
        start, end = float(word.start), float(word.end)
        new = not groups
        while k < len(cuts) and (cuts[k][0] + cuts[k][1]) / 2 < end:
            if i > 0:
                new = True
                start = max(start, min(cuts[k][1], end))
            k += 1
        if groups and not new:
            group = groups[-1]
            if group[2].strip().endswith(_SENTENCE_END) or end - group[0] > max_segment_s:
                new = True
        if new:
            if groups:
                groups[-1][1] = max(groups[-1][0], min(groups[-1][1], start))
            groups.append([start, end, word.word])
        else:
            groups[-1][1] = end
            groups[-1][2] += word.word
    return [(start, end, text) for start, end, text in groups]


@dataclass
class ChunkResult:
    """What the decoder made of one chunk.

    Attributes:
        tokens: text token ids (no special tokens).
        text: the decoded text.
        avg_logprob: mean log-probability per token (the end-of-text token included).
        no_speech_prob: probability of the <|nospeech|> token at the first step.
        compression_ratio: UTF-8 bytes / zlib-compressed bytes of the text (high: a loop).
        temperature: the temperature it had to be decoded at (the last one tried).
        words: timed words (dicts with ``word``, ``start``, ``end`` in seconds from the
            start of the recording, ``probability``) when asked for, else None.
    """

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: Optional[list[dict]] = None


def _generate(model, tokenizer, encoder_output, prompts: list[list[int]], *, temperature: float,
              beam_size: int, best_of: int, suppress_tokens) -> list[ChunkResult]:
    """One ``generate`` call over a batch: beam search (or greedy) at temperature 0,
    sampling ``best_of`` candidates above it (as openai/whisper and faster-whisper do)."""
    from faster_whisper.transcribe import get_compression_ratio

    if temperature > 0:
        kwargs = {"beam_size": 1, "num_hypotheses": best_of, "sampling_topk": 0, "sampling_temperature": temperature}
    else:
        kwargs = {"beam_size": beam_size}
    outputs = model.model.generate(encoder_output, prompts, max_length=model.max_length, return_scores=True,
                                   return_no_speech_prob=True, suppress_blank=True,
                                   suppress_tokens=suppress_tokens, **kwargs)
    results = []
    for output in outputs:
        sequence = output.sequences_ids[0]
        tokens = [t for t in sequence if t < tokenizer.eot]
        # CTranslate2 returns the cumulative log-probability divided by the length
        avg_logprob = output.scores[0] * len(sequence) / (len(sequence) + 1)
        text = tokenizer.decode(tokens)
        results.append(ChunkResult(tokens, text, float(avg_logprob), float(output.no_speech_prob),
                                   get_compression_ratio(text.strip()), temperature))
    return results


def _is_silence(result: ChunkResult, no_speech_threshold, logprob_threshold) -> bool:
    """openai/whisper's rule: the no-speech token is likely and the text is unsure."""
    return (no_speech_threshold is not None and logprob_threshold is not None
            and result.no_speech_prob > no_speech_threshold and result.avg_logprob < logprob_threshold)


def _is_loop(result: ChunkResult, compression_ratio_threshold) -> bool:
    return compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold


def _needs_fallback(result: ChunkResult, compression_ratio_threshold, logprob_threshold,
                    no_speech_threshold) -> bool:
    if _is_silence(result, no_speech_threshold, logprob_threshold):
        return False
    unsure = logprob_threshold is not None and result.avg_logprob < logprob_threshold
    return _is_loop(result, compression_ratio_threshold) or unsure


def decode_chunks(model, audio: np.ndarray, chunks: Sequence[tuple[float, float]], *, language: str = "zh",
                  task: str = "transcribe", batch_size: int = 8, beam_size: int = BEAM_SIZE, best_of: int = 5,
                  temperatures: Sequence[float] = (0.0, 0.4, 0.8),
                  compression_ratio_threshold: Optional[float] = 2.4, logprob_threshold: Optional[float] = -1.0,
                  no_speech_threshold: Optional[float] = 0.6, condition_on_previous_text: bool = True,
                  word_timestamps: bool = True) -> list[Optional[ChunkResult]]:
    """Decode the chunks of a recording ``batch_size`` at a time, each conditioned on the
    text of the chunk before it.

    The chunks are dealt in order into ``min(batch_size, len(chunks))`` lanes of
    consecutive chunks (lane lengths differ by at most one). Step ``t`` encodes and
    decodes chunk ``t`` of every lane in one batch, each with the tokens of the chunk
    before it in its lane as the prompt. CTranslate2 needs <|startoftranscript|> at the
    same position in every prompt of a batch, so every prompt keeps the last ``k`` tokens
    of its lane's text, ``k`` being the shortest among the batch (at most 223, half the
    decoder's context, as in openai/whisper).

    A chunk whose text looks like a loop (compression ratio above the threshold) or is
    unsure (mean log-probability below the threshold) is decoded again at the next
    temperature, in one batch with the other such chunks; when every temperature fails,
    the non-looping candidate with the best log-probability is kept. A chunk that the
    no-speech rule calls silent is returned as None. A lane's next chunk is not
    conditioned on a silent chunk or on one decoded above 0.5.

    Args:
        model: a ``faster_whisper.WhisperModel``.
        audio: float32 array of shape ``(n_samples,)``, 16 kHz mono.
        chunks: ``(start, end)`` spans in seconds, in time order, each at most 30 s.
        batch_size: lanes, i.e. chunks per generate call; 1 decodes one chunk after another.
        beam_size: at temperature 0 (default 5); 1 is greedy.
        best_of: candidates sampled at each fallback temperature.
        word_timestamps: align words to the audio (one extra decoder pass per batch).

    Returns:
        One :class:`ChunkResult`, or None for silence, per chunk, in the order of ``chunks``.
    """
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    if not chunks:
        return []
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)
    suppress_tokens = get_suppressed_tokens(tokenizer, [-1])
    lanes = [lane.tolist() for lane in np.array_split(np.arange(len(chunks)), min(max(batch_size, 1), len(chunks)))]
    previous: list[list[int]] = [[] for _ in lanes]
    results: list[Optional[ChunkResult]] = [None] * len(chunks)
    max_prompt = model.max_length // 2 - 1
    thresholds = (compression_ratio_threshold, logprob_threshold, no_speech_threshold)
    for step in range(len(lanes[0])):
        active = [j for j, lane in enumerate(lanes) if step < len(lane)]
        indices = [lanes[j][step] for j in active]
        spans = [(int(chunks[i][0] * SAMPLE_RATE), int(chunks[i][1] * SAMPLE_RATE)) for i in indices]
        # The audio, not the log-mel, is padded to 30 s, as in Whisper's training: padding
        # log-mel frames with 0 (faster-whisper's batched pipeline) is not silence to the
        # model (42 min of zh-cv-mini, beam 5: CER 0.190 that way, 0.177 this way).
        window = [np.pad(audio[a:b], (0, max(0, WINDOW_SAMPLES - (b - a)))) for a, b in spans]
        features = np.stack([pad_or_trim(model.feature_extractor(w)) for w in window])  # (batch, n_mels, 3000)
        encoder_output = model.encode(features)
        keep = min(min(len(previous[j]) for j in active), max_prompt) if condition_on_previous_text else 0
        prompts = [model.get_prompt(tokenizer, previous[j][len(previous[j]) - keep:] if keep else [],
                                    without_timestamps=True) for j in active]

        def encoded(batch_items: list[int]):
            """The encoder output of some of this step's chunks (CTranslate2's cannot be sliced)."""
            return encoder_output if len(batch_items) == len(indices) else model.encode(features[batch_items])

        options = dict(beam_size=beam_size, best_of=best_of, suppress_tokens=suppress_tokens)
        tries = [[r] for r in _generate(model, tokenizer, encoder_output, prompts, temperature=temperatures[0],
                                        **options)]
        for temperature in temperatures[1:]:
            retry = [b for b, attempts in enumerate(tries) if _needs_fallback(attempts[-1], *thresholds)]
            if not retry:
                break
            again = _generate(model, tokenizer, encoded(retry), [prompts[b] for b in retry],
                              temperature=temperature, **options)
            for b, result in zip(retry, again):
                tries[b].append(result)
        chosen = []
        for attempts in tries:
            last = attempts[-1]
            if _needs_fallback(last, *thresholds):
                not_looping = [r for r in attempts if not _is_loop(r, compression_ratio_threshold)]
                best = max(not_looping or attempts, key=lambda r: r.avg_logprob)
                last = replace(best, temperature=last.temperature)
            chosen.append(last)

        if word_timestamps:
            # faster-whisper's cross-attention alignment, for the whole batch at once; an
            # empty text cannot be aligned (CTranslate2 fails), so those are left out
            texts = [b for b, r in enumerate(chosen) if r.tokens]
            if texts:
                segments = [[{"tokens": chosen[b].tokens, "seek": chunks[indices[b]][0] * model.frames_per_second,
                              "start": chunks[indices[b]][0], "end": chunks[indices[b]][1]}] for b in texts]
                frames = [int(math.ceil(chunks[indices[b]][1] - chunks[indices[b]][0]) * model.frames_per_second)
                          for b in texts]
                model.add_word_timestamps(segments, tokenizer, encoded(texts), frames,
                                          _PREPEND_PUNCTUATIONS, _APPEND_PUNCTUATIONS, 0.0)
                for b, segment in zip(texts, segments):
                    chosen[b].words = segment[0].get("words") or []

        for j, i, r in zip(active, indices, chosen):
            silent = not r.tokens or _is_silence(r, no_speech_threshold, logprob_threshold)
            results[i] = None if silent else r
            previous[j] = [] if silent or r.temperature > PROMPT_RESET_TEMPERATURE else r.tokens
    return results


def ct2_transcribe(model, audio: np.ndarray, *, language: str = "zh", task: str = "transcribe",
                   batch_size: int = 8, beam_size: int = BEAM_SIZE, temperatures: Sequence[float] = (0.0, 0.4, 0.8),
                   compression_ratio_threshold: Optional[float] = 2.4, logprob_threshold: Optional[float] = -1.0,
                   no_speech_threshold: Optional[float] = 0.6,
                   condition_on_previous_text: bool = True) -> list[dict]:
    """Transcribe a waveform of any length with a model from :func:`load_ct2`.

    Speech is found and chunked by :func:`speech_chunks`, decoded by
    :func:`decode_chunks` and cut into subtitle-sized phrases, at pauses and sentence
    ends, by :func:`split_words`.

    Args:
        model: a ``faster_whisper.WhisperModel``.
        audio: float32 array of shape ``(n_samples,)``, 16 kHz mono, values in [-1, 1].
        language: Whisper language code.
        task: "transcribe" or "translate" (to English).
        batch_size: chunks decoded together (lanes); 1 decodes them one after another.
        beam_size: default 5; 1 is greedy decoding.
        temperatures, compression_ratio_threshold, logprob_threshold,
        no_speech_threshold, condition_on_previous_text: as in openai/whisper.

    Returns:
        One dict per segment, in time order: ``start`` and ``end`` in seconds from the
        start of ``audio`` (floats, ``0 <= start <= end <= duration``), ``text`` (str,
        stripped) and ``no_speech_prob`` (float in [0, 1]).
    """
    from faster_whisper.transcribe import Word

    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D (n_samples,), got shape {audio.shape}")
    duration = audio.shape[0] / SAMPLE_RATE
    chunks, pauses = speech_chunks(audio)
    results = decode_chunks(model, audio, chunks, language=language, task=task, batch_size=batch_size,
                            beam_size=beam_size, temperatures=temperatures,
                            compression_ratio_threshold=compression_ratio_threshold,
                            logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
                            condition_on_previous_text=condition_on_previous_text)
    pieces = []
    for (start, end), result in zip(chunks, results):
        if result is None:
            continue
        words = [Word(**w) for w in result.words or []]
        if words:
            pieces += [(*phrase, result.no_speech_prob) for phrase in split_words(words, pauses)]
        else:
            pieces.append((start, end, result.text, result.no_speech_prob))
    out = []
    for start, end, text, no_speech_prob in pieces:
        text = text.strip()
        if not text:
            continue
        start = min(max(float(start), 0.0), duration)
        end = min(max(float(end), start), duration)
        out.append({"start": start, "end": end, "text": text, "no_speech_prob": float(no_speech_prob)})
    out.sort(key=lambda s: s["start"])
    return out
