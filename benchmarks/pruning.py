"""Choosing sweep=depth_lr's pruning rule: record trials once without pruning, then replay them
under each candidate rule, in many orders, with Optuna's real pruners.

    python benchmarks/pruning.py record --data hymenoptera --trials 20 --keep /tmp/pruning
    python benchmarks/pruning.py replay /tmp/pruning/hymenoptera-record --orders 200

`record` runs `experiment=cats_vs_dogs_local sweep=depth_lr` on a shared folder with the random
sampler, no pruner and no confirmation, so every trial trains as the preset says (early stopping
with trainer.patience included) and none is pruned: each trial dir keeps its per-epoch validation
accuracy and seconds (metrics.json history), and its total time. `replay` feeds those curves to an
in-memory Optuna study per rule and per order (a seeded permutation of the recorded trials): each
epoch is reported and `should_prune()` asked, exactly as thaw's trial callback does; a pruned trial
costs its time up to that epoch (its set-up and head phase included), a completed one its whole
time. The answer after each trial is the completed trial with the best validation objective (a
sweep's trials never look at the test split, so the replay scores answers by that objective; every
rule is scored the same way). Printed per rule: the answer's objective at the end and at equal CPU
budgets (a quarter, a half of what all trials cost without pruning), the CPU seconds spent, and the
share of trials after the start-up ones that complete.

What a replay leaves out: the sampler's adaptation (TPE draws from where earlier trials did well;
here the order is random), so it compares rules on the same pool of trials, not whole sweeps.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, SHARED, WEIGHTS, emit, timed  # noqa: E402


def record(args) -> None:
    data_dir = Path(args.data) if "/" in args.data else SHARED / "data" / args.data
    if not data_dir.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs {data_dir} and {WEIGHTS} (see ../shared/data/README.md)")
    sweep_dir = Path(args.keep) / f"{data_dir.name}-record"
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "--multirun",
        "experiment=cats_vs_dogs_local",
        "sweep=depth_lr",
        "logger=none",
        f"data.path={data_dir}",
        f"backbone.weights={WEIGHTS}",
        "trainer.save_model=false",
        "hydra/sweeper/sampler=random",
        f"hydra.sweeper.sampler.seed={args.seed}",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.baseline=false",
        "hydra.sweeper.confirm.top_k=0",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    secs, _ = timed(cmd, REPO, log_path=sweep_dir.with_suffix(".log"))
    emit(figure="pruning_record", data=data_dir.name, sweep_dir=str(sweep_dir), seconds=secs)


def load_trials(sweep_dir: Path) -> list[dict]:
    """One dict per recorded trial: its curve by Optuna step, its cost and its objective."""
    out = []
    for metrics in sorted(sweep_dir.glob("trial_*/metrics.json")):
        m = json.loads(metrics.read_text())
        if m.get("status") != "complete":
            continue
        curve = [
            (int(r["epoch"]) - 1, float(r["val_accuracy"]), float(r["seconds"]))
            for r in m["history"]
        ]
        out.append(
            {
                "trial": metrics.parent.name,
                "curve": curve,  # (step, val_accuracy, seconds), both phases
                "total": float(m["time_breakdown"]["total"]),
                "objective": float(m["objective"]),
                "num_val": int(m["num_val"]),
            }
        )
    return out


def rules(head_epochs: int, finetune_epochs: int) -> dict:
    """The candidates: name -> a fresh pruner (one per replayed sweep)."""
    import optuna

    from thaw.sweeper.pruners import StepMedianPruner

    first, last = head_epochs, head_epochs + finetune_epochs

    def step_median(**kw):
        return lambda: StepMedianPruner(n_warmup_steps=first, **kw)

    return {
        "none": optuna.pruners.NopPruner,
        "plain step median (current value, complete only, 3 start-up)": step_median(
            n_startup_trials=3
        ),
        "best since warmup, pruned in reference, 1 SE, 3 start-up": step_median(
            n_startup_trials=3, best_since_warmup=True, include_pruned=True, tolerance_se=1.0
        ),
        "the same with 0 SE": step_median(
            n_startup_trials=3, best_since_warmup=True, include_pruned=True
        ),
        "the same with 2 SE (sweep=depth_lr since 2026-12-03)": step_median(
            n_startup_trials=3, best_since_warmup=True, include_pruned=True, tolerance_se=2.0
        ),
        "1 SE with 5 start-up": step_median(
            n_startup_trials=5, best_since_warmup=True, include_pruned=True, tolerance_se=1.0
        ),
        "1 SE from the 2nd fine-tuning epoch": lambda: StepMedianPruner(
            n_startup_trials=3,
            n_warmup_steps=first + 1,
            best_since_warmup=True,
            include_pruned=True,
            tolerance_se=1.0,
        ),
        "percentile 25 (best so far)": lambda: optuna.pruners.PercentilePruner(
            25.0, n_startup_trials=3, n_warmup_steps=first
        ),
        "successive halving (rf 2)": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first + 1, reduction_factor=2
        ),
        "successive halving (rf 3)": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first + 1, reduction_factor=3
        ),
        "hyperband (rf 3)": lambda: optuna.pruners.HyperbandPruner(
            min_resource=first + 1, max_resource=last, reduction_factor=3
        ),
    }


def replay_one(trials: list[dict], make_pruner, order: list[int], total: int) -> list[tuple]:
    """One sweep over `order`: per trial (cumulative seconds, answer's objective, completed?). As in
    thaw's callback, the run's last planned epoch (`total` - 1) is recorded, never judged."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    spent, best, out = 0.0, None, []  # out: (seconds so far, the answer's objective, completed?)
    for i in order:
        t = trials[i]
        trial = study.ask()
        trial.set_user_attr("num_val", t["num_val"])
        cost, pruned = t["total"], False
        for step, value, _ in t["curve"]:
            trial.report(value, step)
            if step + 1 < total and trial.should_prune():
                cost -= sum(s for st, _, s in t["curve"] if st > step)
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, t["objective"])
            if best is None or t["objective"] > best["objective"]:
                best = t
        spent += cost
        out.append((spent, best["objective"] if best else None, not pruned))
    return out


