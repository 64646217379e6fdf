"""Whisper's audio constants, in one place; everything else is derived from them.

As in openai/whisper's ``audio.py``: the model reads 30 s of 16 kHz mono audio as an
80 (or 128) x 3000 log-mel, one frame every 10 ms, and its timestamp tokens count in
steps of 20 ms (two frames, one encoder position).
"""

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # 25 ms STFT window
HOP_LENGTH = 160  # 10 ms between log-mel frames
CHUNK_LENGTH = 30  # seconds: Whisper's fixed input
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a window
TIME_PRECISION = 2 * HOP_LENGTH / SAMPLE_RATE  # 0.02 s: one timestamp token
