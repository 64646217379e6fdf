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

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import ContextManager, Iterator, Optional, Sequence

import numpy as np

from whisper_zh.audio import N_SAMPLES as WINDOW_SAMPLES, SAMPLE_RATE
from whisper_zh.transcribe import DEFAULT_BEAM_SIZE, ProgressCallback, Segment, TranscribeOptions, Word

logger = logging.getLogger(__name__)

# Batched decoding reads whole chunks of at most 30 s without timestamp tokens (with
# them, whisper-base dropped whole sentences in batched mode: CER 0.17 vs 0.12 on
# zh-cv-mini, digits aside). Subtitle-sized segments are recovered from the VAD's
# pauses and the words' cross-attention times: a segment ends at a pause of at least
# PAUSE_S, after sentence-final punctuation, or before it would exceed MAX_SEGMENT_S.
PAUSE_S = 0.3
MAX_SEGMENT_S = 10.0
VAD_PAD_S = 0.1  # speech padding of the VAD's pieces; the default 0.4 s would hide short pauses
# Silence kept around each chunk: whisper-base skipped a whole sentence when a chunk
# began right at the speech onset.
CHUNK_PAD_S = 0.4
# Speech the decoder skipped is decoded again on its own (missed_speech): at least this
# much of it, between words, with a word taken to be at most MAX_WORD_S long.
MIN_MISSED_S = 1.0
MAX_WORD_S = 1.0
_SENTENCE_END = tuple("。！？!?；;")
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


def ct2_cache_dir() -> str:
    """Where conversions made at load time are kept: beside the Hugging Face cache
    (``$HF_HOME/whisper-zh-ct2``), so a Space's persistent storage keeps them too."""
    from huggingface_hub import constants

    return os.path.join(constants.HF_HOME, "whisper-zh-ct2")


def _conversion_key(model_dir: str) -> str:
    """A name for a model directory's conversion that changes when its weights do."""
    import hashlib

    weights = sorted(f for f in os.listdir(model_dir) if f.endswith((".safetensors", ".bin", ".json")))
    stamp = [(f, os.stat(os.path.join(model_dir, f)).st_size, os.stat(os.path.join(model_dir, f)).st_mtime_ns)
             for f in weights]
    digest = hashlib.sha256(repr((os.path.realpath(model_dir), stamp)).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in os.path.basename(os.path.normpath(model_dir)))
    return f"{name}-{digest}"


def resolve_ct2_model(model_id: str, quantization: str = "int8") -> str:
    """The CTranslate2 model for any Whisper, found, downloaded or converted once.

    In order: a local folder's own export (``DIR/ct2`` or ``DIR`` itself); a Hub repo's
    ``ct2/`` folder (only that folder is downloaded: what ``whisper-zh train`` pushes);
    a conversion made earlier and cached in :func:`ct2_cache_dir`; else the model is
    converted now (``quantization``, int8: the fastest on a CPU) and cached, so the next
    start skips it. Logs which of these happened and how long it took.
    """
    from whisper_zh.export import export_ct2, looks_local

    started = time.perf_counter()
    found = find_ct2_model(model_id)
    if found:
        logger.info("%s: using its CTranslate2 export %s", model_id, found)
        return found
    if os.path.isdir(model_id):
        source = model_id
    elif looks_local(model_id):
        raise FileNotFoundError(f"no such model directory: {model_id}")
    else:
        from huggingface_hub import snapshot_download

        found = find_ct2_model(snapshot_download(model_id, allow_patterns=["ct2/*"]))
        if found:
            logger.info("%s: downloaded its CTranslate2 export in %.1f s", model_id, time.perf_counter() - started)
            return found
        source = snapshot_download(model_id)  # its snapshot folder is named by the commit
    out = os.path.join(ct2_cache_dir(), _conversion_key(source), quantization)
    if os.path.isfile(os.path.join(out, "model.bin")):
        logger.info("%s: using the CTranslate2 conversion cached in %s", model_id, out)
        return out
    logger.info("%s has no CTranslate2 export: converting it to %s once (cached in %s)", model_id,
                quantization, out)
    export_ct2(source, out, quantization)
    logger.info("%s: converted to CTranslate2 %s in %.1f s", model_id, quantization, time.perf_counter() - started)
    return out