def answer_at(path: list[tuple], budget: float):
    """The answer's objective once `budget` CPU seconds are spent (None: nothing complete)."""
    answer = None
    for spent, value, _ in path:
        if spent > budget:
            break
        answer = value
    return answer


def replay(args) -> None:
    import random

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = Path(args.sweep_dir)
    trials = load_trials(sweep_dir)
    if len(trials) < 6:
        sys.exit(f"{sweep_dir}: {len(trials)} complete trials recorded; need at least 6")
    import yaml

    cfg = yaml.safe_load((sweep_dir / trials[0]["trial"] / "resolved_config.yaml").read_text())
    head, finetune = cfg["trainer"]["head_epochs"], cfg["trainer"]["finetune_epochs"]
    full = sum(t["total"] for t in trials)
    best_possible = max(t["objective"] for t in trials)
    rng = random.Random(args.seed)
    orders = [rng.sample(range(len(trials)), len(trials)) for _ in range(args.orders)]
    for name, make in rules(head, finetune).items():
        paths = [replay_one(trials, make, order, head + finetune) for order in orders]
        row = {"figure": "pruning_replay", "data": args.data or sweep_dir.name, "rule": name}
        for label, budget in (("quarter", full / 4), ("half", full / 2), ("all", float("inf"))):
            answers = [answer_at(p, budget) for p in paths]
            got = [a for a in answers if a is not None]
            row[f"val_at_{label}_budget"] = round(statistics.mean(got), 4) if got else None
            row[f"no_answer_at_{label}_budget"] = len(answers) - len(got)
        row["cpu_seconds"] = round(statistics.mean(p[-1][0] for p in paths), 1)
        row["cpu_share_of_no_pruning"] = round(row["cpu_seconds"] / full, 3)
        later = [c for p in paths for _, _, c in p[3:]]
        row["later_complete_share"] = round(sum(later) / len(later), 3)
        row.update(trials=len(trials), orders=len(orders), best_recorded_val=best_possible)
        emit(**row)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the unpruned trials")
    rec.add_argument(
        "--data", default="hymenoptera", help="a folder under ../shared/data, or a path"
    )
    rec.add_argument("--trials", type=int, default=20)
    rec.add_argument("--seed", type=int, default=7, help="the random sampler's seed")
    rec.add_argument("--keep", required=True, metavar="DIR", help="where the sweep dir goes")
    rep = sub.add_parser("replay", help="replay recorded trials under each rule")
    rep.add_argument("sweep_dir")
    rep.add_argument("--orders", type=int, default=200, help="random orders of the trials")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--data", help="label for the output rows (default: the dir's name)")
    args = ap.parse_args()
    record(args) if args.command == "record" else replay(args)


if __name__ == "__main__":
    main()
