"""Media: probing, limits, decompression bombs, link safety, and downloads through
yt-dlp from servers on 127.0.0.1 and 127.0.0.2 (no other address is ever contacted)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

import _media_bombs as bombs
from _media_helpers import make_video, send, serve_directory, serve_routes, stream, write_wav
from whisper_zh import media
from whisper_zh.serve import download, netguard
from whisper_zh.errors import AudioDecodeError, DownloadError, MediaLimitError, UnsafeURLError
from whisper_zh.serve.netguard import check_url, is_url
from whisper_zh.serve.download import download_audio
from whisper_zh.media import load_media, probe_duration


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
    ("http://[::127.0.0.1]/a.mp3", "private, loopback or link-local"),
    ("http://[::ffff:0:127.0.0.1]/a.mp3", "private, loopback or link-local"),
    ("http://[fec0::1]/a.mp3", "private, loopback or link-local"),
    ("http://0.0.0.0/", "private, loopback or link-local"),
    ("http://user:pw@127.0.0.1/", "user name or password"),
    ("http:///nohost", "no host"),
])
def test_refused_links(url, reason, monkeypatch):
    with pytest.raises(UnsafeURLError, match=reason):
        check_url(url)
    with pytest.raises(UnsafeURLError, match=reason):  # refused before yt-dlp sends anything
        download_audio(url, "/nonexistent-dir-never-created")


def test_private_links_need_the_opt_in(monkeypatch):
    assert check_url(" http://127.0.0.1:8000/a.mp3 ", allow_private=True) == "http://127.0.0.1:8000/a.mp3"
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
    monkeypatch.setattr(netguard, "_is_internal", lambda address: address == "127.0.0.2")
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
    base, requested = site
    reports = []
    path = download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, progress=lambda f, m: reports.append((f, m)))
    assert path.parent == tmp_path / "dl"
    assert path.read_bytes() == clip.read_bytes()
    assert any("/clip.mp3" in p for p in requested)
    assert reports and all(0.0 <= f <= 1.0 for f, _ in reports)
    np.testing.assert_array_equal(media.load_audio(path), media.load_audio(clip))


def test_download_video_when_asked(site, tmp_path, clip):
    """video=True: a link to a video gives the video; a link to audio, the audio."""
    base, _ = site
    video = make_video(clip, tmp_path / "site" / "clip.mp4")
    path = download_audio(f"{base}/clip.mp4", tmp_path / "dl", allow_private=True, video=True)
    assert path.read_bytes() == video.read_bytes() and media.decode_media(path).video
    path = download_audio(f"{base}/clip.mp3", tmp_path / "dl2", allow_private=True, video=True)
    assert path.read_bytes() == clip.read_bytes()
    with pytest.raises(MediaLimitError, match="limit"):
        download_audio(f"{base}/clip.mp4", tmp_path / "dl3", allow_private=True, video=True, max_bytes=1000)


def _chosen(selector: str, formats: list[dict]) -> str:
    """The format yt-dlp picks with ``selector`` from a page offering ``formats``."""
    import yt_dlp

    page = {"id": "v", "title": "v", "extractor": "test", "extractor_key": "Test",
            "webpage_url": "https://example.com/v", "formats": [dict(f) for f in formats]}
    with yt_dlp.YoutubeDL({"quiet": True, "simulate": True, "format": selector}) as ydl:
        return ydl.process_ie_result(page, download=False)["format_id"]


def test_video_format_is_a_small_muxed_file_else_audio():
    """A YouTube-like page's formats: the page's video is one file with sound (yt-dlp may
    not run ffmpeg to join streams) of at most 480 lines; without one, the audio alone."""
    def fmt(name, height=None, vcodec="none", acodec="none", protocol="https", tbr=100):
        return dict(format_id=name, url=f"https://example.com/{name}", height=height, vcodec=vcodec,
                    acodec=acodec, protocol=protocol, ext="mp4", tbr=tbr)

    page = [fmt("audio", acodec="opus", tbr=160), fmt("muxed-360", 360, "avc1", "mp4a", tbr=500),
            fmt("muxed-720", 720, "avc1", "mp4a", tbr=2000), fmt("video-480", 480, "avc1", tbr=1000),
            fmt("video-1080", 1080, "avc1", tbr=4000), fmt("muxed-240-ffmpeg", 240, "avc1", "mp4a", "m3u8")]
    assert _chosen(download.VIDEO_FORMAT, page) == "muxed-360"
    assert _chosen(download.AUDIO_FORMAT, page) == "audio"
    separate = [f for f in page if not f["format_id"].startswith("muxed")]
    assert _chosen(download.VIDEO_FORMAT, separate) == "audio"
    # a long video: its 360p file is over the byte limit, its audio is not
    sized = [dict(f, filesize=900 * 2**20 if f["format_id"].startswith("muxed") else 170 * 2**20) for f in page]
    assert _chosen(download.video_format(500 * 2**20), sized) == "audio"
    assert _chosen(download.video_format(1000 * 2**20), sized) == "muxed-360"
    assert _chosen(download.video_format(500 * 2**20), page) == "muxed-360"  # sizes not said: as before


def test_download_404_is_a_clear_error(site, tmp_path, monkeypatch):
    base, _ = site
    with pytest.raises(DownloadError, match="404 Not Found"):
        download_audio(f"{base}/missing.mp3", tmp_path / "dl", allow_private=True)


def test_download_page_without_media(site, tmp_path, monkeypatch):
    base, _ = site
    with pytest.raises(DownloadError, match="no audio or video"):
        download_audio(f"{base}/page.html", tmp_path / "dl", allow_private=True)


def test_download_refuses_large_files(site, tmp_path, monkeypatch):
    base, _ = site
    with pytest.raises(MediaLimitError, match="limit"):
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, max_bytes=1000)


def test_unreachable_host(tmp_path, monkeypatch):
    with serve_directory(tmp_path) as (base, _):
        pass  # shut down: the port is now closed
    with pytest.raises(DownloadError, match="could not be reached|refused"):
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, timeout_s=5)


@pytest.mark.parametrize("message, expected", [
    ("ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies-from-browser", "cookies"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "unavailable"),
    ("ERROR: [youtube] abc: Sign in to confirm your age", "age-restricted"),
    ("ERROR: Unsupported URL: https://example.com/", "no audio or video"),
])
def test_youtube_errors_are_explained(message, expected):
    assert expected in download._explain_ytdlp_error(message, "https://www.youtube.com/watch?v=abc")


def test_missing_cookies_file(tmp_path, monkeypatch):
    with pytest.raises(DownloadError, match="cookies file not found"):
        download_audio("http://127.0.0.1:9/x.mp3", tmp_path, allow_private=True, cookies=str(tmp_path / "nope.txt"))


# -- probing and limits ----------------------------------------------------------

def test_probe_duration(clip, tmp_path):
    audio = media.load_audio(clip)
    assert probe_duration(clip) == pytest.approx(len(audio) / 16000, abs=0.1)
    video = make_video(clip, tmp_path / "v.mp4")
    assert probe_duration(video) == pytest.approx(len(audio) / 16000, abs=0.2)
    (tmp_path / "x.txt").write_text("not media")
    assert probe_duration(tmp_path / "x.txt") is None


def test_decoding_tells_a_video(clip, tmp_path):
    """Moving pictures, not an audio file's cover: what the page plays beside its subtitles."""
    assert media.decode_media(make_video(clip, tmp_path / "v.mp4")).video
    assert not media.decode_media(clip).video
    # an m4a with album art: a picture stream that ffmpeg, not soundfile, reads
    covered = tmp_path / "covered.m4a"
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(clip), "-f", "lavfi", "-i",
                    "color=s=64x64", "-frames:v", "1", "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "mjpeg",
                    "-disposition:v", "attached_pic", str(covered)], check=True)
    assert "attached pic" in subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(covered)],
                                            capture_output=True, text=True).stderr
    assert not media.decode_media(covered).video


