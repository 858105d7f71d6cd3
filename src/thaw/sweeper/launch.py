"""A trial's job: its overrides for Hydra's launcher, and its trial settled from what the job did.

A job that told its trial itself (thaw-train, `current_trial()`) is only logged; one that did not
(any Hydra app, a job that died) is told here from its return value or its exception.
"""

from __future__ import annotations

import logging
import math

from thaw.sweeper import oom, search_space
from thaw.sweeper.state import SweepState

log = logging.getLogger("thaw.sweeper")


def time_summary(breakdown: dict[str, float] | None) -> str:
    """'; time 41.2 s: compute 22.0, trace 9.1, ...' (largest first, parts under 0.5 s left out)."""
    if not breakdown:
        return ""
    parts = sorted(
        ((k, v) for k, v in breakdown.items() if k != "total" and v >= 0.5), key=lambda kv: -kv[1]
    )
    return f"; time {breakdown.get('total', 0):.1f} s: " + ", ".join(
        f"{k} {v:.1f}" for k, v in parts
    )


def job_lines(sw: SweepState, trial) -> list[str]:
    sampled = [f"{k}={search_space.format_value(v)}" for k, v in trial.params.items()]
    no_model = sw.app.no_model_overrides() if sw.settings.save_models == "none" else []
    log.info("trial %d: %s", trial.number, " ".join(sampled))
    return (
        sw.fixed_lines
        + sampled
        + no_model
        + [
            f"hydra.sweeper.trial_number={trial.number}",
            f"hydra.sweeper.storage={sw.url}",
            f"hydra.sweeper.study_name={sw.study.study_name}",
            f"hydra.sweep.subdir=trial_{trial.number}",
        ]
    )


def settle(sw: SweepState, trial, ret, err: str) -> list[str] | None:
    """The trial's state from its job (unless the job told it), then its one log line; the
    overrides to run it once more when it ran out of memory the first time, else None."""
    from optuna.trial import TrialState

    storage = sw.storage
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.RUNNING:
        oom_error = oom.job_oom(ret, frozen)
        if oom_error is not None:
            retry = oom.retry_lines(sw, trial, frozen)
            if retry is not None:
                return retry
            oom.infeasible(sw, trial, oom_error)
    if ret is None:
        if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, "error", err)
            fail(storage, trial._trial_id)
        return None
    frozen = storage.get_trial(trial._trial_id)
    run_dir = frozen.user_attrs.get("run_dir") or _output_dir(ret)
    if frozen.state == TrialState.RUNNING:  # the job never told its trial (died, or a foreign task)
        if run_dir:
            storage.set_trial_user_attr(trial._trial_id, "run_dir", run_dir)
        _tell_from_return(sw, trial, ret)
        frozen = storage.get_trial(trial._trial_id)
    oom.record_in_metrics(run_dir, frozen)
    _log_settled(trial, frozen, run_dir)
    return None


def _log_settled(trial, frozen, run_dir) -> None:
    from optuna.trial import TrialState

    value = frozen.values if frozen.values is None or len(frozen.values) > 1 else frozen.values[0]
    extra = frozen.user_attrs.get("error") or frozen.user_attrs.get("pruned") or ""
    level = logging.WARNING if frozen.state == TrialState.FAIL else logging.INFO
    log.log(
        level,
        "trial %d %s value=%s %s(run dir %s)%s",
        trial.number,
        frozen.state.name,
        value,
        f"{extra} " if extra else "",
        run_dir or "?",
        time_summary(frozen.user_attrs.get("time_breakdown")),
    )


def _tell_from_return(sw: SweepState, trial, ret) -> None:
    """A job that did not tell its trial itself (any Hydra app): its return value, or its exception
    (optuna.TrialPruned = PRUNED at the last reported step), decides the state."""
    import optuna
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    value = ret._return_value
    if ret.status == JobStatus.FAILED and isinstance(value, optuna.TrialPruned):
        sw.storage.set_trial_user_attr(trial._trial_id, "pruned", str(value) or "pruned by the app")
        return tell(sw.study, trial, state=TrialState.PRUNED)
    if ret.status == JobStatus.FAILED:
        error = f"{type(value).__name__}: {value}"
    else:
        values, error = objective_values(value, len(sw.directions))
        if error is None:
            return tell(sw.study, trial, values=values)
    sw.storage.set_trial_user_attr(trial._trial_id, "error", error[:2000])
    fail(sw.storage, trial._trial_id)


def tell(study, trial, **kwargs) -> None:
    """Study.tell; a grid or brute-force sampler that finished its space calls Study.stop, which
    raises outside Study.optimize after the state is written."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def fail(storage, trial_id) -> None:
    """FAIL through the storage: Study.tell would run sampler hooks (BruteForceSampler calls
    Study.stop, which raises outside Study.optimize, before the state is written)."""
    from optuna.trial import TrialState

    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _output_dir(ret) -> str | None:
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        return None


def objective_values(value, n: int):
    """(values, None) or (None, why): one float per direction, as hydra-optuna-sweeper requires."""
    if value is None:
        return None, "job returned no value"
    try:
        values = [float(value)] if n == 1 else [float(v) for v in value]
    except (TypeError, ValueError):
        want = "a float" if n == 1 else f"a list of {n} floats (one per direction)"
        return None, f"ValueError: the task returned {value!r}; the sweep needs {want}"
    if len(values) != n:
        return None, f"ValueError: the task returned {len(values)} values for {n} directions"
    if not all(math.isfinite(v) for v in values):
        return None, f"ValueError: the task returned {values} (not finite)"
    return values, None


def confirmation_value(ret):
    """(value, None) from a confirmation job's return, or (None, why)."""
    from hydra.core.utils import JobStatus

    if ret is None or isinstance(ret, BaseException):
        return (
            None,
            f"launch failed: {ret}" if ret is not None else "the launcher returned no result",
        )
    if ret.status == JobStatus.FAILED:
        return None, f"{type(ret._return_value).__name__}: {ret._return_value}"[:500]
    values, error = objective_values(ret._return_value, 1)
    return (values[0], None) if error is None else (None, error)