def load_ct2(model_dir: str, device: str = "cpu", compute_type: str = "int8"):
    """Load a CTranslate2 Whisper export.

    Args:
        model_dir: a directory written by :func:`whisper_zh.export.export_ct2` (or any
            faster-whisper model directory).
        device: "cpu", "cuda", "cuda:N" (the N-th GPU) or "auto".
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
    kind, _, index = device.partition(":")
    return WhisperModel(model_dir, device=kind, device_index=int(index or 0), compute_type=compute_type,
                        local_files_only=True)


@dataclass
class SpeechMap:
    """Where a recording holds speech, and how it is grouped for decoding.

    Attributes:
        chunks: contiguous ``(start, end)`` spans in seconds, each at most the chunk
            length, covering all detected speech (inner pauses included, so times inside
            a chunk are real times).
        speech: the VAD's ``(start, end)`` speech pieces, in seconds, in order.
    """

    chunks: list[tuple[float, float]]
    speech: list[tuple[float, float]]

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """The ``(start, end)`` gaps between consecutive speech pieces."""
        return [(a_end, b_start) for (_, a_end), (b_start, _) in zip(self.speech, self.speech[1:]) if b_start > a_end]

    def speech_within(self, start: float, end: float) -> float:
        """Seconds of detected speech between ``start`` and ``end``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.speech)


def speech_chunks(audio: np.ndarray, chunk_s: float) -> SpeechMap:
    """Find speech with Silero VAD and group it into chunks of at most ``chunk_s`` for
    batched decoding, cut in pauses."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    budget = chunk_s - 2 * CHUNK_PAD_S  # what a chunk may hold before its padding
    # a longer stretch without pauses is cut by the VAD itself (at its quietest 100 ms)
    options = VadOptions(min_silence_duration_ms=160, speech_pad_ms=int(VAD_PAD_S * 1000),
                         max_speech_duration_s=budget)
    pieces = [(p["start"] / SAMPLE_RATE, p["end"] / SAMPLE_RATE) for p in get_speech_timestamps(audio, options)]
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
    return SpeechMap(chunks, pieces)


def missed_speech(words: Sequence[Word], chunk: tuple[float, float], speech: SpeechMap,
                  min_missed_s: float = MIN_MISSED_S) -> list[tuple[float, float]]:
    """The spans of a chunk where the VAD heard at least ``min_missed_s`` of speech but
    the decoder wrote no word: a sentence it skipped or an end of text it emitted early.

    Whisper decoding a 30 s chunk without timestamps sometimes jumps over whole
    sentences (on joined zh-multi-dev clips, 17 s of one chunk). The alignment shows it
    as a long gap between consecutive words, or a word that starts long before it ends
    (it absorbs the skipped stretch): a character is at most ``MAX_WORD_S`` long, so a
    word is taken to start no earlier than that before its end.
    """
    edges = [chunk[0]]
    for word in words:
        edges += [max(word.start, word.end - MAX_WORD_S), word.end]
    edges.append(chunk[1])
    # only the chunk's own speech pieces: a long recording has thousands
    inside = SpeechMap([chunk], [p for p in speech.speech if p[1] > chunk[0] and p[0] < chunk[1]])
    return [(start, end) for start, end in zip(edges[::2], edges[1::2])
            if inside.speech_within(start, end) >= min_missed_s]


def split_words(words: Sequence[Word], pauses: list[tuple[float, float]], pause_s: float = PAUSE_S,
                max_segment_s: float = MAX_SEGMENT_S) -> list[Segment]:
    """Group timed words into subtitle-sized segments.

    Args:
        words: the words of a chunk, in order.
        pauses: ``(start, end)`` silences in seconds (from :func:`speech_chunks`); those of
            at least ``pause_s`` end a segment.

    Whisper's alignment leaves no gaps between words: a pause is absorbed into the
    word after it, whose *end* is reliable and whose *start* is early. So a pause
    splits before the first word that ends after the pause's middle, and that word's
    start is moved to the end of the pause.
    """
    cuts = sorted(p for p in pauses if p[1] - p[0] >= pause_s)
    groups: list[list[Word]] = []
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
            text = "".join(w.word for w in groups[-1]).strip()
            if text.endswith(_SENTENCE_END) or end - groups[-1][0].start > max_segment_s:
                new = True
        word = replace(word, start=start, end=end)
        if new:
            groups.append([word])
        else:
            groups[-1].append(word)
    segments = []
    for group, following in zip(groups, groups[1:] + [None]):
        # a segment ends where the next begins at the latest
        end = group[-1].end if following is None else max(group[0].start, min(group[-1].end, following[0].start))
        segments.append(Segment(start=group[0].start, end=end, text="".join(w.word for w in group),
                                words=tuple(group)))
    return segments


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
        words: the timed words (times in seconds from the start of the recording) when
            they were aligned, else None.
    """

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: Optional[list[Word]] = None


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