def test_video_audio_track_decodes(clip, tmp_path):
    audio = media.load_audio(clip)
    from_video = load_media(make_video(clip, tmp_path / "v.mp4"))
    assert abs(len(from_video) - len(audio)) < 0.1 * 16000
    assert np.abs(from_video).max() > 0.05


def test_load_media_limits(tmp_path):
    wav = write_wav(tmp_path / "long.wav", np.zeros(16000 * 12, np.float32))
    with pytest.raises(MediaLimitError, match="0:12 long; the limit is 0:10"):
        load_media(wav, max_duration_s=10)
    with pytest.raises(MediaLimitError, match="MB"):
        load_media(wav, max_bytes=1000)
    assert load_media(wav, max_duration_s=60).shape == (16000 * 12,)


def test_load_media_rejects_non_media(tmp_path):
    (tmp_path / "notes.mp3").write_text("this is not audio")
    with pytest.raises(AudioDecodeError):
        load_media(tmp_path / "notes.mp3", max_duration_s=60)
    with pytest.raises(FileNotFoundError):
        load_media(tmp_path / "missing.wav")


# -- bombs: small files that decode to hours ------------------------------------------

# Each case runs load_media in a child process whose address space may grow by 256 MB
# past its imports; the decoder may hold the decoded limit (60 s: 3.8 MB) or the decoded
# file, plus at most this much. The old decoder held the whole decoded file, at its own
# rate and as int16 bytes too: each case below needs well over that.
_BUDGET = 256 << 20
_SLACK = 40 << 20


