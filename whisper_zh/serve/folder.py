"""Transcribe whole folders: every media file found, subtitle files mirrored into an output folder.

    $ whisper-zh transcribe interviews/ --output-dir subs --formats srt,vtt,txt
    $ whisper-zh transcribe 'archive/**/*.mp4' -o subs
    $ whisper-zh transcribe interviews/ -o subs --diarize                 # who speaks, file by file
    $ accelerate launch -m whisper_zh transcribe archive/ -o subs         # files split over the GPUs

    >>> summary = transcribe_folder(["interviews/"], "subs", ("srt", "txt"), "you/whisper-small-zh")
    >>> print(summary.report())

A folder is searched recursively for files with a media extension (:data:`MEDIA_EXTENSIONS`;
hidden files such as macOS's ``._name.mp3`` are left out), a glob pattern is expanded
(``**`` included), a file is taken as given. Each input's path relative to the inputs'
common folder is mirrored under the output folder (``in/a/talk.mp4`` ->
``out/a/talk.srt``), so files with the same name in different folders do not collide.

A file whose outputs all exist is skipped, and each output is written to a temporary
name and renamed into place, so a run that was killed resumes where it stopped and never
leaves a half-written file behind. A file that fails (not decodable, too long, ...) is
recorded with its reason and the rest go on.

Every file goes through the one job flow (:class:`~whisper_zh.serve.jobs.Job`), so its
outputs are what ``whisper-zh transcribe`` writes for that file alone, speaker labels
included (``diarize``, ``--diarize``): each file's speakers are told apart within it.

Under ``accelerate launch`` or ``torchrun`` the pending files are split between the
processes with accelerate's ``PartialState.split_between_processes``, the main process
loads (and downloads) the model first, and the per-file results are gathered with
``gather_object`` for one summary -- the same primitives training scales with. Without
accelerate (the serving install) a folder job is one process.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.distributed import process_state
from whisper_zh.errors import InputNotFoundError
from whisper_zh.hub import DEFAULT_MODEL
from whisper_zh.media import format_duration, probe_duration
from whisper_zh.serve.engine import Transcriber
from whisper_zh.serve.jobs import Job, notice_lines, open_input
from whisper_zh.serve.netguard import is_url
from whisper_zh.serve.settings import UNLIMITED, Limits
from whisper_zh.serve.subtitles import (
    DEFAULT_FORMATS,
    SubtitleStyle,
    check_formats,
    output_paths,
)
from whisper_zh.serve.types import TranscribeOptions

logger = logging.getLogger(__name__)

# Containers and codecs ffmpeg decodes that people keep speech in. Only used to pick
# files out of a folder; a file named explicitly is tried whatever its extension.
AUDIO_EXTENSIONS = frozenset(
    "aac ac3 aif aiff amr ape caf flac m4a m4b mka mp2 mp3 oga ogg opus spx wav weba wma wv".split())
VIDEO_EXTENSIONS = frozenset(
    "3gp avi flv m2ts m4v mkv mov mp4 mpeg mpg mts ogv ts vob webm wmv".split())
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS

DONE, SKIPPED, FAILED = "done", "skipped", "failed"

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class MediaFile:
    """One input and where its outputs go.

    Attributes:
        path: the media file.
        stem: its outputs' path under the output folder, without the format's
            extension (``sub/talk``; ``sub/talk.mp4`` when ``sub/talk.mp3`` is there too).
    """

    path: Path
    stem: Path


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    Attributes:
        source: the media file.
        status: ``"done"``, ``"skipped"`` (its outputs were already there) or ``"failed"``.
        outputs: the files written (or found, when skipped).
        duration_s: seconds of audio (0 when skipped or not decodable).
        elapsed_s: wall time spent on it, decoding the media included.
        segments: segments transcribed (0: no speech found; its outputs are empty files).
        error: why it failed, ``"ExceptionName: message"``.
        process_index: the process that handled it (0 without accelerate/torchrun).
        notices: what was not transcribed, a line each (:func:`~whisper_zh.serve.jobs.notice_lines`):
            parts of the file not decoded, speech left without text.
    """

    source: str
    status: str
    outputs: tuple[str, ...] = ()
    duration_s: float = 0.0
    elapsed_s: float = 0.0
    segments: int = 0
    error: Optional[str] = None
    process_index: int = 0
    notices: tuple[str, ...] = ()


