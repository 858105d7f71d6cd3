"""The sweep loop: ask Optuna, launch trials through Hydra's launcher, keep the study consistent.

`n_trials` is the total the study should reach. Counted: COMPLETE, PRUNED, and FAIL trials whose job
raised (their error is in the user attribute `error`). Trials left RUNNING by a dead worker stop
heartbeating, are failed as stale (not counted) and their slot is run again.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

from omegaconf import DictConfig

from thaw.errors import ThawError, unknown_setting
from thaw.runtime.secrets import redact
from thaw.sweeper import (
    answer,
    confirm_stage,
    failures,
    launch,
    question,
    saved_models,
    schedule,
)
from thaw.sweeper import plan as search_space_plan
from thaw.sweeper.failures import DEFAULT_FAILURE_RATE, SURPLUS_ATTR, TooManyFailures, counted
from thaw.sweeper.heartbeats import Heartbeats
from thaw.sweeper.hooks import AppHooks
from thaw.sweeper.progress import Progress, Waiting
from thaw.sweeper.state import Settings, SweepState
from thaw.sweeper.study_setup import open_study

log = logging.getLogger("thaw.sweeper")

# Heartbeats and fail_stale_trials are used deliberately outside Study.optimize (ask/tell across
# processes).
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
warnings.filterwarnings("ignore", category=Warning, module="optuna._experimental")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental.*")

POLL_SECONDS = 2.0


class SweepRunner:
    """One sweep: the settings parsed once, the study opened, then ask, launch and tell until the
    study has n_trials counted; then the confirmation, the test split and the answer."""

    def __init__(self, sweeper_cfg: dict[str, Any], known: tuple[str, ...] = ()):
        self.cfg = sweeper_cfg
        self.known = known  # the sweeper's settings: a `+hydra.sweeper.key` beyond them is refused
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None
        self.state: SweepState | None = None
        self.baseline_trial = None  # created RUNNING by this worker, not yet launched

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.app = (
            getattr(task_function, "sweep_app", None) or AppHooks()
        )  # thaw-train: commands.sweep_hooks
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]):
        """The study; a sweep stopped by its failures exits 1, a refused config 2."""
        try:
            return self._sweep(arguments)
        except TooManyFailures as exc:
            log.error("sweep stopped: %s", exc)
            print(
                f"{self.app.prog}: error: sweep stopped: {exc.short or exc}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)
        except ThawError as exc:
            print(f"{self.app.prog}: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    def _sweep(self, arguments: list[str]):
        _refuse_added(self.cfg, self.known)
        plan = self._open(arguments)
        sw = self.state
        beats = Heartbeats(sw.storage, sw.settings.heartbeat_interval)
        self._search(plan, beats)
        answer.log_after_startup(sw)
        if self._confirm() is not None:
            return sw.study  # the confirming worker tests the winner and writes the answer
        saved_models.remove_unneeded(sw)
        confirm_stage.evaluate_best(sw)
        failure = failures.nothing_usable(sw.study)
        if failure is not None:
            self._report()
            raise failure
        self.write_results(log_best=True)
        self._report()
        return sw.study

    def _open(self, arguments: list[str]):
        """Settings, the search plan, the question and the study; returns the plan."""
        settings = Settings.parse(self.cfg, self.app, self.config)
        plan = self.plan = search_space_plan.build(
            self.cfg, self.config, arguments, getattr(self.hydra_context, "config_loader", None)
        )
        fixed_lines = list(plan.fixed.values())
        q = question.compose(self.cfg, self.config, self.hydra_context, self.app, plan, fixed_lines)
        opened = open_study(
            self.cfg, self.config, self.app, q, plan, settings.directions, settings.n_trials
        )
        self.baseline_trial = opened.baseline_trial
        self.state = SweepState(
            cfg=self.cfg,
            config=self.config,
            app=self.app,
            settings=settings,
            study=opened.study,
            storage=opened.storage,
            url=opened.url,
            sweep_dir=opened.sweep_dir,
            n_trials=opened.n_trials,
            job_cfg=q.job_cfg,
            launcher=self.launcher,
            fixed_lines=fixed_lines,
        )
        return plan

    def _search(self, plan, beats) -> None:
        """The ask/launch/tell loop; Ctrl-C keeps the finished trials and exits 130."""
        sw = self.state
        progress = Progress(sw.n_trials, counted, sw.directions)
        progress.start(sw.study.get_trials(deepcopy=False))
        _log_start(sw, plan, progress.at_start)
        interrupted = False
        try:
            self._loop(plan, beats, progress)
        except KeyboardInterrupt:
            interrupted = True
            log.warning(
                "interrupted: finished trials are kept in %s; run the same command to resume",
                redact(sw.url),
            )
        finally:
            beats.stop()
            beats.fail_unfinished()
            self.write_results(log_best=interrupted)
        if interrupted:
            sys.exit(130)

    def _loop(self, plan, beats, progress) -> None:
        """Keep n_jobs trials in flight: a trial that ends (complete, pruned, failed) is settled
        and the next one asked and launched at once (sweeper.schedule); the results file, the
        models and the progress line follow, while it runs."""
        sw = self.state
        sched = schedule.Scheduler(sw, beats)
        window = schedule.FailureWindow(sw.settings.n_jobs, sw.settings.max_failure_rate)
        try:
            self._run_loop(plan, beats, progress, sched, window)
        except KeyboardInterrupt:
            sched.interrupt()
            raise

    def _run_loop(self, plan, beats, progress, sched, window) -> None:
        from thaw.runtime import interrupt

        sw = self.state
        stop: TooManyFailures | None = None
        settled = False  # a trial ended since the last results/progress update
        deadline = _Deadline(sw.settings.timeout)
        waiting = Waiting(sw.settings.heartbeat_interval, sw.cfg.get("grace_period"))
        while True:
            interrupt.check()
            if settled and sched.in_process:  # the next job runs here and now: report first
                self._after_trial(progress)
                settled = False
            if stop is None:
                try:
                    free = deadline.check(_free_slots(sw, self.baseline_trial))
                    if free is None and not sched.in_flight:
                        if settled:  # the last trial
                            self._after_trial(progress)
                        return window.close()
                    self._launch_new(plan, beats, sched, min(free or 0, sched.room()))
                except TooManyFailures as exc:
                    stop = exc  # the trials in flight finish first, as in a batch
            if settled:
                self._after_trial(progress)
                settled = False
            if stop is not None and not sched.in_flight:
                raise stop
            if not sched.in_flight:  # no slot: the rest is running in other workers
                _say_waiting(sw, waiting, self.baseline_trial)
                time.sleep(POLL_SECONDS)
                continue
            done = sched.finished(POLL_SECONDS)
            if done is not None:
                try:
                    settled = _settled(self.state, sched, window, *done)
                except TooManyFailures as exc:
                    stop, settled = exc, True

    def _launch_new(self, plan, beats, sched, n: int) -> None:
        """Ask up to `n` trials (heartbeating) and launch them; fewer when other workers filled
        the study meanwhile. The baseline, created RUNNING by this worker, goes first."""
        batch = []
        if n > 0 and self.baseline_trial is not None:
            batch.append(self.baseline_trial)
            self.baseline_trial = None
        while len(batch) < n:
            trial = plan.ask(self.state.study)
            if _surplus(self.state, trial):
                break
            batch.append(trial)
        for trial in batch:
            beats.add(trial._trial_id)
        if batch:
            sched.launch(batch)

    def _after_trial(self, progress) -> None:
        """Models, results and the progress line, once the freed slots are running again."""
        sw = self.state
        saved_models.remove_unneeded(sw)
        self.write_results()
        progress.report(sw.study.get_trials(deepcopy=False), log)

    def _confirm(self) -> str | None:
        """The confirmation runs; the other worker that runs them instead, if one does."""
        try:
            return confirm_stage.run(self.state, self.write_results)
        except KeyboardInterrupt:
            log.warning(
                "interrupted during confirmation: finished runs are kept on the study; run the "
                "same command to continue"
            )
            self.write_results(log_best=True)
            sys.exit(130)

    def write_results(self, log_best: bool = False) -> None:
        answer.write_results(self.state, log_best)

    def _report(self) -> None:
        """report.html + PNGs in the sweep dir, and the W&B sweep-summary run (best effort)."""
        self.app.on_results(self.config, self.state.study, self.state.sweep_dir, self.state.url)


def _refuse_added(cfg: dict[str, Any], known: tuple[str, ...]) -> None:
    """A key appended to the sweeper's settings (`+hydra.sweeper.n_trails=3`) would change
    nothing: one line naming the nearest setting."""
    for key in sorted(set(cfg) - set(known)) if known else ():
        raise unknown_setting(f"hydra.sweeper.{key}", known, "of thaw's sweeper")


def _log_start(sw: SweepState, plan, at_start: int) -> None:
    log.info(
        "study %r at %s: %d of %d trials done, searching %s",
        sw.study.study_name,
        redact(sw.url),
        at_start,
        sw.n_trials,
        ", ".join(
            [f"{k} ~ {type(d).__name__}" for k, d in plan.space.items()]
            + [f"{k} (per {'/'.join(d.owners)})" for k, d in plan.dependent.items()]
            + (["custom_search_space"] if plan.extender else [])
        ),
    )


class _Deadline:
    """hydra.sweeper.timeout: once this worker has searched that long, no slot is free."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds
        self.passed = False

    def check(self, free: int | None) -> int | None:
        if self.at is None or free is None or time.monotonic() < self.at:
            return free
        if not self.passed:
            self.passed = True
            log.info(
                "timeout: %g s of search spent; no new trial starts (those in flight finish)",
                self.seconds,
            )
        return None


