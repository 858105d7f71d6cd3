"""Peak memory and speed of `thaw-predict` on a whole photo folder: one fresh process per run, its
peak RSS from wait4 (ru_maxrss), one JSON line each. `--src` runs another tree's code (a checkout's
`src/`, e.g. before a change) with the same model and photos, side by side.

    python benchmarks/predict_memory.py --model RUN_DIR [--folder A,B] [--src A,B] [--repeat 2]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, REPO, emit


def run_once(model: str, folder: str, src: str, work: Path) -> dict:
    out = work / "predictions.csv"
    env = dict(
        os.environ,
        PYTHONPATH=src,
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_HOME=str(work / "keras"),
        WANDB_MODE="disabled",
    )
    folders = folder.split(",")
    cmd = [sys.executable, "-m", "thaw.commands.predict", model, *folders, "--out", str(out)]
    t0 = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.stderr.write((work / "log.txt").read_text()[-3000:])
        raise SystemExit(f"thaw-predict failed ({code}) with {src}")
    rows = out.read_text().count("\n") - 1
    progress = sum(1 for line in (work / "log.txt").read_text().splitlines() if " img/s" in line)
    return dict(
        src=src,
        images=rows,
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
        wall_s=round(wall, 1),
        progress_lines=progress,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="run dir, sweep dir or model.keras")
    p.add_argument(
        "--folder",
        default=str(DATA),
        help="photos to predict, comma-separated (searched recursively; twice: each file twice)",
    )
    p.add_argument("--src", default=str(REPO / "src"), help="comma-separated src trees to compare")
    p.add_argument("--repeat", type=int, default=1, help="runs per tree, interleaved")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for src in args.src.split(","):
                row = run_once(os.path.abspath(args.model), args.folder, src, Path(tmp))
                emit(bench="predict_memory", repeat=r + 1, model=args.model, **row)


if __name__ == "__main__":
    main()