@dataclass
class FolderSummary:
    """The results of a whole job, every process's files included."""

    files: list[FileResult] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of the job
    num_processes: int = 1
    is_main_process: bool = True  # of this process: the one that reports

    def _with(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def done(self) -> list[FileResult]:
        return self._with(DONE)

    @property
    def skipped(self) -> list[FileResult]:
        return self._with(SKIPPED)

    @property
    def failed(self) -> list[FileResult]:
        return self._with(FAILED)

    @property
    def audio_s(self) -> float:
        """Seconds of audio transcribed in this run."""
        return sum(f.duration_s for f in self.done)

    @property
    def speed(self) -> float:
        """Seconds of audio per second of wall time ("x real time"), all processes together."""
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def report(self) -> str:
        """A few lines for people: counts, hours of audio, speed, and each failure's reason."""
        silent = sum(1 for f in self.done if f.segments == 0)
        processes = f" on {self.num_processes} processes" if self.num_processes > 1 else ""
        lines = [
            f"{len(self.files)} file{'s' * (len(self.files) != 1)}: {len(self.done)} transcribed"
            + (f" ({silent} without speech)" if silent else "")
            + f", {len(self.skipped)} skipped (already done), {len(self.failed)} failed",
            f"{self.audio_s / 3600:.2f} h of audio ({format_duration(self.audio_s)}) in "
            f"{format_duration(self.elapsed_s)}{processes}: {self.speed:.1f}x real time",
        ]
        lines += [f"{f.source}: {notice}" for f in self.done for notice in f.notices]
        lines += [f"failed: {f.source}: {f.error}" for f in self.failed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"files": [asdict(f) for f in self.files], "elapsed_s": self.elapsed_s,
                "num_processes": self.num_processes, "done": len(self.done), "skipped": len(self.skipped),
                "failed": len(self.failed), "audio_s": self.audio_s, "speed": self.speed}


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------

def is_folder_job(source: str) -> bool:
    """True when ``source`` (a ``whisper-zh transcribe`` argument) names a folder or a
    glob pattern rather than one file or a link."""
    return not is_url(source) and (os.path.isdir(source) or glob.has_magic(source))


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def _media_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*")
            if p.suffix[1:].lower() in MEDIA_EXTENSIONS and not _hidden(p, folder) and p.is_file()]


