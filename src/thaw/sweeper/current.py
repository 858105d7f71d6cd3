"""Reach the sweep trial a Hydra job runs for, from any app: report intermediate values, ask to
prune.

    from thaw.sweeper import current_trial

    @hydra.main(...)
    def train(cfg):
        trial = current_trial()
        for step in range(cfg.steps):
            loss = ...
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}")
        return loss

The job re-attaches to its trial through the study's storage (hydra.sweeper.trial_number/storage/
study_name are set on every job the thaw sweeper launches), so this works in-process (basic
launcher), in joblib workers and on SLURM nodes alike. Outside a thaw sweep (a plain run, another
sweeper) the trial is a no-op: report records nothing and should_prune is always False.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any

_lock = threading.Lock()
# the TrialHandle of the job this context runs now (one at a time; a job and the sweeper's release()
# after an in-process job run in the same thread)
_HANDLE: ContextVar[Any] = ContextVar("thaw_current_trial_handle", default=None)


class CurrentTrial:
    """The sweep trial of this job: number, params, report(value, step), should_prune()."""

    def __init__(self, handle=None):
        self._handle = handle

    @property
    def in_sweep(self) -> bool:
        return self._handle is not None

    @property
    def number(self) -> int | None:
        return None if self._handle is None else self._handle.number

    @property
    def params(self) -> dict[str, Any]:
        return {} if self._handle is None else dict(self._handle.trial.params)

    @property
    def _prunable(self) -> bool:
        """Optuna prunes single-objective studies only; with several directions, report and
        should_prune do nothing (said once)."""
        if self._handle is None:
            return False
        if len(self._handle.study.directions) > 1:
            if not getattr(self._handle, "warned_multi", False):
                self._handle.warned_multi = True
                import logging

                logging.getLogger("thaw.sweeper").warning(
                    "current_trial: this study has several objectives; Optuna cannot prune it, "
                    "reports are ignored"
                )
            return False
        return True

    def report(self, value: float, step: int) -> None:
        """Record the value at `step` (an epoch, an iteration); the pruner judges on these."""
        if self._prunable:
            self._handle.trial.report(float(value), int(step))

    def should_prune(self) -> bool:
        return bool(self._handle.trial.should_prune()) if self._prunable else False

    def set_user_attr(self, key: str, value: Any) -> None:
        if self._handle is not None:
            self._handle.trial.set_user_attr(key, value)


def current_trial() -> CurrentTrial:
    """This job's trial when the thaw sweeper launched it; a no-op trial otherwise."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    sweeper = hydra_cfg.get("sweeper") if hydra_cfg is not None else None
    number = sweeper.get("trial_number", None) if sweeper is not None else None
    if number is None:
        return CurrentTrial(None)
    key = (str(sweeper.storage), str(sweeper.study_name), int(number))
    with _lock:
        handle = _HANDLE.get()
        if handle is None or getattr(handle, "key", None) != key:
            _close()
            from thaw.sweeper.trial import attach_trial

            handle = attach_trial(hydra_cfg)
            handle.key = key
            _HANDLE.set(handle)
        return CurrentTrial(handle)


def release() -> None:
    """Stop the attached trial's heartbeat (the sweeper calls this after an in-process job)."""
    with _lock:
        _close()


def _close() -> None:
    handle = _HANDLE.get()
    if handle is not None:
        handle.close()
        _HANDLE.set(None)
