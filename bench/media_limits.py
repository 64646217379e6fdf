"""Issue 11's attack inputs against the media code before (commit 402807a) and after.

    python bench/media_limits.py                 # every class, both versions (~5 min on 2 cores)
    python bench/media_limits.py --only decode   # only the classes whose name holds a word

Each input class runs in a fresh child process importing ``whisper_zh`` from one
version: the decoding classes through ``load_media`` at the app's default limits (1 h,
500 MB) under a 4 GB address-space cap (so that the old decoder's blow-ups stay bounded
on a shared machine: "MemoryError" then means "needed more than 4 GB"); the link classes
through ``download_audio``/``check_url`` against servers on 127.0.0.1 (the "public"
host) and 127.0.0.2 (the "internal" one), with the address classifier patched so that
only 127.0.0.1 counts as public. Nothing else is contacted.

*s* is the wall time of the call; *peak MB* the child's peak RSS (imports included),
with ffmpeg's own peak after the slash where ffmpeg ran. Prints a markdown table and
writes ``bench/results/media_limits-<cpu count>core.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from _machine import DATA_CANDIDATES, cpu_name, first_existing  # noqa: E402

BEFORE = "402807a"
LIMIT_S, MAX_BYTES = 3600.0, 500 * 2**20  # the app's defaults
CAP = 4 << 30
DRIP_DEADLINE_S, DRIP_PATIENCE_S = 10.0, 30.0


# -- the decoding classes --------------------------------------------------------------

def decode_classes(work: Path):
    """(name, make() -> path), the issue's sizes."""
    import _media_bombs as b
    from _media_helpers import joined_clips

    def speech_xing():
        data = first_existing(DATA_CANDIDATES)
        if data is None:
            raise SystemExit("zh-cv-mini not found beside the checkout (../shared)")
        audio, _, _ = joined_clips(Path(data), 300, split="train")
        return b.mp3_lying_xing(work / "xing.mp3", 3000, audio[: 300 * 16000])

    return [
        ("Matroska/FLAC silence, no duration, 4 h", lambda: b.mkv_flac_silence(work / "4h.mkv", 4 * 3600)),
        ("Matroska/FLAC silence, no duration, 100 h", lambda: b.mkv_flac_silence(work / "100h.mkv", 100 * 3600)),
        ("raw ADTS aac, 2 h", lambda: b.raw_adts(work / "2h.aac", 2 * 3600)),
        ("raw ADTS aac, 10 h", lambda: b.raw_adts(work / "10h.aac", 10 * 3600)),
        ("WebM/Opus silence, no duration, 4 h", lambda: b.webm_opus_silence(work / "4h.webm", 4 * 3600)),
        ("FLAC 8 ch 655,350 Hz, 60 s", lambda: b.many_channels_flac(work / "60s.flac", 60)),
        ("FLAC 8 ch 655,350 Hz, 120 s", lambda: b.many_channels_flac(work / "120s.flac", 120)),
        ("MP3, Xing header says 2 s, then 50 min of speech", speech_xing),
        ("WAV with data size 0, 1 h tone", lambda: b.wav_zero_data_size(work / "1h.wav", 3600)),
    ]


def decode_row(path: Path, code: Path) -> dict:
    from _media_bombs import decode_capped

    r = decode_capped(path, LIMIT_S, budget=CAP, max_bytes=MAX_BYTES, code=code, timeout=900)
    if "error" in r:
        result = f"{r['error']}: {r['message'].strip().splitlines()[-1][-90:]}" if r["message"] else r["error"]
    else:
        seconds = r["samples"] / 16000
        result = f"decoded {int(seconds // 60)}:{seconds % 60:04.1f}"
    return {"result": result, "seconds": r["seconds"], "peak_mb": _mb(r["peak"]), "ffmpeg_peak_mb": _mb(r["ffmpeg_peak"])}


def _mb(value):
    return None if value is None else round(value / 2**20)


# -- the link classes (each runs in a child: --link NAME --code DIR) --------------------

def _serve(routes, host="127.0.0.1"):
    from _media_helpers import serve_routes

    return serve_routes(routes, host)


def send(*args, **kwargs):
    from _media_helpers import send

    return send(*args, **kwargs)


def stream(*args, **kwargs):
    from _media_helpers import stream

    return stream(*args, **kwargs)


