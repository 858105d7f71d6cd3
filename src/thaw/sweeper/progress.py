"""One line after every trial: how far the sweep is, what is best so far, and how long is left.

Trials are counted the way the sweep counts them (COMPLETE, PRUNED and failed jobs; stale and
interrupted ones are listed apart, as not counted). Time left is this process's pace so far
(resumed trials do not make it look faster than it is) times the trials still to run. On a
terminal a bar follows the line (tqdm's meter); in logs and CI the line stays plain.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TextIO

from thaw.sweeper.failures import is_surplus


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(
        self,
        n_trials: int,
        counted: Callable,
        directions: Sequence[str],
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.n_trials, self.counted, self.directions = n_trials, counted, list(directions)
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.t0 = clock()
        self.at_start: int | None = None
        self.said: str | None = None  # the last line logged, up to its times

    def start(self, trials) -> None:
        self.at_start = sum(1 for t in trials if self.counted(t))

    def _best(self, trials):
        from optuna.trial import TrialState

        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        if len(self.directions) != 1 or not complete:
            return None
        pick = max if self.directions[0] == "maximize" else min
        return pick(complete, key=lambda t: t.values[0])

    def line(self, trials) -> str:
        done = sum(1 for t in trials if self.counted(t))
        if self.at_start is None:
            self.at_start = 0
        states = Counter(
            t.state.name for t in trials if self.counted(t) or not t.state.is_finished()
        )
        lost = Counter(
            "surplus" if is_surplus(t) else t.state.name
            for t in trials
            if t.state.is_finished() and not self.counted(t)
        )
        elapsed = self.clock() - self.t0
        ran = done - self.at_start
        left = max(0, self.n_trials - done)
        eta = elapsed / ran * left if ran > 0 else None
        best = self._best(trials)
        best_txt = (
            f"best {best.values[0]:.4g} (trial {best.number})"
            if best is not None
            else "no best yet"
        )
        state_txt = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        if lost:  # stale or interrupted: run again, so not in the count
            state_txt += "; not counted: " + ", ".join(f"{k} {v}" for k, v in sorted(lost.items()))
        return (
            f"sweep: {done}/{self.n_trials} trials done ({state_txt}); {best_txt}; "
            f"elapsed {_clock(elapsed)}, about {_clock(eta) if left else '0s'} left"
        )

    def bar(self, trials) -> str | None:
        """tqdm's meter for a terminal; None when the stream is not one."""
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return None
        from tqdm import tqdm

        done = min(self.n_trials, sum(1 for t in trials if self.counted(t)))
        return tqdm.format_meter(
            done,
            self.n_trials,
            self.clock() - self.t0,
            ncols=80,
            prefix="sweep",
            unit="trial",
            initial=min(done, self.at_start or 0),
        )

    def report(self, trials: list, log) -> str:
        """The line, logged unless it says what the last one said (with n_jobs > 1 a trial can be
        counted from the storage before its own settle comes round)."""
        text = self.line(trials)
        said = text.split("; elapsed")[0]
        if said == self.said:
            return text
        self.said = said
        log.info("%s", text)
        bar = self.bar(trials)
        if bar is not None:
            print(bar, file=self.stream, flush=True)
        return text


class Waiting:
    """Says, once each time the set changes, which trials of other workers this worker waits for
    and what ends the wait: a worker with no slot would otherwise poll in silence, for ever where
    a dead worker left its trial RUNNING without heartbeats."""

    def __init__(self, heartbeat_interval, grace_period) -> None:
        self.interval, self.grace = heartbeat_interval, grace_period
        self.said: tuple[int, ...] | None = None

    def line(self, running: list[int], n_trials: int) -> str | None:
        """The line to log for trials `running` elsewhere; None when it was said already."""
        if not running or tuple(running) == self.said:
            return None
        self.said = tuple(running)
        names = ", ".join(str(n) for n in running)
        if self.interval:
            grace = int(self.grace or 2 * int(self.interval))
            dead = f"one that has no heartbeat for {grace} s (its worker died) is failed as stale"
        else:
            dead = (
                "without hydra.sweeper.heartbeat_interval a trial whose worker died stays "
                "RUNNING and this wait does not end: stop it with Ctrl-C and resume with "
                "heartbeats"
            )
        if len(running) == 1:
            held = (
                f"trial {names}, running in another worker, holds the last of n_trials={n_trials}"
            )
        else:
            held = f"trials {names}, running in other workers, hold the last of n_trials={n_trials}"
        return (
            f"waiting: {held}; this worker ends when they finish, or runs a trial in the slot of "
            f"one that is interrupted or goes stale; {dead}"
        )
