"""Idle slots: batch barrier vs continuous scheduling, N = 2 and 4 in flight, joblib launcher.

    python benchmarks/scheduling.py             # 60 trials a run, N = 2 and 4, both modes (13 min)
    python benchmarks/scheduling.py --trials 80 --scale 0.4 --jobs 4     # longer trials (20 min)

The trials measure scheduling, not compute: each is this file run as a Hydra app that sleeps. Its
full length is drawn (seeded by the trial number) from the per-trial times of a real sweep
(benchmarks/results/sweep_speed-2026-11-29-full-reuse.jsonl: depth_lr on the shared cats_vs_dogs,
completed trials 3 to 200 s) times --scale; it runs 8 "epochs" of equal length and reports a value
after each, so Optuna's MedianPruner stops the poor ones early, as in a real sweep. The sampler is
RandomSampler(seed=7), the same draws in both modes.

`batch` is hydra.sweeper.scheduling=batch: n_jobs trials launched in one launcher call, the next
batch waiting for the slowest (hydra-optuna-sweeper's loop, and thaw's before issue 32);
`continuous` (the default) launches the next trial the moment one ends. Per run: makespan (first
trial start to last trial end), busy time (sum of the trials' own durations, measured inside the
jobs: launcher, Hydra and sweeper overhead count as idle), idle slot share = 1 - busy / (N x
makespan), and the lower bound max(busy / N, longest trial). Continuous runs also get the idle
share a scheduler that cost nothing would leave with the same trials: in the order they started
(`tail_idle_share`) and over 2000 random orders (`random_order_tail_idle_share`): the part of the
idle time that is the sweep's tail, not the scheduler. One JSON line per run; --out writes them
(default benchmarks/results/scheduling-<date>.jsonl).
"""

import argparse
import bisect
import heapq
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

# per-trial seconds of the completed trials of a real depth_lr sweep (sweep_speed full-reuse run)
REAL_SECONDS = [85.9, 82.8, 201.5, 89.6, 82.5, 84.3, 197.5, 106.7, 33.6, 31.6, 137.1, 3.3]
EPOCHS = 8
HERE = Path(__file__).resolve().parent


def app_main():
    """The Hydra app: one sleeping trial (`python scheduling.py app --multirun ...`)."""
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        name="scheduling_bench",
        node={
            "defaults": [
                "_self_",
                {"override hydra/sweeper": "thaw"},
                {"override hydra/launcher": "joblib"},
            ],
            "x": 0.5,
            "y": 0.5,
            "scale": 0.1,
            "marks": "???",
            "seed": 0,
        },
    )
    hydra.main(version_base=None, config_path=None, config_name="scheduling_bench")(_trial)()


def _trial(cfg) -> float:
    import optuna

    from thaw.sweeper import current_trial

    trial = current_trial()
    start = time.time()
    rng = random.Random(cfg.seed * 100_003 + trial.number)
    length = rng.choice(REAL_SECONDS) * float(cfg.scale)
    quality = 1.0 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.6) ** 2
    value, state = 0.0, "complete"
    try:
        for epoch in range(EPOCHS):
            time.sleep(length / EPOCHS)
            value = quality * (1 - 0.6 ** (epoch + 1)) + rng.gauss(0, 0.01)
            trial.report(value, epoch)
            if trial.should_prune():
                state = "pruned"
                raise optuna.TrialPruned(f"epoch {epoch}")
    finally:
        rec = {"trial": trial.number, "start": start, "end": time.time(), "state": state}
        Path(cfg.marks, f"{trial.number}.json").write_text(json.dumps(rec))
    return value


def run(mode: str, n_jobs: int, n_trials: int, scale: float, work: Path) -> dict:
    marks = work / f"marks-{mode}-{n_jobs}"
    marks.mkdir(parents=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "app",
        "--multirun",
        f"hydra.sweep.dir={work / f'sweep-{mode}-{n_jobs}'}",
        f"marks={marks}",
        f"scale={scale}",
        "x=interval(0,1)",
        "y=interval(0,1)",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.n_jobs={n_jobs}",
        f"hydra.sweeper.scheduling={mode}",
        "hydra.sweeper.study_name=bench",
        "hydra.sweeper.confirm.top_k=0",
        "hydra.sweeper.devices=[]",
        "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 7}",
        "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 4,"
        " n_warmup_steps: 2}",
        f"hydra.launcher.n_jobs={n_jobs}",
    ]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=dict(os.environ))
    wall = time.time() - t0
    if out.returncode != 0:
        sys.exit(f"{mode} N={n_jobs} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    recs = [json.loads(p.read_text()) for p in marks.glob("*.json")]
    _add_sweeper_times(recs, out.stdout + out.stderr)
    return figures(recs, mode, n_jobs, n_trials, scale, wall)


def _add_sweeper_times(recs, log: str) -> None:
    """When the sweeper asked each trial and when it settled it (its log lines' timestamps)."""
    from datetime import datetime

    def stamp(text):
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    asked, settled = {}, {}
    for m in re.finditer(
        r"\[([\d:, -]+)\]\[HYDRA\] trial (\d+)(: | (?:COMPLETE|PRUNED|FAIL) )", log
    ):
        (asked if m.group(3) == ": " else settled)[int(m.group(2))] = stamp(m.group(1))
    for r in recs:
        r["asked"], r["settled"] = asked.get(r["trial"]), settled.get(r["trial"])


def list_schedule_idle(durations: list[float], n_jobs: int) -> float:
    """Idle share of a scheduler that costs nothing: each trial, in the given order, starts the
    moment a slot frees. What is left is the tail (slots with nothing more to run)."""
    slots = [0.0] * n_jobs
    for d in durations:
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return 1 - sum(durations) / (n_jobs * max(slots))


def tail_figures(recs, n_jobs: int, orders: int = 2000) -> dict:
    """The idle share the tail alone leaves: these trials' own durations in the order they started,
    and over `orders` random orders of them (median, 10th and 90th percentile)."""
    started = [r["end"] - r["start"] for r in sorted(recs, key=lambda r: r["start"])]
    rng = random.Random(0)
    shuffled = sorted(
        list_schedule_idle(rng.sample(started, len(started)), n_jobs) for _ in range(orders)
    )
    return dict(
        tail_idle_share=round(list_schedule_idle(started, n_jobs), 4),
        random_order_tail_idle_share={
            q: round(shuffled[int(f * (orders - 1))], 4)
            for q, f in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))
        },
    )


