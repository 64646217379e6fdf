"""The OpenAI audio API on the page's own server (whisper_zh.serve.api), launched as
``python app.py`` does (build_app + launch_options) on a free localhost port and called by
the official ``openai`` client and by raw HTTP: every response format for a real clip, a
translation, streaming, the error statuses, and the slots and line it shares with the page.

Where a test needs a job to stay busy (the queue, a client leaving, streaming), the engine
is held at a gate in its generator of segments, so that what is checked does not depend on
how fast this machine decodes."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from _ct2_base import base_ct2  # noqa: E402
from _media_helpers import joined_clips, write_wav  # noqa: E402

pytestmark = pytest.mark.slow

API_KEY = "test-key-for-the-api"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(whisper_base):
    from whisper_zh.serve.engine import Transcriber

    return Transcriber(str(base_ct2(whisper_base)), backend="ct2", device="cpu")


def _launch(engine, **overrides):
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    settings = ServeSettings(**{**dict(model_id=engine.model_id, backend="ct2", max_duration_s=60, max_upload_mb=1,
                                       concurrency_limit=1, max_queue=1, batch_size=1), **overrides})
    demo = build_app(settings=settings, transcriber=engine)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    return demo, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(engine):
    demo, url = _launch(engine)
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url(server):
    return server[1]


@pytest.fixture(scope="module")
def slots(server):
    from whisper_zh.serve import api

    return api._services[server[0]].slots


@pytest.fixture(scope="module")
def client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="anything: this server has no API_KEY", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def media(zh_cv_mini, tmp_path_factory):
    import soundfile as sf

    folder = tmp_path_factory.mktemp("api-media")
    audio, rows, _ = joined_clips(zh_cv_mini, 20)
    speech = folder / "speech.flac"
    sf.write(str(speech), audio, 16000, format="FLAC")  # ~20 s of several sentences, well under 1 MB
    long = folder / "long.flac"
    sf.write(str(long), np.zeros(16000 * 70, np.float32), 16000, format="FLAC")  # 70 s, a few kB
    (folder / "notes.mp3").write_bytes(b"these are notes, not audio")
    return {"speech": speech, "sentences": "".join(r["sentence"] for r in rows), "long": long,
            "big": write_wav(folder / "big.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 16000 * 40)),  # 1.3 MB
            "text": folder / "notes.mp3"}


class Gate:
    """Holds the engine before its first segment until opened; while held it polls the
    progress callback, which is where the API's cancellation is checked."""

    def __init__(self, engine, monkeypatch):
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.outcomes: list = []
        real = engine.iter_segments

        def gated(audio, options=None, *, progress=None, **kwargs):
            self.entered.set()
            try:
                while not self.opened.wait(0.05):
                    if progress is not None:
                        progress(0.0, "held by the test")
                yield from real(audio, options, progress=progress, **kwargs)
                self.outcomes.append("finished")
            except BaseException as err:
                self.outcomes.append(type(err).__name__)
                raise

        monkeypatch.setattr(engine, "iter_segments", gated)


def _until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _han(text: str) -> int:
    return sum("\u4e00" <= c <= "\u9fff" for c in text)


# -- what a client gets ------------------------------------------------------------------

def test_models(client, engine):
    ids = [m.id for m in client.models.list()]
    assert ids == [engine.model_id]


