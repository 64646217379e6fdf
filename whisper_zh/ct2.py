"""CTranslate2 backend: run an exported model (``whisper-zh export --ct2``) with faster-whisper.

On the 2-core CPU of a free Space, CTranslate2 int8 decodes many times faster than
transformers float32 (bench/transcribe.py). The engine (:mod:`whisper_zh.transcribe`)
owns the model's lifetime; nothing here is cached globally.

Long audio is decoded by faster-whisper's :class:`BatchedInferencePipeline`: the
Silero VAD (an onnx file inside the faster-whisper wheel, so it works offline) finds
the speech, consecutive speech is grouped into contiguous chunks of at most 30 s cut
in pauses (:func:`speech_chunks`), and ``batch_size`` chunks go through the encoder
and decoder together. Compared with sequential long-form decoding this does no
overlapping 30 s windows and no temperature fallback, skips silence, and batches the
decoder's matrix products, which is what makes it faster on a CPU too. Sequential
decoding (``batch_size=1``) is faster-whisper's port of openai/whisper's algorithm,
each window conditioned on the previous window's text.
"""

from __future__ import annotations

import os

import numpy as np

SAMPLE_RATE = 16000  # Hz, what faster-whisper expects for an array input

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


def ct2_transcribe(model, audio: np.ndarray, *, language: str = "zh", task: str = "transcribe",
                   batch_size: int = 8, beam_size: int = 1) -> list[dict]:
    """Transcribe a waveform of any length with a model from :func:`load_ct2`.

    Args:
        model: a ``faster_whisper.WhisperModel``.
        audio: float32 array of shape ``(n_samples,)``, 16 kHz mono, values in [-1, 1].
        language: Whisper language code; None detects it from the first 30 s.
        task: "transcribe" or "translate" (to English).
        batch_size: chunks decoded together; > 1 uses the VAD-chunked batched pipeline,
            1 the sequential long-form algorithm.
        beam_size: 1 is greedy decoding.

    Returns:
        One dict per segment, in time order: ``start`` and ``end`` in seconds from the
        start of ``audio`` (floats, ``0 <= start <= end <= duration``), ``text`` (str,
        stripped) and ``no_speech_prob`` (float in [0, 1]).
    """
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D (n_samples,), got shape {audio.shape}")
    duration = audio.shape[0] / SAMPLE_RATE
    if batch_size > 1:
        from faster_whisper import BatchedInferencePipeline

        chunks, pauses = speech_chunks(audio)
        pieces = []
        if chunks:
            # Word timestamps cost one extra decoder pass per batch (cross-attention DTW).
            segments, _ = BatchedInferencePipeline(model).transcribe(
                audio, language=language, task=task, batch_size=batch_size, beam_size=beam_size,
                clip_timestamps=[{"start": start, "end": end} for start, end in chunks],
                without_timestamps=True, word_timestamps=True,
            )
            for segment in segments:
                if segment.words:
                    pieces += [(*phrase, segment.no_speech_prob) for phrase in split_words(segment.words, pauses)]
                else:
                    pieces.append((segment.start, segment.end, segment.text, segment.no_speech_prob))
    else:
        segments, _ = model.transcribe(audio, language=language, task=task, beam_size=beam_size)
        pieces = [(s.start, s.end, s.text, s.no_speech_prob) for s in segments]
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
