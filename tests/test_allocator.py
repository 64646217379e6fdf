"""reuse_freed_memory(): freed buffers are reused, not page-faulted in again.

Counted with the kernel's own minor-fault counter in a fresh process (the setting is
process-wide), not with timings: a 64 MB buffer allocated, touched and freed, then
again. glibc's defaults give the second one back to the kernel and fault all of its
16,384 pages in again; with the setting, the second finds them still mapped.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# malloc and memset straight from C, as CTranslate2 allocates (numpy asks for huge pages),
# from a thread started after the call (a thread's own arena would mmap the buffer), with
# transparent huge pages off for the process (they would fault 2 MB at a time). 64 MB is
# above the largest size glibc's default ever serves from its heap (32 MB).
PROBE = r"""
import ctypes, json, resource, sys, threading
from whisper_zh.allocator import reuse_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 * 2**20

def faults_of_one_buffer(out):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    buffer = libc.malloc(SIZE)
    ctypes.memset(buffer, 1, SIZE)  # every page touched
    libc.free(buffer)
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

faults = []
for _ in range(2):
    thread = threading.Thread(target=faults_of_one_buffer, args=(faults,))
    thread.start()
    thread.join()
print(json.dumps({"took": took, "faults": faults[1], "pages": SIZE // resource.getpagesize()}))
"""


def _probe(mode: str) -> dict:
    # the C library's defaults, whatever the environment says
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES")) and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=env, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    default, reused = _probe("default"), _probe("reuse")
    pages = default["pages"]
    assert default["faults"] > pages // 2, "the control: glibc's defaults fault a freed large buffer in again"
    assert reused["took"] is True
    assert reused["faults"] < pages // 20, reused


@pytest.mark.parametrize("command, reuses", [("transcribe", True), ("evaluate", False), ("train", False),
                                             ("prepare", False), ("export", False)])
def test_the_decoding_command_keeps_freed_memory(monkeypatch, command, reuses):
    """Set first thing by the command that decodes call after call; the training stack's
    data workers would each keep their peak, so its commands leave the C library's defaults."""
    from whisper_zh import cli

    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append(command))
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert bool(calls) is reuses
