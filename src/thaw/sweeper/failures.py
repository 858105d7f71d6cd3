"""Which trials count, and when failed trials stop the sweep (exit 1).

Counted: COMPLETE, PRUNED, and FAIL trials whose job raised (their error is in the user attribute
`error`). Stale or interrupted trials are not counted: their slot is run again.
"""

from __future__ import annotations

from thaw.errors import ThawError

DEFAULT_FAILURE_RATE = 0.25  # thaw's rule when hydra.sweeper.max_failure_rate is unset
SURPLUS_ATTR = "surplus"  # asked after another worker took the last of n_trials: failed unrun


def is_surplus(trial) -> bool:
    """A trial given back at once (core._surplus): it never ran, and nothing about it failed."""
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


class TooManyFailures(ThawError):
    exit_code = 1

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short


def counted(trial) -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and "error" in attrs and "interrupted" not in attrs


def check_failures(done, max_rate: float, min_trials: int, rule: str) -> None:
    """Raise when more than max_rate of `done` failed, judged once at least min_trials are done."""
    from optuna.trial import TrialState

    if len(done) < max(1, min_trials):
        return
    failed = [t for t in done if t.state == TrialState.FAIL]
    rate = len(failed) / len(done)
    if failed and rate > max_rate:
        last = failed[-1]
        raise TooManyFailures(
            f"{len(failed)} of {len(done)} trials failed (rate {rate:.2f} > {max_rate}; "
            f"{rule}); last error, trial {last.number}: {last.user_attrs.get('error', '?')}"
        )


def nothing_usable(study) -> TooManyFailures | None:
    """A sweep that ends with failures and not one COMPLETE trial failed, whatever the rule said:
    the error to raise (after the report), else None."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL and counted(t)]
    if not failed or any(t.state == TrialState.COMPLETE for t in trials):
        return None
    return TooManyFailures(
        f"no trial completed ({len(failed)} failed); last error, trial "
        f"{failed[-1].number}: {failed[-1].user_attrs.get('error', '?')}",
        f"no trial completed ({len(failed)} failed; each trial's error is in the log "
        "above and on the trial in the study)",
    )
