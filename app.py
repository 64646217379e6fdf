"""Hugging Face Space entry point: ``python app.py``.

Configured by environment variables (the Space's "Variables and secrets" tab), all read by
:class:`whisper_zh.serve.settings.ServeSettings`: MODEL_ID (the repo ``whisper-zh train`` pushed;
default openai/whisper-small), BACKEND, MAX_DURATION_S, MAX_UPLOAD_MB, CONCURRENCY_LIMIT,
MAX_QUEUE, BATCH_SIZE, YTDLP_COOKIES, ALLOW_PRIVATE_URLS, DOWNLOAD_DEADLINE_S (see the README).
"""

from whisper_zh.serve.app import build_app, launch_options

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
