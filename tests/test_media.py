"""Media: probing, limits, link safety, and downloads through yt-dlp from a server on
127.0.0.1 (no other address is ever contacted)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from _media_helpers import make_video, serve_directory, write_wav
from whisper_zh import media
from whisper_zh.media import (
    AudioDecodeError,
    DownloadError,
    MediaTooLongError,
    UnsafeURLError,
    check_url,
    download_audio,
    is_url,
    load_media,
    probe_duration,
)


@pytest.fixture(scope="module")
def clip(zh_cv_mini):
    return sorted((zh_cv_mini / "clips").glob("*.mp3"))[0]


@pytest.fixture
def site(tmp_path, clip):
    """A directory served on 127.0.0.1 with a real clip, an HTML page and nothing else."""
    root = tmp_path / "site"
    root.mkdir()
    shutil.copy(clip, root / "clip.mp3")
    (root / "page.html").write_text("<html><body>no media here</body></html>", encoding="utf-8")
    with serve_directory(root) as (base, requested):
        yield base, requested


# -- link safety --------------------------------------------------------------

@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "only http:// and https://"),
    ("ftp://example.com/a.mp3", "only http:// and https://"),
    ("gopher://127.0.0.1:70/", "only http:// and https://"),
    ("javascript:alert(1)", "only http:// and https://"),
    ("http://127.0.0.1:8000/a.mp3", "private, loopback or link-local"),
    ("http://localhost/a.mp3", "private, loopback or link-local"),
    ("http://[::1]/a.mp3", "private, loopback or link-local"),
    ("http://10.1.2.3/a.mp3", "private, loopback or link-local"),
    ("http://192.168.0.10/a.mp3", "private, loopback or link-local"),
    ("http://172.16.5.4/a.mp3", "private, loopback or link-local"),
    ("http://169.254.169.254/latest/meta-data/", "private, loopback or link-local"),
    ("http://[::ffff:127.0.0.1]/a.mp3", "private, loopback or link-local"),
    ("http://0.0.0.0/", "private, loopback or link-local"),
    ("http://user:pw@127.0.0.1/", "user name or password"),
    ("http:///nohost", "no host"),
])
def test_refused_links(url, reason, monkeypatch):
    monkeypatch.delenv("ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(UnsafeURLError, match=reason):
        check_url(url)
    with pytest.raises(UnsafeURLError, match=reason):  # refused before yt-dlp sends anything
        download_audio(url, "/nonexistent-dir-never-created")


def test_private_links_need_the_opt_in(monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    assert check_url(" http://127.0.0.1:8000/a.mp3 ") == "http://127.0.0.1:8000/a.mp3"
    with pytest.raises(UnsafeURLError, match="only http"):  # the opt-in never allows other schemes
        check_url("file:///etc/passwd")
    assert check_url("http://10.0.0.1/x", allow_private=True)
    with pytest.raises(UnsafeURLError):
        check_url("http://10.0.0.1/x", allow_private=False)


def test_is_url():
    assert is_url("https://www.youtube.com/watch?v=x")
    assert is_url("file:///etc/passwd")  # so that it is refused by name, not "file not found"
    assert not is_url("/tmp/a.mp3")
    assert not is_url("C:\\audio\\a.mp3")


def test_redirect_into_the_network_is_refused(site, monkeypatch, tmp_path):
    """A public page that redirects inside the network is stopped at connect time: the
    internal server never receives the request. 127.0.0.2 plays the internal host."""
    base, _ = site
    monkeypatch.setattr(media, "_is_internal", lambda address: address == "127.0.0.2")
    internal_root = tmp_path / "internal"
    internal_root.mkdir()
    (internal_root / "secret.mp3").write_bytes(b"secret")
    with serve_directory(internal_root, host="127.0.0.2") as (internal, internal_requests):
        target = internal.removeprefix("http://") + "/secret.mp3"
        with pytest.raises(UnsafeURLError, match="internal address"):
            download_audio(f"{base}/redirect-to/{target}", tmp_path / "out", allow_private=False)
        assert internal_requests == []


# -- downloads ------------------------------------------------------------------

def test_download_direct_media_link(site, tmp_path, monkeypatch, clip):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    base, requested = site
    reports = []
    path = download_audio(f"{base}/clip.mp3", tmp_path / "dl", progress=lambda f, m: reports.append((f, m)))
    assert path.parent == tmp_path / "dl"
    assert path.read_bytes() == clip.read_bytes()
    assert any("/clip.mp3" in p for p in requested)
    assert reports and all(0.0 <= f <= 1.0 for f, _ in reports)
    np.testing.assert_array_equal(media.load_audio(path), media.load_audio(clip))


def test_download_404_is_a_clear_error(site, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    base, _ = site
    with pytest.raises(DownloadError, match="404 Not Found"):
        download_audio(f"{base}/missing.mp3", tmp_path / "dl")


def test_download_page_without_media(site, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    base, _ = site
    with pytest.raises(DownloadError, match="no audio or video"):
        download_audio(f"{base}/page.html", tmp_path / "dl")


def test_download_refuses_large_files(site, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    base, _ = site
    with pytest.raises(MediaTooLongError, match="limit"):
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", max_bytes=1000)


def test_unreachable_host(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    with serve_directory(tmp_path) as (base, _):
        pass  # shut down: the port is now closed
    with pytest.raises(DownloadError, match="could not be reached|refused"):
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", timeout_s=5)


@pytest.mark.parametrize("message, expected", [
    ("ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies-from-browser", "cookies"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("ERROR: [youtube] abc: Sign in to confirm your age", "age-restricted"),
    ("ERROR: Unsupported URL: https://example.com/", "no audio or video"),
])
def test_youtube_errors_are_explained(message, expected):
    assert expected in media._explain_ytdlp_error(message, "https://www.youtube.com/watch?v=abc")


def test_missing_cookies_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "1")
    with pytest.raises(DownloadError, match="cookies file not found"):
        download_audio("http://127.0.0.1:9/x.mp3", tmp_path, cookies=str(tmp_path / "nope.txt"))


# -- probing and limits ----------------------------------------------------------

def test_probe_duration(clip, tmp_path):
    audio = media.load_audio(clip)
    assert probe_duration(clip) == pytest.approx(len(audio) / 16000, abs=0.1)
    video = make_video(clip, tmp_path / "v.mp4")
    assert probe_duration(video) == pytest.approx(len(audio) / 16000, abs=0.2)
    (tmp_path / "x.txt").write_text("not media")
    assert probe_duration(tmp_path / "x.txt") is None


def test_video_audio_track_decodes(clip, tmp_path):
    audio = media.load_audio(clip)
    from_video = load_media(make_video(clip, tmp_path / "v.mp4"))
    assert abs(len(from_video) - len(audio)) < 0.1 * 16000
    assert np.abs(from_video).max() > 0.05


def test_load_media_limits(tmp_path):
    wav = write_wav(tmp_path / "long.wav", np.zeros(16000 * 12, np.float32))
    with pytest.raises(MediaTooLongError, match="0:12 long; the limit is 0:10"):
        load_media(wav, max_duration_s=10)
    with pytest.raises(MediaTooLongError, match="MB"):
        load_media(wav, max_bytes=1000)
    assert load_media(wav, max_duration_s=60).shape == (16000 * 12,)


def test_load_media_rejects_non_media(tmp_path):
    (tmp_path / "notes.mp3").write_text("this is not audio")
    with pytest.raises(AudioDecodeError):
        load_media(tmp_path / "notes.mp3", max_duration_s=60)
    with pytest.raises(FileNotFoundError):
        load_media(tmp_path / "missing.wav")
