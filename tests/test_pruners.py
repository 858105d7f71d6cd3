"""StepMedianPruner on real Optuna studies (SQLite files), against Optuna's own MedianPruner."""

import math

import optuna
import pytest

from thaw.sweeper.pruners import StepMedianPruner

# measured per-epoch val accuracy of three finished trials (5 head + 5 fine-tune epochs)
FINISHED = [
    [0.936, 0.944, 0.944, 0.953, 0.954, 0.939, 0.945, 0.951, 0.953, 0.955],
    [0.929, 0.940, 0.944, 0.950, 0.950, 0.931, 0.951, 0.956, 0.947, 0.950],
    [0.888, 0.916, 0.926, 0.930, 0.934, 0.927, 0.928, 0.925, 0.933, 0.939],
]
# a strong head phase, then the fine-tune collapses
COLLAPSING = [0.948, 0.950, 0.958, 0.955, 0.933, 0.841, 0.878, 0.871, 0.903, 0.913]


def study_with(pruner, tmp_path, finished=FINISHED, direction="maximize"):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", pruner=pruner, direction=direction)
    for curve in finished:
        t = study.ask()
        for step, v in enumerate(curve):
            t.report(v, step)
        study.tell(t, curve[-1])
    return study


def first_pruned_step(study, curve):
    t = study.ask()
    for step, v in enumerate(curve):
        t.report(v, step)
        if t.should_prune():
            return step
    return None


def test_collapsing_finetune_is_pruned_at_its_first_bad_step(tmp_path):
    study = study_with(StepMedianPruner(n_startup_trials=3, n_warmup_steps=5), tmp_path)
    assert first_pruned_step(study, COLLAPSING) == 5


def test_optunas_median_pruner_lets_the_head_phase_peak_shield_it(tmp_path):
    """Why thaw has its own: Optuna compares the best value so far, 0.958 from the head phase."""
    study = study_with(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5), tmp_path)
    assert first_pruned_step(study, COLLAPSING) is None


def test_good_trial_survives(tmp_path):
    study = study_with(StepMedianPruner(n_startup_trials=3, n_warmup_steps=0), tmp_path)
    assert first_pruned_step(study, [v + 0.01 for v in FINISHED[0]]) is None


def test_no_pruning_before_warmup(tmp_path):
    study = study_with(StepMedianPruner(n_startup_trials=3, n_warmup_steps=7), tmp_path)
    assert first_pruned_step(study, [0.5] * 10) == 7


def test_no_pruning_before_startup_trials_finished(tmp_path):
    study = study_with(StepMedianPruner(n_startup_trials=4), tmp_path)  # only 3 finished
    assert first_pruned_step(study, [0.5] * 10) is None


def test_interval_steps(tmp_path):
    study = study_with(StepMedianPruner(n_startup_trials=1, n_warmup_steps=1, interval_steps=3), tmp_path)
    # checked at steps 1, 4, 7: bad only from step 2 on -> first checked bad step is 4
    assert first_pruned_step(study, [0.99, 0.99, 0.5, 0.5, 0.5, 0.5]) == 4


def test_minimize_and_nan(tmp_path):
    losses = [[1.0 - v for v in c] for c in FINISHED]
    study = study_with(StepMedianPruner(n_startup_trials=3), tmp_path, finished=losses, direction="minimize")
    assert first_pruned_step(study, [0.01, 0.01, 0.5]) == 2
    assert first_pruned_step(study, [0.01, math.nan]) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="interval_steps"):
        StepMedianPruner(interval_steps=0)
