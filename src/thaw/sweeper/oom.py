"""Out of memory: a trial that fails with TensorFlow's out-of-memory error runs once more at half
`data.batch_size`; a second one ends it as infeasible, so the sampler stops drawing there.

The error is recognised by its type name or message (the sweeper never imports TensorFlow): the
exception a job raised (`tf.errors.ResourceExhaustedError`, "OOM when allocating ..."), or the
reason a job that tells its own trial (thaw-train) recorded in the user attribute `oom_error`.

Optuna's samplers read COMPLETE and PRUNED trials only; a FAIL trial is invisible to them. So the
trial that ran out of memory twice ends PRUNED with the constraint `oom` = 1 (infeasible: TPE and
the other constraint-aware samplers rank it below every feasible trial), the user attribute
`fail_reason` = "oom" and its `error`. It counts towards n_trials, not towards max_failure_rate.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("thaw.sweeper")

FAIL_REASON = "fail_reason"  # user attribute: why a trial failed ("oom")
RETRY_ATTR = "oom_retry"  # user attribute: {"batch_size": half, "from": original}
JOB_ERROR_ATTR = "oom_error"  # user attribute a job that tells its trial records instead of FAIL
BATCH_KEY = "data.batch_size"
_OOM = re.compile(
    r"ResourceExhaustedError|OOM when allocating|out of memory|\bOOM\b", re.IGNORECASE
)


def is_oom_text(text: str | None) -> bool:
    return bool(text) and _OOM.search(str(text)) is not None


def job_oom(ret, frozen) -> str | None:
    """The out-of-memory error of this job (from its exception or its trial), else None."""
    from hydra.core.utils import JobStatus

    recorded = frozen.user_attrs.get(JOB_ERROR_ATTR)
    if recorded:
        return str(recorded)
    if ret is None or ret.status != JobStatus.FAILED:
        return None
    exc = ret._return_value
    text = f"{type(exc).__name__}: {exc}"
    return text if is_oom_text(text) else None


def batch_size(sw, trial) -> int | None:
    """The batch size this trial ran at: sampled, fixed on the command line, or the app's config."""
    if BATCH_KEY in trial.params:
        return _int(trial.params[BATCH_KEY])
    for line in reversed(sw.fixed_lines):
        key, _, value = line.lstrip("+").partition("=")
        if key == BATCH_KEY:
            return _int(value)
    if sw.job_cfg is not None:
        return _int(OmegaConf.select(sw.job_cfg, BATCH_KEY, default=None))
    return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def retry_lines(sw, trial, frozen) -> list[str] | None:
    """The overrides of the retry at half batch (recorded on the trial), or None when this trial
    already had its retry or has no batch size to halve."""
    if RETRY_ATTR in frozen.user_attrs:
        return None
    size = batch_size(sw, trial)
    if size is None or size < 2:
        return None
    half = size // 2
    sw.storage.set_trial_user_attr(trial._trial_id, RETRY_ATTR, {"batch_size": half, "from": size})
    sw.storage.set_trial_user_attr(trial._trial_id, JOB_ERROR_ATTR, None)
    log.warning(
        "trial %d ran out of memory at %s=%d: running it once more at %d",
        trial.number,
        BATCH_KEY,
        size,
        half,
    )
    return [f"{BATCH_KEY}={half}"]


def infeasible(sw, trial, error: str) -> None:
    """Out of memory again (or nothing to halve): PRUNED with the constraint oom=1."""
    import optuna
    from optuna.trial import TrialState

    from thaw.sweeper.launch import tell

    storage, tid = sw.storage, trial._trial_id
    storage.set_trial_user_attr(tid, FAIL_REASON, "oom")
    storage.set_trial_user_attr(tid, "error", error[:2000])
    optuna.trial.Trial(sw.study, tid).set_constraint("oom", 1.0)
    tell(sw.study, trial, state=TrialState.PRUNED)


def record_in_metrics(run_dir: str | None, frozen) -> None:
    """The retry's batch size in the run's metrics.json, beside what the job wrote there."""
    retry = frozen.user_attrs.get(RETRY_ATTR)
    path = Path(run_dir) / "metrics.json" if run_dir else None
    if not retry or path is None or not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
        data[RETRY_ATTR] = retry
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    except (OSError, ValueError) as exc:
        log.warning("could not record the out-of-memory retry in %s: %s", path, exc)
