"""The Gradio app, launched on a free localhost port and driven like a visitor would:
through gradio_client for every input route and the bad inputs, then in headless
Chromium for a screenshot (kept in tests/artifacts/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from whisper_zh.serve.subtitles import to_txt

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from _checks import GREEDY, Greedy, is_chinese  # noqa: E402
from _media_helpers import make_video, plain_clips, serve_directory, write_wav  # noqa: E402
from whisper_zh.errors import DownloadError  # noqa: E402
from whisper_zh.text import normalize, to_traditional, utterance_cer  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clips(zh_cv_mini, tmp_path_factory):
    rows = plain_clips(zh_cv_mini, 3)
    folder = tmp_path_factory.mktemp("media")
    first = zh_cv_mini / "clips" / rows[0]["path"]
    from whisper_zh.media import load_audio

    return {
        "rows": rows,
        "mp3": first,
        "wav": write_wav(folder / "recording.wav", load_audio(zh_cv_mini / "clips" / rows[1]["path"])),
        "mp4": make_video(zh_cv_mini / "clips" / rows[2]["path"], folder / "clip.mp4"),
        "silence": write_wav(folder / "silence.wav", np.zeros(16000 * 4, np.float32)),
        # 70 s but a few kB (FLAC packs silence), so that the duration limit is what trips
        "long": _flac(folder / "long.flac", np.zeros(16000 * 70, np.float32)),
        "big": write_wav(folder / "big.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 16000 * 40)),  # 1.3 MB
        "text": _write(folder / "notes.mp3", b"these are notes, not audio"),
        "corrupt": _write(folder / "corrupt.mp4", first.read_bytes()[:64] + os.urandom(4000)),
        "folder": folder,
    }


def _flac(path: Path, audio: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(str(path), audio, 16000, format="FLAC")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def engine(whisper_base):
    from whisper_zh.serve.engine import Transcriber

    return Transcriber(str(whisper_base), backend="transformers", device="cpu")


@pytest.fixture(scope="module")
def expected(engine):
    """What the app must show for a file: the engine's own transcription of it, at
    temperature 0 as the app under test decodes (see ``Greedy``); computed once a file."""
    texts = {}

    def text(path: Path, script: str = "simplified") -> str:
        if (path, script) not in texts:
            segments = engine.transcribe(path, temperatures=GREEDY, batch_size=4, script=script).segments
            texts[path, script] = to_txt(segments).rstrip("\n")  # as the box shows it: the TXT file's text
            assert is_chinese(texts[path, script]), texts[path, script]
        return texts[path, script]

    return text


@pytest.fixture(scope="module")
def app_url(whisper_base, engine):
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    settings = ServeSettings(model_id=str(whisper_base), backend="transformers", max_duration_s=60,
                             max_upload_mb=1, concurrency_limit=1, batch_size=4)
    # the app builds its own options for every request; the engine keeps them but for the
    # temperature, so that a route's text can be compared with the engine's, exactly
    demo = build_app(settings=settings, transcriber=Greedy(engine))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _args(route: str, source, script: str = "simplified", *cookies, output: str = "transcribe",
          hotwords: str = "", speakers: bool = False) -> list:
    """The page's inputs in order: source, characters, output, hotwords (and cookies for
    links), speakers."""
    from gradio_client import handle_file

    args = [source, script, output, hotwords, *cookies]
    if route == "transcribe_url" and not cookies:
        args.append(None)
    args.append(speakers)
    return [handle_file(str(a)) if isinstance(a, Path) else a for a in args]


def _call(client, route: str, *args, **choices):
    return client.predict(*_args(route, *args, **choices), api_name=f"/{route}")


def _error(client, route: str, *args) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        _call(client, route, *args)
    return str(info.value).lower()


def _check_result(result, expected_text: str):
    """The route's outputs for a clip whose transcription is ``expected_text``."""
    status, text, segments, files, _ = result
    assert text == expected_text
    assert re.search(r"\d+ segments?, transcribed in", status)
    rows = segments["data"]
    assert rows and all(len(row) == 3 for row in rows) and re.fullmatch(r"00:0\d\.\d{3}", rows[0][0])
    names = sorted(Path(f).suffix for f in files)
    assert names == [".json", ".srt", ".txt", ".vtt"]
    by_suffix = {Path(f).suffix: Path(f).read_text(encoding="utf-8") for f in files}
    assert "\n".join(s["text"] for s in json.loads(by_suffix[".json"])["segments"]) == text
    assert by_suffix[".srt"].startswith("1\n00:00:0") and " --> " in by_suffix[".srt"]
    assert by_suffix[".vtt"].startswith("WEBVTT")
    assert by_suffix[".txt"] == text + "\n"  # the box shows the TXT file


