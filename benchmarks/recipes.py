"""The experiment tables of experiments/README.md: recipes on a real photo folder, test accuracy
once.

    python benchmarks/recipes.py --data cats_vs_dogs           # probe, tutorial, sweep, random init
    python benchmarks/recipes.py --data hymenoptera --rows probe,sweep --trials 12
    python benchmarks/recipes.py --data hymenoptera --views-vs-fly --seeds 1,2,3
    python benchmarks/recipes.py --collect multirun/sweeps/NAME --log sweep.log --data hymenoptera

Rows (160 px, MobileNetV2 alpha 0.35 shared weights, half of the validation folder held out as the
test split, evaluated once per run; a sweep evaluates only its best trial):
  probe     frozen-base linear probe: depth 0, head trained to convergence (30 epochs, patience 5)
  tutorial  the TensorFlow tutorial's recipe: flip + rotation 0.2, 10 head epochs at 1e-4, then the
            top 7 blocks 10 epochs at 1e-5
  preset    experiment=cats_vs_dogs_local as it is (one run, no search)
  sweep     the default sweep: experiment=cats_vs_dogs_local sweep=depth_lr, --trials trials
  finetune  the wider search: sweep=finetune, --trials trials (with --timeout: at most that many
            seconds of search, to compare both presets at the same cost)
  random    random-init control (backbone.weights=null, BatchNorm trains, no cache)
A sweep row carries the sweep's answer: the baseline, the confirmed winner, its gain over the frozen
base with a 95 % interval (validation, over seeds; test, paired on the same images), what the
confirmation cost against the search, and how many trials completed after the pruner's start-up.
--collect: the same row from a sweep already run (its dir and its log, for the wall time).
--views-vs-fly: the same augmented recipe with cached views (trainer.augment_views=8) and with
fresh draws every epoch on images (trainer.augment_views=0), one run per seed each.
Prints one JSON line per run. Needs ../shared (real data and weights).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, SHARED, WEIGHTS, emit, timed  # noqa: E402

ROWS = {
    "probe": [
        "unfreeze.depth=0",
        "trainer.finetune_epochs=0",
        "trainer.head_epochs=30",
        "trainer.patience=5",
        "lr.base=1e-3",
        "augment=none",
    ],
    "tutorial": [
        "augment=flip",
        "augment.rotation=0.2",
        "unfreeze.depth=7",
        "lr.base=1e-4",
        "lr.finetune_factor=0.1",
        "trainer.head_epochs=10",
        "trainer.finetune_epochs=10",
        "trainer.patience=0",
    ],
    "preset": [],
    "random": [
        "backbone.weights=null",
        "trainer.head_epochs=3",
        "trainer.finetune_epochs=3",
        "trainer.patience=0",
        "augment=none",
    ],
}
# the augmented recipe compared with and without cached views
VIEWS_RECIPE = [
    "augment=standard",
    "unfreeze.depth=5",
    "lr.base=1e-3",
    "trainer.head_epochs=5",
    "trainer.finetune_epochs=5",
    "trainer.patience=0",
]


def run_one(data_dir, run_dir, extra):
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "experiment=cats_vs_dogs_local",
        "logger=none",
        f"data.path={data_dir}",
        f"backbone.weights={WEIGHTS}",
        "trainer.save_model=true",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    secs, _ = timed(cmd, REPO, log_path=Path(run_dir).with_suffix(".log"))
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    return secs, m


def run_sweep(data_dir, sweep_dir, trials, extra=(), preset="depth_lr"):
    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "--multirun",
        "experiment=cats_vs_dogs_local",
        f"sweep={preset}",
        "logger=none",
        f"data.path={data_dir}",
        f"backbone.weights={WEIGHTS}",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]
    secs, _ = timed(cmd, REPO, log_path=Path(sweep_dir).with_suffix(".log"))
    return secs, yaml.safe_load((Path(sweep_dir) / "optimization_results.yaml").read_text())


def sweep_row(sweep_dir, res, log_text=None):
    """The answer a sweep gave, from its optimization_results.yaml (and its log for older
    sweeps)."""
    import re
    from datetime import datetime

    import optuna

    best = res.get("best_trial") or {}
    row = {
        "trial_counts": {k: v for k, v in res["trial_counts"].items() if v},
        "best_trial": best.get("number"),
        "best_params": res.get("best_params"),
        "val_accuracy": res.get("best_value"),
        "val_mean_over_seeds": best.get("mean"),
        "baseline": res.get("baseline"),
        "gain_vs_baseline": res.get("gain_vs_baseline"),
        "test_accuracy": best.get("test_accuracy"),
        "test_interval": best.get("test_interval"),
        "num_test": best.get("num_test"),
        "baseline_test_accuracy": best.get("baseline_test_accuracy"),
        "test_gain_vs_baseline": best.get("test_gain_vs_baseline"),
        "verdict": res.get("verdict"),
        "seconds": res.get("seconds"),
        "after_startup": res.get("after_startup"),
    }
    if row["seconds"] is None and log_text:  # a sweep from before these fields: read them back
        stamp = re.compile(r"^\[(\S+ \S+?),\d+\]\[HYDRA\] (confirming:|verdict:)", re.M)
        marks = {m.group(2): datetime.fromisoformat(m.group(1)) for m in stamp.finditer(log_text)}
        study = optuna.load_study(
            study_name=res["study_name"], storage=f"sqlite:///{Path(sweep_dir) / 'study.db'}"
        )
        search = sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.trials
            if t.datetime_complete and t.datetime_start
        )
        row["seconds"] = {"search": round(search, 1)}
        if len(marks) == 2:
            conf = (marks["verdict:"] - marks["confirming:"]).total_seconds()
            row["seconds"].update(
                confirmation=conf,
                confirmation_share=round(conf / search, 3),
                note="confirmation read from the log: 'confirming:' to 'verdict:'",
            )
        later = [
            t
            for t in sorted(study.trials, key=lambda t: t.number)[3:]
            if t.state.name in ("COMPLETE", "PRUNED")
        ]
        row["after_startup"] = {
            "startup_trials": 3,
            "later_trials": len(later),
            "later_complete": sum(t.state.name == "COMPLETE" for t in later),
            "best_found_after_startup": study.best_trial.number >= 3,
        }
    return row


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", default="cats_vs_dogs", help="a folder under ../shared/data, or a path"
    )
    ap.add_argument("--rows", default="probe,tutorial,sweep,random")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument(
        "--timeout",
        type=float,
        help="sweep rows: hydra.sweeper.timeout (search seconds; --trials stays the upper bound)",
    )
    ap.add_argument("--views-vs-fly", action="store_true")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra override, all runs"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep run dirs and logs here")
    ap.add_argument(
        "--collect", metavar="SWEEP_DIR", help="emit the sweep row of a sweep already run"
    )
    ap.add_argument(
        "--log", metavar="FILE", help="with --collect: the sweep's output (wall time, older sweeps)"
    )
    args = ap.parse_args()
    if args.collect:
        res = yaml.safe_load((Path(args.collect) / "optimization_results.yaml").read_text())
        log_text = Path(args.log).read_text() if args.log else None
        wall = None
        if log_text:
            import re

            m = re.search(r"^wall ([0-9.]+) s$", log_text, re.M)  # /usr/bin/time -f 'wall %e s'
            wall = float(m.group(1)) if m else None
        emit(
            data=args.data,
            row="sweep",
            sweep_dir=args.collect,
            study_name=res["study_name"],
            wall_seconds=wall,
            n_trials=res["n_trials"],
            **sweep_row(args.collect, res, log_text),
        )
        return
    data_dir = Path(args.data) if "/" in args.data else SHARED / "data" / args.data
    if not data_dir.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs {data_dir} and {WEIGHTS} (see ../shared/data/README.md)")
    tmp = args.keep or tempfile.mkdtemp(prefix="thaw-recipes-")
    Path(tmp).mkdir(parents=True, exist_ok=True)
    name = data_dir.name
    if args.views_vs_fly:
        for seed in args.seeds.split(","):
            for variant, extra in (
                ("cached_views", ["trainer.augment_views=8"]),
                ("on_the_fly", ["trainer.augment_views=0"]),
            ):
                secs, m = run_one(
                    data_dir,
                    Path(tmp) / f"{name}-{variant}-{seed}",
                    [*VIEWS_RECIPE, *extra, f"trainer.seed={seed}", *args.set],
                )
                emit(
                    data=name,
                    figure="views_vs_fly",
                    variant=variant,
                    seed=int(seed),
                    wall_seconds=round(secs, 1),
                    val_accuracy=m["val_accuracy"],
                    test_accuracy=m.get("test_accuracy"),
                    feature_cache=m["feature_cache"],
                )
        return
    for row in args.rows.split(","):
        if row in ("sweep", "finetune"):
            preset = "depth_lr" if row == "sweep" else "finetune"
            budget = [f"hydra.sweeper.timeout={args.timeout}"] if args.timeout else []
            sweep_dir = Path(tmp) / f"{name}-{row}"
            secs, res = run_sweep(
                data_dir, sweep_dir, args.trials, [*budget, *args.set], preset=preset
            )
            emit(
                data=name,
                row=row,
                preset=f"sweep={preset}",
                timeout=args.timeout,
                wall_seconds=round(secs, 1),
                n_trials=args.trials,
                **sweep_row(sweep_dir, res),
            )
            continue
        secs, m = run_one(data_dir, Path(tmp) / f"{name}-{row}", [*ROWS[row], *args.set])
        emit(
            data=name,
            row=row,
            wall_seconds=round(secs, 1),
            val_accuracy=m["val_accuracy"],
            test_accuracy=m.get("test_accuracy"),
            objective_epoch=m.get("objective_epoch"),
            epochs=len(m["history"]),
            feature_cache=m["feature_cache"],
        )


if __name__ == "__main__":
    main()
