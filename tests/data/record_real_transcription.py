"""Records tests/data/real_transcription.json: one real run of the real whisper-base
(CTranslate2 int8, through whisper-zh's own engine, word timestamps) on two zh-multi-dev
clips joined, and its English translation. The subtitle-layout tests in
tests/test_subtitles.py run on this recording, so that what they check does not change
with the CPU's int8 arithmetic or a library release.

Run from the repository root, with ../shared beside it (re-recording is rarely needed:
only if the Segment/Word fields change, or to refresh the material):

    python tests/data/record_real_transcription.py [WHISPER_BASE_DIR]

WHISPER_BASE_DIR defaults to $WHISPER_ZH_BASE or ~/.cache/whisper-zh/whisper-base
(built by ../shared/tools/make_whisper_base.py when missing).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("WHISPER_ZH_SHARED", REPO.parent / "shared"))
OUT = Path(__file__).resolve().parent / "real_transcription.json"
CLIPS = ["zhmd_spark_prompt_audio.mp3", "zhmd_moss_single_reference.mp3"]  # 31 s: ads, then talk
GAP_S = 0.6
PROMPT = "以下是普通话的句子。"  # makes whisper-base write punctuation, so the layout's rules meet it


def main() -> None:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from whisper_zh.export import export_ct2
    from whisper_zh.media import SAMPLE_RATE, load_audio
    from whisper_zh.transcribe import TranscribeOptions, Transcriber

    base = Path(sys.argv[1] if len(sys.argv) > 1 else
                os.environ.get("WHISPER_ZH_BASE", Path.home() / ".cache" / "whisper-zh" / "whisper-base"))
    if not (base / ".made-by-make_whisper_base").exists():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_whisper_base.py"), str(base)], check=True)
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    clips = SHARED / "data" / "zh-multi-dev" / "clips"
    audio = np.concatenate([part for name in CLIPS for part in (load_audio(clips / name), gap)])
    with tempfile.TemporaryDirectory() as tmp:
        engine = Transcriber(export_ct2(str(base), str(Path(tmp) / "ct2"), "int8"), backend="ct2", device="cpu")
        # one temperature: the recording is one greedy-fallback-free run, beam 5 (the ct2 default)
        segments = engine.transcribe(audio, TranscribeOptions(temperatures=(0.0,), prompt=PROMPT)).segments
        translation = engine.transcribe(audio, TranscribeOptions(temperatures=(0.0,), task="translate",
                                                                 script="original")).segments
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    data = {
        "about": {
            "what": "real whisper-base output, recorded once: the subtitle-layout tests' input",
            "command": "python tests/data/record_real_transcription.py",
            "audio": {"clips": [f"shared/data/zh-multi-dev/clips/{name}" for name in CLIPS],
                      "joined_with_silence_s": GAP_S, "duration_s": round(len(audio) / SAMPLE_RATE, 3)},
            "model": "OpenAI whisper-base (shared/tools/make_whisper_base.py), CTranslate2 int8, CPU",
            "transcription": {"engine": "whisper_zh.transcribe.Transcriber(backend='ct2')", "prompt": PROMPT,
                              "temperatures": [0.0], "script": "simplified", "word_timestamps": True},
            "translation": {"task": "translate", "temperatures": [0.0], "script": "original"},
            "whisper_zh_commit": commit,
            "versions": {name: metadata.version(name) for name in
                         ("ctranslate2", "faster-whisper", "numpy", "transformers", "torch", "opencc")},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        },
        "segments": [_segment(s) for s in segments],
        "translation": [_segment(s) for s in translation],
    }
    OUT.write_text(_dumps(data), encoding="utf-8")
    print(f"wrote {OUT}: {len(segments)} segments, {sum(len(s.text) for s in segments)} characters, "
          f"{len(translation)} translated segments")


def _dumps(data: dict) -> str:
    """JSON, indented, with each word on one line (a diff of two recordings stays readable)."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return re.sub(r'\{\n\s*"start": ([^,]+),\n\s*"end": ([^,]+),\n\s*"word": ("(?:[^"\\]|\\.)*"),'
                  r'\n\s*"probability": ([^\n]+)\n\s*\}',
                  r'{"start": \1, "end": \2, "word": \3, "probability": \4}', text) + "\n"


def _segment(s) -> dict:
    return {"start": s.start, "end": s.end, "text": s.text, "no_speech_prob": s.no_speech_prob,
            "words": [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                      for w in s.words or ()]}


if __name__ == "__main__":
    main()