def test_every_response_format(client, media):
    from whisper_zh.text import utterance_cer

    with open(media["speech"], "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, language="zh")
    assert utterance_cer(media["sentences"], plain.text) < 0.5, plain.text
    assert plain.usage.type == "duration" and plain.usage.seconds >= 19

    with open(media["speech"], "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and text.strip() == plain.text

    with open(media["speech"], "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    cues = srt.strip().split("\n\n")
    assert len(cues) >= 2 and all(re.fullmatch(r"\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+", c, re.S)
                                  for c in cues), srt
    with open(media["speech"], "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT") and " --> " in vtt
    assert _han(srt) == _han(vtt) == _han(plain.text)  # the same words, laid out as cues

    with open(media["speech"], "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"], prompt="以下是普通话的句子。")
    assert verbose.language == "chinese" and 19 < verbose.duration < 25
    segments, words = verbose.segments, verbose.words
    assert len(segments) >= 2 and "".join(s.text for s in segments) == verbose.text
    assert all(0 <= s.start < s.end <= verbose.duration + 0.5 for s in segments)
    assert [s.id for s in segments] == list(range(len(segments)))
    assert len(words) >= _han(verbose.text) * 0.5
    assert all(w.start <= w.end for w in words)
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert "".join(w.word for w in words).replace(" ", "") in verbose.text.replace(" ", "") or \
        _han("".join(w.word for w in words)) >= _han(verbose.text) * 0.9

    with open(media["speech"], "rb") as f:
        only_words = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json",
                                                        timestamp_granularities=["word"])
    assert only_words.words and getattr(only_words, "segments", None) is None


def test_what_was_not_transcribed_reaches_the_client(url, media, tmp_path):
    """A FLAC with MP3 appended (``cat a.flac b.mp3``) decodes as its FLAC part; the answer
    says that part of the file was skipped: in the JSON and in the X-Notices header."""
    import json

    import httpx

    import _media_bombs as bombs

    joined = tmp_path / "joined.flac"
    joined.write_bytes(media["speech"].read_bytes() + bombs.mp3_tone(tmp_path / "tail.mp3", 30).read_bytes())
    for fmt in ("json", "srt"):
        with open(joined, "rb") as f:
            response = httpx.post(f"{url}/v1/audio/transcriptions", timeout=300,
                                  files={"file": ("joined.flac", f, "audio/flac")},
                                  data={"model": "whisper-1", "response_format": fmt})
        assert response.status_code == 200, response.text
        notices = json.loads(response.headers["x-notices"])
        assert any("could not be decoded" in n for n in notices), notices
        if fmt == "json":
            assert response.json()["notices"] == notices and response.json()["text"]
    with open(media["speech"], "rb") as f:  # a whole file: no notices
        whole = httpx.post(f"{url}/v1/audio/transcriptions", timeout=300, files={"file": ("s.flac", f, "audio/flac")},
                           data={"model": "whisper-1"})
    assert "x-notices" not in whole.headers and "notices" not in whole.json()


def test_traditional_script_and_hotwords(client, media):
    from whisper_zh.text import to_traditional

    with open(media["speech"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f,
                                                    extra_body={"script": "traditional", "hotwords": "普通话"})
    assert _han(result.text) > 10 and result.text == to_traditional(result.text)


def test_translation(client, media, engine, monkeypatch):
    """The route asks the engine for Whisper's translate task and answers in OpenAI's
    shape. Whether whisper-base's English is good is the model's business (it often
    answers in Chinese, and its fallback samples): not asserted here."""
    tasks = []
    real = engine.iter_segments

    def recording(audio, options=None, **kwargs):
        tasks.append((options or engine.options).task)
        return real(audio, options, **kwargs)

    monkeypatch.setattr(engine, "iter_segments", recording)
    with open(media["speech"], "rb") as f:
        english = client.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
    assert tasks == ["translate"]
    assert english.language == "english" and english.segments and english.text.strip()
    assert all(0 <= s.start <= s.end <= english.duration + 0.5 for s in english.segments)


def test_streaming_yields_segments_before_the_last_is_decoded(client, media, engine, monkeypatch):
    """The engine is held after its first segment until the client has received it: a
    server that buffered the answer would never deliver it, and the gate would time out."""
    received_first = threading.Event()
    held = []
    real = engine.iter_segments

    def second_waits_for_the_client(audio, options=None, **kwargs):
        for i, segment in enumerate(real(audio, options, **kwargs)):
            if i == 1:
                held.append(received_first.wait(60))
            yield segment

    monkeypatch.setattr(engine, "iter_segments", second_waits_for_the_client)
    with open(media["speech"], "rb") as f:
        events = list(_first_then_rest(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True),
                                       received_first))
    assert held == [True], "the first segment did not reach the client while the second was held"
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    timed = [e for e in events if e.type == "transcript.text.segment"]
    assert len(deltas) == len(timed) >= 2 and events[-1].type == "transcript.text.done"
    assert "".join(d.delta for d in deltas) == events[-1].text
    assert all(a.start <= b.start for a, b in zip(timed, timed[1:])) and all(t.start < t.end for t in timed)


def _first_then_rest(stream, first: threading.Event):
    for event in stream:
        yield event
        first.set()


# -- errors --------------------------------------------------------------------------------

def _post(url: str, path: Path, **fields):
    import httpx

    with open(path, "rb") as f:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f)},
                          data={"model": "whisper-1", **fields}, timeout=300)


