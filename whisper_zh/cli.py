"""``whisper-zh`` / ``python -m whisper_zh``: one entry point, a sub-command per stage.

Each sub-command lives in the module of its stage and takes its own arguments
(``whisper-zh train --help``); this file only dispatches, importing lazily so that
``whisper-zh transcribe`` never pays for the training stack and vice versa. It is also
the one place that sets up logging and turns the library's exceptions into a one-line
message and an exit code (``WHISPER_ZH_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "prepare": ("whisper_zh.train", "prepare_main", "prepare and cache a dataset (no training)"),
    "train": ("whisper_zh.train", "main", "fine-tune Whisper; resumes by itself"),
    "evaluate": ("whisper_zh.evaluate", "main", "CER/WER of any model on any split"),
    "transcribe": ("whisper_zh.transcribe", "main", "transcribe a file or a URL, write subtitles"),
    "export": ("whisper_zh.export", "main", "convert a model to CTranslate2 for fast CPU serving"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that also takes the underscore spelling of a dashed option
    (``--batch_size`` for ``--batch-size``): ``whisper-zh train`` spells its options with
    underscores (transformers' HfArgumentParser), so either spelling works everywhere."""

    def parse_known_args(self, args=None, namespace=None):
        known = {option for action in self._actions for option in action.option_strings}
        fixed = []
        for arg in list(sys.argv[1:] if args is None else args):
            name, equals, value = arg.partition("=")
            dashed = name.replace("_", "-")
            if name.startswith("--") and name not in known and dashed in known:
                arg = dashed + equals + value
            fixed.append(arg)
        return super().parse_known_args(fixed, namespace)


def configure_logging(level: int = logging.INFO) -> None:
    """whisper-zh's messages (progress, resume, what was written where) on stderr, one
    timestamped line each; other libraries' only from warnings up. Progress bars stay tqdm's."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("whisper_zh").setLevel(level)


def _usage() -> str:
    lines = ["usage: whisper-zh COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "whisper-zh COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from whisper_zh import __version__

        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        print(f"whisper-zh: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    configure_logging()
    module, func, _ = COMMANDS[argv[0]]
    try:
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except KeyboardInterrupt:
        print(f"whisper-zh {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as err:
        # the library's errors (bad data or input, a missing file, a failed download)
        # all say what went wrong in their message; a traceback adds nothing for a user
        if os.environ.get("WHISPER_ZH_DEBUG"):
            raise
        print(f"whisper-zh {argv[0]}: error: {err}", file=sys.stderr)
        return 1