@pytest.mark.slow
def test_api_names(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/transcribe_microphone", "/transcribe_file", "/transcribe_url"} <= set(endpoints)


@pytest.mark.slow
def test_file_route_audio_and_video(client, clips, expected):
    _check_result(_call(client, "transcribe_file", clips["mp3"], "simplified"), expected(clips["mp3"]))
    video = _call(client, "transcribe_file", clips["mp4"], "simplified")
    _check_result(video, expected(clips["mp4"]))
    assert video[-1]  # the player shows the video (its subtitles: test_video_plays_with_its_subtitles)


@pytest.mark.slow
def test_microphone_route_traditional(client, clips, expected):
    status, text, *_ = _call(client, "transcribe_microphone", clips["wav"], "traditional")
    assert text == to_traditional(text)
    assert text == expected(clips["wav"], "traditional")


@pytest.mark.slow
def test_url_route(client, clips, expected, monkeypatch):
    from whisper_zh.serve import netguard

    # the app refuses loopback links (its settings allow no private address): here the
    # test server on 127.0.0.1 stands in for a public host
    monkeypatch.setattr(netguard, "_is_internal", lambda address: False)
    with serve_directory(clips["folder"]) as (base, requested):
        shutil.copy(clips["mp3"], clips["folder"] / "clip.mp3")
        audio = _call(client, "transcribe_url", f"{base}/clip.mp3", "simplified", None)
        _check_result(audio, expected(clips["mp3"]))
        assert audio[-1]["value"] is None  # nothing to play
        video = _call(client, "transcribe_url", f"{base}/clip.mp4", "simplified", None)
        _check_result(video, expected(clips["mp4"]))
        # the page served the linked video (after the request's folder was gone) and its subtitles
        player = video[-1]
        assert Path(player["value"]).read_bytes() == clips["mp4"].read_bytes()
        assert normalize(_vtt_text(Path(player["subtitles"]))) == normalize(video[1])
        assert "404 not found" in _error(client, "transcribe_url", f"{base}/gone.mp3", "simplified", None)
        assert "limit is 1:00" in _error(client, "transcribe_url", f"{base}/long.flac", "simplified", None)


def _vtt_text(path: Path) -> str:
    """The cues' text of a WebVTT file, run together."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")[1:]  # after the WEBVTT header
    return "".join(line for block in blocks for line in block.splitlines() if "-->" not in line)


@pytest.mark.slow
def test_refused_links(client):
    assert "only http:// and https://" in _error(client, "transcribe_url", "file:///etc/passwd", "simplified", None)
    message = _error(client, "transcribe_url", "http://127.0.0.1:9/a.mp3", "simplified", None)
    assert "private, loopback or link-local" in message
    assert "not a link" in _error(client, "transcribe_url", "just some words", "simplified", None)
    assert "paste a link" in _error(client, "transcribe_url", "", "simplified", None)


@pytest.mark.slow
def test_bad_inputs_then_the_app_keeps_serving(client, clips, expected):
    assert "not audio or video" in _error(client, "transcribe_file", clips["text"], "simplified")
    assert "not audio or video" in _error(client, "transcribe_file", clips["corrupt"], "simplified")
    assert "limit is 1:00" in _error(client, "transcribe_file", clips["long"], "simplified")
    assert "upload a file first" in _error(client, "transcribe_file", None, "simplified")
    assert "record something first" in _error(client, "transcribe_microphone", None, "simplified")
    status, text, segments, files, _ = _call(client, "transcribe_microphone", clips["silence"], "simplified")
    assert "No speech found" in status and text == "" and not files
    # after all of that, a good request still works
    _check_result(_call(client, "transcribe_file", clips["mp3"], "simplified"), expected(clips["mp3"]))


@pytest.mark.slow
def test_upload_size_cap(client, app_url, clips):
    """The 1 MB cap is announced to clients and enforced by the server itself."""
    import httpx

    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        _call(client, "transcribe_file", clips["big"], "simplified")
    with open(clips["big"], "rb") as f:
        response = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("big.wav", f, "audio/wav")})
    assert response.status_code == 413
    with open(clips["wav"], "rb") as f:  # under the cap: accepted
        assert httpx.post(f"{app_url}gradio_api/upload", files={"files": ("r.wav", f, "audio/wav")}).status_code == 200


@pytest.mark.slow
def test_a_bomb_then_out_of_memory_then_a_good_request(client, clips, expected, tmp_path, monkeypatch):
    """A 30 KB upload that decodes to an hour is refused while decoding; a MemoryError
    anywhere in a request is a message, not a crash; and the app goes on serving."""
    from _media_bombs import mkv_flac_silence

    import whisper_zh.serve.jobs

    bomb = mkv_flac_silence(tmp_path / "bomb.mkv", 3600)
    assert "longer than the limit of 1:00" in _error(client, "transcribe_file", bomb, "simplified")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(whisper_zh.serve.jobs, "decode_media", out_of_memory)
    assert "ran out of memory" in _error(client, "transcribe_file", clips["mp3"], "simplified")
    monkeypatch.undo()
    _check_result(_call(client, "transcribe_file", clips["mp3"], "simplified"), expected(clips["mp3"]))


def test_visitor_cookies_are_deleted_with_the_request(whisper_base, clips, tmp_path, monkeypatch):
    """The page says an uploaded cookies.txt serves one request: it is gone when the
    request ends, whatever happened; the operator's YTDLP_COOKIES is left as it was."""
    from whisper_zh.serve.app import Handlers, Request, UserError
    from whisper_zh.serve.settings import ServeSettings

    line = "\t".join([".127.0.0.1", "TRUE", "/", "FALSE", "2000000000", "SID", "v"])
    operator = _write(tmp_path / "operator.txt", f"# Netscape HTTP Cookie File\n{line}\n".encode())
    handlers = Handlers(ServeSettings(model_id=str(whisper_base), max_duration_s=60, cookies=str(operator),
                                      allow_private_urls=True),
                        transcriber=_NoModel())
    with serve_directory(clips["folder"]) as (base, _):
        visitor = _write(tmp_path / "visitor.txt", operator.read_bytes())
        outputs = list(handlers.run(Request("url", f"{base}/silence.wav", cookies=str(visitor))))
        assert "No speech found" in outputs[-1].status and not visitor.exists()
        # the page's file box still names it: a second click is told to upload it again
        with pytest.raises(UserError, match="upload it again") as again:
            list(handlers.run(Request("url", f"{base}/silence.wav", cookies=str(visitor))))
        assert str(tmp_path) not in str(again.value)
        visitor = _write(tmp_path / "visitor.txt", b"not a cookies file")
        with pytest.raises(DownloadError, match="Netscape"):
            list(handlers.run(Request("url", f"{base}/silence.wav", cookies=str(visitor))))
        assert not visitor.exists()
        outputs = list(handlers.run(Request("url", f"{base}/silence.wav")))  # the operator's file
        assert "No speech found" in outputs[-1].status
    assert operator.read_bytes().endswith(b"\tSID\tv\n")
    visitor = _write(tmp_path / "visitor.txt", operator.read_bytes())
    with pytest.raises(UserError):
        list(handlers.run(Request("url", "just words", cookies=str(visitor))))
    assert not visitor.exists()


def test_request_files_are_cleaned_up(whisper_base, clips, tmp_path, monkeypatch):
    """Downloads and subtitle files live in one temporary directory per request, gone
    once the request is over -- whether it succeeded or failed."""
    import tempfile

    from whisper_zh.serve.app import Handlers, Request, UserError
    from whisper_zh.serve.settings import ServeSettings

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handlers = Handlers(ServeSettings(model_id=str(whisper_base), max_duration_s=60), transcriber=_NoModel())
    outputs = list(handlers.run(Request("file", str(clips["silence"]))))
    assert "No speech found" in outputs[-1].status
    with pytest.raises(UserError):
        list(handlers.run(Request("file", str(clips["text"]))))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_video_plays_with_its_subtitles_and_speakers(whisper_base, clips):
    """A video upload comes back for the page's player with the cues of the chosen output,
    the same as the VTT file's; with speakers on, every cue and the text carry a label."""
    from whisper_zh.serve.app import Handlers, Request
    from whisper_zh.serve.engine import Transcriber
    from whisper_zh.serve.settings import ServeSettings

    engine = Transcriber(str(whisper_base), backend="transformers", device="cpu")
    handlers = Handlers(ServeSettings(model_id=str(whisper_base), max_duration_s=60), transcriber=engine)
    for last in handlers.run(Request("file", str(clips["mp4"]), script="traditional", diarize=True)):
        if last.files:  # read before the request's folder goes, when the generator ends
            vtt = Path(next(f for f in last.files if f.endswith(".vtt"))).read_text(encoding="utf-8")
    path, cues = last.video
    assert path == str(clips["mp4"]) and cues
    assert [c["timestamp"][0] for c in cues] == pytest.approx(
        [float(t) for t in re.findall(r"^00:00:(\d\d\.\d{3}) -->", vtt, flags=re.M)], abs=1e-3)
    assert all(c["text"].startswith("S1：") for c in cues)  # one voice
    assert last.text.startswith("S1：") and "1 speaker" in last.status
    assert to_traditional(last.text) == last.text
    audio_only = list(handlers.run(Request("file", str(clips["mp3"]))))[-1]
    assert audio_only.video is None


@pytest.mark.slow
def test_a_linked_video_plays_with_its_subtitles_while_the_request_lasts(whisper_base, engine, clips, expected,
                                                                         tmp_path, monkeypatch):
    """A link to a video comes back for the page's player as an upload does, with the cues
    of the files; the download is kept in the request's own folder while the request lasts
    (Gradio copies what it serves by then) and goes with it; the limits hold for a video."""
    import tempfile

    from whisper_zh.errors import MediaLimitError
    from whisper_zh.serve.app import Handlers, Request
    from whisper_zh.serve.settings import ServeSettings

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    make_video(clips["long"], clips["folder"] / "long.mp4")
    handlers = Handlers(ServeSettings(model_id=str(whisper_base), max_duration_s=60, batch_size=4,
                                      allow_private_urls=True), transcriber=Greedy(engine))
    line = "\t".join([".127.0.0.1", "TRUE", "/", "FALSE", "2000000000", "SID", "v"])
    cookies = _write(tmp_path / "cookies.txt", f"# Netscape HTTP Cookie File\n{line}\n".encode())
    with serve_directory(clips["folder"]) as (base, _):
        for last in handlers.run(Request("url", f"{base}/clip.mp4", cookies=str(cookies))):
            if last.video:  # looked at before the request's folder goes, when the generator ends
                played = Path(last.video[0])
                assert played.read_bytes() == clips["mp4"].read_bytes()
                assert played.is_relative_to(work) and not played.is_relative_to(clips["folder"])
                # kept alone: the copy of the cookies served the download only
                assert list(played.parent.iterdir()) == [played]
                vtt = Path(next(f for f in last.files if f.endswith(".vtt"))).read_text(encoding="utf-8")
        assert not played.exists() and list(work.iterdir()) == [] and not cookies.exists()
        _, cues = last.video
        assert last.text == expected(clips["mp4"])
        assert [c["timestamp"][0] for c in cues] == pytest.approx(
            [float(t) for t in re.findall(r"^00:00:(\d\d\.\d{3}) -->", vtt, flags=re.M)], abs=1e-3)
        assert normalize("".join(c["text"] for c in cues)) == normalize(last.text)

        assert list(handlers.run(Request("url", f"{base}/silence.wav")))[-1].video is None
        with pytest.raises(MediaLimitError, match="limit is 1:00"):
            list(handlers.run(Request("url", f"{base}/long.mp4")))
    assert list(work.iterdir()) == []


class _NoModel:
    """Stands in where no model is needed: silence never reaches one."""

    device = "cpu"

    def iter_segments(self, audio, options, progress=None):
        from whisper_zh.serve.segmentation import is_silent

        assert is_silent(audio, options.silence_threshold_db)
        return iter(())


# A probe over the page, in the page's own font, to tell glyphs from tofu: without a CJK
# font every Han character is drawn as the same empty box, so two different strings of as
# many characters look the same; with one, they differ.
_PROBE = """text => {
    let probe = document.getElementById('cjk-probe');
    if (!probe) {
        probe = document.createElement('div');
        probe.id = 'cjk-probe';
        probe.style.cssText = 'position:fixed;top:0;left:0;z-index:99999;padding:4px;font-size:32px;'
            + 'background:#fff;color:#000;white-space:nowrap';
        document.body.appendChild(probe);
    }
    probe.textContent = text;
}"""
# the first text on the page that has Han characters (the description names the tabs in Chinese)
_PAGE_CHINESE = """() => {
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const han = node.textContent.match(/[\u4e00-\u9fff]+/g);
        if (han && node.parentElement.offsetParent !== null) return han.join('').slice(0, 8);
    }
    return '';
}"""


def _pixels(png: bytes):
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


@pytest.mark.slow
def test_screenshot(app_url, clips, expected):
    """The page in headless Chromium after transcribing a clip through the UI: the
    transcript shown is the engine's, and the page's Chinese is drawn as characters, not
    as boxes (fonts-noto-cjk)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    import subprocess

    from playwright.sync_api import sync_playwright

    fonts = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout
    assert fonts.strip(), "no font for Chinese: the page would show boxes (apt-get install fonts-noto-cjk)"

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = _transcribe_in_the_page(browser, app_url, clips["mp3"])
        filled = "() => [...document.querySelectorAll('textarea')].map(t => t.value).filter(v => v)"
        page.wait_for_function(f"({filled})().length > 0", timeout=120_000)
        text = page.evaluate(filled)[0]
        page.wait_for_timeout(1000)  # let the table and file list finish rendering
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        chinese = page.evaluate(_PAGE_CHINESE)
        drawn = []
        for probe in (chinese, "一" * len(chinese), "\ue000" * len(chinese)):  # the last: no font has it
            page.evaluate(_PROBE, probe)
            drawn.append(_pixels(page.locator("#cjk-probe").screenshot()))
        browser.close()
    assert text == expected(clips["mp3"])
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
    assert len(chinese) >= 2, "no Chinese text shown on the page"
    page_text, other, tofu = drawn
    for image in drawn:
        assert image.min() < 128, "nothing was drawn"  # dark ink on the white probe
    # the page's characters are drawn differently from other characters and from boxes
    assert not _same_drawing(page_text, other), f"{chinese!r} and 一一… are drawn alike: boxes"
    assert not _same_drawing(page_text, tofu), f"{chinese!r} is drawn as the missing-glyph box"


# the page's player once its subtitle track has loaded: the cues, and where the video stands
_PLAYER_CUES = """() => {
    const video = document.querySelector('#player video');
    const track = video && video.querySelector('track');
    const cues = track && video.textTracks.length ? video.textTracks[0].cues : null;
    if (!cues || !cues.length) return null;
    return {src: video.currentSrc, track: track.src, shown: getComputedStyle(document.querySelector('#player')).display,
            cues: [...cues].map(c => ({start: c.startTime, end: c.endTime, text: c.text}))};
}"""
# show a moment of the first cue: seek into it, wait until the frame there can be drawn
_SHOW_FIRST_CUE = """async () => {
    const video = document.querySelector('#player video');
    const cue = video.textTracks[0].cues[0];
    video.pause();
    video.textTracks[0].mode = 'showing';
    const seeked = new Promise(resolve => video.addEventListener('seeked', resolve, {once: true}));
    video.currentTime = (cue.startTime + cue.endTime) / 2;
    await seeked;
    while (video.readyState < 2) await new Promise(resolve => setTimeout(resolve, 50));
    video.scrollIntoView({block: 'center'});
    return {time: video.currentTime, active: [...video.textTracks[0].activeCues].map(c => c.text),
            width: video.videoWidth, error: video.error && video.error.code};
}"""


@pytest.mark.slow
def test_uploaded_video_plays_with_its_subtitles_in_a_browser(app_url, clips, expected):
    """A video uploaded on the page in headless Chromium: the page's <video> carries a
    subtitle track whose cues are the transcript the engine wrote for that video, the
    video itself plays (a WebM: VP8 and Opus), and a frame inside a cue shows the cue.
    The screenshot is kept in tests/artifacts/app-video.png."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    video = make_video(clips["mp3"], clips["folder"] / "talk.webm")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = _transcribe_in_the_page(browser, app_url, video)
        page.wait_for_function(_PLAYER_CUES, timeout=120_000)
        player = page.evaluate(_PLAYER_CUES)
        shown = page.evaluate(_SHOW_FIRST_CUE)
        page.wait_for_timeout(500)  # the cue's box is drawn after the frame
        page.screenshot(path=str(ARTIFACTS / "app-video.png"), full_page=True)
        page.locator("#player video").screenshot(path=str(ARTIFACTS / "app-video-player.png"))
        text = page.evaluate("() => [...document.querySelectorAll('textarea')].map(t => t.value).find(v => v)")
        browser.close()
    transcript = expected(video)
    assert text == transcript
    assert player["src"].endswith(".webm") and player["track"].endswith(".vtt") and player["shown"] != "none"
    cues = player["cues"]
    # the cues are the engine's transcript of this video, laid out as subtitles, in time order
    assert normalize("".join(c["text"] for c in cues)) == normalize(transcript)
    assert all(a["start"] < a["end"] <= b["start"] for a, b in zip(cues, cues[1:]))
    assert shown["error"] is None and shown["width"] == 320, shown  # decoded, not merely listed
    assert shown["active"] == [cues[0]["text"]], shown
    assert (ARTIFACTS / "app-video-player.png").stat().st_size > 2_000


def _transcribe_in_the_page(browser, app_url: str, path: Path):
    """A new page of the app in ``browser`` with ``path`` uploaded on the File tab and
    its transcription started."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url, wait_until="load")
    page.get_by_role("tab", name="📁 File").wait_for(timeout=60_000)
    page.get_by_role("tab", name="📁 File").click()
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_role("button", name="Transcribe file").click()
    return page


def _same_drawing(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


@pytest.mark.slow
def test_ct2_route_streams_partial_text_and_writes_bilingual_subtitles(whisper_base, whisper_base_ct2, zh_cv_mini,
                                                                        tmp_path, monkeypatch):
    """The app on the CPU's fast path (ct2, as auto picks on a Space): a 90 s upload shows
    text before it is done; the bilingual output adds Chinese-over-English subtitles. (The
    app converts whisper_base itself, finding the session's conversion in the cache.)"""
    from gradio_client import Client

    import whisper_zh.serve.app
    from _media_helpers import joined_clips
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    monkeypatch.setattr(whisper_zh.serve.app, "PARTIAL_EVERY_S", 0.0)  # every step's text, however fast the machine
    audio, rows, _ = joined_clips(zh_cv_mini, 90.0)
    recording = write_wav(tmp_path / "ninety-seconds.wav", audio)
    settings = ServeSettings(model_id=str(whisper_base), backend="ct2", max_duration_s=300, batch_size=1)
    demo = build_app(settings=settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = client.submit(*_args("transcribe_file", recording), api_name="/transcribe_file")
        final = job.result()
        updates = job.outputs()
        partial = [u for u in updates[:-1] if u[1]]
        assert len(partial) >= 2, [u[0] for u in updates]  # text grew while the rest was decoded
        assert all(final[1].startswith(u[1]) for u in partial)
        assert any("%" in u[0] for u in partial)  # the status says how much is done
        # a corpus CER over 90 s (about 1000 characters): whisper-base scores about 0.19
        assert utterance_cer("".join(r["sentence"] for r in rows), final[1]) < 0.5

        status, text, _, files, _ = _call(client, "transcribe_file", clips_first(zh_cv_mini), output="bilingual")
        bilingual = next(Path(f) for f in files if f.endswith(".bilingual.srt")).read_text(encoding="utf-8")
        # every cue: number, times, the Chinese line, then the translation's line(s) where
        # the translation has some for it. What whisper-base writes for the translation, and
        # how many of the cues it reaches, is not checked: it translates Chinese poorly, and
        # its temperature fallback samples (English one run, Chinese another)
        cues = [c.splitlines() for c in bilingual.strip().split("\n\n")]
        assert cues and all(len(c) >= 3 and c[0].isdigit() and " --> " in c[1] and re.search(r"[\u4e00-\u9fff]", c[2])
                            for c in cues), cues
        assert any(line.strip() for c in cues for line in c[3:]), cues  # the translation is there
        assert normalize("".join(c[2] for c in cues)) == normalize(text)
    finally:
        demo.close()


def clips_first(zh_cv_mini: Path) -> Path:
    return zh_cv_mini / "clips" / plain_clips(zh_cv_mini, 1)[0]["path"]


class GatedEngine:
    """Stands in for the engine and counts how many transcriptions run at once. Each waits
    until ``limit`` of them run together (or every expected one has started), so that a
    queue letting ``limit`` through is seen doing so however slow the machine; then it stays
    a moment longer, for one more that a broken queue would let in to be counted too."""

    def __init__(self, limit: int, expected: int, linger_s: float = 0.5, timeout_s: float = 60.0):
        import threading

        from whisper_zh.serve.types import TranscribeOptions

        self.limit, self.expected, self.linger_s, self.timeout_s = limit, expected, linger_s, timeout_s
        self.running = self.started = self.most = 0
        self.changed = threading.Condition()
        self.options = TranscribeOptions()
        self.device = "cpu"
        self.backend = type("Backend", (), {"name": "gated"})()

    def iter_segments(self, audio, options=None, progress=None):
        from whisper_zh.serve.types import Segment

        with self.changed:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
            # the barrier: a queue that runs fewer than `limit` at once fails here, after the timeout
            self.changed.wait_for(lambda: self.running >= self.limit or self.started >= self.expected,
                                  timeout=self.timeout_s)
            self.changed.wait_for(lambda: self.running > self.limit, timeout=self.linger_s)
        try:
            yield Segment(0.0, 1.0, "你好")
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()


def test_every_way_in_waits_in_one_queue_of_concurrency_limit(clips):
    """CONCURRENCY_LIMIT bounds transcriptions across tabs, not per tab: Gradio gives each
    event its own queue unless they share a concurrency id."""
    from gradio_client import Client

    from whisper_zh.serve.app import LIVE_QUEUE, TRANSCRIBE_QUEUE
    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    routes = ("transcribe_microphone", "transcribe_file", "transcribe_microphone")
    for limit in (1, 2):
        engine = GatedEngine(limit, expected=len(routes))
        settings = ServeSettings(model_id="stand-in", concurrency_limit=limit, max_duration_s=60)
        demo = build_app(settings=settings, transcriber=engine)
        queues = {fn.name: fn.concurrency_id for fn in demo.fns.values()}
        assert {queues[n] for n in ("transcribe_microphone", "transcribe_file", "transcribe_url")} == \
            {TRANSCRIBE_QUEUE} and queues["transcribe_live"] == LIVE_QUEUE
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **launch_options(settings))
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            jobs = [client.submit(*_args(route, clips["wav"]), api_name=f"/{route}") for route in routes]
            results = [job.result(timeout=120) for job in jobs]
        finally:
            demo.close()
        assert all(text == "你好" for _, text, *_ in results)
        assert engine.most == limit, (limit, engine.most)


class SteppedEngine:
    """Stands in for the engine: ``steps`` model steps of ``seconds`` each, a progress
    report after each (as both backends do); counts the steps that ran and how many
    transcriptions run at once."""

    def __init__(self, seconds: float, steps: int):
        import threading

        from whisper_zh.serve.types import TranscribeOptions

        self.seconds, self.steps, self.calls, self.running, self.most = seconds, steps, 0, 0, 0
        self.lock = threading.Lock()
        self.options = TranscribeOptions()
        self.device = "cpu"
        self.backend = type("Backend", (), {"name": "stepped"})()

    def iter_segments(self, audio, options=None, progress=None):
        import time

        from whisper_zh.serve.types import Segment

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            for step in range(self.steps):
                time.sleep(self.seconds)
                self.calls += 1
                yield Segment(float(step), step + 1.0, "你好")
                if progress:
                    progress((step + 1) / self.steps, f"decoded {step + 1}/{self.steps}")
        finally:
            with self.lock:
                self.running -= 1


def test_cancelling_stops_the_work_within_a_model_step(clips):
    """Handlers.run, Gradio-free: setting ``cancel`` from another thread ends the work at
    the engine's next progress report, and frees the work slot for the next request."""
    import threading

    from whisper_zh.errors import Cancelled
    from whisper_zh.serve.app import Handlers, Request
    from whisper_zh.serve.settings import ServeSettings

    engine = SteppedEngine(0.05, steps=200)
    handlers = Handlers(ServeSettings(model_id="stand-in", concurrency_limit=1), engine)
    cancel = threading.Event()
    updates = handlers.run(Request("file", str(clips["wav"])), cancel=cancel)
    next(updates)  # decoded
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(Cancelled):
        for _ in updates:
            pass
    stopped = engine.calls
    assert stopped < 50 and engine.running == 0
    # closing the generator instead (what Gradio does between steps) also frees the slot
    updates = handlers.run(Request("file", str(clips["wav"])))
    next(updates)
    updates.close()
    engine.steps = 2
    assert [u.status for u in handlers.run(Request("file", str(clips["wav"])))][-1].startswith("0:0")


def test_a_client_that_leaves_stops_its_work(clips):
    """Gradio notices a client has gone only when the handler yields, then closes the
    handler: the handler yields every HEARTBEAT_S while a step works, and closing it
    stops the engine within a step (counted in steps, not seconds)."""
    import asyncio

    from whisper_zh.serve.app import HEARTBEAT_S, Handlers, _handler
    from whisper_zh.serve.settings import ServeSettings

    engine = SteppedEngine(0.05, steps=2000)
    handle = _handler(Handlers(ServeSettings(model_id="stand-in"), engine), "file")

    async def leave():
        updates = handle(str(clips["wav"]), "simplified", "transcribe", "", progress=None)
        while engine.calls < 5:
            await updates.__anext__()  # partial results and heartbeats
        await updates.aclose()
        return engine.calls

    stopped = asyncio.run(leave())
    assert engine.running == 0 and engine.calls - stopped <= 1 + int(HEARTBEAT_S / 0.05)


def test_cancel_stops_the_work_and_holds_the_slot_until_then(clips):
    """Through the server: a job cancelled through the public cancel route stops within
    about one model step, and cancel-and-resubmit three times never has two jobs
    working at once with CONCURRENCY_LIMIT=1 (the probe had three)."""
    import time

    from gradio_client import Client

    from whisper_zh.serve.app import build_app, launch_options
    from whisper_zh.serve.settings import ServeSettings

    engine = SteppedEngine(0.2, steps=300)  # a minute of work
    settings = ServeSettings(model_id="stand-in", concurrency_limit=1, max_duration_s=60)
    demo = build_app(settings=settings, transcriber=engine)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for _ in range(3):
            job = client.submit(*_args("transcribe_file", clips["wav"]), api_name="/transcribe_file")
            deadline = time.monotonic() + 60
            while engine.running == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.running == 1
            job.cancel()
            started = engine.calls
            deadline = time.monotonic() + 60
            while engine.running and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.running == 0 and engine.calls - started <= 2
        assert engine.most == 1
    finally:
        demo.close()
