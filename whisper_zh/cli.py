"""``whisper-zh`` / ``python -m whisper_zh``: one entry point, a sub-command per stage.

The command-line layer: nothing in the package imports it. It reads the environment
(:meth:`~whisper_zh.serve.settings.ServeSettings.from_env`), builds each command's
options, imports the stage it runs only when that command runs (``whisper-zh
transcribe`` never pays for the training stack, ``whisper-zh prepare`` and ``--help``
never import torch), sets up logging, and is the one error boundary: an error the
library raises on purpose (:class:`~whisper_zh.errors.WhisperZhError`) becomes a one-line
message and its exit code (2 for a configuration or data mistake, 1 otherwise);
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Callable, Optional, Sequence

from whisper_zh.allocator import reuse_freed_memory
from whisper_zh.errors import ConfigError, WhisperZhError
from whisper_zh.logs import configure_logging

logger = logging.getLogger("whisper_zh.cli")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that also takes the underscore spelling of a dashed option
    (``--batch_size`` for ``--batch-size``), the spelling transformers' scripts use, so
    either works in every command."""

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


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def dataclass_parser(cls, prog: str, description: str = "") -> ArgumentParser:
    """One ``--field-name`` option per field of the dataclass ``cls``, its default and
    ``metadata["help"]`` shown; ``--flag`` alone or ``--flag true/false`` for booleans."""
    parser = ArgumentParser(prog=prog, description=description,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
        option = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(option, type=_flag, nargs="?", const=True, default=f.default, help=help_)
        else:
            parser.add_argument(option, type=kind, default=f.default, help=help_)
    return parser


# --------------------------------------------------------------------------------------
# prepare, train
# --------------------------------------------------------------------------------------


def parse_train_config(argv: Sequence[str], prog: str = "whisper-zh train"):
    """Command-line arguments (or a single .json file) -> :class:`~whisper_zh.train.config.TrainConfig`."""
    from whisper_zh.train.config import TrainConfig

    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as f:
            values = json.load(f)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ConfigError(f"{argv[0]}: unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)}")
        config = TrainConfig(**values)
    else:
        parser = dataclass_parser(TrainConfig, prog, "Fine-tune Whisper on a Common Voice release (or any "
                                                      "datasets audio dataset); resumes by itself.")
        config = TrainConfig(**vars(parser.parse_args(argv)))
    if not config.dataset:
        raise ConfigError("--dataset is required: a Common Voice release folder or .tar.gz, "
                          "a local datasets directory, or a Hub dataset id")
    return config


def prepare_command(argv: Sequence[str]) -> int:
    """``whisper-zh prepare``: the data stage alone (e.g. on a CPU machine before renting a GPU)."""
    from whisper_zh.train.data import prepare_data

    prepare_data(parse_train_config(argv, prog="whisper-zh prepare"))
    return 0


def train_command(argv: Sequence[str]) -> int:
    """``whisper-zh train``: the whole pipeline; the summary as one JSON line on stdout."""
    config = parse_train_config(argv)
    from whisper_zh.train.pipeline import train

    result = train(config)
    if result.is_main_process:
        summary = {k: v for k, v in result.summary().items()
                   if k in ("global_step", "best_checkpoint", "eval_cer", "test_cer", "test_wer")}
        print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# evaluate, export
# --------------------------------------------------------------------------------------


def evaluate_command(argv: Sequence[str]) -> int:
    from whisper_zh.hub import DEFAULT_MODEL
    from whisper_zh.serve.types import BACKENDS, TranscribeOptions
    from whisper_zh.train.config import DEFAULT_CACHE_DIR

    parser = ArgumentParser(prog="whisper-zh evaluate",
                            description="The error rate of any Whisper, Hub id or directory, on any split, "
                                        "decoded by the serving engine.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Whisper Hub id or local directory")
    parser.add_argument("--dataset", required=True, help="Common Voice release (folder or .tar.gz), "
                        "local datasets directory or Hub dataset id")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="test", help="split(s), '+'-joined (default: test)")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--language", default="zh")
    parser.add_argument("--task", default="transcribe")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default): ct2 on a CPU, transformers on a GPU")
    parser.add_argument("--batch-size", type=int, default=TranscribeOptions.batch_size,
                        help="clips decoded together (default: %(default)s)")
    parser.add_argument("--beam-size", "--num-beams", type=int, default=None,
                        help="1 = greedy (default: the backend's, as the app decodes)")
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N clips")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--output-tsv", default=None, help="write path, reference, hypothesis, error rate per clip")
    args = parser.parse_args(list(argv))

    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.train.config import TrainConfig
    from whisper_zh.train.data import (
        LabelEncoder,
        PrepareOptions,
        open_source,
        prepare_split,
    )
    from whisper_zh.train.evaluate import evaluate, write_tsv

    source = open_source(args.dataset, args.dataset_config, args.cache_dir)
    labels = LabelEncoder(args.model, args.language, args.task)
    opts = PrepareOptions.from_config(TrainConfig(language=args.language, task=args.task,
                                                  audio_column=args.audio_column, text_column=args.text_column))
    dataset, stats = prepare_split(source, args.split, args.cache_dir, labels, opts)
    logger.info(stats.summary(args.split))
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    transcriber = Transcriber(args.model, backend=args.backend, device=args.device)
    options = TranscribeOptions(language=args.language, task=args.task, batch_size=args.batch_size,
                                beam_size=args.beam_size)
    result = evaluate(transcriber, dataset, options)
    print(f"{args.model} on {args.split} ({transcriber.backend.name}): {result.summary()}", flush=True)
    if args.output_tsv:
        write_tsv(result, args.output_tsv)
        logger.info("per-clip results: %s", args.output_tsv)
    return 0


