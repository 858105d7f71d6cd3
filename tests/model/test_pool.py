"""A run's end gives the memory it freed back to the system (ModelPool.end_run)."""

import json
import os
import subprocess
import sys

import pytest

# In a fresh process: 250 MiB of 64-KiB blocks on the C heap (below glibc's mmap threshold),
# every 50th kept, so the heap's top stays in use and free() alone returns nothing.
SCRIPT = """
import json, sys
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

import keras  # end_run releases nothing before Keras is loaded
from thaw.model.pool import ModelPool

blocks = [b"x" * 65536 for _ in range(4000)]
kept = blocks[::50] + [blocks[-1]]
del blocks
freed = rss()
ModelPool().end_run(keep_compiled=sys.argv[1] == "keep")
print(json.dumps({"freed": freed, "after_end_run": rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's malloc_trim")
@pytest.mark.parametrize("keep_compiled", ["keep", "clear_session"])
def test_the_memory_a_run_freed_goes_back_to_the_system_when_it_ends(keep_compiled, tmp_path):
    import ctypes

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("this C library has no malloc_trim (not glibc)")
    if any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")):
        pytest.skip("another allocator is preloaded: malloc_trim does not manage its memory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, keep_compiled],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rss = json.loads(res.stdout.strip().splitlines()[-1])
    # ~245 MiB were freed; without the trim the process's RSS keeps all of it
    assert rss["freed"] - rss["after_end_run"] > 150, rss
