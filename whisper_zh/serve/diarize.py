"""Who is speaking: speaker labels for a transcript's segments and words.

Runs on a CPU with weights that install from the package registry: the voice encoder of
Resemblyzer (a 3-layer LSTM, d-vectors of 256, trained on ~1,800 speakers), whose weights
ship inside its wheel (``pip install "whisper-zh[diarize]"``). Only its weights file is
read -- the package itself is not imported: its module imports webrtcvad, which needs
``pkg_resources`` (gone from recent setuptools), and librosa, slow to import; the encoder's
log-free mel frames are computed here (checked against librosa in the tests).

The steps (:func:`diarize`):

1. **Windows** of :data:`WINDOW_S` (the encoder's 160 frames) every :data:`STEP_S` over
   the speech the transcript found (its words, else its segments): the recogniser already
   told speech from silence, so no second voice activity detector runs.
2. **Embeddings**, one per window, volume-normalised.
3. **Clusters**: agglomerative (average linkage, cosine distance), cut at
   ``num_speakers`` when given, else at :data:`DEFAULT_THRESHOLD` (chosen on conversations
   built from zh-multi-dev's voices, ``bench/diarize.py``); then each window goes to its
   nearest cluster centre, and clusters holding less than :data:`MIN_SPEAKER_SHARE` of the
   windows (a cough, a laugh, an overlap) join their nearest neighbour.
4. **Labels**: each word takes the label of the window nearest to it; a run of words shorter
   than :data:`MIN_TURN_S` between two runs of one speaker takes theirs; a segment whose
   words change speaker is split there, so no segment (and no subtitle cue) spans a change.

Speakers are named ``S1``, ``S2`` ... in order of first appearance.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import ConfigError, MissingExtraError
from whisper_zh.serve.types import Segment, Word

log = logging.getLogger(__name__)

# the encoder's own framing (Resemblyzer's hparams): 25 ms windows every 10 ms, 40 mel bands,
# 160 frames a partial utterance
N_FFT = 400
HOP = 160
N_MELS = 40
WINDOW_FRAMES = 160
WINDOW_S = WINDOW_FRAMES * HOP / SAMPLE_RATE  # 1.6 s
STEP_S = 0.8  # half a window: every moment of speech is seen by two windows
TARGET_DBFS = -30.0  # the level the encoder was trained at

# cosine distance at which agglomerative clustering stops merging (bench/diarize.py)
DEFAULT_THRESHOLD = 0.4
MAX_SPEAKERS = 8
MIN_SPEAKER_SHARE = 0.05  # smaller clusters are noise, not a speaker (when counting is automatic)
MIN_TURN_S = 0.6  # a shorter turn between two of one speaker is a labelling flicker
_SPAN_JOIN_S = 0.3  # words this close are one stretch of speech


def speaker_label(index: int) -> str:
    """0 -> 'S1': the name of the ``index``-th speaker to appear."""
    return f"S{index + 1}"


# -- the encoder ------------------------------------------------------------------------

def _weights_path() -> Path:
    # find_spec locates the package without running its __init__ (see the module docstring)
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError('speaker labels need the "diarize" extra: pip install "whisper-zh[diarize]"')
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise MissingExtraError(f"the resemblyzer package has no voice encoder weights at {path}; "
                                'reinstall it: pip install --force-reinstall "whisper-zh[diarize]"')
    return path


def check_installed() -> None:
    """Raise :class:`MissingExtraError` when speaker labels cannot be made, so that a job
    asking for them stops before it transcribes rather than after (a folder job: before
    its first file, not once a file)."""
    _weights_path()


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): Slaney's mel scale and area
    normalisation, (40, 201)."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        mel = f / (200.0 / 3)
        log_part = f >= 1000.0
        return np.where(log_part, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """The encoder's input: (frames, 40) mel power frames of 16 kHz audio, as Resemblyzer's
    ``wav_to_mel_spectrogram`` (librosa, centred frames, reflect padding, no log)."""
    audio = np.asarray(audio, dtype=np.float32)
    padded = np.pad(audio, N_FFT // 2, mode="reflect" if len(audio) > N_FFT // 2 else "constant")
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (count, N_FFT), (padded.strides[0] * HOP, padded.strides[0]))
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ _mel_filters().T).astype(np.float32)


class SpeakerEncoder:
    """Resemblyzer's voice encoder: 1.6 s of 16 kHz speech -> a unit vector of 256 that is
    close (cosine) for one voice and far for two.

    Raises:
        MissingExtraError: when the ``diarize`` extra is not installed.
    """

    def __init__(self, weights: Optional[str | Path] = None, device: str = "cpu"):
        import torch
        from torch import nn

        path = Path(weights) if weights else _weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self.linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self.lstm.to(device).eval()
        self.linear.to(device).eval()
        self.device = device

    def embed(self, windows: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """(n, samples) windows of audio -> (n, 256) unit embeddings; each window is brought
        to :data:`TARGET_DBFS` first (the encoder was trained on normalised speech)."""
        import torch

        if not len(windows):
            return np.zeros((0, 256), dtype=np.float32)
        rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1, keepdims=True))
        gain = 10 ** (TARGET_DBFS / 20) / np.maximum(rms, 1e-5)
        mels = np.stack([mel_frames(w)[:WINDOW_FRAMES] for w in (windows * gain).astype(np.float32)])
        out = []
        with torch.inference_mode():
            for start in range(0, len(mels), batch_size):
                batch = torch.from_numpy(mels[start:start + batch_size]).to(self.device)
                _, (hidden, _) = self.lstm(batch)
                raw = torch.relu(self.linear(hidden[-1]))
                out.append(torch.nn.functional.normalize(raw, dim=1).cpu().numpy())
        return np.concatenate(out)


@lru_cache(maxsize=1)
def get_encoder() -> SpeakerEncoder:
    """One encoder a process (17 MB of weights, loaded in well under a second)."""
    return SpeakerEncoder()


# -- windows, clusters, labels ------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    """A stretch of time given to one speaker (``bench/diarize.py`` scores these)."""

    start: float
    end: float
    speaker: str


def speech_spans(segments: Sequence[Segment], join_s: float = _SPAN_JOIN_S) -> list[tuple[float, float]]:
    """The stretches of speech of a transcript: its words joined across gaps under
    ``join_s``, or its segments where they have no words."""
    times: list[tuple[float, float]] = []
    for segment in segments:
        if segment.words:
            times += [(w.start, w.end) for w in segment.words if w.end > w.start]
        elif segment.end > segment.start:
            times.append((segment.start, segment.end))
    spans: list[list[float]] = []
    for start, end in sorted(times):
        if spans and start - spans[-1][1] < join_s:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(a, b) for a, b in spans]


def window_starts(spans: Sequence[tuple[float, float]], duration: float,
                  window_s: float = WINDOW_S, step_s: float = STEP_S) -> np.ndarray:
    """Start times of the windows that cover ``spans``: every ``step_s`` inside a span
    long enough, one centred on a shorter one (reaching into the audio around it)."""
    starts: list[float] = []
    latest = max(duration - window_s, 0.0)
    for start, end in spans:
        if end - start <= window_s:
            starts.append(min(max((start + end - window_s) / 2, 0.0), latest))
            continue
        count = int(np.ceil((end - start - window_s) / step_s)) + 1
        step = (end - start - window_s) / (count - 1)
        starts += [min(start + k * step, latest) for k in range(count)]
    return np.asarray(starts, dtype=np.float64)


def cluster(embeddings: np.ndarray, num_speakers: Optional[int] = None, *,
            threshold: float = DEFAULT_THRESHOLD, max_speakers: int = MAX_SPEAKERS,
            min_share: float = MIN_SPEAKER_SHARE) -> np.ndarray:
    """A speaker index (0, 1 ...) for each embedding: ``num_speakers`` clusters when given,
    else as many as average-linkage clustering finds under ``threshold`` (cosine distance,
    at most ``max_speakers``); clusters under ``min_share`` of the windows are folded into
    their nearest neighbour, and each embedding then goes to its nearest cluster centre."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(embeddings)
    if num_speakers is not None and num_speakers < 1:
        raise ConfigError(f"num_speakers must be at least 1, not {num_speakers}")
    if n < 2 or num_speakers == 1:
        return np.zeros(n, dtype=int)
    tree = linkage(embeddings, method="average", metric="cosine")
    if num_speakers is not None:
        # the lowest cut with num_speakers clusters of min_share or more: a cut at exactly
        # num_speakers often spends one on a lone outlier window and merges two voices
        for count in range(min(num_speakers, n), n + 1):
            labels = fcluster(tree, count, criterion="maxclust")
            if np.sum(np.bincount(labels) >= min_share * n) >= num_speakers:
                break
    else:
        labels = fcluster(tree, threshold, criterion="distance")
        if labels.max() > max_speakers:
            labels = fcluster(tree, max_speakers, criterion="maxclust")
    labels = labels - 1
    for _ in range(3):  # centres, then nearest centre: mends what the tree's early merges got wrong
        kept = [k for k in np.unique(labels) if np.mean(labels == k) >= min_share] or [np.bincount(labels).argmax()]
        if num_speakers is not None:
            kept = sorted(kept, key=lambda k: -np.sum(labels == k))[:num_speakers]
        centres = np.stack([embeddings[labels == k].mean(axis=0) for k in kept])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        new = np.asarray(kept)[np.argmax(embeddings @ centres.T, axis=1)]
        if np.array_equal(new, labels):
            break
        labels = new
    _, labels = np.unique(labels, return_inverse=True)
    return labels


