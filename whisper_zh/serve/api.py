"""The OpenAI audio API, on the page's own server: ``POST /v1/audio/transcriptions``,
``POST /v1/audio/translations`` and ``GET /v1/models``, so that any OpenAI client (the
``openai`` package, AnythingLLM, curl) can use a Space or ``python app.py``:

    >>> from openai import OpenAI
    >>> client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused")
    >>> client.audio.transcriptions.create(model="whisper-1", file=open("talk.mp4", "rb")).text

A call is the page's work by another door, under the same rules:

* **One job flow**: the upload goes through :func:`~whisper_zh.serve.jobs.open_input` with
  the server's :class:`~whisper_zh.serve.settings.Limits`, then a
  :class:`~whisper_zh.serve.jobs.Job`; ``srt`` and ``vtt`` are the files the page offers.
* **One set of slots** (:class:`Slots`): the page's jobs and the API's calls each hold one
  while they work, ``CONCURRENCY_LIMIT`` at once, the others waiting in line (first come,
  first served); with ``MAX_QUEUE`` already waiting, a call is answered 429 (and the page
  says the queue is full).
* **Errors** are OpenAI's error JSON: 400 for what cannot be decoded or parsed, 401 for a
  wrong bearer token when ``API_KEY`` is set (none set: the API is open, as the page is),
  413 over the byte or duration limit, 429 when the queue is full.
* **Gone means stopped**: the job runs in a thread that checks a flag at every model step;
  the flag is set when the client disconnects (polled while waiting, or the streaming
  response is cancelled).

Form fields are OpenAI's (``file``, ``model``, ``language``, ``prompt``, ``response_format``
= json | text | srt | vtt | verbose_json, ``temperature``, ``timestamp_granularities[]`` =
segment | word, ``stream``) plus this project's ``hotwords`` and ``script``. ``model`` is
accepted and ignored: a server serves the one model it loaded (``GET /v1/models`` names
it). ``verbose_json`` segments carry ``id``, ``start``, ``end``, ``text`` and, when the
backend reports it, ``no_speech_prob``; the fields Whisper's decoder state would fill
(``tokens``, ``seek``, ``avg_logprob``, ...) are left out rather than invented.
``stream=true`` answers server-sent events as OpenAI's streaming transcription does: a
``transcript.text.delta`` and a ``transcript.text.segment`` (with times) per segment as it
is decoded, then ``transcript.text.done``.

What was not transcribed is said (:func:`~whisper_zh.serve.jobs.notice_lines`: parts of the
file that could not be decoded, speech left without text): a ``notices`` list in the
``json`` and ``verbose_json`` answers and in ``transcript.text.done``, and the
``X-Notices`` header (a JSON list of the first ten) with every format; absent when there is
nothing to say.

The routes look up the work's state through the Gradio app serving them
(:func:`attach` in ``build_app``, :func:`routes` in ``launch_options``), so that
``demo.launch(**launch_options())`` is all a Space runs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from whisper_zh.audio import SAMPLE_RATE
from whisper_zh.errors import (
    AudioDecodeError,
    ConfigError,
    InputNotFoundError,
    MediaLimitError,
    QueueFullError,
    Cancelled,
    WhisperZhError,
)
from whisper_zh.serve.engine import Transcriber
from whisper_zh.serve.jobs import WAIT_POLL_S, Job, Slots, notice_lines, open_input, translation_options
from whisper_zh.serve.settings import ServeSettings
from whisper_zh.serve.subtitles import output_paths
from whisper_zh.serve.types import Segment, TranscribeOptions
from whisper_zh.serve.uploads import Refused
from whisper_zh.text import CHARACTER_LANGUAGES, LANGUAGE_NAMES, SCRIPT_NAMES

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
NOTICES_HEADER = "X-Notices"
MAX_HEADER_NOTICES = 10
KEEPALIVE_S = 15.0  # an SSE comment this often while nothing else is sent, so proxies keep the stream


@dataclass
class Service:
    """What the API's routes need of the app: its settings, its engine (loaded on first
    use, like the page's) and the slots the page uses too."""

    settings: ServeSettings
    engine: Callable[[], Transcriber]
    slots: Slots
    started: int = 0  # when this server took the model, for /v1/models' "created"


_services: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attach(blocks, service: Service) -> Service:
    """Make ``service`` the API's for the Gradio app ``blocks`` will serve."""
    _services[blocks] = replace(service, started=service.started or int(time.time()))
    return _services[blocks]