def test_error_statuses(client, url, media):
    import openai

    with pytest.raises(openai.BadRequestError) as info, open(media["text"], "rb") as f:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert info.value.status_code == 400 and "decode" in info.value.body["message"]
    for name in ("big", "long"):
        with pytest.raises(openai.APIStatusError) as info, open(media[name], "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f)
        assert info.value.status_code == 413, name
        assert "limit" in info.value.body["message"] and info.value.body["type"] == "invalid_request_error"
    for fields in ({"response_format": "docx"}, {"language": "xx"}, {"temperature": "2"}, {"script": "cyrillic"},
                   {"timestamp_granularities[]": "sentence"}):
        answer = _post(url, media["speech"], **fields)
        assert answer.status_code == 400, fields
        assert answer.json()["error"]["param"] == next(iter(fields)), answer.json()
    import httpx

    answer = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=60)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"


def test_api_key_and_mcp(engine, media):
    """With API_KEY set a wrong or missing bearer token is 401 and the right one works;
    MCP_SERVER lists the page's transcriptions as MCP tools on the same port."""
    import httpx
    import openai

    demo, url = _launch(engine, api_key=API_KEY, mcp_server=True)
    try:
        for key in ("wrong", ""):
            wrong = openai.OpenAI(base_url=f"{url}/v1", api_key=key or "x", max_retries=0,
                                  default_headers={} if key else {"Authorization": ""})
            with pytest.raises(openai.AuthenticationError) as info:
                wrong.models.list()
            assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        with open(media["speech"], "rb") as f:
            answer = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("speech.flac", f)},
                                data={"model": "whisper-1"}, timeout=60)
        assert answer.status_code == 401
        right = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        with open(media["speech"], "rb") as f:
            assert _han(right.audio.transcriptions.create(model="whisper-1", file=f).text) > 10
        schema = httpx.get(f"{url}/gradio_api/mcp/schema", timeout=30).json()
        tools = {tool["name"]: tool for tool in schema}
        assert {"transcribe_file", "transcribe_url"} <= set(tools), list(tools)
        assert "Chinese speech" in tools["transcribe_file"]["description"]
    finally:
        demo.close()


# -- one line, one limit, with the page ------------------------------------------------------

def _api_call(url: str, path: Path, results: list) -> threading.Thread:
    def call():
        results.append(_post(url, path))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_queue_full_is_429(url, media, engine, slots, monkeypatch):
    gate = Gate(engine, monkeypatch)
    first, second, third = [], [], []
    try:
        a = _api_call(url, media["speech"], first)
        assert gate.entered.wait(60) and slots.busy == 1
        b = _api_call(url, media["speech"], second)
        assert _until(lambda: slots.waiting == 1)
        _api_call(url, media["speech"], third).join(60)
        assert third[0].status_code == 429 and third[0].json()["error"]["code"] == "queue_full"
        assert third[0].headers["retry-after"]
    finally:
        gate.opened.set()
    a.join(120), b.join(120)
    assert first[0].status_code == second[0].status_code == 200


def test_a_page_job_makes_an_api_call_wait_and_the_reverse(url, media, engine, slots, monkeypatch):
    from gradio_client import Client, handle_file

    page = Client(f"{url}/", verbose=False)
    page_args = [handle_file(str(media["speech"])), "simplified", "transcribe", ""]

    # the page first: the API call waits for its slot
    gate = Gate(engine, monkeypatch)
    job = page.submit(*page_args, api_name="/transcribe_file")
    assert gate.entered.wait(60) and slots.busy == 1
    results: list = []
    thread = _api_call(url, media["speech"], results)
    assert _until(lambda: slots.waiting == 1), "the API call did not wait for the page's job"
    assert not results
    gate.opened.set()
    status, text, *_ = job.result(timeout=300)
    thread.join(300)
    assert results[0].status_code == 200 and _han(results[0].json()["text"]) > 10 and _han(text) > 10
    monkeypatch.undo()

    # the API first: the page's job waits for its slot
    gate = Gate(engine, monkeypatch)
    results = []
    thread = _api_call(url, media["speech"], results)
    assert gate.entered.wait(60) and slots.busy == 1
    job = page.submit(*page_args, api_name="/transcribe_file")
    assert _until(lambda: slots.waiting == 1), "the page's job did not wait for the API call"
    assert not job.done()
    gate.opened.set()
    thread.join(300)
    status, text, *_ = job.result(timeout=300)
    assert results[0].status_code == 200 and _han(text) > 10