def _download(media, url, out, **kwargs):
    """download_audio with the keyword arguments this version knows."""
    known = inspect.signature(media.download_audio).parameters
    return media.download_audio(url, out, **{k: v for k, v in kwargs.items() if k in known})


def _outcome(call) -> str:
    try:
        value = call()
        return f"accepted ({value})" if value is not None else "accepted"
    except BaseException as err:  # noqa: BLE001 -- reported, whatever it is
        return f"{type(err).__name__}: {str(err)[:90]}"


def link_addresses(media, work):
    return "; ".join(f"{a}: " + ("refused" if _outcome(lambda: media.check_url(f"http://{a}/", allow_private=False))
                                 .startswith("UnsafeURLError") else "ACCEPTED")
                     for a in ("100.100.100.200", "100.64.0.1", "192.0.0.9"))


def link_hls(media, work):
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(media.ffmpeg_exe())
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    with _serve({"/key": send(b"0" * 16), "/seg0.ts": send(b"x" * 188)}, "127.0.0.2") as (inside, hits):
        playlist = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
                    f'#EXT-X-KEY:METHOD=SAMPLE-AES,URI="{inside}/key",IV=0x00000000000000000000000000000001\n'
                    f"#EXTINF:10.0,\n{inside}/seg0.ts\n#EXT-X-ENDLIST\n").encode()
        with _serve({"/a.m3u8": send(playlist, "application/vnd.apple.mpegurl")}) as (base, _):
            outcome = _outcome(lambda: _download(media, f"{base}/a.m3u8", work / "dl", allow_private=False))
    return f"internal server got {len(hits)} requests; {outcome}"


def _written(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.iterdir() if p.name != "cookies.txt") if folder.exists() else 0
    return f"{total / 2**20:.1f} MB written"


def link_no_length(media, work):
    with _serve({"/a.mp3": stream(30 << 20)}) as (base, _):
        outcome = _outcome(lambda: _download(media, f"{base}/a.mp3", work / "dl", allow_private=False,
                                             max_bytes=5 << 20))
    return f"{_written(work / 'dl')}; {outcome}"


def link_gzip(media, work):
    bomb = gzip.compress(b"\0" * (50 << 20))
    with _serve({"/a.mp3": send(bomb, Content_Encoding="gzip")}) as (base, _):
        outcome = _outcome(lambda: _download(media, f"{base}/a.mp3", work / "dl", allow_private=False,
                                             max_bytes=5 << 20))
    return f"{len(bomb) // 1024} KB sent; {_written(work / 'dl')}; {outcome}"


def link_drip(media, work):
    def drip(request):
        request.send_response(200)
        request.send_header("Content-Type", "audio/mpeg")
        request.end_headers()
        while True:
            request.wfile.write(b"\0")
            request.wfile.flush()
            time.sleep(2)

    with _serve({"/a.mp3": drip}) as (base, _):
        return _outcome(lambda: _download(media, f"{base}/a.mp3", work / "dl", allow_private=False,
                                          deadline_s=DRIP_DEADLINE_S))


def link_refresh(media, work):
    def page(target):
        html = f'<html><head><meta http-equiv="refresh" content="0; url={target}"></head><body>x</body></html>'
        return send(html.encode(), "text/html")

    with _serve({"/a.html": page("/b.html"), "/b.html": page("/a.html")}) as (base, requested):
        outcome = _outcome(lambda: _download(media, f"{base}/a.html", work / "dl", allow_private=False))
        return f"{len(requested)} requests; {outcome}"


def link_message(media, work):
    outcome = _outcome(lambda: media.check_url("http://localhost:9/", allow_private=False))
    leaked = "127.0.0.1" in outcome or "::1" in outcome
    return f"address in the message: {'YES' if leaked else 'no'}; {outcome}"


_COOKIE = "\t".join([".127.0.0.1", "TRUE", "/", "FALSE", "2000000000", "SID", "{}"]) + "\n"


def _clip_site(work):
    import shutil

    site = work / "site"
    site.mkdir()
    clip = sorted((Path(first_existing(DATA_CANDIDATES)) / "clips").glob("*.mp3"))[0]
    shutil.copy(clip, site / "clip.mp3")
    from _media_helpers import serve_directory

    return serve_directory(site)


