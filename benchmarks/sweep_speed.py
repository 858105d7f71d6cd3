"""The same depth_lr sweep twice: cache, pruning, compiled-step reuse and the fused Adam off (how
other tools run it: Keras' Adam, a fresh Keras compile per phase and trial), then all on.

    python benchmarks/sweep_speed.py           # 8 trials, 160 px, full shared cats_vs_dogs
    python benchmarks/sweep_speed.py --quick   # 6 trials, 96 px, 150 images per class and split
    python benchmarks/sweep_speed.py --augment # both with augment=standard: the baseline draws
                                               # augmentations on the fly (trainer.augment_views=0),
                                               # thaw trains on 8 cached views per image

Prints one JSON line per sweep and one with the speed-up. Needs ../shared (real data and weights).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, emit, need_shared, timed  # noqa: E402

SETUP = ("import", "data", "build", "trace", "save", "other")


def trial_breakdown(m: dict) -> dict:
    """One trial's time_breakdown and its set-up share (what is not compute, feature extraction,
    checkpoints or test evaluation)."""
    tb = m.get("time_breakdown") or {}
    total = tb.get("total") or 0.0
    setup = sum(tb.get(k, 0.0) for k in SETUP)
    return dict(
        status=m.get("status"),
        depth=(m.get("unfreeze") or {}).get("depth"),
        total_s=round(total, 1),
        setup_share=round(setup / total, 3) if total else None,
        breakdown={k: round(v, 1) for k, v in tb.items() if k != "total" and v >= 0.05},
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument(
        "--only", choices=["baseline", "thaw"], help="run one variant (no speed-up line)"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep the sweep dirs and logs here")
    ap.add_argument("--augment", action="store_true", help="augmentation on in both variants")
    args = ap.parse_args()
    need_shared()
    n_trials = args.trials or (6 if args.quick else 8)
    common = [
        "experiment=cats_vs_dogs_local",
        "sweep=depth_lr",
        "logger=none",
        "trainer.save_model=false",
        f"data.path={DATA}",
        f"backbone.weights={WEIGHTS}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.sampler.seed=7",
        "hydra.sweeper.sampler.n_startup_trials=3",
        # the schedule this benchmark has always measured: 5 + 5 epochs, no early stop
        "trainer.head_epochs=5",
        "trainer.finetune_epochs=5",
        "trainer.patience=0",
        "augment=standard" if args.augment else "augment=none",
    ]
    if args.quick:
        common += [
            "backbone.image_size=96",
            "data.max_per_class=150",
            "trainer.head_epochs=3",
            "trainer.finetune_epochs=3",
        ]
    variants = {
        "baseline": [
            "trainer.cache_features=false",
            "trainer.reuse_compiled=false",
            "trainer.fused_optimizer=false",
            "hydra.sweeper.pruner._target_=optuna.pruners.NopPruner",
            "~hydra.sweeper.pruner.n_startup_trials",
            "~hydra.sweeper.pruner.n_warmup_steps",
            "~hydra.sweeper.pruner.best_since_warmup",
            "~hydra.sweeper.pruner.include_pruned",
            "~hydra.sweeper.pruner.tolerance_se",
        ]
        + (["trainer.augment_views=0"] if args.augment else []),
        "thaw": ["trainer.cache_features=auto"],
    }
    if args.only:
        variants = {args.only: variants[args.only]}
    results = {}
    with tempfile.TemporaryDirectory(prefix="thaw-bench-") as tmp:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for name, extra in variants.items():
            sweep_dir = Path(tmp) / name
            cmd = [
                sys.executable,
                "-m",
                "thaw.commands.train",
                "--multirun",
                *common,
                *extra,
                f"hydra.sweep.dir={sweep_dir}",
                f"hydra.sweeper.study_name=bench-{name}",
            ]
            secs, _ = timed(cmd, REPO, log_path=Path(tmp) / f"{name}.log")
            res = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
            results[name] = (secs, res)
            for m in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime):
                emit(figure="trial", variant=name, **trial_breakdown(json.loads(m.read_text())))
            emit(
                figure="sweep",
                variant=name,
                quick=args.quick,
                augment=args.augment,
                n_trials=n_trials,
                wall_seconds=round(secs, 1),
                best_value=res.get("best_value"),
                best_params=res.get("best_params"),
                trial_counts={k: v for k, v in res["trial_counts"].items() if v},
            )
    if args.only:
        return
    (b_secs, b_res), (t_secs, t_res) = results["baseline"], results["thaw"]
    emit(
        figure="speedup",
        quick=args.quick,
        augment=args.augment,
        speedup=round(b_secs / t_secs, 2),
        best_value_delta_points=round(
            100 * ((t_res.get("best_value") or 0) - (b_res.get("best_value") or 0)), 2
        ),
    )


if __name__ == "__main__":
    main()
