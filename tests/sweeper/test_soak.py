"""A long in-process sweep holds its memory: 20 tiny trials in one process (the basic launcher),
peak RSS read from /proc after each trial's progress line. thaw keeps a built model and compiled
steps per unfreeze depth between trials on purpose, so the depth is fixed here (no baseline trial at
depth 0): after trial 5 nothing new may be kept, and a leak of a few MiB per trial shows.
benchmarks/soak.py measures the same on a real 50-trial sweep."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweeper import TINY

PROGRESS = re.compile(r"sweep: (\d+)/(\d+) trials done")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow  # ~2 min on 2 cores
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_stays_flat_over_20_in_process_trials(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "--multirun",
        *TINY,
        "sweep=depth_lr",
        "unfreeze.depth=2",
        "hydra.sweeper.baseline=false",
        "logger=none",
        "hydra.sweeper.n_trials=20",
        "hydra.sweeper.confirm.top_k=0",
        f"hydra.sweep.dir={tmp_path / 'sw'}",
    ]
    peaks, log = {}, []
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        log.append(line)
        m = PROGRESS.search(line)
        if m:
            peaks[int(m.group(1))] = peak_rss_mib(proc.pid)
    assert proc.wait(timeout=600) == 0, "".join(log[-40:])
    assert sorted(peaks) == list(range(1, 21)), "".join(log[-40:])
    growth = peaks[20] / peaks[5] - 1
    assert growth < 0.05, f"peak RSS grew {100 * growth:.1f} % from trial 5 to 20: {peaks}"