class ApiError(WhisperZhError):
    """An answer other than success, as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def as_api_error(err: BaseException) -> ApiError:
    """The answer for an error of the work: the same rules as the page's messages."""
    if isinstance(err, ApiError):
        return err
    message = str(err)[:1].upper() + str(err)[1:]
    if isinstance(err, MediaLimitError):
        return ApiError(413, message, code="file_too_large")
    if isinstance(err, AudioDecodeError):
        return ApiError(400, "The file is not audio or video that ffmpeg can decode "
                             "(corrupt, empty, or without a sound track).", param="file", code="invalid_file")
    if isinstance(err, QueueFullError):
        return ApiError(429, message, kind="rate_limit_error", code="queue_full")
    if isinstance(err, Cancelled):
        return ApiError(499, message, code="cancelled")  # nginx's "client closed request": nobody reads it
    if isinstance(err, (ConfigError, InputNotFoundError)):
        return ApiError(400, message)
    if isinstance(err, WhisperZhError):
        return ApiError(400, message)
    if isinstance(err, MemoryError):
        return ApiError(503, "The server ran out of memory on this input. Try a shorter or smaller file.",
                        kind="server_error", code="out_of_memory")
    return ApiError(500, "The server failed on this request; its log says why.", kind="server_error")


@dataclass(frozen=True)
class Call:
    """One API request, parsed: what to decode and how to answer."""

    options: TranscribeOptions
    response_format: str = "json"
    granularities: tuple[str, ...] = ("segment",)
    stream: bool = False
    suffix: str = ""  # the upload's file name ending, a hint for ffmpeg

    @property
    def task(self) -> str:
        return self.options.task


def _flag(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_call(fields: dict[str, list], task: str, settings: ServeSettings) -> Call:
    """The form's fields ({name: [values]}, files as objects with ``filename``) as a
    :class:`Call`; the file itself is read by the caller.

    Raises:
        ApiError: 400, naming the field that cannot be used.
    """
    def one(name: str) -> Optional[str]:
        values = fields.get(name) or []
        value = values[-1] if values else None
        return value.strip() if isinstance(value, str) and value.strip() else None

    response_format = (one("response_format") or "json").lower()
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format!r}",
                       param="response_format")
    granularities = tuple(dict.fromkeys(
        g.strip().lower() for name in ("timestamp_granularities[]", "timestamp_granularities")
        for value in fields.get(name) or [] if isinstance(value, str) for g in value.split(",") if g.strip()))
    wrong = [g for g in granularities if g not in GRANULARITIES]
    if wrong:
        raise ApiError(400, f"timestamp_granularities must be segment and/or word, not {', '.join(wrong)}",
                       param="timestamp_granularities[]")
    language = (one("language") or TranscribeOptions.language).lower()
    if language not in LANGUAGE_NAMES:
        raise ApiError(400, f"language {language!r} is not one Whisper knows (ISO-639-1, e.g. zh, en)",
                       param="language")
    script = (one("script") or "simplified").lower()
    if script not in SCRIPT_NAMES:
        raise ApiError(400, f"script must be one of {', '.join(SCRIPT_NAMES)}, not {script!r}", param="script")
    try:
        temperature = float(one("temperature") or 0.0)
    except ValueError:
        raise ApiError(400, "temperature must be a number from 0 to 1", param="temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise ApiError(400, "temperature must be a number from 0 to 1", param="temperature")
    options = TranscribeOptions(
        language=language, script=script, prompt=one("prompt"), hotwords=one("hotwords"),
        batch_size=settings.batch_size or TranscribeOptions.batch_size,
        word_timestamps="word" in granularities,
        # OpenAI's 0 means "raise it where the decoding fails": the engine's fallback does that
        **({"temperatures": (temperature,)} if temperature > 0 else {}))
    if task == "translate":
        options = translation_options(options)
    upload = (fields.get("file") or [None])[-1]
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "send the audio as the multipart field 'file'", param="file")
    suffix = Path(upload.filename or "").suffix.lower()
    suffix = suffix if 1 < len(suffix) <= 10 and suffix[1:].isalnum() else ""
    return Call(options, response_format, granularities or ("segment",), _flag(one("stream")), suffix)


def _authorize(request, api_key: Optional[str]) -> None:
    if not api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "Incorrect API key: send 'Authorization: Bearer <API_KEY>' as this server's "
                            "operator set it.", code="invalid_api_key")


