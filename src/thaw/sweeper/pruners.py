"""A median pruner for two-phase fine-tuning.

Optuna's MedianPruner and PercentilePruner judge a trial by its BEST intermediate value so far.
In thaw a trial reports every epoch of the head phase and then of the fine-tuning phase; a strong
head phase then shields a fine-tune that is collapsing. Measured on the shared cats-vs-dogs photos
(when the objective was the last epoch's value): a trial at 0.958 after the head phase fell to 0.841
in its first fine-tuning epoch (the median of finished trials there was 0.931), was not pruned, and
spent 166 s more to end at 0.913. This pruner compares the value AT the current step with the
median of the finished trials at that step. With trainer.restore_best (the default) such a trial's
objective is its best epoch, so it would not end worse than its head; it is still pruned, because
the question a sweep asks is which fine-tuning pays, and a fine-tune below the median at the same
epoch rarely catches up (the trial keeps its intermediate values, best included, as PRUNED).
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState


class StepMedianPruner(optuna.pruners.BasePruner):
    """Prune when the value at this step is worse than the finished trials' median at this step.

    Same arguments as optuna.pruners.MedianPruner: no pruning until n_startup_trials have finished,
    nor before step n_warmup_steps, then every interval_steps-th step, and only when at least
    n_min_trials finished trials reported this step.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0, interval_steps: int = 1,
                 n_min_trials: int = 1):
        for name, value, low in (("n_startup_trials", n_startup_trials, 0), ("n_warmup_steps", n_warmup_steps, 0),
                                 ("interval_steps", interval_steps, 1), ("n_min_trials", n_min_trials, 1)):
            if int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)
        self.interval_steps = int(interval_steps)
        self.n_min_trials = int(n_min_trials)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if (step - self.n_warmup_steps) % self.interval_steps:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(finished) < max(self.n_startup_trials, 1):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        others = [v for v in others if not math.isnan(v)]
        if len(others) < self.n_min_trials:
            return False
        median = float(np.median(others))
        if study.direction == StudyDirection.MAXIMIZE:
            return value < median
        return value > median
