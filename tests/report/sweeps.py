"""Real Optuna studies on SQLite shaped like thaw sweeps: trials with run dirs and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

SPACE = {
    "unfreeze.depth": IntDistribution(0, 8),
    "lr.base": FloatDistribution(1e-5, 1e-2, log=True),
}
ABOUT = {
    "backbone": "mobilenet_v2 alpha 0.35",
    "weights": "/w/mobilenet_v2_0.35_no_top_imagenet.h5",
    "image_size": 160,
    "search_space": "unfreeze.depth 0..8, lr.base 1e-05..0.01 (log)",
    "data": "/data/hymenoptera",
    "images": {"train": 245, "validation": 76, "test": 77, "classes": 2},
    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1234},
    "pruner": {"_target_": "thaw.sweeper.pruners.StepMedianPruner", "n_startup_trials": 3},
}


def metrics(head: int, finetune: int, curve: list[float], secs: float, cache_s: float) -> dict:
    """metrics.json as a trial writes it: 2-epoch head phase on cached activations, then
    fine-tuning epochs of `secs` seconds each."""
    rows = [
        {
            "phase": "head" if i < head else "finetune",
            "epoch": i + 1,
            "val_accuracy": v,
            "seconds": 0.1 if i < head else secs,
        }
        for i, v in enumerate(curve)
    ]
    return {
        "history": rows,
        "phases": {
            "head": {"epochs": head, "cache": "pooled", "cache_seconds": cache_s},
            "finetune": {"epochs": finetune},
        },
        "time_breakdown": {"feature_extraction": cache_s, "compute": secs * len(rows)},
    }


def make_sweep(sw: Path, name: str = "s", plan=None, about=ABOUT):
    """A sweep dir with study.db: trial 0 builds the feature cache (20 s), the others reuse it."""
    sw.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{sw / 'study.db'}", direction="maximize"
    )
    study.set_user_attr("about", about)
    plan = plan or [
        ("COMPLETE", [0.70, 0.80, 0.85, 0.90, 0.91, 0.92]),
        ("PRUNED", [0.55, 0.60, 0.61]),
        ("COMPLETE", [0.72, 0.81, 0.84, 0.86, 0.88, 0.89]),
        ("FAIL", [0.52, 0.53]),
    ]
    for state, curve in plan:
        t = study.ask(SPACE)
        run_dir = sw / f"trial_{t.number}"
        run_dir.mkdir()
        cache_s = 20.0 if t.number == 0 else 0.01
        rec = metrics(2, 4, curve, 3.0, cache_s)
        (run_dir / "metrics.json").write_text(json.dumps(rec))
        t.set_user_attr("run_dir", str(run_dir))
        t.set_user_attr("head_epochs", 2)
        t.set_user_attr("objective_name", "val_accuracy")
        for step, v in enumerate(curve):
            t.report(v, step)
        if state == "COMPLETE":
            study.tell(t, curve[-1])
        else:
            if state == "FAIL":
                t.set_user_attr("error", "TrainingError: loss became nan in finetune epoch 1")
            study.tell(t, state=TrialState[state])
    return study
