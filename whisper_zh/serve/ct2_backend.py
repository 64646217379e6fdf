"""CTranslate2 backend: run an exported model (``whisper-zh export``) with faster-whisper.

On the 2-core CPU of a free Space, CTranslate2 int8 decodes many times faster than
transformers float32 (bench/transcribe.py). The engine (:mod:`whisper_zh.serve.engine`)
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Generator, Iterator, Optional, Sequence

import numpy as np

from whisper_zh.audio import N_SAMPLES as WINDOW_SAMPLES
from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError, ModelNotFoundError
from whisper_zh.serve.bf16_encoder import BF16Encoder, choose_encoder
from whisper_zh.serve.segmentation import (
    SpeechMap,
    complete,
    is_silent,
    coverage_of,
    in_time_order,
    missed_speech,
    speech_chunks,
    split_words,
    uncovered_speech,
    word_spans,
)
from whisper_zh.serve.types import (
    DEFAULT_BEAM_SIZE,
    Coverage,
    ProgressCallback,
    Segment,
    TranscribeOptions,
    Word,
    prompt_window,
)

logger = logging.getLogger(__name__)

# A lane's next chunk is not conditioned on text decoded this hot (openai/whisper's
# prompt_reset_on_temperature): it is probably wrong, and would pull the next chunk along.
PROMPT_RESET_TEMPERATURE = 0.5


# faster-whisper's defaults for the word alignment
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"


_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def load_ct2(model_dir: str, device: str = "cpu", compute_type: str = "int8"):
    """Load a CTranslate2 Whisper export.

    Args:
        model_dir: a directory written by :func:`whisper_zh.serve.models.export_ct2` (or any
            faster-whisper model directory).
        device: "cpu", "cuda", "cuda:N" (the N-th GPU) or "auto".
        compute_type: CTranslate2 compute type ("int8", "int8_float16", "float16",
            "float32", "default" = as stored); weights are converted on load if needed.

    Returns:
        A ``faster_whisper.WhisperModel``.
    """
    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        raise ModelNotFoundError(f"{model_dir} is not a CTranslate2 export (no model.bin); "
                                f"run `whisper-zh export MODEL` first")
    from faster_whisper import WhisperModel

    # cpu_threads=0 lets CTranslate2 pick its thread count (measured faster on 2 cores
    # than pinning 2 threads); local_files_only: a local directory never touches the Hub.
    kind, _, index = device.partition(":")
    # Loaded in a thread that ends with the load: loading runs OpenMP regions, and the
    # team of threads libgomp keeps for the thread that ran them lives as long as that
    # thread. Left in a long-lived thread (the main one), libgomp counts more threads
    # than cores and has every thread sleep between parallel regions, and the decoder's
    # many small ones took twice as long (whisper-base, 2 cores: generate 16.9 s -> 8.5 s
    # on zh-multi-dev; bench/README.md, "Threads and memory").
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-zh-load") as loader:
        return loader.submit(WhisperModel, model_dir, device=kind, device_index=int(index or 0),
                             compute_type=compute_type, local_files_only=True).result()


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
        refills: what the completeness pass found in speech this chunk's text skipped,
            one result per re-decoded span, each to be placed whole.
        uncovered: spans of the chunk's speech still without text after the pass.
    """

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: Optional[list[Word]] = None
    refills: list["ChunkResult"] = field(default_factory=list)
    uncovered: list[tuple[float, float]] = field(default_factory=list)


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