async def _read_form(request, settings: ServeSettings) -> dict[str, list]:
    """The multipart form, refused (413) once it is larger than the upload limit allows,
    whether or not the client said its length; 503 when the server's upload space is full
    (:class:`~whisper_zh.serve.uploads.UploadBudget`, in front of every route)."""
    from starlette.requests import ClientDisconnect, Request

    limit = settings.max_request_bytes
    too_large = ApiError(413, f"The upload is over the {settings.max_upload_mb:g} MB limit.", param="file",
                         code="file_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    received = 0

    async def counted():
        nonlocal received
        try:
            message = await request.receive()
        except Refused as err:  # the server's total, or a body that is not a form (Starlette would say 400)
            code = "server_busy" if err.status == 503 else "request_too_large"
            raise ApiError(err.status, err.message, code=code) from None
        received += len(message.get("body", b""))
        if received > limit:
            raise too_large
        return message

    try:
        form = await Request(request.scope, counted).form()
    except ClientDisconnect:
        raise Cancelled("the client left while sending the file") from None
    except ApiError:
        raise
    except Exception as err:  # the multipart parser's errors: a malformed body
        raise ApiError(400, f"The body is not a multipart form this API reads: {err}") from None
    fields: dict[str, list] = {}
    for name, value in form.multi_items():
        fields.setdefault(name, []).append(value)
    return fields


class _Run:
    """One call's work in its own thread (slot, decode, job, files), its events handed to
    the event loop: ("ready", seconds of audio), ("segment", Segment), ("done", (JobResult,
    body)) or ("error", exception)."""

    def __init__(self, service: Service, call: Call, upload: Path, workdir: Path):
        self.service, self.call, self.upload, self.workdir = service, call, upload, workdir
        self.cancel = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def start(self) -> "_Run":
        threading.Thread(target=self._work, name="whisper-zh-api", daemon=True).start()
        return self

    def _put(self, kind: str, value) -> None:
        self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def _check(self, *_) -> None:
        if self.cancel.is_set():
            raise Cancelled("the client went away")

    def _work(self) -> None:
        settings = self.service.settings
        try:
            with self.service.slots.hold(cancelled=self.cancel.is_set):
                loaded = open_input(self.upload, self.workdir, settings.limits, progress=self._check)
                audio = loaded.audio
                self.upload.unlink(missing_ok=True)
                self._put("ready", len(audio) / SAMPLE_RATE)
                fmt = self.call.response_format
                job = Job(self.service.engine(), self.call.options, (fmt,) if fmt in ("srt", "vtt") else ("txt",))
                for segment in job.iter_segments(audio, progress=self._check):
                    self._check()
                    self._put("segment", segment)
                result = job.finish(audio)
                body = None
                if fmt in ("srt", "vtt"):  # the very files the page offers
                    files = job.write(result, output_paths(self.workdir, "transcript", job.formats))
                    body = files[fmt].read_text(encoding="utf-8")
                self._put("done", (result, body, tuple(notice_lines(loaded, result.coverage))))
        except BaseException as err:  # noqa: BLE001 -- handed to the request, which answers it
            if not isinstance(err, (WhisperZhError, MemoryError)):
                logger.exception("API call failed")
            self._put("error", err)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def next(self, request=None):
        """The next event; with ``request``, the client's leaving cancels the work."""
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), WAIT_POLL_S * 2)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel.set()
                    raise Cancelled("the client went away") from None


