"""How whisper-zh's messages reach a person: set up once by an edge (the command line,
the notebook); the library itself only logs to ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging


def configure_logging(level: int = logging.INFO) -> None:
    """whisper-zh's messages (progress, resume, what was written where) on stderr, one
    timestamped line each; other libraries' only from warnings up. Progress bars stay tqdm's."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("whisper_zh").setLevel(level)
