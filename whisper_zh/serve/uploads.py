"""What uploads may hold, for a whole request and for the whole server, enforced *while*
the bytes arrive: an ASGI middleware in front of every route (Gradio's ``/upload``, its
component server, the OpenAI API's forms).

Gradio's own ``max_file_size`` bounds each file; a form may carry a thousand of them,
and what is uploaded stays in Gradio's cache until ``delete_cache`` sweeps it (an hour
here). So:

* **A request** may send at most :attr:`ServeSettings.max_request_bytes` (one input at
  ``MAX_UPLOAD_MB`` plus the form around it): 413 when its ``Content-Length`` says more,
  or as soon as the bytes received pass it, whether or not it said its length.
* **The server** holds at most ``MAX_CACHE_MB`` (default 8 x ``MAX_UPLOAD_MB``) of
  uploads: the files in Gradio's upload folder (its cache, outputs included) plus the
  multipart bodies still being received or worked on (an API call's upload lives in its
  work directory until the call ends). Only uploads are refused for it: a page's own
  small calls (queue joins, cancels) still go through when the space is full. An upload
  that would pass it is answered 503 with ``Retry-After``, before or while its bytes arrive, so ten visitors
  uploading at once cannot fill the disk between two looks at it. (Bytes a parser has
  already written count twice until their request ends: on the safe side.)

* **A body that is not an upload** (JSON: a queue join, a ``/call``; a urlencoded
  form) may hold at most :data:`MAX_FORMLESS_BYTES`: Gradio parses it in memory, at ~11
  times its size (a 9 MB JSON list of numbers took the server from 441 to 538 MB), and
  the page and gradio_client upload files as multipart forms first, the OpenAI API takes
  them only so. The MCP server (``/gradio_api/mcp/``) takes a file inside its JSON, as a
  base64 ``data:`` URL: it may send as much as an upload.

The API's own routes (``/v1/``) answer their per-request 413 themselves, as OpenAI's
error JSON (:mod:`whisper_zh.serve.api`); they count towards the server's total here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from starlette.formparsers import MultiPartException

from whisper_zh.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 60  # Gradio sweeps its cache every half hour; most requests end sooner
_DISK_LOOK_S = 1.0  # the upload folder is walked at most this often (its size changes slowly)
_API_PREFIX = "/v1/"
_SMALL_BODY = 64 * 2**10  # an upload this small is not worth a new look at the disk
MAX_FORMLESS_BYTES = 2**20  # a request body that is not a multipart upload
_MCP_PATH = "/gradio_api/mcp"  # whose tool calls carry files as base64 inside JSON


class Refused(MultiPartException):
    """Raised from ``receive`` in the middle of a body: as the multipart parsers' own
    error, so that Gradio's and Starlette's parsers delete the files they had begun, and
    the route answers with this message (its status is set on the way out)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def folder_bytes(folder: Optional[os.PathLike]) -> int:
    """The bytes of the files under ``folder`` (0 when it does not exist yet)."""
    total = 0
    if folder is None:
        return 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while we looked
                pass
    return total