def _smooth(labels: list[int], starts: list[float], ends: list[float], min_turn_s: float) -> list[int]:
    """Runs shorter than ``min_turn_s`` between two runs of one speaker take that speaker."""
    labels = list(labels)
    runs: list[list[int]] = []  # [label, first index, last index]
    for k, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1][2] = k
        else:
            runs.append([label, k, k])
    for r in range(1, len(runs) - 1):
        label, first, last = runs[r]
        if runs[r - 1][0] == runs[r + 1][0] != label and ends[last] - starts[first] < min_turn_s:
            for k in range(first, last + 1):
                labels[k] = runs[r - 1][0]
            runs[r][0] = runs[r - 1][0]
    return labels


def _split(segment: Segment, speakers: list[str]) -> list[Segment]:
    """``segment`` cut where its words' speakers change, each part labelled. The parts'
    texts are cut from the segment's text at the same letters when the words spell it
    (punctuation and spaces aside), else are the words' own texts."""
    words = [replace(w, speaker=s) for w, s in zip(segment.words, speakers)]
    groups: list[list[Word]] = []
    for word in words:
        if groups and groups[-1][-1].speaker == word.speaker:
            groups[-1].append(word)
        else:
            groups.append([word])
    if len(groups) == 1:
        return [replace(segment, words=tuple(words), speaker=words[0].speaker)]
    text = segment.text.strip()
    # punctuation and spaces aside, do the words spell the text? (they may be in another script)
    spelled = "".join(c for w in words for c in w.word if c.isalnum())
    same = "".join(c for c in text if c.isalnum()) == spelled
    parts, position = [], 0
    for index, group in enumerate(groups):
        last = index == len(groups) - 1
        if same:
            count, end = sum(c.isalnum() for w in group for c in w.word), position
            while end < len(text) and (count > 0 or last):
                count -= text[end].isalnum()
                end += 1
            while not last and end < len(text) and not text[end].isalnum():
                end += 1  # the punctuation after the group's last word stays with it
            part_text, position = text[position:end].strip(), end
        else:
            part_text = "".join(w.word for w in group).strip()
        parts.append(replace(segment, start=group[0].start if index else segment.start,
                             end=segment.end if last else group[-1].end,
                             text=part_text, words=tuple(group), speaker=group[0].speaker))
    return [p for p in parts if p.text]


