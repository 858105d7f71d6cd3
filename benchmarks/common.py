"""Helpers for the benchmarks: run commands side by side and print one JSON line per figure."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THAW_SHARED_DIR", REPO.parent / "shared"))
DATA = SHARED / "data" / "cats_vs_dogs"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_no_top_imagenet.h5"


def need_shared():
    if not DATA.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"benchmark needs {DATA} and {WEIGHTS} (see ../shared/data/README.md)")


def timed(cmd, cwd, env=None, log_path=None):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="disabled")
    full_env.update(env or {})
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if log_path:
        Path(log_path).write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"command failed ({out.returncode}): {' '.join(map(str, cmd))}")
    return secs, out


def emit(**fields):
    print(json.dumps(fields), flush=True)