def _settled(sw: SweepState, sched, window, trial, ret, err) -> bool:
    """A job ended: its trial settled and judged by the failure rule; False when it runs once
    more at half batch after running out of memory."""
    from thaw.sweeper.current import release

    release()  # an in-process job's trial handle (basic launcher) stops heartbeating
    retry = launch.settle(sw, trial, ret, err)
    if retry is not None:
        sched.launch([trial], retry)
        return False
    sched.beats.remove(trial._trial_id)
    window.add(sw.storage.get_trial(trial._trial_id))
    return True


def _free_slots(sw: SweepState, mine) -> int | None:
    """Trials this worker may start now; None once the study has n_trials counted. Trials other
    workers run take their slots (not `mine`, this worker's baseline, not yet launched); stale ones
    are failed first (heartbeats)."""
    import optuna
    from optuna.trial import TrialState

    s = sw.settings
    if s.heartbeat_interval:
        optuna.storages.fail_stale_trials(sw.study)
    trials = sw.study.get_trials(deepcopy=False)
    done = [t for t in trials if counted(t)]
    if s.max_failure_rate is None:
        failures.check_failures(
            done,
            DEFAULT_FAILURE_RATE,
            s.failure_min_trials,
            "max_failure_rate unset: thaw's rule over the finished trials",
        )
    if len(done) >= sw.n_trials:
        return None
    running = [
        t
        for t in trials
        if t.state == TrialState.RUNNING and (mine is None or t.number != mine.number)
    ]
    return max(0, sw.n_trials - len(done) - len(running))


def _say_waiting(sw: SweepState, waiting, mine) -> None:
    from optuna.trial import TrialState

    running = [
        t.number
        for t in sw.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if mine is None or t.number != mine.number
    ]
    line = waiting.line(sorted(running), sw.n_trials)
    if line:
        log.info(line)


def _surplus(sw: SweepState, trial) -> bool:
    """Another worker filled the last slot between our count and our ask: give this one back."""
    from optuna.trial import TrialState

    before = [
        t
        for t in sw.study.get_trials(deepcopy=False)
        if t.number < trial.number
        and (counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
    ]
    if len(before) < sw.n_trials:
        return False
    sw.study._storage.set_trial_user_attr(trial._trial_id, SURPLUS_ATTR, True)
    launch.fail(sw.storage, trial._trial_id)
    return True