@pytest.mark.parametrize("make, seconds, limit, expected_s", [
    (bombs.mkv_flac_silence, 3600, 60, None),
    (bombs.raw_adts, 1200, 60, None),
    (bombs.webm_opus_silence, 1200, 60, None),
    (bombs.many_channels_flac, 3, 60, 3),
    (bombs.mp3_lying_xing, 90, 60, None),
    (bombs.mp3_lying_xing, 90, 600, 92),
    (bombs.wav_zero_data_size, 90, 600, 90),
], ids=["mkv-flac-no-duration", "raw-adts", "webm-opus-no-duration", "8ch-655khz-flac",
        "mp3-lying-xing-too-long", "mp3-lying-xing", "wav-data-size-0"])
def test_bombs_are_refused_or_decoded_within_budget(make, seconds, limit, expected_s, tmp_path):
    suffix = next(b.suffix for b in bombs.BOMBS if b.make is make)
    path = make(tmp_path / f"bomb{suffix}", seconds)
    result = bombs.decode_capped(path, limit, budget=_BUDGET)
    if expected_s is None:
        assert result.get("error") == "MediaLimitError", result
        assert "longer than the limit of 1:00 (set MAX_DURATION_S" in result["message"]
        held = limit * 16000 * 4
    else:
        assert "error" not in result, result
        assert abs(result["samples"] / 16000 - expected_s) < 0.5
        assert (result["rms"] > 0.1) == (make is not bombs.many_channels_flac)  # tones decoded, silence silent
        held = result["samples"] * 4
    assert result["peak"] - result["baseline"] < held + _SLACK, result


def test_header_that_understates_the_stream_is_not_trusted(tmp_path):
    """The soundfile path decodes only what the header counts, and checks that this
    accounts for the file: the audio after a lying Xing header is not dropped."""
    path = bombs.mp3_lying_xing(tmp_path / "xing.mp3", 20)
    import soundfile as sf

    assert sf.info(str(path)).duration < 3  # what the header claims
    assert len(media.load_audio(path)) / 16000 == pytest.approx(22, abs=0.5)
    assert len(media.load_audio(path.read_bytes())) / 16000 == pytest.approx(22, abs=0.5)