class UploadBudget:
    """The ASGI middleware; ``upload_folder`` gives the folder uploads are kept in (by
    default Gradio's, read from the app serving the request)."""

    def __init__(self, app, settings: ServeSettings, upload_folder: Optional[Callable[[dict], Optional[str]]] = None):
        self.app, self.settings = app, settings
        self.upload_folder = upload_folder or _gradio_upload_folder
        self._lock = threading.Lock()
        self._in_flight = 0  # bytes of the bodies of requests not yet finished
        self._on_disk, self._looked = 0, -float("inf")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        own_errors = not scope.get("path", "").startswith(_API_PREFIX)
        headers = dict(scope.get("headers") or [])
        # the total is of uploads (multipart forms); a page's own calls (queue joins,
        # cancels: small JSON) go through even when the space is full
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        request_limit = self.settings.max_request_bytes
        # an MCP tool call carries its file inside the JSON: an upload's limit, in its words
        mcp = _MCP_PATH in scope.get("path", "")
        formless_limit, formless_too_large = ((request_limit, self._too_large) if mcp
                                              else (MAX_FORMLESS_BYTES, _formless_too_large))
        folder = self.upload_folder(scope)
        held = 0  # this request's bytes, counted in _in_flight
        formless = 0  # the bytes of a body that is not an upload
        started = False
        refusal: Optional[Refused] = None  # raised into the route, which answers with its message
        answer_ours = False  # the route cannot word this refusal: ours is sent in place of its answer
        answered = False

        def refuse(status: int, message: str, answer: bool = False) -> Refused:
            nonlocal refusal, answer_ours
            refusal, answer_ours = Refused(status, message), answer
            return refusal

        async def counted_receive():
            nonlocal held, formless
            message = await receive()
            count = len(message.get("body", b""))
            if count:
                if own_errors and held + count > request_limit:
                    raise refuse(413, self._too_large())
                if not upload:
                    formless += count
                    if formless > formless_limit:
                        # a JSON route says only "error parsing the body": ours is sent instead
                        raise refuse(413, formless_too_large(), answer=own_errors)
                    return message
                with self._lock:
                    if self._would_fill(folder, count):
                        raise refuse(503, self._full())
                    self._in_flight += count
                held += count
            return message

        async def watched_send(message):
            nonlocal started, answered
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
                if refusal is not None and answer_ours:
                    answered = True
                    return await _answer(send, refusal)
                if refusal is not None:  # the route's answer to our error: our status
                    answer = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                    if refusal.status == 503:
                        answer.append((b"retry-after", str(RETRY_AFTER_S).encode()))
                    message = {**message, "status": refusal.status, "headers": answer}
            await send(message)

        try:
            declared = headers.get(b"content-length", b"")
            # checked up front too, so that nothing is read in vain; the API's routes are
            # left to refuse at the first bytes, in their own error format
            if own_errors and declared.isdigit():
                if int(declared) > request_limit:
                    raise refuse(413, self._too_large())
                if not upload and int(declared) > formless_limit:
                    raise refuse(413, formless_too_large())
                if upload:
                    with self._lock:
                        full = self._would_fill(folder, int(declared))
                    if full:
                        raise refuse(503, self._full())
            await self.app(scope, counted_receive, watched_send)
        except Refused as refused:  # before the route, or a route that let it through
            if not started:
                await _answer(send, refused)
        finally:
            if refusal is not None:
                logger.info("request to %s refused (%d): %s", scope.get("path"), refusal.status, refusal.message)
            with self._lock:
                self._in_flight -= held
                if held > _SMALL_BODY:
                    self._looked = -float("inf")  # what this upload stored is on disk now

    def _would_fill(self, folder: Optional[str], count: int) -> bool:
        """Whether ``count`` more bytes would pass the server's total (under the lock)."""
        return self._in_flight + self._disk(folder) + count > self.settings.max_cache_bytes

    def _disk(self, folder: Optional[str]) -> int:
        now = time.monotonic()
        if now - self._looked > _DISK_LOOK_S:
            self._on_disk, self._looked = folder_bytes(folder), now
        return self._on_disk

    def _full(self) -> str:
        return (f"The server's upload space is full ({self.settings.max_cache_bytes / 2**20:g} MB, MAX_CACHE_MB); "
                f"try again in a few minutes.")

    def _too_large(self) -> str:
        return (f"The request is larger than the {self.settings.max_upload_mb:g} MB upload limit "
                f"(MAX_UPLOAD_MB), counting every file in it.")


def _formless_too_large() -> str:
    return (f"The request body is over {MAX_FORMLESS_BYTES // 2**20} MB and is not a file upload: "
            f"send files as multipart/form-data.")


def _gradio_upload_folder(scope: dict) -> Optional[str]:
    app = scope.get("app")
    folder = getattr(app, "uploaded_file_dir", None)
    return str(Path(folder)) if folder else None


async def _answer(send, refused: Refused) -> None:
    body = refused.message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if refused.status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def middleware(settings: ServeSettings) -> list:
    """For ``demo.launch(app_kwargs={"middleware": middleware(settings)})``."""
    from starlette.middleware import Middleware

    return [Middleware(UploadBudget, settings=settings)]