def _language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def _segment_json(i: int, segment: Segment) -> dict:
    out = {"id": i, "start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text}
    if segment.no_speech_prob is not None:
        out["no_speech_prob"] = round(float(segment.no_speech_prob), 4)
    return out


def verbose_json(call: Call, result) -> dict:
    """OpenAI's verbose_json for a :class:`~whisper_zh.serve.jobs.JobResult`."""
    out = {"task": call.task, "language": _language_name(result.language), "duration": round(result.duration_s, 3),
           "text": result.text}
    if "segment" in call.granularities:
        out["segments"] = [_segment_json(i, s) for i, s in enumerate(result.segments)]
    if "word" in call.granularities:
        out["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                        for s in result.segments for w in s.words if w.word.strip()]
    out["usage"] = _usage(result.duration_s)
    return out


def _usage(duration_s: float) -> dict:
    return {"type": "duration", "seconds": math.ceil(duration_s)}


def _answer(call: Call, result, body: Optional[str], notices: tuple[str, ...] = ()):
    """The answer in ``call``'s format. ``notices`` (what was not transcribed,
    :func:`~whisper_zh.serve.jobs.notice_lines`) ride along where a client can see
    them: a ``notices`` list in the JSON formats, the ``X-Notices`` header (a JSON list)
    with every format."""
    from starlette.responses import JSONResponse, PlainTextResponse

    shown = list(notices[:MAX_HEADER_NOTICES])
    if len(notices) > MAX_HEADER_NOTICES:  # a header must stay small for proxies; the JSON has them all
        shown.append(f"... and {len(notices) - MAX_HEADER_NOTICES} more")
    headers = {NOTICES_HEADER: json.dumps(shown)} if notices else None
    extra = {"notices": list(notices)} if notices else {}
    if call.response_format == "json":
        return JSONResponse({"text": result.text, "usage": _usage(result.duration_s), **extra}, headers=headers)
    if call.response_format == "verbose_json":
        return JSONResponse({**verbose_json(call, result), **extra}, headers=headers)
    if call.response_format == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    return PlainTextResponse(body, media_type="text/vtt" if call.response_format == "vtt" else "text/plain",
                             headers=headers)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(run: _Run, language: str):
    """The streaming answer: each segment as it is decoded; the work stops if the
    client leaves (Starlette cancels this generator, whose ``finally`` raises the flag)."""
    joiner = "" if language in CHARACTER_LANGUAGES else " "
    count = 0
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(run.events.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield ": decoding\n\n"
                continue
            if kind == "segment":
                segment_id = f"seg_{count}"
                yield _sse({"type": "transcript.text.delta", "delta": (joiner if count else "") + value.text,
                            "segment_id": segment_id})
                yield _sse({"type": "transcript.text.segment", "id": segment_id, "start": round(value.start, 3),
                            "end": round(value.end, 3), "text": value.text})
                count += 1
            elif kind == "done":
                done = {"type": "transcript.text.done", "text": value[0].text}
                yield _sse({**done, "notices": list(value[2])} if value[2] else done)
                return
            elif kind == "error":
                yield _sse(as_api_error(value).body())
                return
    finally:
        run.cancel.set()  # a no-op once the work is done


def _error_response(err: BaseException):
    from starlette.responses import JSONResponse

    answer = as_api_error(err)
    headers = {"Retry-After": "10"} if answer.status == 429 else None
    if answer.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(answer.body(), status_code=answer.status, headers=headers)


def _service(request) -> Service:
    service = _services.get(request.app.get_blocks()) if hasattr(request.app, "get_blocks") else None
    if service is None:
        raise ApiError(503, "This server's page was not built by whisper_zh.serve.app.build_app; "
                            "the API has no engine.", kind="server_error")
    return service


async def _save_upload(upload, path: Path) -> None:
    with path.open("wb") as out:
        while chunk := await upload.read(2**20):
            out.write(chunk)


async def _transcribe(request, task: str):
    from starlette.responses import StreamingResponse

    run = None
    try:
        service = _service(request)
        _authorize(request, service.settings.api_key)
        fields = await _read_form(request, service.settings)
        call = parse_call(fields, task, service.settings)
        workdir = Path(tempfile.mkdtemp(prefix="whisper-zh-api-"))
        upload = workdir / f"upload{call.suffix}"
        try:
            await _save_upload(fields["file"][-1], upload)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        run = _Run(service, call, upload, workdir).start()
        kind, value = await run.next(request)  # the slot, then the decoding: errors still get their status
        if kind == "error":
            raise value
        if call.stream:
            return StreamingResponse(_events(run, call.options.language if task == "transcribe" else "en"),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while kind != "done":
            kind, value = await run.next(request)
            if kind == "error":
                raise value
        return _answer(call, *value)
    except BaseException as err:
        if run is not None:
            run.cancel.set()
        if isinstance(err, asyncio.CancelledError):
            raise
        return _error_response(err)


async def transcriptions(request):
    """``POST /v1/audio/transcriptions``."""
    return await _transcribe(request, "transcribe")


async def translations(request):
    """``POST /v1/audio/translations``: Whisper's English of the speech."""
    return await _transcribe(request, "translate")


async def models(request):
    """``GET /v1/models``: the one model this server serves."""
    from starlette.responses import JSONResponse

    try:
        service = _service(request)
        _authorize(request, service.settings.api_key)
    except ApiError as err:
        return _error_response(err)
    return JSONResponse({"object": "list", "data": [
        {"id": service.settings.model_id, "object": "model", "created": service.started, "owned_by": "whisper-zh"}]})


def routes() -> list:
    """The API's routes, for ``demo.launch(app_kwargs={"routes": routes()})``: FastAPI puts
    them before Gradio's own."""
    from starlette.routing import Route

    return [Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"])]