def link_cookie_log(media, work):
    cookies = work / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n" + _COOKIE.format("ok") + "SID secret-value-42 not-tabs\n")
    log = work / "stderr.txt"
    saved = os.dup(2)
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        with _clip_site(work) as (base, _):
            outcome = _outcome(lambda: _download(media, f"{base}/clip.mp3", work / "dl", cookies=str(cookies)))
    finally:
        os.dup2(saved, 2)
    leaked = "secret-value-42" in log.read_text(errors="replace")
    return f"cookie value in the server log: {'YES' if leaked else 'no'}; {outcome}"


def link_cookie_operator(media, work):
    cookies = work / "operator.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n" + _COOKIE.format("v1"))
    before = (cookies.read_bytes(), cookies.stat().st_mtime_ns)
    os.environ["YTDLP_COOKIES"] = str(cookies)
    with _clip_site(work) as (base, _):
        outcome = _outcome(lambda: _download(media, f"{base}/clip.mp3", work / "dl").name)
    changed = (cookies.read_bytes(), cookies.stat().st_mtime_ns) != before
    return f"YTDLP_COOKIES file rewritten: {'YES' if changed else 'no'}; {outcome}"


def link_cookie_visitor(media, work):
    import numpy as np
    import soundfile as sf

    try:  # the layout since issue 18
        import whisper_zh.serve.app as app
    except ImportError:
        import whisper_zh.app as app

    class Silent:  # no model: the request ends at "no speech"
        backend, device = "none", "cpu"

        def iter_segments(self, audio, options, progress=None):
            return iter(())

    site = work / "site"
    site.mkdir()
    sf.write(str(site / "silence.wav"), np.zeros(16000, np.float32), 16000)
    visitor = work / "visitor-cookies.txt"
    visitor.write_text("# Netscape HTTP Cookie File\n" + _COOKIE.format("v1"))
    from _media_helpers import serve_directory

    with serve_directory(site) as (base, _):
        url = f"{base}/silence.wav"
        if hasattr(app, "Request"):  # the app since 402807a: typed requests and updates
            settings = app.ServeSettings(model_id="none", max_duration_s=60)
            if hasattr(settings, "limits"):  # since issue 18 links reach 127.0.0.1 only when the settings say so
                settings = dataclasses.replace(settings, allow_private_urls=True)
            handlers = app.Handlers(settings, transcriber=Silent())
            outcome = _outcome(lambda: list(handlers.run(app.Request("url", url, cookies=str(visitor))))[-1].status)
        else:
            handlers = app.Handlers(app.AppConfig(model_id="none", max_duration_s=60), transcriber=Silent())
            outcome = _outcome(lambda: list(handlers.run("url", url, "simplified", str(visitor)))[-1][0])
    return f"visitor's cookies.txt left on disk: {'YES' if visitor.exists() else 'no'}; {outcome}"


LINKS = [
    ("100.100.100.200, 100.64.0.1, 192.0.0.9 (check_url)", link_addresses),
    ("HLS with SAMPLE-AES, ffmpeg on PATH", link_hls),
    ("30 MB without Content-Length, 5 MB limit", link_no_length),
    ("51 KB gzip expanding to 50 MB, 5 MB limit", link_gzip),
    (f"1 byte every 2 s (after: deadline_s={DRIP_DEADLINE_S:g})", link_drip),
    ("two pages meta-refreshing to each other", link_refresh),
    ("refusal of a name resolving inside (localhost)", link_message),
    ("malformed cookies.txt line", link_cookie_log),
    ("operator's YTDLP_COOKIES file", link_cookie_operator),
    ("visitor's uploaded cookies (app request)", link_cookie_visitor),
]


def run_link_child(name: str, code: Path) -> None:
    sys.path.insert(0, str(code))
    os.environ.pop("ALLOW_PRIVATE_URLS", None)
    os.environ.pop("YTDLP_COOKIES", None)
    from whisper_zh import media

    try:  # since issue 18 links live in serve.netguard (the address check) and serve.download
        from whisper_zh.serve import download, netguard

        guard = netguard
        media = types.SimpleNamespace(download_audio=download.download_audio, check_url=netguard.check_url,
                                      ffmpeg_exe=media.ffmpeg_exe)
    except ImportError:
        guard = media
    if name not in ("link_addresses", "link_message"):  # those two judge real addresses
        guard._is_internal = lambda address: address != "127.0.0.1"
    case = dict((fn.__name__, fn) for _, fn in LINKS)[name]
    with tempfile.TemporaryDirectory(prefix="media-limits-") as work:
        started = time.perf_counter()
        result = case(media, Path(work))
        seconds = time.perf_counter() - started
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss would include the bench's own, inherited
        peak = int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"result": result, "seconds": seconds, "peak_mb": _mb(peak), "ffmpeg_peak_mb": None}))