def figures(recs, mode, n_jobs, n_trials, scale, wall) -> dict:
    spans = [r["end"] - r["start"] for r in recs]
    makespan = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    busy = sum(spans)
    bound = max(busy / n_jobs, max(spans))
    timed = [r for r in recs if r.get("asked") and r.get("settled")]
    held = [r["settled"] - r["asked"] for r in timed]
    span = max(r["settled"] for r in timed) - min(r["asked"] for r in timed) if timed else 0
    overhead = sorted(r["settled"] - r["asked"] - (r["end"] - r["start"]) for r in timed)
    asks = sorted(r["asked"] for r in timed)
    # the sweeper's own part of a freed slot: a trial settled -> the next trial asked
    after = [(bisect.bisect_left(asks, r["settled"]), r["settled"]) for r in timed]
    gaps = sorted(asks[i] - settled for i, settled in after if i < len(asks))
    return dict(
        bench="scheduling",
        mode=mode,
        n_jobs=n_jobs,
        launcher="joblib",
        trials=len(recs),
        n_trials=n_trials,
        pruned=sum(r["state"] == "pruned" for r in recs),
        scale=scale,
        makespan_s=round(makespan, 2),
        busy_s=round(busy, 2),
        idle_share=round(1 - busy / (n_jobs * makespan), 4),
        lower_bound_s=round(bound, 2),
        makespan_over_bound=round(makespan / bound, 4),
        longest_s=round(max(spans), 2),
        # continuous: a slot holds its trial from the ask to the settle (launcher, Hydra and job
        # start-up included), so this share is what the scheduler alone leaves idle; a batch's
        # trials are settled together, so there it would hide the barrier (None)
        slot_idle_share=round(1 - sum(held) / (n_jobs * span), 4)
        if timed and mode == "continuous"
        else None,
        job_overhead_s_median=round(overhead[len(overhead) // 2], 2)
        if timed and mode == "continuous"
        else None,
        sweeper_gap_s_median=round(gaps[len(gaps) // 2], 3)
        if gaps and mode == "continuous"
        else None,
        command_wall_s=round(wall, 1),
        **(tail_figures(recs, n_jobs) if mode == "continuous" else {}),
        trial_seconds=[round(s, 2) for s in sorted(spans)],
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--scale", type=float, default=0.1, help="seconds per real-sweep second")
    ap.add_argument("--jobs", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--modes", nargs="+", default=["batch", "continuous"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or HERE / "results" / f"scheduling-{date.today().isoformat()}.jsonl"
    rows = []
    with tempfile.TemporaryDirectory(prefix="thaw-sched-") as tmp:
        for n_jobs in args.jobs:
            for mode in args.modes:
                row = run(mode, n_jobs, args.trials, args.scale, Path(tmp))
                rows.append(row)
                short = {k: v for k, v in row.items() if k != "trial_seconds"}
                print(json.dumps(short), flush=True)
    with open(out, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    head = f"{'N':>2} {'mode':<10} {'makespan':>9} {'bound':>7} {'ratio':>6} {'idle':>6}"
    print(f"{head} {'tail':>6}")
    for r in rows:
        tail = f"{100 * r['tail_idle_share']:>5.1f}%" if "tail_idle_share" in r else f"{'-':>6}"
        print(
            f"{r['n_jobs']:>2} {r['mode']:<10} {r['makespan_s']:>8.1f}s {r['lower_bound_s']:>6.1f}s"
            f" {r['makespan_over_bound']:>6.3f} {100 * r['idle_share']:>5.1f}% {tail}"
        )
    print(f"raw: {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "app":
        sys.argv.pop(1)
        app_main()
    else:
        main()
