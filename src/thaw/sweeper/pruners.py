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

import importlib
import inspect
import logging
import math
from collections.abc import Mapping

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

log = logging.getLogger("thaw.sweeper")
# the keys sweep=depth_lr sets beside MedianPruner's (its pruner node is plain keys)
STEP_MEDIAN_KEYS = ("best_since_warmup", "include_pruned", "tolerance_se")


class StepMedianPruner(optuna.pruners.BasePruner):
    """Prune when the value at this step is worse than the finished trials' median at this step.

    Same arguments as optuna.pruners.MedianPruner: no pruning until n_startup_trials have finished,
    nor before step n_warmup_steps, then every interval_steps-th step, and only when at least
    n_min_trials finished trials reported this step. Three more keep a sweep learning after its
    start-up trials (all off by default, as before; sweep=depth_lr turns them on):

    - `best_since_warmup`: judge the trial's best value since step n_warmup_steps (its fine-tuning
      so far), not the current one: a one-epoch dip after unfreezing is not a verdict, while a
      fine-tune that never reaches the median is still stopped;
    - `include_pruned`: pruned trials' values at this step join the reference. Otherwise the
      reference stays the few completed trials, the best of the start-up ones, and every later trial
      must match them at every epoch (measured: all 17 trials after the start-up ones pruned);
    - `tolerance_se`: a trial within this many standard errors of the reference is not pruned; the
      standard error is the validation split's, sqrt(m (1 - m) / n) at the median m, with n the
      trial's `num_val` user attribute (thaw-train records it; without it the tolerance is 0).
    """

    def __init__(
        self,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 0,
        interval_steps: int = 1,
        n_min_trials: int = 1,
        best_since_warmup: bool = False,
        include_pruned: bool = False,
        tolerance_se: float = 0.0,
    ):
        for name, value, low in (
            ("n_startup_trials", n_startup_trials, 0),
            ("n_warmup_steps", n_warmup_steps, 0),
            ("interval_steps", interval_steps, 1),
            ("n_min_trials", n_min_trials, 1),
        ):
            if int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)
        self.interval_steps = int(interval_steps)
        self.n_min_trials = int(n_min_trials)
        if not (float(tolerance_se) >= 0 and math.isfinite(float(tolerance_se))):
            raise ValueError(f"tolerance_se must be a finite number >= 0, got {tolerance_se}")
        self.best_since_warmup, self.include_pruned = bool(best_since_warmup), bool(include_pruned)
        self.tolerance_se = float(tolerance_se)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        if (step - self.n_warmup_steps) % self.interval_steps:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(finished) < max(self.n_startup_trials, 1):
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        value = self._judged_value(trial, step, maximize)
        if math.isnan(value):
            return True
        states = (
            (TrialState.COMPLETE, TrialState.PRUNED)
            if self.include_pruned
            else (TrialState.COMPLETE,)
        )
        reference = (
            study.get_trials(deepcopy=False, states=states) if self.include_pruned else finished
        )
        others = [
            t.intermediate_values[step]
            for t in reference
            if step in t.intermediate_values and t.number != trial.number
        ]
        others = [v for v in others if not math.isnan(v)]
        if len(others) < self.n_min_trials:
            return False
        median = float(np.median(others))
        margin = self._margin(trial, median)
        if maximize:
            return value < median - margin
        return value > median + margin

    def _judged_value(self, trial, step: int, maximize: bool) -> float:
        if not self.best_since_warmup:
            return trial.intermediate_values[step]
        since = [
            v
            for s, v in trial.intermediate_values.items()
            if self.n_warmup_steps <= s <= step and not math.isnan(v)
        ]
        if not since:
            return float("nan")
        return max(since) if maximize else min(since)

    def _margin(self, trial, median: float) -> float:
        n = trial.user_attrs.get("num_val")
        if not self.tolerance_se or not n or not 0.0 <= median <= 1.0:
            return 0.0
        return self.tolerance_se * math.sqrt(median * (1.0 - median) / float(n))


def swapped_pruner_node(node, warn: bool = False):
    """The pruner node with StepMedianPruner's own keys left out where its `_target_` was swapped
    for a pruner that takes none of them (`hydra.sweeper.pruner._target_=...`, the form that keeps
    the preset's other keys): they change nothing there, which `warn` says once."""
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        return node
    present = [k for k in STEP_MEDIAN_KEYS if k in node]
    if not present:
        return node
    module, _, name = node["_target_"].rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except Exception:  # not found or not callable: building it says so
        return node
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return node
    extra = [k for k in present if k not in params]
    if extra and warn:
        log.warning(
            "hydra.sweeper.pruner: %s takes no %s (StepMedianPruner's, from sweep=depth_lr): "
            "left out",
            node["_target_"],
            ", ".join(extra),
        )
    return {k: node[k] for k in node if k not in extra}