def test_long_sane_files_decode_in_blocks_as_in_one_go(tmp_path):
    """Past one block, soundfile's output is downmixed and resampled block by block;
    the result matches decoding the whole file at once."""
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (48000 * 50, 2)).astype(np.float32)  # 4.8 M samples: three blocks
    sf.write(str(tmp_path / "s.flac"), stereo, 48000, subtype="PCM_24")
    whole, _ = sf.read(str(tmp_path / "s.flac"), dtype="float32")
    expected = soxr.resample(whole.mean(axis=1, dtype=np.float32), 48000, 16000, quality="HQ")
    audio = load_media(tmp_path / "s.flac", max_duration_s=60)
    assert audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1e-4)
    with pytest.raises(MediaLimitError, match="0:50 long; the limit is 0:40"):
        load_media(tmp_path / "s.flac", max_duration_s=40)


# -- round two: samples that are not numbers, video frames, slow decodes ----------------

@pytest.mark.parametrize("streams", [1, 4])
def test_video_streams_are_never_decoded(streams, tmp_path):
    """Each video stream holds one picture of 128 MB once decoded; ffmpeg probed every
    stream's picture before the audio was mapped (543 MB and 17 s for four). Only the
    audio is decoded now, whatever the number of video streams."""
    path = bombs.mkv_huge_pictures(tmp_path / "pictures.mkv", 1, streams=streams)
    result = bombs.decode_capped(path, 60, budget=_BUDGET)
    assert "error" not in result, result
    assert result["samples"] == 16000 and result["rms"] > 0.05
    assert result["ffmpeg_peak"] < 80 << 20, result  # one picture alone is 128 MB
    assert probe_duration(path) == pytest.approx(1, abs=0.1)


@pytest.mark.parametrize("suffix", [".wav", ".mka"])
def test_samples_that_are_not_finite_become_silence(suffix, tmp_path):
    """A float WAV (libsndfile) and pcm_f32le in Matroska (ffmpeg) with NaN, an infinity
    and 1e30: what reaches the model is finite and within full scale, the tone intact."""
    wav = bombs.wav_float_with_nan(tmp_path / "nan.wav", 3, every_s=1)
    path = wav
    if suffix == ".mka":
        path = tmp_path / "nan.mka"
        bombs._ffmpeg("-i", str(wav), "-c:a", "pcm_f32le", str(path))
    audio = load_media(path, max_duration_s=60)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert len(audio) == 3 * 16000
    assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(0.3 / np.sqrt(2), abs=0.02)


@pytest.mark.parametrize("first", ["wav", "flac"])
def test_a_file_of_several_joined_says_what_was_left_out(first, tmp_path):
    """A WAV or FLAC with ten minutes of MP3 appended decodes as a player plays it (the
    first second), and the notes say that the rest was not decoded; a whole file, with
    or without a video stream, has no note."""
    path = bombs.joined_files(tmp_path / f"joined.{first}", first, 1, 600)
    decoded = media.decode_media(path, max_duration_s=3600)
    assert len(decoded.audio) == 16000
    assert len(decoded.notes) == 1
    assert ("4.4 MB" in decoded.notes[0] and "0:01" in decoded.notes[0]) if first == "wav" else \
        "could not be decoded" in decoded.notes[0]
    whole = bombs.joined_files(tmp_path / "whole.wav", "wav", 1, 0.1)  # a few hundred bytes after it
    assert media.decode_media(whole, max_duration_s=60).notes == ()


def test_whole_files_have_no_notes(clip, tmp_path):
    video = make_video(clip, tmp_path / "v.mp4")
    for path in (clip, video):
        decoded = media.decode_media(path, max_duration_s=60)
        assert decoded.notes == () and len(decoded.audio) > 16000


def test_every_ffmpeg_run_has_a_deadline(tmp_path, monkeypatch):
    """An ffmpeg that never finishes (here: one that sleeps) is killed at the deadline,
    both reading the header and decoding."""
    slow = tmp_path / "ffmpeg"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    monkeypatch.setattr(media, "ffmpeg_exe", lambda: str(slow))
    (tmp_path / "a.m4a").write_bytes(b"\0" * 1000)  # not for libsndfile: ffmpeg's turn
    import time

    for call in (lambda: probe_duration(tmp_path / "a.m4a", deadline_s=0.5),
                 lambda: load_media(tmp_path / "a.m4a", deadline_s=0.5)):
        started = time.monotonic()
        with pytest.raises(MediaLimitError, match="longer than 0.5 s and was stopped .set DECODE_DEADLINE_S"):
            call()
        assert time.monotonic() - started < 30  # not the 60 s of the sleep


