"""The job side of a sweep: re-attach to its Optuna trial through the storage, report, prune, tell.

The job (not the sweeper) tells the trial's final state, so pruning and failures are recorded the
same way whether the launcher runs the job in-process, in a joblib worker or on a SLURM node.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental.*")


class TrialHandle:
    def __init__(
        self,
        storage_url: str,
        study_name: str,
        number: int,
        pruner_cfg: Any,
        heartbeat_interval: int | None,
        grace_period: int | None,
    ):
        import optuna
        from hydra.utils import instantiate

        from thaw.sweeper.storage import make_storage

        self.number = number
        self.storage = make_storage(storage_url, heartbeat_interval, grace_period)
        from thaw.sweeper.pruners import swapped_pruner_node

        pruner_cfg = swapped_pruner_node(pruner_cfg)  # as the sweeper built it
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        self.study = optuna.load_study(study_name=study_name, storage=self.storage, pruner=pruner)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number
        )
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._beat = None
        self._told = False
        if heartbeat_interval and hasattr(self.storage, "record_heartbeat"):
            self._beat = threading.Thread(
                target=self._heartbeat, args=(heartbeat_interval,), daemon=True
            )
            self._beat.start()

    def _heartbeat(self, interval: int) -> None:
        while not self._stop.is_set():
            try:
                if self.storage.get_trial(self._trial_id).state.is_finished():
                    return  # told (here or by the sweeper): nothing left to keep alive
                self.storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # a missed beat is not fatal; the grace period covers it
                log.debug("heartbeat failed: %s", exc)
            self._stop.wait(interval)

    def describe(self, **attrs) -> None:
        """User attributes the report reads (head_epochs: where fine-tuning starts;
        objective_name)."""
        try:
            for key, value in attrs.items():
                self.trial.set_user_attr(key, value)
        except Exception as exc:  # the report draws less; the trial itself is unaffected
            log.warning("could not describe trial %d: %s", self.number, exc)

    # -- reporting during training
    def report(self, step: int, value: float, judge: bool = True) -> bool:
        """Record an intermediate value; True when the pruner says stop (asked only when
        `judge`)."""
        self.trial.report(value, step)
        return judge and self.trial.should_prune()

    def retried_run_dir(self) -> str | None:
        """The run dir of the dead trial this one retries (hydra.sweeper.max_retry), or None."""
        # what optuna's RetryFailedTrialCallback records (read directly: the class is deprecated)
        history = self.storage.get_trial(self._trial_id).system_attrs.get("retry_history") or []
        if not history:
            return None
        tid = self.storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, history[-1]
        )
        return self.storage.get_trial(tid).user_attrs.get("run_dir")

    def replay(self, step: int, value: float) -> None:
        """A value an earlier attempt of this run measured (a resumed checkpoint): recorded once on
        this trial, never judged again, never reported twice."""
        if step not in self.storage.get_trial(self._trial_id).intermediate_values:
            self.trial.report(value, step)

    # -- final state
    def _tell(self, **kwargs) -> None:
        if self._told:
            return
        self._told = True
        if self.storage.get_trial(self._trial_id).state.is_finished():
            return
        self.study.tell(self.number, **kwargs)

    def complete(self, values, run_dir: Path) -> None:
        import math

        self.trial.set_user_attr("run_dir", str(run_dir))
        bad = [
            v
            for v in (values if isinstance(values, (list, tuple)) else [values])
            if not math.isfinite(float(v))
        ]
        if bad:  # Optuna would FAIL it silently, and the sweep would not count it
            return self.fail(f"the objective is {bad[0]} (not finite)")
        self._tell(values=values)

    def prune(self, reason: str) -> None:
        from optuna.trial import TrialState

        self.trial.set_user_attr("pruned", reason)
        self._tell(state=TrialState.PRUNED)

    def fail(self, reason: str) -> None:
        """FAIL with `reason`; out of memory is left RUNNING with the reason for the sweeper,
        which runs the trial once more at half batch or ends it as infeasible (sweeper.oom)."""
        from optuna.trial import TrialState

        from thaw.sweeper import oom

        try:
            if oom.is_oom_text(reason):
                self._told = True
                self.trial.set_user_attr(oom.JOB_ERROR_ATTR, reason[:2000])
                return
            self.trial.set_user_attr("error", reason[:2000])
            self._tell(state=TrialState.FAIL)
        except Exception as exc:  # storage gone: the sweeper will mark the trial
            log.warning("could not record the failure of trial %d: %s", self.number, exc)

    def interrupt(self, reason: str) -> None:
        """Ctrl-C/SIGTERM: FAIL, marked so the sweep does not count it as a finished trial."""
        from optuna.trial import TrialState

        try:
            self.trial.set_user_attr("interrupted", reason)
            self._tell(state=TrialState.FAIL)
        except Exception as exc:
            log.warning("could not record the interruption of trial %d: %s", self.number, exc)

    def close(self) -> None:
        self._stop.set()


class ConfirmationRun:
    """A finished trial run again with another seed after the search (hydra.sweeper.confirm): never
    pruned, never told to Optuna (the sampler must not learn from it), its test split left alone.
    The sweeper records its value on the study from the job's return value."""

    def __init__(self, study_name: str, number: int, seed: int):
        self.study_name, self.number, self.seed = study_name, number, seed

    def report(self, step: int, value: float, judge: bool = True) -> bool:
        return False

    def replay(self, step: int, value: float) -> None:
        pass

    def retried_run_dir(self) -> str | None:
        return None

    def describe(self, **attrs) -> None:
        pass

    def complete(self, values, run_dir: Path) -> None:
        pass

    def prune(self, reason: str) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def interrupt(self, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


def attach_trial(hydra_cfg):
    """The trial this job runs for when the thaw sweeper launched it (a ConfirmationRun for a
    confirmation run); else None."""
    sweeper = hydra_cfg.get("sweeper") if hydra_cfg is not None else None
    if sweeper is not None and sweeper.get("confirmation", None):
        number, seed = (int(x) for x in str(sweeper.confirmation).split(":"))
        return ConfirmationRun(str(sweeper.study_name), number, seed)
    if sweeper is None or sweeper.get("trial_number", None) is None:
        return None
    handle = TrialHandle(
        sweeper.storage,
        sweeper.study_name,
        int(sweeper.trial_number),
        sweeper.get("pruner"),
        sweeper.get("heartbeat_interval"),
        sweeper.get("grace_period"),
    )
    state = handle.storage.get_trial(handle._trial_id).state
    if state.is_finished():
        handle.close()
        raise RuntimeError(
            f"trial {handle.number} is already {state.name} in the study (a requeued job whose "
            "trial was failed as stale meanwhile: the sweep retries it with max_retry)"
        )
    try:
        handle.trial.set_user_attr("run_dir", str(hydra_cfg.runtime.output_dir))
    except Exception:
        pass
    return handle
