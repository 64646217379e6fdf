"""Hugging Face Space entry point: ``python app.py``.

Configured by environment variables (the Space's "Variables and secrets" tab), all read by
:class:`whisper_zh.serve.settings.ServeSettings`: MODEL_ID (the repo ``whisper-zh train`` pushed;
default openai/whisper-small), BACKEND, MAX_DURATION_S, MAX_UPLOAD_MB, MAX_CACHE_MB,
CONCURRENCY_LIMIT, MAX_QUEUE, BATCH_SIZE, YTDLP_COOKIES, ALLOW_PRIVATE_URLS, DOWNLOAD_DEADLINE_S,
DECODE_DEADLINE_S, API_KEY, MCP_SERVER (see the README). The same port serves the OpenAI audio API (``/v1/audio/transcriptions``).
"""

import os
import sys

from whisper_zh.allocator import reuse_freed_memory

# first, before Gradio starts any thread: the model's buffers are then reused from call
# to call instead of page-faulted in afresh (whisper_zh/allocator.py; bench/README.md)
reuse_freed_memory()

from whisper_zh.errors import WhisperZhError  # noqa: E402
from whisper_zh.serve.app import build_app, launch_options  # noqa: E402

try:
    demo = build_app()
except WhisperZhError as err:
    # e.g. a mistyped MODEL_ID or an unreachable Hub: the message says what to do, and the
    # chained library tracebacks add nothing for the Space's owner (WHISPER_ZH_DEBUG=1 shows them)
    if os.environ.get("WHISPER_ZH_DEBUG"):
        raise
    print(f"app.py: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)

if __name__ == "__main__":
    demo.launch(**launch_options())