def link_row(fn, code: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    patience = DRIP_PATIENCE_S if fn is link_drip else 600
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--link", fn.__name__, "--code", str(code)],
                              capture_output=True, text=True, env=env, timeout=patience)
    except subprocess.TimeoutExpired:
        return {"result": f"still downloading after {patience:.0f} s (killed)", "seconds": time.perf_counter() - started,
                "peak_mb": None, "ffmpeg_peak_mb": None}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"result": f"crashed: {proc.stderr.strip().splitlines()[-1][:120]}", "seconds": None,
                "peak_mb": None, "ffmpeg_peak_mb": None}
    return json.loads(lines[-1])


# -- the run ----------------------------------------------------------------------------

def machine() -> dict:
    import numpy
    import soundfile
    import yt_dlp

    from whisper_zh.media import ffmpeg_exe

    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_name(), "memory_gb": round(mem / 2**30, 1),
            "versions": {"numpy": numpy.__version__, "soundfile": soundfile.__version__,
                         "libsndfile": soundfile.__libsndfile_version__, "yt_dlp": yt_dlp.version.__version__,
                         "ffmpeg": version}}


def _cell(row: dict) -> list[str]:
    seconds = "–" if row["seconds"] is None else f"{row['seconds']:.1f}"
    peak = "–" if row["peak_mb"] is None else f"{row['peak_mb']:,}"
    if row.get("ffmpeg_peak_mb"):
        peak += f" / {row['ffmpeg_peak_mb']:,}"
    return [row["result"].replace("|", "\\|"), seconds, peak]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{m['cpu_model']}, {m['cpu_count']} cores, {m['memory_gb']} GB; limits 1 h and 500 MB; "
             f"before = {BEFORE}, after = {result['after']} ({result['date']})", "",
             "| input | before | s | peak MB | after | s | peak MB | load avg |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append("| " + " | ".join([row["input"], *_cell(row["before"]), *_cell(row["after"]),
                                        f"{row['loadavg_1min'][0]:.1f}–{row['loadavg_1min'][1]:.1f}"]) + " |")
    lines += ["", "peak MB: the Python process's peak RSS, imports included (/ ffmpeg's own peak where it ran); "
              f"decoding runs under a {CAP >> 30} GB address-space cap, so MemoryError means it needed more. "
              "load avg: the 1-minute load average before–after the row."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="only the classes whose name holds one of these words")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/media_limits-<n>core.json)")
    parser.add_argument("--link", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.link:
        run_link_child(args.link, Path(args.code))
        return 0
    sys.path.insert(0, str(REPO))
    out = Path(args.out or REPO / "bench" / "results" / f"media_limits-{os.cpu_count()}core.json")
    after = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                           text=True).stdout.strip()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "after": after, "limits": {"max_duration_s": LIMIT_S, "max_bytes": MAX_BYTES},
              "address_space_cap": CAP, "machine": machine(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="media-limits-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "whisper_zh"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        work = Path(tmp) / "work"
        work.mkdir()
        cases = [(name, "decode", make) for name, make in decode_classes(work)] + \
                [(name, "link", fn) for name, fn in LINKS]
        for name, kind, what in cases:
            if args.only and not any(w.lower() in f"{kind} {name}".lower() for w in args.only):
                continue
            load = os.getloadavg()[0]
            row = {"input": name, "kind": kind}
            if kind == "decode":
                made = time.perf_counter()
                path = what()
                row.update(file_bytes=path.stat().st_size, made_s=round(time.perf_counter() - made, 2))
                row["input"] += f" ({path.stat().st_size / 2**20:.2f} MB)"
                row["before"], row["after"] = decode_row(path, before), decode_row(path, REPO)
                path.unlink()
            else:
                row["before"], row["after"] = link_row(what, before), link_row(what, REPO)
            row["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            result["rows"].append(row)
            print(f"{row['input']}: before {row['before']['result']} | after {row['after']['result']}",
                  file=sys.stderr, flush=True)
    result["markdown"] = markdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(result["markdown"])
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
