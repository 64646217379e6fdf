"""What uploads may hold (whisper_zh/serve/uploads.py), on the app's real server: a
request's files together, and the server's total of kept and arriving uploads, refused
while the bytes arrive and with nothing of the refused request left on disk."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

MB = 2**20


class _NoModel:
    device = "cpu"

    def iter_segments(self, audio, options, progress=None):
        raise AssertionError("no upload test transcribes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kept(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The app with a 1 MB upload limit and 2.5 MB of upload space, its uploads kept in a
    folder of its own."""
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    settings = ServeSettings(model_id="stand-in", max_upload_mb=1, max_cache_mb=2.5, max_duration_s=60)
    demo = build_app(settings=settings, transcriber=_NoModel())
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    try:
        yield f"http://127.0.0.1:{port}/", folder
    finally:
        demo.close()


def _upload(url: str, *sizes: int, **kwargs):
    files = [("files", (f"part{i}.wav", os.urandom(size), "audio/wav")) for i, size in enumerate(sizes)]
    return httpx.post(f"{url}gradio_api/upload", files=files, timeout=60, **kwargs)


def _chunked(url: str, body: bytes, boundary: str, pause: threading.Event = None, after: int = 0):
    """The body sent without a Content-Length, in 64 KB pieces (waiting on ``pause``
    after ``after`` bytes)."""

    def pieces():
        for start in range(0, len(body), 64 * 1024):
            if pause is not None and start >= after:
                pause.wait(30)
            yield body[start:start + 64 * 1024]

    return httpx.post(f"{url}gradio_api/upload", content=pieces(), timeout=60,
                      headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def _form(*sizes: int, boundary: str = "whisperzhboundary") -> bytes:
    parts = []
    for i, size in enumerate(sizes):
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"p{i}.wav\"\r\n"
                     f"Content-Type: audio/wav\r\n\r\n".encode() + os.urandom(size) + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_a_request_is_bounded_as_a_whole_with_or_without_its_length(server):
    url, folder = server
    one = _upload(url, int(0.6 * MB))
    assert one.status_code == 200, one.text
    kept = _kept(folder)
    # three files each under the 1 MB per-file cap: the request is over the limit
    said = _upload(url, int(0.6 * MB), int(0.6 * MB), int(0.6 * MB))
    assert said.status_code == 413 and "1 MB upload limit" in said.text
    unsaid = _chunked(url, _form(int(0.6 * MB), int(0.6 * MB), int(0.6 * MB)), "whisperzhboundary")
    assert unsaid.status_code == 413 and "1 MB upload limit" in unsaid.text
    assert _kept(folder) == kept, "a refused request left files behind"


def test_the_servers_upload_space_is_bounded_and_frees_up(server):
    url, folder = server
    for _ in range(2):
        assert _upload(url, int(0.9 * MB)).status_code == 200
    full = _upload(url, int(0.9 * MB))
    assert full.status_code == 503 and "upload space is full" in full.text
    assert full.headers.get("retry-after")
    # the page's own small calls are not uploads: they go on (here to an answer of Gradio's own)
    assert httpx.post(f"{url}gradio_api/queue/join", json={"fn_index": 999}, timeout=60).status_code != 503
    assert _kept(folder) <= 2.5 * MB
    for path in folder.rglob("*"):  # what Gradio's delete_cache sweep does
        if path.is_file():
            path.unlink()
    time.sleep(1.1)  # the middleware looks at the folder at most once a second
    assert _upload(url, int(0.9 * MB)).status_code == 200


def test_uploads_still_arriving_count(server):
    """Two visitors uploading at once cannot pass the total between two looks at the disk:
    the bytes of a request still arriving are held (and counted again as the parser
    writes them: on the safe side)."""
    url, folder = server
    pause = threading.Event()
    first: dict = {}
    sender = threading.Thread(target=lambda: first.setdefault("r", _chunked(
        url, _form(int(0.95 * MB)), "whisperzhboundary", pause, after=int(0.9 * MB))))
    sender.start()
    try:
        time.sleep(2.0)  # 0.9 MB of the first upload has arrived and it waits
        assert _upload(url, int(0.6 * MB)).status_code == 200
        # on disk 0.9 + 0.6 MB: the folder alone would take another 0.6 MB of the 2.5
        second = _upload(url, int(0.6 * MB))
        assert second.status_code == 503, second.text
    finally:
        pause.set()
        sender.join(60)
    assert first["r"].status_code == 200, first["r"].text
    time.sleep(1.1)
    assert _upload(url, int(0.6 * MB)).status_code == 200  # 2.1 of 2.5 MB, none arriving


def test_the_api_answers_a_full_server_in_its_own_words(server):
    url, folder = server
    for _ in range(2):
        assert _upload(url, int(0.9 * MB)).status_code == 200
    response = httpx.post(f"{url}v1/audio/transcriptions", timeout=60,
                          files={"file": ("a.wav", os.urandom(int(0.9 * MB)), "audio/wav")},
                          data={"model": "whisper-1"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["message"].startswith("The server's upload space is full") and error["code"] == "server_busy"


def test_the_upload_space_must_hold_two_uploads():
    """An upload counts twice while it arrives: a total below two would refuse one alone."""
    from whisper_zh.errors import ConfigError
    from whisper_zh.serve.settings import ServeSettings

    assert ServeSettings(max_upload_mb=100).max_cache_bytes == 800 * MB  # the default: eight uploads
    assert ServeSettings(max_upload_mb=100, max_cache_mb=250).max_cache_bytes == 250 * MB
    with pytest.raises(ConfigError, match="MAX_CACHE_MB=150 must be at least twice MAX_UPLOAD_MB"):
        ServeSettings(max_upload_mb=100, max_cache_mb=150)
    with pytest.raises(ConfigError, match="MAX_CACHE_MB"):
        ServeSettings.from_env({"MAX_UPLOAD_MB": "100", "MAX_CACHE_MB": "150"})


def test_a_body_that_is_not_an_upload_is_small(server):
    """Gradio parses JSON in memory at ~11 times its size: a body that is not a multipart
    upload is refused past MAX_FORMLESS_BYTES, said or not said, on the page's routes and
    the API's; the page's own small calls go on."""
    from whisper_zh.serve.uploads import MAX_FORMLESS_BYTES

    url, _ = server
    numbers = b'{"data": [[' + b",".join([b"1"] * (MAX_FORMLESS_BYTES // 2 + 10)) + b']], "fn_index": 0}'
    said = httpx.post(f"{url}gradio_api/queue/join", content=numbers, timeout=60,
                      headers={"content-type": "application/json"})
    assert said.status_code == 413 and "not a file upload" in said.text

    def pieces():
        for start in range(0, len(numbers), 64 * 1024):
            yield numbers[start:start + 64 * 1024]

    unsaid = httpx.post(f"{url}gradio_api/queue/join", content=pieces(), timeout=60,
                        headers={"content-type": "application/json"})
    assert unsaid.status_code == 413 and "not a file upload" in unsaid.text
    form = httpx.post(f"{url}v1/audio/transcriptions", content=b"prompt=" + b"x" * (MAX_FORMLESS_BYTES + 10),
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=60)
    assert form.status_code == 413 and form.json()["error"]["code"] == "request_too_large"
    small = httpx.post(f"{url}gradio_api/queue/join", json={"fn_index": 999}, timeout=60)
    assert small.status_code not in (413, 503)
    # the MCP server's tool calls carry files as base64 in their JSON: an upload's limit
    mcp = httpx.post(f"{url}gradio_api/mcp/messages/", content=numbers, timeout=60,
                     headers={"content-type": "application/json"})
    assert mcp.status_code < 500 and mcp.status_code != 413, (mcp.status_code, mcp.text[:200])
