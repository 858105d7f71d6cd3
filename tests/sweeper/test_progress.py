"""The sweep's per-trial progress line and terminal bar, on real Optuna trials."""

import io
import logging

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from thaw.sweeper.failures import counted
from thaw.sweeper.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _trial(number, state, value=None, **attrs):
    t = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"unfreeze.depth": number},
        distributions={"unfreeze.depth": IntDistribution(0, 20)},
        user_attrs=attrs,
        intermediate_values={0: 0.5} if state == TrialState.PRUNED else None,
    )
    t.number = number
    return t


def test_line_counts_like_the_sweep_and_estimates_time_left():
    clock = _Clock()
    prog = Progress(10, counted, ["maximize"], stream=io.StringIO(), clock=clock)
    resumed = [
        _trial(0, TrialState.COMPLETE, 0.80)
    ]  # from an earlier process: not part of the pace
    prog.start(resumed)
    clock.now += 120
    trials = resumed + [
        _trial(1, TrialState.COMPLETE, 0.95),
        _trial(2, TrialState.PRUNED),
        _trial(3, TrialState.FAIL, error="OOM"),
        _trial(4, TrialState.FAIL, interrupted="x"),
        _trial(5, TrialState.COMPLETE, 0.90),
        _trial(6, TrialState.FAIL, surplus=True),
    ]
    line = prog.line(trials)
    # counted: 3 complete, 1 pruned, the failed job; the interrupted one and the surplus one (given
    # back unrun) apart -> 5 of 10
    assert line.startswith(
        "sweep: 5/10 trials done (COMPLETE 3, FAIL 1, PRUNED 1; not counted: FAIL 1, surplus 1)"
    )
    assert "best 0.95 (trial 1)" in line
    # 4 trials in 120 s in this process -> 30 s each, 5 left
    assert "elapsed 2m00s" in line and "about 2m30s left" in line


def test_minimize_picks_the_lowest_and_no_best_before_a_complete_trial():
    clock = _Clock()
    prog = Progress(3, counted, ["minimize"], stream=io.StringIO(), clock=clock)
    prog.start([])
    assert "no best yet" in prog.line([_trial(0, TrialState.PRUNED)])
    clock.now += 10
    line = prog.line(
        [
            _trial(0, TrialState.COMPLETE, 0.4),
            _trial(1, TrialState.COMPLETE, 0.2),
            _trial(2, TrialState.COMPLETE, 0.3),
        ]
    )
    assert "best 0.2 (trial 1)" in line and "about 0s left" in line and "3/3" in line


def test_bar_only_on_a_terminal(caplog):
    clock = _Clock()
    plain, tty = io.StringIO(), _Terminal()
    trials = [_trial(0, TrialState.COMPLETE, 0.9), _trial(1, TrialState.COMPLETE, 0.8)]
    for stream in (plain, tty):
        prog = Progress(4, counted, ["maximize"], stream=stream, clock=clock)
        prog.start([])
        clock.now += 60
        with caplog.at_level(logging.INFO, logger="thaw.test"):
            prog.report(trials, logging.getLogger("thaw.test"))
    assert plain.getvalue() == ""  # logs and CI: the log line only
    bar = tty.getvalue()
    assert "2/4" in bar and "50%" in bar and "█" in bar
    assert caplog.text.count("sweep: 2/4 trials done") == 2


def test_study_trials_work_too(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    prog = Progress(5, counted, ["maximize"], stream=io.StringIO())
    prog.start([])
    line = prog.line(study.get_trials(deepcopy=False))
    assert "3/5 trials done (COMPLETE 3)" in line and f"(trial {study.best_trial.number})" in line


def test_a_line_that_says_nothing_new_is_not_logged_again(caplog):
    """With n_jobs > 1 a trial can be counted from the storage before its settle comes round:
    the second settle's line would repeat the first."""
    import logging

    prog = Progress(2, counted, ["maximize"], stream=io.StringIO(), clock=_Clock())
    log = logging.getLogger("thaw.test_progress")
    trials = [_trial(0, TrialState.COMPLETE, 0.8)]
    with caplog.at_level(logging.INFO, logger="thaw.test_progress"):
        prog.report(trials, log)
        prog.report(trials, log)
        prog.report(trials + [_trial(1, TrialState.PRUNED)], log)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "1/2 trials done" in lines[0] and "2/2 trials done" in lines[1]


def test_waiting_is_said_once_per_set_and_says_when_it_cannot_end():
    from thaw.sweeper.progress import Waiting

    beating = Waiting(heartbeat_interval=10, grace_period=None)
    first = beating.line([3, 4], 20)
    assert "trials 3, 4, running in other workers, hold the last of n_trials=20" in first
    assert "no heartbeat for 20 s" in first  # Optuna's default grace: two intervals
    assert beating.line([3, 4], 20) is None and beating.line([], 20) is None
    assert "trial 4, running in another worker" in beating.line([4], 20)
    silent = Waiting(heartbeat_interval=None, grace_period=60).line([7], 8)
    assert "stays RUNNING and this wait does not end" in silent and "heartbeat for" not in silent
