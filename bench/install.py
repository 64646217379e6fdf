"""Issue 22: what installing whisper-zh costs, before (commit d6b3198, one all-in-one
install) and after (serving and training split into extras).

    python bench/install.py                          # [app] and [train] of this checkout
    python bench/install.py --ref d6b3198 --extras app --label before

For each extra, a fresh virtualenv gets ``pip install "<source>[extra]"`` (the source is a
``git archive`` of ``--ref``, or this working tree): *install s* is that command's wall
time (pip's own cache and the machine's package mirror as they are: say which in the
notes), *size MB* the virtualenv on disk, *torch* whether ``import torch`` works there.
For ``[app]`` the app's cold start is measured too, with a CTranslate2 int8 export of
whisper-base as MODEL_ID: *page s* from starting ``python app.py`` to its page answering
200, *first answer s* to the first ``/transcribe_file`` request (a real zh-multi-dev clip,
sent by gradio_client from this interpreter) answered. Each virtualenv is deleted after.
Prints a markdown table and writes ``bench/results/install-<label>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from _machine import PROCESSOR_CANDIDATES, cpu_name, first_existing  # noqa: E402

MULTI_DEV = REPO.parent / "shared" / "data" / "zh-multi-dev"


def du_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total / 2**20


def biggest_packages(venv: Path, n: int = 8) -> list[tuple[str, float]]:
    site = next(venv.glob("lib/python*/site-packages"))
    sizes = [(p.name, du_mb(p)) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")]
    return [(name, round(mb, 1)) for name, mb in sorted(sizes, key=lambda s: -s[1])[:n]]


def source_tree(ref: str | None, work: Path) -> Path:
    """The project at ``ref`` (git archive), or this working tree, copied to ``work``."""
    out = work / "src"
    if ref:
        out.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    else:
        shutil.copytree(REPO, out, ignore=shutil.ignore_patterns(".git", "outputs", "*.egg-info", "__pycache__"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(python: Path, src: Path, model: Path, clip: Path, timeout_s: float = 600) -> dict:
    """``python app.py`` from process start to its page served and its first answer."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "MODEL_ID": str(model), "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    log = src / "app.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(python), "app.py"], cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited {proc.returncode}: {log.read_text()[-2000:]}")
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError("the app did not serve its page in time")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        page_s = time.perf_counter() - started
        client = Client(url, verbose=False)
        status, text, _, _ = client.predict(handle_file(str(clip)), "simplified", "transcribe", "",
                                            api_name="/transcribe_file")
        answer_s = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)
    return {"page_s": round(page_s, 2), "first_answer_s": round(answer_s, 2), "text": text, "status": status}


def measure(extra: str, src: Path, work: Path, model: Path | None, clip: Path | None) -> dict:
    venv = work / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    started = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{src}[{extra}]"], capture_output=True,
                          text=True)
    install_s = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd=work)
    row = {"extra": extra, "install_s": round(install_s, 1), "size_mb": round(du_mb(venv)),
           "torch": probe.returncode == 0, "biggest": biggest_packages(venv)}
    if extra == "app" and model and clip:
        row["cold_start"] = cold_start(python, src, model, clip)
    shutil.rmtree(venv)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=None, help="git ref to install (default: this working tree)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--extras", nargs="+", default=["app", "train"])
    parser.add_argument("--no-cold-start", action="store_true")
    args = parser.parse_args()

    model = clip = None
    if not args.no_cold_start:
        from _ct2_base import base_ct2

        base = first_existing(PROCESSOR_CANDIDATES)
        if base is None or not MULTI_DEV.is_dir():
            raise SystemExit("needs ~/.cache/whisper-zh/whisper-base and ../shared/data/zh-multi-dev")
        model = base_ct2(Path(base))
        clip = MULTI_DEV / "clips" / sorted(line.split("\t")[1] for line in
                                            (MULTI_DEV / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:])[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        src = source_tree(args.ref, Path(tmp))
        for extra in args.extras:
            print(f"installing [{extra}] ...", file=sys.stderr, flush=True)
            rows.append(measure(extra, src, Path(tmp), model, clip))

    print(f"\n{args.label} ({args.ref or 'working tree'})\n")
    print("| extra | install s | size MB | torch importable | page s | first answer s | biggest packages (MB) |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        cs = r.get("cold_start", {})
        print(f"| [{r['extra']}] | {r['install_s']} | {r['size_mb']} | {'yes' if r['torch'] else 'no'} | "
              f"{cs.get('page_s', '')} | {cs.get('first_answer_s', '')} | "
              f"{', '.join(f'{n} {mb:.0f}' for n, mb in r['biggest'][:5])} |")
    out = REPO / "bench" / "results" / f"install-{args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "label": args.label, "ref": args.ref, "rows": rows,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "date": datetime.date.today().isoformat()},
    }, ensure_ascii=False, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
