"""Peak resident memory and wall time against the number of images, in memory vs streamed.

    python benchmarks/memory.py                # 1k, 4k, 16k, 64k images, both modes
                                                 (about an hour on 2 cores)
    python benchmarks/memory.py --quick        # 1k and 4k
    python benchmarks/memory.py --sizes 64000 --modes streamed --limit-data 0.5
    python benchmarks/memory.py --sizes 4000 --epochs 3 0 --set trainer.cache_features=false
        # epoch time

Each size is a flat folder of hard links to the shared cats_vs_dogs photos (distinct names, so the
name-based split spreads them), built in a temp dir and removed at the end; nothing is committed.
Each run is `thaw-train experiment=cats_vs_dogs_local` at 160 px, 1 + 1 epochs, depth 3, in its own
process; its peak RSS comes from wait4 (ru_maxrss). `memory` sets data.max_memory_mb high enough to
hold everything, `streamed` sets it to 512. --limit-data F runs the process under RLIMIT_DATA =
F x the decoded size of the images (`ulimit -d`): with F=0.5, data twice the memory it may use.
One JSON line per run.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, emit, need_shared  # noqa: E402

SIZE = 160
MODES = {"memory": 1_000_000, "streamed": 512}


def photo_folder(root: Path, n: int) -> Path:
    """n images, half per class, hard links (or copies across file systems) to the shared photos."""
    out = root / f"n{n}"
    for cls in ("cats", "dogs"):
        sources = sorted(
            (DATA / split / cls / f)
            for split in ("train", "validation")
            for f in os.listdir(DATA / split / cls)
        )
        (out / cls).mkdir(parents=True)
        for k in range(n // 2):
            src, dst = sources[k % len(sources)], out / cls / f"{cls}.{k}.jpg"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    return out


def run(folder: Path, n: int, mode: str, work: Path, limit_fraction: float, epochs, extra):
    out = work / f"run-{n}-{mode}"
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "experiment=cats_vs_dogs_local",
        f"data.path={folder}",
        f"backbone.weights={WEIGHTS}",
        f"backbone.image_size={SIZE}",
        f"trainer.head_epochs={epochs[0]}",
        f"trainer.finetune_epochs={epochs[1]}",
        "trainer.patience=0",
        "unfreeze.depth=3",
        f"data.max_memory_mb={MODES[mode]}",
        "trainer.save_model=false",
        *extra,
        f"hydra.run.dir={out}",
    ]
    if limit_fraction and mode == "streamed":  # the default max_memory_mb reads the limit itself
        cmd = [c for c in cmd if not c.startswith("data.max_memory_mb")]
    limit = int(n * SIZE * SIZE * 3 * limit_fraction) if limit_fraction else None

    def cap():
        if limit:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        WANDB_MODE="disabled",
        KERAS_HOME=str(work / "keras"),
        TMPDIR=str(work),
    )
    t0 = time.perf_counter()
    with open(work / f"log-{n}-{mode}.txt", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    metrics = (
        json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    )
    secs = {}
    for r in metrics.get("history", []):
        secs.setdefault(r["phase"], []).append(round(r.get("seconds") or 0.0, 2))
    text = (work / f"log-{n}-{mode}.txt").read_text()
    errors = [l for l in text.splitlines() if "Error" in l and "HYDRA_FULL_ERROR" not in l]
    tail = (errors or text.strip().splitlines())[-1:] if code else []
    return dict(
        images=n,
        mode=mode,
        streamed="streamed from disk" in text,
        exit_code=code,
        peak_rss_mb=round(usage.ru_maxrss / 1024),
        wall_s=round(wall, 1),
        epoch_s=secs,
        overrides=extra,
        decoded_mb=round(n * SIZE * SIZE * 3 / 2**20),
        rlimit_data_mb=round(limit / 2**20) if limit else None,
        time_breakdown=metrics.get("time_breakdown"),
        error=tail[0][-300:] if tail else None,
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["memory", "streamed"])
    ap.add_argument("--limit-data", type=float, default=0.0, metavar="F")
    ap.add_argument("--epochs", type=int, nargs=2, default=[1, 1], metavar=("HEAD", "FINETUNE"))
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more thaw-train overrides"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep the runs' logs and metrics here")
    args = ap.parse_args()
    need_shared()
    sizes = args.sizes or ([1000, 4000] if args.quick else [1000, 4000, 16000, 64000])
    work = Path(tempfile.mkdtemp(prefix="thaw-memory-"))
    try:
        for n in sizes:
            folder = photo_folder(work, n)
            for mode in args.modes:
                emit(**run(folder, n, mode, work, args.limit_data, args.epochs, args.set))
            shutil.rmtree(folder)
    finally:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for f in work.glob("log-*.txt"):
                shutil.copy(f, args.keep)
            for f in work.glob("run-*/metrics.json"):
                shutil.copy(f, Path(args.keep) / f"{f.parent.name}-metrics.json")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