def _is_silence(result: ChunkResult, options: TranscribeOptions) -> bool:
    """openai/whisper's rule: the no-speech token is likely and the text is unsure."""
    return (options.no_speech_threshold is not None and options.logprob_threshold is not None
            and result.no_speech_prob > options.no_speech_threshold
            and result.avg_logprob < options.logprob_threshold)


def _is_loop(result: ChunkResult, options: TranscribeOptions) -> bool:
    return (options.compression_ratio_threshold is not None
            and result.compression_ratio > options.compression_ratio_threshold)


def _needs_fallback(result: ChunkResult, options: TranscribeOptions) -> bool:
    if _is_silence(result, options):
        return False
    unsure = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
    return _is_loop(result, options) or unsure


def decode_chunks(model, audio: np.ndarray, chunks: Sequence[tuple[float, float]],
                  options: TranscribeOptions = TranscribeOptions(), *, speech: Optional[SpeechMap] = None,
                  condition_on_previous_text: bool = True, word_timestamps: bool = True,
                  lock: Optional[ContextManager] = None) -> Iterator[list[tuple[int, Optional[ChunkResult]]]]:
    """Decode the chunks of a recording ``options.batch_size`` at a time, each conditioned
    on the text of the chunk before it; yield each step's results as soon as it is done.

    The chunks are dealt in order into ``min(batch_size, len(chunks))`` lanes of
    consecutive chunks (lane lengths differ by at most one). Step ``t`` encodes and
    decodes chunk ``t`` of every lane in one batch, each with the tokens of the chunk
    before it in its lane as the prompt. CTranslate2 needs <|startoftranscript|> at the
    same position in every prompt of a batch, so every prompt keeps the last ``k`` tokens
    of its lane's text, ``k`` being the shortest among the batch (at most 223, half the
    decoder's context, as in openai/whisper, less the prompt/hotwords of ``options``,
    which lead every prompt).

    A chunk whose text looks like a loop (compression ratio above the threshold) or is
    unsure (mean log-probability below the threshold) is decoded again at the next
    temperature, in one batch with the other such chunks; when every temperature fails,
    the non-looping candidate with the best log-probability is kept. A chunk that the
    no-speech rule calls silent comes back as None. A lane's next chunk is not
    conditioned on a silent chunk or on one decoded above 0.5. With ``speech`` (and word
    timestamps), speech that a chunk's text skipped (:func:`missed_speech`) is decoded
    again on its own, all of a step's such spans in one batch, and its words merged in.

    Args:
        model: a ``faster_whisper.WhisperModel``.
        audio: float32 array of shape ``(n_samples,)``, 16 kHz mono.
        chunks: ``(start, end)`` spans in seconds, in time order, each at most 30 s.
        options: language, task, batch size (lanes), beam size (``None``: 5), the
            temperatures and thresholds, prompt and hotwords.
        speech: the VAD's map of the recording, to find skipped speech.
        condition_on_previous_text: False decodes every chunk on its own (independent clips).
        word_timestamps: align words to the audio (one extra decoder pass per batch).
        lock: held around each step's model calls (the engine's, shared with other requests).

    Yields:
        Per step, ``[(chunk index, ChunkResult or None), ...]`` for the chunks it decoded.
    """
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    if not chunks:
        return
    lock = lock or contextlib.nullcontext()
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=options.task,
                          language=options.language)
    decoder = _SpanDecoder(model, tokenizer, audio, options, get_suppressed_tokens(tokenizer, [-1]), word_timestamps)
    lanes = [lane.tolist() for lane in np.array_split(np.arange(len(chunks)),
                                                      min(max(options.batch_size, 1), len(chunks)))]
    previous: list[list[int]] = [[] for _ in lanes]
    fixed = _prompt_tokens(tokenizer, options)[: model.max_length // 2 - 1]
    max_previous = model.max_length // 2 - 1 - len(fixed)
    for step in range(len(lanes[0])):
        active = [j for j, lane in enumerate(lanes) if step < len(lane)]
        indices = [lanes[j][step] for j in active]
        keep = min(min(len(previous[j]) for j in active), max_previous) if condition_on_previous_text else 0
        prompts = [_with_prompt(tokenizer, fixed + (previous[j][len(previous[j]) - keep:] if keep else []))
                   for j in active]
        with lock:
            chosen = decoder.decode([chunks[i] for i in indices], prompts)
            if speech is not None and word_timestamps:
                missed = [(b, span) for b, r in enumerate(chosen) if r.tokens and not _is_silence(r, options)
                          for span in missed_speech(r.words, chunks[indices[b]], speech)]
                if missed:
                    found = decoder.decode([span for _, span in missed],
                                           [_with_prompt(tokenizer, fixed)] * len(missed))
                    for (b, _), extra in zip(missed, found):
                        if extra.tokens and not _is_silence(extra, options):
                            chosen[b] = _merged(chosen[b], extra)
        done = []
        for j, i, r in zip(active, indices, chosen):
            silent = not r.tokens or _is_silence(r, options)
            done.append((i, None if silent else r))
            previous[j] = [] if silent or r.temperature > PROMPT_RESET_TEMPERATURE else r.tokens
        yield done


class _SpanDecoder:
    """Decodes spans of one recording, a batch at a time: log-mel, encoder, generate with
    openai/whisper's temperature fallback, then the words' times."""

    def __init__(self, model, tokenizer, audio: np.ndarray, options: TranscribeOptions, suppress_tokens,
                 word_timestamps: bool):
        self.model, self.tokenizer, self.audio, self.options = model, tokenizer, audio, options
        self.word_timestamps = word_timestamps
        self.settings = dict(beam_size=options.beam_size or DEFAULT_BEAM_SIZE["ct2"], best_of=options.best_of,
                             suppress_tokens=suppress_tokens)

    def decode(self, spans: list[tuple[float, float]], prompts: list[list[int]]) -> list[ChunkResult]:
        from faster_whisper.audio import pad_or_trim

        model, options = self.model, self.options
        samples = [(int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)) for a, b in spans]
        # The audio, not the log-mel, is padded to 30 s, as in Whisper's training: padding
        # log-mel frames with 0 (faster-whisper's batched pipeline) is not silence to the
        # model (42 min of zh-cv-mini, beam 5: CER 0.190 that way, 0.177 this way).
        window = [np.pad(self.audio[a:b], (0, max(0, WINDOW_SAMPLES - (b - a)))) for a, b in samples]
        features = np.stack([pad_or_trim(model.feature_extractor(w)) for w in window])  # (batch, n_mels, 3000)
        encoder_output = model.encode(features)

        def encoded(batch_items: list[int]):
            """The encoder output of some of the spans (CTranslate2's cannot be sliced)."""
            return encoder_output if len(batch_items) == len(spans) else model.encode(features[batch_items])

        temperatures = options.temperatures or (0.0,)
        tries = [[r] for r in _generate(model, self.tokenizer, encoder_output, prompts,
                                        temperature=temperatures[0], **self.settings)]
        for temperature in temperatures[1:]:
            retry = [b for b, attempts in enumerate(tries) if _needs_fallback(attempts[-1], options)]
            if not retry:
                break
            again = _generate(model, self.tokenizer, encoded(retry), [prompts[b] for b in retry],
                              temperature=temperature, **self.settings)
            for b, result in zip(retry, again):
                tries[b].append(result)
        chosen = []
        for attempts in tries:
            last = attempts[-1]
            if _needs_fallback(last, options):
                not_looping = [r for r in attempts if not _is_loop(r, options)]
                best = max(not_looping or attempts, key=lambda r: r.avg_logprob)
                last = replace(best, temperature=last.temperature)
            chosen.append(last)
        if self.word_timestamps:
            # faster-whisper's cross-attention alignment, for the whole batch at once; an
            # empty text cannot be aligned (CTranslate2 fails), so those are left out
            texts = [b for b, r in enumerate(chosen) if r.tokens]
            if texts:
                segments = [[{"tokens": chosen[b].tokens, "seek": spans[b][0] * model.frames_per_second,
                              "start": spans[b][0], "end": spans[b][1]}] for b in texts]
                frames = [int(math.ceil(spans[b][1] - spans[b][0]) * model.frames_per_second) for b in texts]
                model.add_word_timestamps(segments, self.tokenizer, encoded(texts), frames,
                                          _PREPEND_PUNCTUATIONS, _APPEND_PUNCTUATIONS, 0.0)
                for b, segment in zip(texts, segments):
                    chosen[b].words = [Word(start=float(w["start"]), end=float(w["end"]), word=w["word"],
                                            probability=float(w["probability"])) for w in segment[0].get("words") or []]
        return chosen