def test_a_client_that_leaves_stops_its_work(url, media, engine, slots, monkeypatch):
    """A plain call and a streaming one, each dropped (the socket closed) while the engine
    is held: the work stops (the engine's generator ends in Cancelled, not by
    finishing) and the slot is free again."""
    import httpx

    port = int(url.rsplit(":", 1)[1])
    for stream in (False, True):
        gate = Gate(engine, monkeypatch)
        try:
            request = httpx.Request("POST", f"{url}/v1/audio/transcriptions",
                                    files={"file": ("speech.flac", media["speech"].read_bytes())},
                                    data={"model": "whisper-1", "stream": str(stream).lower()})
            head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\n{head}\r\n".encode() + request.read())
                assert gate.entered.wait(60)
                if stream:
                    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            # the client went away while the engine is held
            assert _until(lambda: gate.outcomes == ["Cancelled"] and slots.busy == 0, 30), gate.outcomes
        finally:
            gate.opened.set()
            monkeypatch.undo()


# -- the parts on their own ------------------------------------------------------------------

def test_slots_serve_in_order_and_give_up_when_cancelled():
    from whisper_zh.errors import QueueFullError, Cancelled
    from whisper_zh.serve.jobs import Slots

    slots = Slots(limit=1, max_waiting=2, others_waiting=lambda: 0)
    order, release = [], threading.Event()

    def worker(name):
        with slots.hold():
            order.append(name)
            release.wait(10)

    first = threading.Thread(target=worker, args=("a",))
    first.start()
    assert _until(lambda: slots.busy == 1, 10)
    later = [threading.Thread(target=worker, args=(n,)) for n in ("b", "c")]
    for t in later:
        t.start()
        assert _until(lambda: slots.waiting == later.index(t) + 1, 10)
    with pytest.raises(QueueFullError):
        with slots.hold():
            pass
    release.set()
    for t in (first, *later):
        t.join(10)
    assert order == ["a", "b", "c"] and slots.busy == slots.waiting == 0

    gone = threading.Event()
    gone.set()
    with slots.hold():
        with pytest.raises(Cancelled):
            with slots.hold(cancelled=gone.is_set):
                pass
    assert slots.busy == slots.waiting == 0
    # the page's own line counts as waiting too
    slots = Slots(limit=1, max_waiting=1, others_waiting=lambda: 1)
    with slots.hold():  # a free slot is taken whatever the line
        with pytest.raises(QueueFullError):
            with slots.hold():
                pass


def test_settings_read_the_api_key_without_showing_it():
    from whisper_zh.serve.settings import ServeSettings

    settings = ServeSettings.from_env({"API_KEY": " s3cret ", "MCP_SERVER": "true"})
    assert settings.api_key == "s3cret" and settings.mcp_server
    assert "s3cret" not in repr(settings)
    assert ServeSettings.from_env({}).api_key is None and not ServeSettings.from_env({}).mcp_server


@pytest.mark.parametrize("variable, value", [("MAX_DURATION_S", "inf"), ("MAX_DURATION_S", "nan"),
                                             ("MAX_UPLOAD_MB", "0"), ("DOWNLOAD_DEADLINE_S", "-5"),
                                             ("CONCURRENCY_LIMIT", "0")])
def test_a_limit_that_is_not_a_positive_finite_number_is_refused(variable, value):
    """"inf" crashed the app's start with an OverflowError and "nan" turned the CLI's
    duration limit off without a word: both are a one-line ConfigError naming the variable."""
    from whisper_zh.errors import ConfigError
    from whisper_zh.serve.settings import ServeSettings

    with pytest.raises(ConfigError, match=f"{variable}='{value}' must be a positive finite number"):
        ServeSettings.from_env({variable: value})
    assert ServeSettings.from_env({variable: "2"})