def _static_prefix(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def find_media(inputs: Union[PathLike, Sequence[PathLike]]) -> list[MediaFile]:
    """The media files that ``inputs`` (folders, glob patterns, files) name, in a stable
    order (every process of a distributed run must see the same list).

    Raises:
        InputNotFoundError: an input is neither a file, a folder nor a pattern with matches.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[tuple[Path, Path]] = []  # (file, the folder it was found under)
    for item in map(os.fspath, inputs):
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in _media_in(path)]
        elif path.is_file():
            found.append((path, path.parent))
        elif glob.has_magic(item):
            base = _static_prefix(item)
            matches = [Path(m) for m in glob.glob(item, recursive=True)]
            if not matches:
                raise InputNotFoundError(f"no file matches {item}")
            for match in matches:
                if match.is_dir():
                    found += [(p, base) for p in _media_in(match)]
                elif match.suffix[1:].lower() in MEDIA_EXTENSIONS and not _hidden(match, base):
                    found.append((match, base))
        else:
            raise InputNotFoundError(f"no such file or folder: {item}")
    unique: dict[Path, Path] = {}
    for file, base in found:
        # absolute, not resolved: a symlink inside the folder keeps its place in the layout
        unique.setdefault(Path(os.path.abspath(file)), Path(os.path.abspath(base)))
    if not unique:
        return []
    # mirror paths relative to the folder all inputs share, so that two inputs' files of
    # the same name land in different places
    common = Path(os.path.commonpath([str(base) for base in unique.values()]))
    relative = sorted(file.relative_to(common) for file in unique)
    stems = [r.with_suffix("") for r in relative]
    # talk.mp3 and talk.mp4 side by side (or Talk.mp3, on a case-insensitive disk)
    counts = Counter(str(s).casefold() for s in stems)
    return [MediaFile(common / r, r if counts[str(s).casefold()] > 1 else s) for r, s in zip(relative, stems)]


# ---------------------------------------------------------------------------
# Transcribing
# ---------------------------------------------------------------------------

def _transcribe_one(job: Job, media: MediaFile, targets: dict[str, Path], limits: Limits, bar,
                    weight: Optional[float], process_index: int) -> FileResult:
    """One file; ``weight`` is its share of the progress bar (its probed duration, None
    when the header did not say: then its decoded duration is added to the bar's total)."""
    started = time.perf_counter()
    shown = 0.0  # of this file's weight, already on the bar
    duration = 0.0

    def advance(fraction: float, _message: str = "") -> None:
        nonlocal shown
        step = fraction * (weight or 0.0) - shown
        if step > 0:
            bar.update(step)
            shown += step

    try:
        loaded = open_input(media.path, media.path.parent, limits)  # a file: the folder is not written
        audio = loaded.audio
        duration = len(audio) / SAMPLE_RATE
        if weight is None:
            weight = duration
            bar.total += duration
        result = job.run(audio, progress=advance)
        job.write(result, targets)
        notices = tuple(notice_lines(loaded, result.coverage))
        for notice in notices:
            logger.warning("%s: %s", media.path, notice)
        return FileResult(str(media.path), DONE, tuple(map(str, targets.values())), duration,
                          time.perf_counter() - started, len(result.segments), process_index=process_index,
                          notices=notices)
    # The boundary of one file: whatever goes wrong with it (a corrupt file, a decoder or
    # model error, a full disk) is recorded for the summary and the other files go on.
    except Exception as err:  # noqa: BLE001
        logger.warning("%s: failed: %s: %s", media.path, type(err).__name__, err)
        return FileResult(str(media.path), FAILED, (), duration, time.perf_counter() - started,
                          error=f"{type(err).__name__}: {err}", process_index=process_index)
    finally:
        advance(1.0)


def transcribe_folder(inputs: Union[PathLike, Sequence[PathLike]], output_dir: PathLike,
                      formats: Sequence[str] = DEFAULT_FORMATS,
                      transcriber: Union[Transcriber, str, None] = None,
                      options: Optional[TranscribeOptions] = None, *,
                      backend: str = "auto", device: Optional[str] = None, encoder: str = "auto",
                      overwrite: bool = False, progress: bool = True,
                      style: Optional[SubtitleStyle] = None, limits: Limits = UNLIMITED,
                      diarize: bool = False, num_speakers: Optional[int] = None) -> FolderSummary:
    """Transcribe every media file ``inputs`` name into ``output_dir``.

    Args:
        inputs: folders (searched recursively), glob patterns, files.
        output_dir: where the outputs go, mirroring the inputs' relative paths.
        formats: any of :data:`whisper_zh.serve.subtitles.FORMATS`; bilingual adds an English pass.
        transcriber: a loaded engine, or a model id/directory to load (once per process,
            the main process first, so a Hub download happens once); None: the default model.
        options: decoding options (default: the engine's).
        backend, device: for loading ``transcriber`` when it is not an engine.
        overwrite: transcribe files whose outputs already exist too.
        progress: show a tqdm bar over the seconds of audio (on the main process).
        style: the subtitles' layout (default: by language, :func:`whisper_zh.serve.subtitles.default_style`).
        limits: the longest and largest input transcribed (larger ones fail, and the rest go on).
        diarize: label who speaks in every file's outputs, as for one file (:class:`~whisper_zh.serve.jobs.Job`);
            each file's speakers are its own (S1 of one file is not S1 of the next).
        num_speakers: how many speakers each file holds, when known (implies ``diarize``).
        encoder: the ct2 backend's encoder (:class:`~whisper_zh.serve.engine.Transcriber`).

    Returns:
        The summary of all files, every process's included (the same on every process).

    Raises:
        InputNotFoundError: an input does not exist or a pattern matches nothing.
        ConfigError: an unknown format.
        MissingExtraError: ``diarize`` without the ``diarize`` extra (before the first file).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    formats = check_formats(formats)
    state = process_state()
    media = find_media(inputs)
    plan = [(m, output_paths(output_dir, m.stem, formats)) for m in media]
    skipped = {str(m.path): FileResult(str(m.path), SKIPPED, tuple(map(str, targets.values())))
               for m, targets in plan if not overwrite and all(p.exists() for p in targets.values())}
    pending = [(m, targets) for m, targets in plan if str(m.path) not in skipped]
    # every process must have listed the same pending files before any of them writes one
    state.wait_for_everyone()
    if pending and not isinstance(transcriber, Transcriber):
        with state.main_process_first():
            # each process on its own GPU (accelerate's device: cuda:<local rank>)
            gpu = str(state.device) if state.device is not None and state.device.type == "cuda" else None
            transcriber = Transcriber(transcriber or DEFAULT_MODEL, backend=backend, device=device or gpu,
                                      options=options, encoder=encoder)
    options = options or (transcriber.options if isinstance(transcriber, Transcriber) else TranscribeOptions())
    job = Job(transcriber, options, formats, style=style, diarize=diarize,
              num_speakers=num_speakers) if pending else None
    results: list[FileResult] = []
    with state.split_between_processes(pending) as mine:
        weights = [probe_duration(m.path) for m, _ in mine]
        with tqdm(total=sum(w or 0.0 for w in weights), unit="s", dynamic_ncols=True,
                  desc=f"{len(mine)} files" + (f" (process {state.process_index} of {state.num_processes})"
                                               if state.num_processes > 1 else ""),
                  disable=not (progress and state.is_main_process),
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]") as bar:
            for (m, targets), weight in zip(mine, weights):
                result = _transcribe_one(job, m, targets, limits, bar, weight, state.process_index)
                logger.debug("%s: %s in %.1f s", m.path, result.status, result.elapsed_s)
                results.append(result)
    state.wait_for_everyone()
    gathered = results
    if state.num_processes > 1:
        from accelerate.utils import gather_object  # several processes: accelerate launched them

        gathered = gather_object(results)
    by_source = {**skipped, **{r.source: r for r in gathered}}
    return FolderSummary(files=[by_source[str(m.path)] for m in media], elapsed_s=time.perf_counter() - started,
                         num_processes=state.num_processes, is_main_process=state.is_main_process)