def export_command(argv: Sequence[str]) -> int:
    from whisper_zh.serve.models import QUANTIZATIONS, export_ct2

    parser = ArgumentParser(prog="whisper-zh export",
                            description="Convert a Whisper model to CTranslate2 (faster-whisper) for fast CPU serving.")
    parser.add_argument("model", help="fine-tuned model directory (or Hub id)")
    parser.add_argument("--quantization", default="int8", choices=QUANTIZATIONS,
                        help="weight type (default int8: fastest on CPU)")
    parser.add_argument("--output-dir", default=None,
                        help="output directory (default MODEL/ct2 for a local MODEL, where the engine finds it)")
    args = parser.parse_args(list(argv))
    print(export_ct2(args.model, args.output_dir, args.quantization))
    return 0


# --------------------------------------------------------------------------------------
# transcribe
# --------------------------------------------------------------------------------------


def transcribe_parser(settings) -> ArgumentParser:
    from whisper_zh.serve.subtitles import (
        CHINESE_STYLE,
        DEFAULT_FORMATS,
        FORMATS,
        LATIN_STYLE,
    )
    from whisper_zh.serve.bf16_encoder import ENCODERS
    from whisper_zh.serve.types import BACKENDS, TranscribeOptions
    from whisper_zh.text import SCRIPT_NAMES

    parser = ArgumentParser(
        prog="whisper-zh transcribe",
        description="Transcribe Chinese speech from media files, folders or links (YouTube or any site "
                    "yt-dlp supports): print the text, write subtitles. Long inputs are cut into "
                    "windows of at most 30 s decoded in batches.",
        epilog="examples:\n"
               "  whisper-zh transcribe talk.mp4 --srt talk.srt\n"
               "  whisper-zh transcribe https://www.youtube.com/watch?v=... --script taiwan --vtt talk.vtt\n"
               "  whisper-zh transcribe interview.m4a --hotwords '小米 澎湃OS' --formats srt,json,bilingual\n"
               "  whisper-zh transcribe recordings/ --output-dir subs --formats srt,txt   # a whole folder\n"
               "  accelerate launch -m whisper_zh transcribe recordings/ --output-dir subs  # on every GPU",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="FILE_DIR_GLOB_OR_URL",
                        help="media files, folders (searched recursively), glob patterns, or http(s) links")
    parser.add_argument("--model", default=settings.model_id,
                        help="Hub id or local directory (default: $MODEL_ID or %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default=settings.backend,
                        help="inference backend (default: $BACKEND or auto: ct2 on a CPU, transformers on a GPU)")
    parser.add_argument("--encoder", choices=ENCODERS, default=settings.encoder,
                        help="the ct2 backend's encoder (default: $ENCODER or auto: PyTorch bfloat16 on a CPU "
                             "with AMX when the export carries its weights, else CTranslate2's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output-dir", metavar="DIR", default=None,
                     help="write every input's subtitle files here (folders: the same tree below DIR)")
    out.add_argument("--overwrite", action="store_true",
                     help="folders: transcribe files whose outputs exist too (default: skip them, so a run resumes)")
    out.add_argument("--summary-json", metavar="PATH", help="folders: also write the summary, file by file, as JSON")
    out.add_argument("--formats", default=None, metavar="LIST",
                     help=f"with --output-dir: comma-separated, of {','.join(FORMATS)} "
                          f"(default: {','.join(DEFAULT_FORMATS)}); bilingual adds an English translation pass")
    for fmt in ("srt", "vtt", "txt", "json"):
        out.add_argument(f"--{fmt}", metavar="PATH", help=f"write the {fmt} file of a single input here")
    out.add_argument("--segments", action="store_true", help="print [start --> end] text lines instead of the text")
    out.add_argument("--script", choices=SCRIPT_NAMES, default="simplified",
                     help="Chinese characters of the output (default: simplified)")
    out.add_argument("--line-width", type=int, default=None,
                     help=f"subtitle line width in Chinese characters (default: {CHINESE_STYLE.max_line_width}; "
                          f"{LATIN_STYLE.max_line_width} Latin characters for other languages)")
    out.add_argument("--max-lines", type=int, default=None,
                     help=f"lines per subtitle (default: {CHINESE_STYLE.max_lines})")
    out.add_argument("--keep-punctuation", action="store_true",
                     help="keep ，。 in subtitles (default: replaced by spaces, as Chinese subtitles are written)")
    dec = parser.add_argument_group("decoding")
    dec.add_argument("--language", default=TranscribeOptions.language, help="spoken language (default: zh)")
    dec.add_argument("--task", choices=["transcribe", "translate"], default=TranscribeOptions.task,
                     help="translate: English text from Chinese speech (Whisper's own task)")
    dec.add_argument("--prompt", default=None,
                     help="text that leads every window's prompt, e.g. '以下是普通话的句子。' for punctuation")
    dec.add_argument("--hotwords", default=None, help="names and terms to prefer, e.g. '小米 澎湃OS'")
    dec.add_argument("--diarize", action="store_true",
                     help='label who speaks (S1, S2 ...) in every format; needs pip install "whisper-zh[diarize]"')
    dec.add_argument("--num-speakers", type=int, default=None, metavar="N",
                     help="with --diarize: how many speakers there are (in each file; default: counted)")
    dec.add_argument("--batch-size", type=int, default=settings.batch_size or TranscribeOptions.batch_size,
                     help="windows decoded together (default: $BATCH_SIZE or %(default)s)")
    dec.add_argument("--beam-size", type=int, default=None,
                     help="1 = greedy (default: 5 with the ct2 backend, 1 with transformers)")
    dec.add_argument("--max-duration", type=_positive_seconds, default=settings.max_duration_s, metavar="SECONDS",
                     help="refuse longer inputs (default: $MAX_DURATION_S or %(default)s)")
    dec.add_argument("--cookies", metavar="COOKIES_TXT", default=settings.cookies,
                     help="cookies.txt for yt-dlp, for YouTube's sign-in check (default: $YTDLP_COOKIES)")
    return parser


