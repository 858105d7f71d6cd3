"""Does a long in-process sweep hold its memory? Peak RSS of one sweeping process, trial by trial.

    nice -n 10 python benchmarks/soak.py             # 50 trials, cats_vs_dogs_local at 96 px
    python benchmarks/soak.py --trials 20 --tiny      # synthetic tiny experiment (the test's run)

One `thaw-train --multirun` sweep on the basic launcher: every trial runs inside the sweeping
process, which keeps built models and compiled steps between trials on purpose (cache_features,
reuse_compiled). The real sweep is depth_lr on the shared cats_vs_dogs at 96 px, 150 photos per
class and split, 3 + 3 epochs, no early stop, logger=none, no confirmation runs (the search's
trials only). After each progress line ("sweep: k/N trials done") the process's VmHWM (peak RSS so
far) and VmRSS are read from /proc, with what the Workspace keeps then (activations in memory,
classifiers, fit models, traced forward functions: `hydra.verbose=thaw.workspace`). Prints and
writes (--out, default benchmarks/results/soak-<date>.jsonl) one JSON line per trial and a summary
line with the growth of peak RSS from trial 5 to the last.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, need_shared  # noqa: E402

PROGRESS = re.compile(r"sweep: (\d+)/(\d+) trials done")
KEPT = re.compile(r"workspace keeps: (\{.*\})")
REAL = [
    "experiment=cats_vs_dogs_local",
    "sweep=depth_lr",
    f"data.path={DATA}",
    f"backbone.weights={WEIGHTS}",
    "backbone.image_size=96",
    "data.max_per_class=150",
    "trainer.head_epochs=3",
    "trainer.finetune_epochs=3",
    "trainer.patience=0",
    "hydra.sweeper.sampler.seed=7",
]
TINY = [
    "experiment=tiny",
    "sweep=depth_lr",
    "backbone.image_size=32",
    "data.num_train=32",
    "data.num_val=16",
    "data.batch_size=16",
    "unfreeze.depth=range(0,4)",
]


def proc_kb(pid: int) -> dict:
    """VmHWM and VmRSS of a live process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def soak(args: list[str], sweep_dir: Path, log_path: Path) -> list[dict]:
    """Run the sweep; one row per finished trial: trials done, peak and current RSS, seconds."""
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "--multirun",
        *args,
        "logger=none",
        "trainer.save_model=false",
        "hydra.sweeper.confirm.top_k=0",
        "hydra.verbose=thaw.workspace",  # what the Workspace keeps after each trial
        f"hydra.sweep.dir={sweep_dir}",
    ]
    rows, kept, t0 = [], {}, time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            k = KEPT.search(line)
            if k:
                kept = json.loads(k.group(1))  # logged as the trial ends, before its progress line
            m = PROGRESS.search(line)
            if m:
                mem = proc_kb(proc.pid)
                rows.append(
                    dict(
                        trial=int(m.group(1)),
                        seconds=round(time.perf_counter() - t0, 1),
                        **mem,
                        kept=kept,
                    )
                )
        code = proc.wait()
    if code != 0:
        sys.exit(f"sweep failed ({code}); log: {log_path}")
    return rows


def growth(rows: list[dict], first: int = 5, key: str = "VmHWM") -> float:
    """Relative growth of `key` from trial `first` to the last trial."""
    by_trial = {r["trial"]: r for r in rows}
    return by_trial[max(by_trial)][key] / by_trial[first][key] - 1


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="the synthetic tiny experiment")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the sweep dir and log here")
    args = ap.parse_args()
    if not args.tiny:
        need_shared()
    out = args.out or REPO / "benchmarks" / "results" / f"soak-{date.today().isoformat()}.jsonl"
    work = args.keep or Path(tempfile.mkdtemp(prefix="thaw-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = (TINY if args.tiny else REAL) + [f"hydra.sweeper.n_trials={args.trials}"]
    rows = soak(overrides, work / "sweep", work / "soak.log")
    label = "tiny" if args.tiny else "cats_vs_dogs_local-96px"
    at = {r["trial"]: r for r in rows}
    summary = dict(
        bench="soak",
        label=label,
        overrides=overrides,
        peak_rss_mib={k: at[k]["VmHWM"] for k in (5, 25, 50, args.trials) if k in at},
        rss_mib={k: at[k]["VmRSS"] for k in (5, 25, 50, args.trials) if k in at},
        peak_growth_5_to_last=round(growth(rows), 4),
        rss_growth_5_to_last=round(growth(rows, key="VmRSS"), 4),
        wall_s=rows[-1]["seconds"],
    )
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(dict(bench="soak", label=label, **r)) + "\n")
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
