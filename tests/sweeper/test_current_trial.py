"""Pruning for any Hydra app (thaw.sweeper.current_trial, PruningCallback) and params whose range
follows a searched choice. The apps in tests/apps are not thaw-train; they run as real
subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

APPS = Path(__file__).parents[1] / "apps"


def run_app(script, *args, multirun=True):
    proc = subprocess.run(
        [sys.executable, script, *(["--multirun"] if multirun else []), *args],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HYDRA_FULL_ERROR="0"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def trials(sweep_dir, name):
    study = optuna.load_study(storage=f"sqlite:///{sweep_dir / 'study.db'}", study_name=name)
    return {t.params.get("rate", t.number): t for t in study.trials}


@pytest.mark.parametrize(
    "launcher",
    [[], ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.launcher.n_jobs=2"]],
    ids=["basic", "joblib"],
)
def test_foreign_app_is_pruned_at_its_reported_step(tmp_path, launcher):
    proc = run_app("curve_app.py", f"hydra.sweep.dir={tmp_path}", *launcher)
    by_rate = trials(tmp_path, "curve")
    steep, flat = by_rate[2.0], by_rate[0.5]
    # ThresholdPruner(upper=3): the steep curve (2, 4, ...) is stopped at step 1, the flat one runs
    # out
    assert steep.state == TrialState.PRUNED and steep.intermediate_values == {0: 2.0, 1: 4.0}
    assert steep.user_attrs["pruned"] == "step 1: 4.0"
    assert flat.state == TrialState.COMPLETE and flat.value == 2.5
    assert flat.intermediate_values == {s: 0.5 * (s + 1) for s in range(5)}
    for t in (steep, flat):  # the foreign job's real run dir, on the trial and in the log
        assert t.user_attrs["run_dir"] == str(tmp_path / f"trial_{t.number}")
        assert f"(run dir {tmp_path / f'trial_{t.number}'})" in proc.stdout + proc.stderr


def test_foreign_app_without_a_pruner_runs_every_trial_to_the_end(tmp_path):
    run_app("curve_app.py", f"hydra.sweep.dir={tmp_path}", "hydra/sweeper/pruner=none")
    by_rate = trials(tmp_path, "curve")
    assert {t.state for t in by_rate.values()} == {TrialState.COMPLETE}
    assert by_rate[2.0].value == 10.0 and len(by_rate[2.0].intermediate_values) == 5


def test_current_trial_is_a_no_op_in_a_plain_run(tmp_path):
    proc = run_app("curve_app.py", f"hydra.run.dir={tmp_path}", multirun=False)
    assert "in_sweep=False value=5.0" in proc.stdout


def test_range_follows_the_searched_choice(tmp_path):
    """depth: int(interval(0, ${model.n})) with model=choice(small, big): each trial's depth range
    is its own model's (2 or 10 blocks), not the default model's; the app fails any depth outside
    it."""
    run_app("depth_app.py", f"hydra.sweep.dir={tmp_path}")
    study = optuna.load_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="depth")
    assert {t.state for t in study.trials} == {TrialState.COMPLETE} and len(study.trials) == 12
    n = {"small": 2, "big": 10}
    assert all(0 <= t.params["depth"] <= n[t.params["model"]] for t in study.trials)
    assert any(
        t.params["depth"] > 2 for t in study.trials
    )  # the big model's range reaches past small's
    assert {t.params["model"] for t in study.trials} == {"small", "big"}


def test_keras_pruning_callback_stops_fit_through_the_trial():
    import keras
    import numpy as np

    from thaw.sweeper import CurrentTrial, PruningCallback

    class Handle:  # what current_trial() wraps: a real Optuna study and trial
        def __init__(self, study, trial):
            self.study, self.trial, self.number = study, trial, trial.number

    study = optuna.create_study(
        direction="minimize", pruner=optuna.pruners.ThresholdPruner(lower=0.0, upper=1e-9)
    )
    trial = study.ask()
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.zeros((64, 1))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0: loss="):
        model.fit(
            x,
            y,
            epochs=3,
            verbose=0,
            callbacks=[PruningCallback("loss", trial=CurrentTrial(Handle(study, trial)))],
        )
    frozen = study._storage.get_trial(trial._trial_id)
    assert list(frozen.intermediate_values) == [0] and frozen.intermediate_values[0] > 0
    # outside a sweep the callback does nothing, and a missing monitor is not looked up
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[PruningCallback("no_such_metric")])
    assert len(history.history["loss"]) == 2
    # several objectives: Optuna cannot prune them; reports are ignored instead of raising
    multi = optuna.create_study(directions=["minimize", "minimize"])
    mtrial = multi.ask()
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[PruningCallback("loss", trial=CurrentTrial(Handle(multi, mtrial)))],
    )
    assert multi._storage.get_trial(mtrial._trial_id).intermediate_values == {}
