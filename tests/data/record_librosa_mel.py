"""Records tests/data/librosa_mel.npz: librosa's mel power frames of one second of noise,
with the parameters Resemblyzer's ``wav_to_mel_spectrogram`` uses (16 kHz, n_fft 400,
hop 160, 40 mels, centred frames, reflect padding). tests/test_diarize.py checks
``whisper_zh.serve.diarize.mel_frames`` against it: librosa compiles its numba kernels on
first use, about 40 s of a fresh machine's CI for one comparison.

Run from the repository root (librosa comes with the ``diarize`` extra):

    python tests/data/record_librosa_mel.py
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np

SR = 16000
OUT = Path(__file__).resolve().parent / "librosa_mel.npz"


def main() -> None:
    audio = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    mel = librosa.feature.melspectrogram(y=audio, sr=SR, n_fft=400, hop_length=160, n_mels=40, pad_mode="reflect")
    np.savez_compressed(OUT, audio=audio, mel=mel.T.astype(np.float32), librosa_version=np.array(librosa.__version__))
    print(f"{OUT}: {mel.shape[1]} frames of {mel.shape[0]} mels, librosa {librosa.__version__}")


if __name__ == "__main__":
    main()