def _merged(result: ChunkResult, extra: ChunkResult) -> ChunkResult:
    """A chunk's result with the words of a span it skipped put in their place by time;
    the tokens (the next chunk's prompt) stay the chunk's own."""
    words = sorted([*(result.words or []), *(extra.words or [])], key=lambda w: (w.end, w.start))
    return replace(result, words=words, text="".join(w.word for w in words))


def _prompt_tokens(tokenizer, options: TranscribeOptions) -> list[int]:
    """The text that leads every window's prompt: the user's prompt, then the hotwords
    (faster-whisper's spelling: a leading space, as in its ``get_prompt``)."""
    return tokenizer.encode(" " + options.prompt_text) if options.prompt_text else []


def _with_prompt(tokenizer, context: list[int]) -> list[int]:
    """``<|startofprev|> context <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>``."""
    return ([tokenizer.sot_prev, *context] if context else []) + [*tokenizer.sot_sequence, tokenizer.no_timestamps]


class CT2Backend:
    """The engine's CTranslate2 backend: a faster-whisper model decoded in lanes.

    Speech is found and chunked by :func:`speech_chunks` (Silero VAD), decoded by
    :func:`decode_chunks`, and cut into subtitle-sized segments at pauses and sentence
    ends by :func:`split_words`. Segments come out in time order as soon as every chunk
    before them is decoded: after the first step, the first lane's text is out.
    """

    name = "ct2"

    def __init__(self, model_dir: str, device: str = "cpu", compute_type: Optional[str] = None):
        self.compute_type = compute_type or ("float16" if device.startswith("cuda") else "int8")
        self.model = load_ct2(model_dir, device=device, compute_type=self.compute_type)
        self.device = device
        self.model_dir = model_dir
        self.lock = threading.Lock()

    def iter_segments(self, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None) -> Iterator[Segment]:
        """See :meth:`whisper_zh.transcribe.Backend.iter_segments`. With ``windows`` (clips
        joined into ``audio``) each is decoded on its own, without the previous text."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        duration = audio.shape[0] / SAMPLE_RATE
        if windows is None:
            speech = speech_chunks(audio, options.window_s)
            chunks, pauses = speech.chunks, speech.pauses
        else:
            speech, chunks, pauses = None, [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in windows], []
        total = len(chunks)
        if progress:
            progress(0.0, f"transcribing {total} chunk{'s' * (total != 1)} of speech, "
                          f"{min(max(options.batch_size, 1), max(total, 1))} at a time")
        finished: dict[int, Optional[ChunkResult]] = {}
        next_out = 0
        for step in decode_chunks(self.model, audio, chunks, options, speech=speech,
                                  condition_on_previous_text=windows is None, lock=self.lock):
            finished.update(step)
            # time order: a chunk's segments wait until every chunk before it is out
            while next_out in finished:
                yield from self._segments(chunks[next_out], finished.pop(next_out), pauses, duration)
                next_out += 1
            if progress:
                progress((next_out + len(finished)) / total, f"decoded {next_out + len(finished)}/{total} chunks")

    def _segments(self, chunk: tuple[float, float], result: Optional[ChunkResult],
                  pauses: list[tuple[float, float]], duration: float) -> Iterator[Segment]:
        if result is None:
            return
        words = result.words or []
        phrases = split_words(words, pauses) if words else [Segment(start=chunk[0], end=chunk[1], text=result.text)]
        for phrase in phrases:
            text = phrase.text.strip()
            if not text:
                continue
            start = min(max(phrase.start, 0.0), duration)
            end = min(max(phrase.end, start), duration)
            yield Segment(start=round(start, 3), end=round(end, 3), text=text, no_speech_prob=result.no_speech_prob,
                          words=tuple(_clamped(w, start, end) for w in phrase.words))


def _clamped(word: Word, start: float, end: float) -> Word:
    """A word's times inside its segment's (the alignment can overshoot a pause)."""
    word_start = min(max(word.start, start), end)
    return replace(word, start=round(word_start, 3), end=round(min(max(word.end, word_start), end), 3))