def _positive_seconds(text: str) -> float:
    """--max-duration's type: "nan" or "inf" would turn the limit off, 0 refuse everything."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def transcribe_command(argv: Sequence[str]) -> int:
    """One input prints its transcript to stdout; several inputs, a folder or a glob are
    a batch job (:func:`whisper_zh.serve.folder.transcribe_folder`). Both go through the
    one job flow (:class:`whisper_zh.serve.jobs.Job`)."""
    from whisper_zh.serve.settings import ServeSettings

    settings = ServeSettings.from_env()
    args = transcribe_parser(settings).parse_args(list(argv))

    from whisper_zh.serve.folder import is_folder_job
    from whisper_zh.serve.subtitles import DEFAULT_FORMATS, check_formats, default_style
    from whisper_zh.serve.types import TranscribeOptions

    # MAX_UPLOAD_MB bounds what a link downloads; the user's own files have no byte limit
    # (the duration limit holds while they decode)
    limits = dataclasses.replace(settings.limits, max_duration_s=args.max_duration)
    options = TranscribeOptions(language=args.language, task=args.task, script=args.script,
                                batch_size=args.batch_size, beam_size=args.beam_size, prompt=args.prompt,
                                hotwords=args.hotwords)
    formats = check_formats(args.formats.split(",")) if args.formats else None
    base = default_style(language="en" if args.task == "translate" else args.language)
    style = None
    if args.line_width or args.max_lines or args.keep_punctuation:
        style = dataclasses.replace(base, max_line_width=args.line_width or base.max_line_width,
                                    max_lines=args.max_lines or base.max_lines,
                                    keep_punctuation=args.keep_punctuation or base.keep_punctuation)
    if args.num_speakers is not None and args.num_speakers < 1:
        raise ConfigError(f"--num-speakers must be at least 1, not {args.num_speakers}")
    if len(args.sources) > 1 or is_folder_job(args.sources[0]):
        return _transcribe_folders(args, options, formats or DEFAULT_FORMATS, style, limits)
    return _transcribe_one(args, options, formats, style, limits)


def _progress_line(fraction: float, message: str) -> None:
    print(f"\r[{fraction:4.0%}] {message:<60}", end="", file=sys.stderr, flush=True)


def _transcribe_one(args, options, formats: Optional[Sequence[str]], style, limits) -> int:
    from whisper_zh.audio import SAMPLE_RATE
    from whisper_zh.media import format_duration
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.jobs import NO_SPEECH, Job, notice_lines, open_input
    from whisper_zh.serve.netguard import is_url
    from whisper_zh.serve.subtitles import (
        DEFAULT_FORMATS,
        format_timestamp,
        output_paths,
        speaker_prefix,
        to_txt,
    )

    source = args.sources[0]
    targets = {fmt: path for fmt in ("srt", "vtt", "txt", "json") if (path := getattr(args, fmt))}
    with tempfile.TemporaryDirectory(prefix="whisper-zh-") as tmp:
        if is_url(source):
            logger.info("downloading %s", source)
        loaded = open_input(source, tmp, limits if is_url(source) else dataclasses.replace(limits, max_bytes=None),
                            cookies=args.cookies, progress=_progress_line)
        if is_url(source):
            print(file=sys.stderr)
    engine = Transcriber(args.model, backend=args.backend, device=args.device, options=options,
                         encoder=args.encoder)
    audio = loaded.audio
    logger.info("%s: %s of audio", engine, format_duration(len(audio) / SAMPLE_RATE))
    formats = formats or (DEFAULT_FORMATS if args.output_dir else ())
    job = Job(engine, options, tuple(dict.fromkeys([*formats, *targets])) or ("txt",), style=style,
              diarize=args.diarize, num_speakers=args.num_speakers)
    result = job.run(audio, progress=_progress_line)
    print(file=sys.stderr)
    for line in notice_lines(loaded, result.coverage):
        print(f"{source}: {line}", file=sys.stderr)
    if result.no_speech:
        print(f"{source}: {NO_SPEECH}", file=sys.stderr)
    else:
        logger.info("%.1f s of audio in %.1f s (%.1fx real time)", result.duration_s, result.elapsed_s,
                    result.duration_s / max(result.elapsed_s, 1e-9))
    written = {}
    if targets:
        written.update(job.write(result, {fmt: Path(path) for fmt, path in targets.items()}))
    if args.output_dir:
        stem = "transcript" if is_url(source) else os.path.splitext(os.path.basename(source))[0]
        written.update(job.write(result, output_paths(args.output_dir, stem, formats)))
    for path in written.values():
        logger.info("wrote %s", path)
    if args.segments:
        for s in result.segments:
            print(f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {speaker_prefix(s.speaker)}{s.text}")
    elif job.diarize and not result.no_speech:
        print(to_txt(result.segments), end="")  # who says what: paragraphs led by the speaker
    elif not result.no_speech:
        print(result.text)
    return 0


def _transcribe_folders(args, options, formats: Sequence[str], style, limits) -> int:
    """Several inputs, folders or globs: a batch job, split over the processes of
    ``accelerate launch``/``torchrun``; the summary on stdout."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from whisper_zh.serve.folder import transcribe_folder

    if not args.output_dir:
        raise ConfigError("several inputs, a folder or a glob need --output-dir")
    with logging_redirect_tqdm():
        summary = transcribe_folder(args.sources, args.output_dir, formats, args.model, options,
                                    backend=args.backend, device=args.device, encoder=args.encoder,
                                    overwrite=args.overwrite,
                                    style=style, limits=dataclasses.replace(limits, max_bytes=None),
                                    diarize=args.diarize,
                                    num_speakers=args.num_speakers)
    if summary.is_main_process:
        print(summary.report())
        if args.summary_json:
            with open(args.summary_json, "w", encoding="utf-8") as f:
                json.dump(summary.to_dict(), f, ensure_ascii=False, indent=1)
    return 1 if summary.failed else 0


