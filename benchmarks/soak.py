"""Does a long in-process sweep hold its memory? Peak RSS of one sweeping process, trial by trial.

    nice -n 10 python benchmarks/soak.py             # 50 trials, cats_vs_dogs_local at 96 px
    python benchmarks/soak.py --trials 20 --tiny      # synthetic tiny experiment (the test's run)
    python benchmarks/soak.py --trials 20 --no-alone --set trainer.optimizer=sgd  # Keras SGD
    python benchmarks/soak.py --no-alone --set trainer.kept_fit_models=4  # fewer fit models kept

One `thaw-train --multirun` sweep on the basic launcher: every trial runs inside the sweeping
process, which keeps built models and compiled steps between trials on purpose (cache_features,
reuse_compiled). The real sweep is depth_lr on the shared cats_vs_dogs at 96 px, 150 photos per
class and split, 3 + 3 epochs, no early stop, logger=none, no confirmation runs (the search's
trials only). After each progress line ("sweep: k/N trials done") the process's VmHWM (peak RSS so
far) and VmRSS are read from /proc, with what the Workspace keeps then (activations in memory,
classifiers, fit models, traced forward functions: `hydra.verbose=thaw.workspace`). Prints and
writes (--out, default benchmarks/results/soak-<date>.jsonl) one JSON line per trial and a summary
line with the growth of peak RSS from trial 5 to the last, the seconds of the trials after trial
5, and how many of the trials' phases traced a new compiled step or reused a kept one.

A deeper unfreeze needs more memory while it trains, so the peak rises the first time the sweep
goes deep whether or not anything leaks. To tell the two apart, the trial that raised the peak the
most after trial 5 then runs alone, the same overrides in a fresh process (`--no-alone` skips it):
the summary's `peak_over_alone` is the sweep's final peak over that trial's own.
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
SETTLED = re.compile(r"trial (\d+) (?:COMPLETE|PRUNED|FAIL)")
ASKED = re.compile(r"\] trial (\d+): (.*)$")  # the sweeper's "trial N: key=value ..." line
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
    rows, kept, number, params, t0 = [], {}, None, {}, time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            asked = ASKED.search(line)
            if asked:
                params[int(asked.group(1))] = asked.group(2).strip()
            settled = SETTLED.search(line)
            if settled:
                number = int(settled.group(1))  # in process, trials end one at a time
            k = KEPT.search(line)
            if k:
                kept = json.loads(k.group(1))  # logged as the trial ends, before its progress line
            m = PROGRESS.search(line)
            if m:
                mem = proc_kb(proc.pid)
                rows.append(
                    dict(
                        trial=int(m.group(1)),
                        number=number,
                        params=params.get(number),
                        seconds=round(time.perf_counter() - t0, 1),
                        **mem,
                        kept=kept,
                    )
                )
                number = None  # a trial failed without its line (no job return) has no number
        code = proc.wait()
    if code != 0:
        sys.exit(f"sweep failed ({code}); log: {log_path}")
    return rows


# a run's peak RSS, printed as it exits (Hydra's main ends in sys.exit)
ALONE = """
import atexit, runpy, sys
from pathlib import Path

def peak():
    status = Path("/proc/self/status").read_text().splitlines()
    print("ALONE_VMHWM", next(ln.split()[1] for ln in status if ln.startswith("VmHWM:")))

atexit.register(peak)
sys.argv = ["thaw-train", *sys.argv[1:]]
runpy.run_module("thaw.commands.train", run_name="__main__")
"""


def heaviest_trial(rows: list[dict], first: int = 5) -> int | None:
    """The number of the trial, among those after the `first` done, whose run raised the peak RSS
    the most (None: none raised it)."""
    steps = [
        (b["VmHWM"] - a["VmHWM"], b["number"])
        for a, b in zip(rows, rows[1:])
        if b["trial"] > first and b["number"] is not None
    ]
    steps = [(step, n) for step, n in steps if step > 0]
    return max(steps)[1] if steps else None


def run_alone(sweep_dir: Path, trial: int, log_path: Path) -> dict:
    """Trial `trial`'s overrides as one run in a fresh process: its peak RSS in MiB."""
    import yaml

    overrides = yaml.safe_load((sweep_dir / f"trial_{trial}" / ".hydra" / "overrides.yaml").open())
    overrides = [o for o in overrides if not o.startswith("sweep=")]  # one run: no search
    cmd = [sys.executable, "-c", ALONE, *overrides, f"hydra.run.dir={log_path.parent / 'alone'}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log_path.write_text(out.stdout + out.stderr)
    found = re.search(r"ALONE_VMHWM (\d+)", out.stdout)
    if out.returncode != 0 or not found:
        sys.exit(f"the alone run of trial {trial} failed ({out.returncode}); log: {log_path}")
    return dict(trial=trial, overrides=overrides, peak_mib=round(int(found.group(1)) / 1024, 1))


def compiled_steps(sweep_dir: Path) -> dict[str, int]:
    """How the trials' phases got their compiled steps (each trial's metrics.json): "new" ones were
    traced (a fit model built), "reused" ones a kept fit model's; the test split's step too."""
    counts = {"new": 0, "reused": 0}
    for path in sweep_dir.glob("trial_*/metrics.json"):
        record = json.loads(path.read_text())
        how = [p.get("compiled") for p in record.get("phases", {}).values()]
        for h in [*how, record.get("test_compiled")]:
            if h in counts:
                counts[h] += 1
    return counts


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
    ap.add_argument("--no-alone", dest="alone", action="store_false", help="skip the alone run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the sweep dir and log here")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one more override"
    )
    args = ap.parse_args()
    if not args.tiny:
        need_shared()
    out = args.out or REPO / "benchmarks" / "results" / f"soak-{date.today().isoformat()}.jsonl"
    work = args.keep or Path(tempfile.mkdtemp(prefix="thaw-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = (TINY if args.tiny else REAL) + [f"hydra.sweeper.n_trials={args.trials}", *args.set]
    rows = soak(overrides, work / "sweep", work / "soak.log")
    label = ("tiny" if args.tiny else "cats_vs_dogs_local-96px") + "".join(
        f"+{o}" for o in args.set
    )
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
        seconds_after_5=round(at[max(at)]["seconds"] - at[5]["seconds"], 1) if 5 in at else None,
        compiled_steps=compiled_steps(work / "sweep"),
    )
    heavy = heaviest_trial(rows) if args.alone else None
    if heavy is not None:
        alone = run_alone(work / "sweep", heavy, work / "alone.log")
        summary["alone"] = alone
        summary["peak_over_alone"] = round(rows[-1]["VmHWM"] / alone["peak_mib"] - 1, 4)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(dict(bench="soak", label=label, **r)) + "\n")
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
