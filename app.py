"""Hugging Face Space entry point: ``python app.py``.

Configured by environment variables (the Space's "Variables and secrets" tab):
MODEL_ID (Hub id or local folder; default openai/whisper-small), BACKEND
(auto|transformers|ct2), MAX_DURATION_S, MAX_UPLOAD_MB, CONCURRENCY_LIMIT, BATCH_SIZE,
YTDLP_COOKIES (path of a cookies.txt for YouTube's sign-in check), DOWNLOAD_DEADLINE_S.
"""

from whisper_zh.app import build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch()