# -- links: what a public "127.0.0.1" may make us do --------------------------------------

@pytest.mark.parametrize("address", [
    "100.100.100.200", "100.64.0.1", "100.127.255.254", "192.0.0.9", "192.0.0.100", "224.0.0.251",
    "239.1.2.3", "198.18.0.1", "::ffff:100.64.0.1", "64:ff9b::a00:1", "2002:a00:1::1", "ff02::1", "fe80::1%2",
    # IPv4-compatible, IPv4-translated and site-local spellings, judged public before
    "::127.0.0.1", "::169.254.169.254", "::ffff:0:127.0.0.1", "::ffff:0:a9fe:a9fe", "fec0::1", "feff::1",
])
def test_internal_addresses(address):
    assert netguard._is_internal(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses(address):
    assert not netguard._is_internal(address)


def test_refusals_name_the_host_not_its_address(monkeypatch):
    with pytest.raises(UnsafeURLError) as info:
        check_url("http://localhost:8000/a.mp3")
    assert "localhost" in str(info.value)
    assert "127.0.0.1" not in str(info.value) and "::1" not in str(info.value)


@pytest.fixture
def only_127_0_0_1_is_public(monkeypatch):
    monkeypatch.setattr(netguard, "_is_internal", lambda address: address != "127.0.0.1")


def test_a_name_for_an_internal_address_is_refused_by_name(only_127_0_0_1_is_public, tmp_path, monkeypatch):
    """``intranet.test`` resolves to 127.0.0.2 (a stub resolver): the link, and a public
    page redirecting to it, are refused with the name, never the address."""
    system = netguard._system_getaddrinfo

    def resolve(host, port, *args, **kwargs):
        return system("127.0.0.2" if host == "intranet.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(netguard, "_system_getaddrinfo", resolve)
    with serve_routes({"/secret.mp3": send(b"secret")}, host="127.0.0.2") as (inside, hits):
        port = inside.rsplit(":", 1)[1]
        target = f"http://intranet.test:{port}/secret.mp3"
        redirect = {"/a.mp3": lambda r: (r.send_response(302), r.send_header("Location", target), r.end_headers())}
        with serve_routes(redirect) as (base, _):
            for link in (target, f"{base}/a.mp3"):
                with pytest.raises(UnsafeURLError) as info:
                    download_audio(link, tmp_path / "dl")
                assert "intranet.test" in str(info.value) and "127.0.0.2" not in str(info.value)
    assert hits == []


def test_hls_never_reaches_an_external_ffmpeg(only_127_0_0_1_is_public, tmp_path, monkeypatch):
    """An HLS stream yt-dlp cannot decrypt itself is handed to ffmpeg when one is on
    PATH; ffmpeg resolves names on its own, past the address check. With one on PATH,
    the internal server (127.0.0.2) must still receive nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(media.ffmpeg_exe())
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with serve_routes({"/key": send(b"0" * 16), "/seg0.ts": send(b"x" * 188)}, host="127.0.0.2") as (inside, hits):
        playlist = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
                    f'#EXT-X-KEY:METHOD=SAMPLE-AES,URI="{inside}/key",IV=0x00000000000000000000000000000001\n'
                    f"#EXTINF:10.0,\n{inside}/seg0.ts\n#EXT-X-ENDLIST\n").encode()
        with serve_routes({"/audio.m3u8": send(playlist, "application/vnd.apple.mpegurl")}) as (base, _):
            with pytest.raises(DownloadError, match="external program"):
                download_audio(f"{base}/audio.m3u8", tmp_path / "dl")
    assert hits == []


def _received(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != "cookies.txt")


@pytest.mark.parametrize("route", ["/plain.mp3", "/gzip.mp3"])
def test_max_bytes_counts_what_is_received(only_127_0_0_1_is_public, tmp_path, route):
    """8 MB without a Content-Length, and 8 KB of gzip that expand to 8 MB, against a
    1 MB limit: refused while downloading, with little more than 1 MB written."""
    bomb = gzip.compress(b"\0" * (8 << 20))
    routes = {"/plain.mp3": stream(8 << 20), "/gzip.mp3": send(bomb, Content_Encoding="gzip")}
    with serve_routes(routes) as (base, _):
        with pytest.raises(MediaLimitError, match="limit of 1 MB"):
            download_audio(base + route, tmp_path / "dl", max_bytes=1 << 20)
    assert _received(tmp_path / "dl") < 3 << 20


def test_slow_server_meets_the_deadline(only_127_0_0_1_is_public, tmp_path):
    """One byte every 0.2 s satisfies every per-read timeout; the deadline ends it. The
    server gives up after 30 s, so that a download without a deadline would complete."""
    stop = threading.Event()

    def drip(request):
        request.send_response(200)
        request.send_header("Content-Type", "audio/mpeg")
        request.end_headers()
        for _ in range(150):
            if stop.wait(0.2):
                return
            request.wfile.write(b"\0")
            request.wfile.flush()

    with serve_routes({"/slow.mp3": drip}) as (base, _):
        try:
            with pytest.raises(DownloadError, match="longer than 2 s"):
                download_audio(f"{base}/slow.mp3", tmp_path / "dl", deadline_s=2)
        finally:
            stop.set()


@pytest.fixture
def silent_host(monkeypatch):
    """``silent.test`` resolves to 127.0.0.2 ... 127.0.0.11, each listening with a full
    backlog, so that the kernel drops every new SYN: each connect waits for its timeout,
    as to a host whose firewall drops packets."""
    import socket

    servers, fillers, port = [], [], 0
    for i in range(2, 12):
        server = socket.socket()
        server.bind((f"127.0.0.{i}", port))
        server.listen(0)
        port = server.getsockname()[1]
        servers.append(server)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
            fillers.append(filler)
    system = netguard._system_getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host != "silent.test":
            return system(host, port, *args, **kwargs)
        return [info for s in servers for info in system(s.getsockname()[0], port, *args, **kwargs)]

    monkeypatch.setattr(netguard, "_system_getaddrinfo", resolve)
    monkeypatch.setattr(netguard, "_is_internal", lambda address: False)
    yield f"http://silent.test:{port}"
    for sock in servers + fillers:
        sock.close()


def test_connecting_counts_against_the_deadline(silent_host, tmp_path):
    """Ten silent addresses used to cost ten connect timeouts, each ``min(timeout,
    deadline)``: 50 s here. (The deadline is 5 s, not less: loading yt-dlp's extractors
    takes a few seconds of it on a slow machine, before any connection.)"""
    import time

    started = time.monotonic()
    with pytest.raises(DownloadError, match="longer than 5 s|could not be reached"):
        download_audio(f"{silent_host}/a.mp3", tmp_path / "dl", deadline_s=5)
    assert time.monotonic() - started < 15  # the deadline and yt-dlp's own start, far below 10 x 5 s


def test_pages_refreshing_to_each_other_stop(only_127_0_0_1_is_public, tmp_path):
    def page(target):
        html = f'<html><head><meta http-equiv="refresh" content="0; url={target}"></head><body>x</body></html>'
        return send(html.encode(), "text/html")

    with serve_routes({"/a.html": page("/b.html"), "/b.html": page("/a.html")}) as (base, requested):
        with pytest.raises(DownloadError, match="more than 32 requests"):
            download_audio(f"{base}/a.html", tmp_path / "dl")
    assert len(requested) <= 33


# -- cookies ----------------------------------------------------------------------------

_COOKIE_HEADER = "# Netscape HTTP Cookie File\n"


def _cookie_line(value: str) -> str:
    return "\t".join([".127.0.0.1", "TRUE", "/", "FALSE", "2000000000", "SID", value]) + "\n"


def test_malformed_cookies_are_refused_without_their_values(site, tmp_path, capfd, caplog, monkeypatch):
    base, requested = site
    bad = tmp_path / "cookies.txt"
    bad.write_text(_COOKIE_HEADER + _cookie_line("ok-value") + "SID secret-value-123 not tabs\n")
    with pytest.raises(DownloadError, match="line 3 of the cookies file") as info:
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, cookies=str(bad))
    out, err = capfd.readouterr()
    assert "secret-value" not in out + err + caplog.text + str(info.value)
    assert requested == []
    (tmp_path / "json.txt").write_text('[{"name": "SID", "value": "secret-value-123"}]')
    with pytest.raises(DownloadError, match="Netscape") as info:
        download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, cookies=str(tmp_path / "json.txt"))
    assert "secret-value" not in str(info.value)


def test_the_operators_cookies_file_is_never_written(site, tmp_path, monkeypatch, clip):
    base, _ = site
    operator = tmp_path / "operator-cookies.txt"
    operator.write_text(_COOKIE_HEADER + _cookie_line("v1"))
    operator.chmod(0o400)
    before = (operator.read_bytes(), operator.stat().st_mtime_ns)
    path = download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, cookies=str(operator))
    assert path.read_bytes() == clip.read_bytes()
    assert (operator.read_bytes(), operator.stat().st_mtime_ns) == before
    copy = tmp_path / "dl" / "cookies.txt"  # what yt-dlp read and rewrote: the request's own
    assert copy.exists() and copy.stat().st_mode & 0o077 == 0


def test_a_cookie_line_never_reaches_a_message(site, tmp_path, capfd, caplog, monkeypatch):
    """A leading-dot domain with include-subdomains FALSE (as some exporters write), in a
    file that starts with a UTF-8 BOM: http.cookiejar raised an error quoting the whole
    line, and the BOM was refused. Now the copy agrees with the domain and the download
    works; any other error from reading the file is shown without its text."""
    import http.cookiejar

    base, _ = site
    line = "\t".join([".127.0.0.1", "FALSE", "/", "FALSE", "2000000000", "SID", "secret-value-123"])
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("\ufeff" + _COOKIE_HEADER + line + "\n", encoding="utf-8")
    assert download_audio(f"{base}/clip.mp3", tmp_path / "dl", allow_private=True, cookies=str(cookies)).exists()
    assert "\t".join([".127.0.0.1", "TRUE"]) in (tmp_path / "dl" / "cookies.txt").read_text()

    def refuse(self, f, filename, *args):  # what http.cookiejar says of a line it refuses
        raise http.cookiejar.LoadError(f"invalid Netscape format cookies file {filename!r}: {line!r}")

    monkeypatch.setattr(http.cookiejar.MozillaCookieJar, "_really_load", refuse)
    with pytest.raises(DownloadError, match="cookies file could not be used") as info:
        download_audio(f"{base}/clip.mp3", tmp_path / "dl2", allow_private=True, cookies=str(cookies))
    out, err = capfd.readouterr()
    assert "secret-value" not in out + err + caplog.text + str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_playlist_of_many_fragments_is_refused_as_such(only_127_0_0_1_is_public, tmp_path):
    """200 fragments of 0.04 s (8 s) against a 10 s limit: one request a second of the
    limit is allowed for fragments. The message said "pages redirecting to each other?"."""
    segment = bytes([0x47, 0x1F, 0xFF, 0x10]) + b"\xff" * 184  # one null MPEG-TS packet
    playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
                + "".join(f"#EXTINF:0.04,\nseg{i}.ts\n" for i in range(200)) + "#EXT-X-ENDLIST\n").encode()
    routes = {"/audio.m3u8": send(playlist, "application/vnd.apple.mpegurl"),
              **{f"/seg{i}.ts": send(segment, "video/mp2t") for i in range(200)}}
    with serve_routes(routes) as (base, requested):
        with pytest.raises(MediaLimitError, match="more pieces .HLS or DASH fragments. than its duration limit"):
            download_audio(f"{base}/audio.m3u8", tmp_path / "dl", max_duration_s=10)
    assert len(requested) < 60