def lane_plan(n_chunks: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """How :func:`decode_chunks` deals ``n_chunks`` chunks into at most ``batch_size``
    lanes: ``[(first step, [chunk indices]), ...]``, each lane consecutive chunks.

    When the chunks take more than one step, the lanes start in a ramp (1, 2, 4, 8 ...
    chunks in the first steps, each new lane starting where the next lanes' chunks begin)
    so that the first text comes after one chunk rather than a full batch (8 minutes,
    18 chunks, 8 lanes: steps of 1, 2, 4, 8 and 3 chunks instead of 8, 8 and 2); the
    lanes end within a step of each other. Otherwise all lanes start at once, one chunk
    each.
    """
    lanes = min(max(batch_size, 1), n_chunks)
    if n_chunks <= lanes:
        return [(0, [i]) for i in range(n_chunks)]
    starts = [0 if j == 0 else j.bit_length() for j in range(lanes)]  # 0, 1, 2, 2, 3, 3, 3, 3, 4 ...
    steps = -(-(n_chunks + sum(starts)) // lanes)  # the fewest steps that hold every chunk
    lengths = [max(0, steps - r) for r in starts]
    for j in range(len(lengths) - 1, -1, -1):  # too many places: the latest lanes give one back
        if sum(lengths) == n_chunks:
            break
        lengths[j] -= 1
    while sum(lengths) > n_chunks:  # a ramp longer than the input: drop the emptiest lanes
        j = max(j for j, length in enumerate(lengths) if length > 0)
        lengths[j] -= 1
    plan, first = [], 0
    for start, length in zip(starts, lengths):
        if length > 0:
            plan.append((start, list(range(first, first + length))))
            first += length
    return plan


def decode_chunks(model, audio: np.ndarray, chunks: Sequence[tuple[float, float]],
                  options: TranscribeOptions = TranscribeOptions(), *, speech: Optional[SpeechMap] = None,
                  condition_on_previous_text: bool = True, word_timestamps: bool = True,
                  lock: Optional[ContextManager] = None,
                  encode: Optional[Callable[[np.ndarray], object]] = None
                  ) -> Iterator[list[tuple[int, Optional[ChunkResult]]]]:
    """Decode the chunks of a recording ``options.batch_size`` at a time, each conditioned
    on the text of the chunk before it; yield each step's results as soon as it is done.

    The chunks are dealt in order into lanes of consecutive chunks (:func:`lane_plan`:
    at most ``batch_size``, started in a ramp so the first text comes early). Each step
    encodes and decodes the next chunk of every running lane in one batch, each with the
    tokens of the chunk before it in its lane as the prompt; a lane's first chunk is
    prompted with the text of the latest chunk decoded before it, if any (same voice and
    style, so the script and punctuation carry over). CTranslate2 needs
    <|startoftranscript|> at the same position in every prompt of a batch, so every
    prompt keeps the last ``k`` tokens of its text, ``k`` being the shortest among the
    batch (at most 223, half the decoder's context, as in openai/whisper, less the
    prompt/hotwords of ``options``, which lead every prompt).

    A chunk whose text looks like a loop (compression ratio above the threshold) or is
    unsure (mean log-probability below the threshold) is decoded again at the next
    temperature, in one batch with the other such chunks; when every temperature fails,
    the non-looping candidate with the best log-probability is kept. A chunk that the
    no-speech rule calls silent comes back as None. A lane's next chunk is not
    conditioned on a silent chunk or on one decoded above 0.5. With ``speech`` (and word
    timestamps), speech that a chunk's text skipped (:func:`missed_speech`) goes through
    the completeness pass (:func:`complete`), all of a step's spans decoded together in
    each round: what it finds comes back whole in the chunk's ``refills``, what it
    cannot in ``uncovered``.

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
        encode: log-mel windows ``(batch, n_mels, 3000)`` to the encoder's output (default
            ``model.encode``; the backend's :class:`~whisper_zh.serve.bf16_encoder.BF16Encoder`).

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
    decoder = _SpanDecoder(model, tokenizer, audio, options, get_suppressed_tokens(tokenizer, [-1]), word_timestamps,
                           encode or model.encode)
    plan = lane_plan(len(chunks), options.batch_size)
    texts: dict[int, list[int]] = {}  # chunk index -> the tokens the chunk after it may be prompted with
    fixed = prompt_window(_prompt_tokens(tokenizer, options), model.max_length)
    max_previous = model.max_length // 2 - 1 - len(fixed)

    def context(index: int) -> list[int]:
        if not condition_on_previous_text:
            return []
        if index - 1 in texts:
            return texts[index - 1]
        earlier = [i for i in texts if i < index]  # a lane's first chunk: the latest text before it
        return texts[max(earlier)] if earlier else []

    for step in range(max(first + len(lane) for first, lane in plan)):
        indices = [lane[step - first] for first, lane in plan if first <= step < first + len(lane)]
        previous = [context(i) for i in indices]
        keep = min(min(len(p) for p in previous), max_previous)
        prompts = [_with_prompt(tokenizer, fixed + (p[len(p) - keep:] if keep else [])) for p in previous]
        with lock:
            chosen = decoder.decode([chunks[i] for i in indices], prompts)
            if speech is not None and word_timestamps:
                # a chunk the decoder called silent is checked too: the VAD heard speech in it
                missed = [span for b, r in enumerate(chosen)
                          for span in missed_speech(_words_of(r, options), chunks[indices[b]], speech)]
                if missed:
                    bare = _with_prompt(tokenizer, fixed)
                    completion = complete(
                        missed, lambda spans: decoder.decode(spans, [bare] * len(spans)),
                        lambda r: word_spans(_words_of(r, options)), speech)
                    for b in range(len(chosen)):
                        chunk = chunks[indices[b]]
                        chosen[b].refills = [_within(r, span) for span, r in completion.found
                                             if chunk[0] <= (span[0] + span[1]) / 2 < chunk[1]]
                        chosen[b].uncovered = [span for span in completion.uncovered
                                               if chunk[0] <= (span[0] + span[1]) / 2 < chunk[1]]
        done = []
        for i, r in zip(indices, chosen):
            silent = not r.tokens or _is_silence(r, options)
            if silent and (r.refills or r.uncovered):
                done.append((i, replace(r, tokens=[], text="", words=[])))  # only what the pass found
            else:
                done.append((i, None if silent else r))
            texts[i] = [] if silent or r.temperature > PROMPT_RESET_TEMPERATURE else r.tokens
        yield done


def _words_of(result: ChunkResult, options: TranscribeOptions) -> list[Word]:
    """A result's timed words, none when it is silent by the no-speech rule."""
    return [] if not result.tokens or _is_silence(result, options) else list(result.words or [])


def _within(result: ChunkResult, span: tuple[float, float]) -> ChunkResult:
    """A re-decoded span's result with its words' times held inside the span (the
    alignment of a short span can run past its end)."""
    words = [replace(w, start=min(max(w.start, span[0]), span[1]), end=min(max(w.end, span[0]), span[1]))
             for w in result.words or []]
    return replace(result, words=words)


class _SpanDecoder:
    """Decodes spans of one recording, a batch at a time: log-mel, encoder, generate with
    openai/whisper's temperature fallback, then the words' times."""

    def __init__(self, model, tokenizer, audio: np.ndarray, options: TranscribeOptions, suppress_tokens,
                 word_timestamps: bool, encode: Callable[[np.ndarray], object]):
        self.model, self.tokenizer, self.audio, self.options = model, tokenizer, audio, options
        self.encode = encode
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
        encoder_output = self.encode(features)

        def encoded(batch_items: list[int]):
            return _encoder_rows(self.encode, encoder_output, features, batch_items)

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


def _encoder_rows(encode: Callable[[np.ndarray], object], encoder_output, features: np.ndarray, items: list[int]):
    """The encoder output of some windows of a batch (``items``: their indices, ascending),
    for the temperature fallback and the word alignment. On a CPU the rows are copied out
    (a millisecond, where encoding them again took ~0.2 s a window on 2 cores);
    CTranslate2's output cannot be sliced in place, and a GPU's is encoded again rather
    than copied through the host."""
    if len(items) == encoder_output.shape[0]:
        return encoder_output
    if encoder_output.device == "cpu":
        import ctranslate2

        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoder_output)[items]))
    return encode(features[items])


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

    ``encoder``: "auto" (the default) encodes in PyTorch bfloat16 where the CPU has AMX
    and the export carries the encoder's weights (:mod:`whisper_zh.serve.bf16_encoder`),
    else with CTranslate2; "ct2" or "bf16" insist on one.
    """

    name = "ct2"

    def __init__(self, model_dir: str, device: str = "cpu", compute_type: Optional[str] = None,
                 encoder: str = "auto"):
        self.encoder = choose_encoder(encoder, model_dir, device)
        self.compute_type = compute_type or ("float16" if device.startswith("cuda") else "int8")
        self.model = load_ct2(model_dir, device=device, compute_type=self.compute_type)
        self.device = device
        self.model_dir = model_dir
        self.lock = threading.Lock()
        self.encode = self.model.encode
        if self.encoder == "bf16":
            try:
                self.encode = BF16Encoder(model_dir)
            except Exception as err:  # a damaged or foreign file: what auto asks for is speed, not this file
                if encoder == "bf16":
                    raise ConfigError(f"the bfloat16 encoder of {model_dir} does not load: {err}") from err
                logger.warning("the bfloat16 encoder of %s does not load (%s); CTranslate2 encodes", model_dir, err)
                self.encoder = "ct2"

    def iter_segments(self, audio: np.ndarray, options: TranscribeOptions,
                      progress: Optional[ProgressCallback] = None,
                      windows: Optional[Sequence[tuple[int, int]]] = None
                      ) -> Generator[Segment, None, Optional[Coverage]]:
        """See :meth:`whisper_zh.serve.types.Backend.iter_segments`. With ``windows`` (clips
        joined into ``audio``) each is decoded on its own, without the previous text."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        duration = audio.shape[0] / SAMPLE_RATE
        if windows is None:
            speech = speech_chunks(audio, options.window_s)
            # the energy gate both backends share: a chunk that never gets loud is not decoded
            chunks, quiet = [], []
            for chunk in speech.chunks:
                samples = audio[int(chunk[0] * SAMPLE_RATE):int(chunk[1] * SAMPLE_RATE)]
                (quiet if is_silent(samples, options.silence_threshold_db) else chunks).append(chunk)
            pauses = speech.pauses
        else:
            speech, chunks, quiet, pauses = None, [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in windows], [], []
        total = len(chunks)
        if progress:
            progress(0.0, f"transcribing {total} chunk{'s' * (total != 1)} of speech, "
                          f"{min(max(options.batch_size, 1), max(total, 1))} at a time")
        finished: dict[int, Optional[ChunkResult]] = {}
        # speech the VAD heard in a chunk too quiet to decode is said, not dropped
        uncovered = [span for chunk in quiet for span in uncovered_speech([], chunk, speech)]
        next_out = 0
        for step in decode_chunks(self.model, audio, chunks, options, speech=speech,
                                  condition_on_previous_text=windows is None, lock=self.lock, encode=self.encode):
            finished.update(step)
            if progress:  # before the step's segments: a caller sees how much is done when they come
                progress((next_out + len(finished)) / total, f"decoded {next_out + len(finished)}/{total} chunks")
            # time order: a chunk's segments wait until every chunk before it is out
            while next_out in finished:
                result = finished.pop(next_out)
                uncovered += result.uncovered if result is not None else []
                yield from self._segments(chunks[next_out], result, pauses, duration)
                next_out += 1
        return None if speech is None else coverage_of(uncovered, speech)

    def _segments(self, chunk: tuple[float, float], result: Optional[ChunkResult],
                  pauses: list[tuple[float, float]], duration: float) -> Iterator[Segment]:
        if result is None:
            return
        words = result.words or []
        if words:
            own = split_words(words, pauses)
        else:
            own = [Segment(start=chunk[0], end=chunk[1], text=result.text)] if result.text.strip() else []
        # what the completeness pass found comes as whole segments of its own, in time order
        found = [[replace(p, no_speech_prob=r.no_speech_prob) for p in split_words(r.words, pauses)]
                 for r in result.refills if r.words]
        own = [replace(p, no_speech_prob=result.no_speech_prob) for p in own]
        for phrase in in_time_order([own, *found]):
            text = phrase.text.strip()
            if not text:
                continue
            start = min(max(phrase.start, 0.0), duration)
            end = min(max(phrase.end, start), duration)
            yield Segment(start=round(start, 3), end=round(end, 3), text=text, no_speech_prob=phrase.no_speech_prob,
                          words=tuple(_clamped(w, start, end) for w in phrase.words))


def _clamped(word: Word, start: float, end: float) -> Word:
    """A word's times inside its segment's (the alignment can overshoot a pause)."""
    word_start = min(max(word.start, start), end)
    return replace(word, start=round(word_start, 3), end=round(min(max(word.end, word_start), end), 3))