@dataclass
class Diarization:
    """What :func:`diarize` found.

    Attributes:
        segments: the transcript's segments, labelled, split where the speaker changes.
        turns: each window's stretch of time and its speaker, merged where consecutive
            (a cluster no word was given to keeps a lower-case name, e.g. "s3").
        num_speakers: how many speakers the transcript has.
        elapsed_s: wall time of embedding and clustering.
    """

    segments: list[Segment]
    turns: list[Turn]
    num_speakers: int
    elapsed_s: float


def diarize(audio: np.ndarray, segments: Sequence[Segment], num_speakers: Optional[int] = None, *,
            encoder: Optional[SpeakerEncoder] = None, threshold: float = DEFAULT_THRESHOLD,
            max_speakers: int = MAX_SPEAKERS, min_turn_s: float = MIN_TURN_S) -> Diarization:
    """Label ``segments`` (of ``audio``, 16 kHz mono) with their speakers (see the module
    docstring). ``num_speakers``: how many there are, when known; else they are counted
    (up to ``max_speakers``).

    Raises:
        MissingExtraError: without the ``diarize`` extra.
        ConfigError: for a ``num_speakers`` below 1.
    """
    started = time.perf_counter()
    segments = list(segments)
    duration = len(audio) / SAMPLE_RATE
    starts = window_starts(speech_spans(segments), duration)
    if not len(starts):
        return Diarization(segments, [], 0, time.perf_counter() - started)
    length = WINDOW_FRAMES * HOP
    padded = np.pad(np.asarray(audio, dtype=np.float32), (0, length))
    offsets = np.round(starts * SAMPLE_RATE).astype(int)
    windows = np.stack([padded[o:o + length] for o in offsets])
    embeddings = (encoder or get_encoder()).embed(windows)
    labels = cluster(embeddings, num_speakers, threshold=threshold, max_speakers=max_speakers)
    centres = starts + WINDOW_S / 2

    order = {label: k for k, label in enumerate(dict.fromkeys(labels[np.argsort(starts, kind="stable")]))}
    names = [speaker_label(order[label]) for label in labels]

    def nearest(t: float) -> str:
        return names[int(np.argmin(np.abs(centres - t)))]

    items = [(s, w) for s in segments for w in (s.words or (None,))]  # words, or a wordless segment
    times = [((w or s).start, (w or s).end) for s, w in items]
    raw = [nearest((a + b) / 2) if w is not None else _majority(s, starts, names) for (a, b), (s, w) in zip(times, items)]
    index = {name: k for k, name in enumerate(dict.fromkeys(raw))}
    smoothed = _smooth([index[r] for r in raw], [a for a, _ in times], [b for _, b in times], min_turn_s)
    by_index = list(index)
    out: list[Segment] = []
    position = 0
    for segment in segments:
        count = len(segment.words) or 1
        speakers = [by_index[k] for k in smoothed[position:position + count]]
        position += count
        out += _split(segment, speakers) if segment.words else [replace(segment, speaker=speakers[0])]

    # speakers named in order of first appearance in the transcript; a cluster that no word
    # ended up in (a few windows of noise) is no speaker
    rename: dict[str, str] = {}
    for segment in out:
        rename.setdefault(segment.speaker, speaker_label(len(rename)))
    out = [replace(s, speaker=rename[s.speaker], words=tuple(replace(w, speaker=rename[w.speaker]) for w in s.words))
           for s in out]
    names = [rename.get(name, name.lower()) for name in names]

    turns: list[Turn] = []
    for k in np.argsort(starts, kind="stable"):
        a = max(float(centres[k]) - STEP_S / 2, 0.0)
        b = float(centres[k]) + STEP_S / 2
        if turns and turns[-1].speaker == names[k] and a <= turns[-1].end + 1e-6:
            turns[-1] = replace(turns[-1], end=max(turns[-1].end, b))
        else:
            turns.append(Turn(a, b, names[k]))
    elapsed = time.perf_counter() - started
    found = len(rename)
    log.info("%d speaker(s) in %.0f s of audio (%d windows, %.2f s)", found, duration, len(starts), elapsed)
    return Diarization(out, turns, found, elapsed)


def _majority(segment: Segment, starts: np.ndarray, names: list[str]) -> str:
    """The speaker of the windows overlapping ``segment`` most, in total."""
    overlap = np.minimum(starts + WINDOW_S, segment.end) - np.maximum(starts, segment.start)
    totals: dict[str, float] = {}
    for k in np.flatnonzero(overlap > 0):
        totals[names[k]] = totals.get(names[k], 0.0) + float(overlap[k])
    if not totals:
        middle = (segment.start + segment.end) / 2
        return names[int(np.argmin(np.abs(starts + WINDOW_S / 2 - middle)))]
    return max(totals, key=totals.__getitem__)