# --------------------------------------------------------------------------------------
# Dispatch and the error boundary
# --------------------------------------------------------------------------------------


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "prepare": (prepare_command, "prepare and cache a dataset (no training)"),
    "train": (train_command, "fine-tune Whisper; resumes by itself"),
    "evaluate": (evaluate_command, "CER/WER of any model on any split"),
    "transcribe": (transcribe_command, "transcribe files, folders or links, write subtitles"),
    "export": (export_command, "convert a model to CTranslate2 for fast CPU serving"),
}


# Commands that run the training stack: in a serving install ([app]) they stop with the
# command that installs it, before any import fails deep inside.
TRAINING_COMMANDS = ("prepare", "train", "evaluate")
TRAINING_STACK = ("torch", "transformers", "datasets", "accelerate")

# Commands that run a model call after call over many inputs: their process keeps freed
# memory for the next call (whisper_zh/allocator.py). Not the training stack's (evaluate
# included): its data preparation forks workers, which would each keep their peak.
DECODING_COMMANDS = ("transcribe",)


def _check_training_stack(command: str) -> None:
    import importlib.util

    from whisper_zh.errors import MissingExtraError

    missing = [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError.of("train", f"whisper-zh {command} ({', '.join(missing)})")


def _usage() -> str:
    lines = ["usage: whisper-zh COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "whisper-zh COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
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
    if argv[0] in DECODING_COMMANDS:
        reuse_freed_memory()  # before any thread starts (whisper_zh/allocator.py)
    command, _ = COMMANDS[argv[0]]
    try:
        if argv[0] in TRAINING_COMMANDS:
            _check_training_stack(argv[0])
        return int(command(argv[1:]) or 0)
    except KeyboardInterrupt:
        print(f"whisper-zh {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except WhisperZhError as err:
        # the library's own errors say what went wrong and what to do; a traceback adds
        # nothing for a user (WHISPER_ZH_DEBUG=1 shows it). Anything else is a bug and
        # keeps its traceback.
        if os.environ.get("WHISPER_ZH_DEBUG"):
            raise
        print(f"whisper-zh {argv[0]}: error: {err}", file=sys.stderr)
        return err.exit_code
