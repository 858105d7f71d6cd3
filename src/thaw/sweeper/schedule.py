"""Keep n_jobs trials in flight: when one finishes, the next is asked and launched at once.

Jobs still run through Hydra's launcher plugin; only the call changes. A launcher that runs jobs in
other processes (joblib, Ray, submitit, RQ) gets one `launch([job])` call per trial, each from its
own thread, so a finished trial frees its slot without waiting for the others. The basic launcher
runs the job in this process, one at a time (its jobs share Hydra's process-wide state). Any other
launcher, or `hydra.sweeper.scheduling=batch`, launches n_jobs trials in one call and waits for all
of them (hydra-optuna-sweeper's batches).

Only the main thread asks and tells Optuna; the launch threads hand each job's return to it through
a queue.
"""

from __future__ import annotations

import logging
import queue
import threading

from thaw.sweeper import devices, launch

log = logging.getLogger("thaw.sweeper")

# launchers whose jobs run in other processes and whose launch() may be called from several threads
_OUT_OF_PROCESS = {
    "hydra_plugins.hydra_joblib_launcher": {"JoblibLauncher"},
    "hydra_plugins.hydra_ray_launcher": {"RayLauncher"},
    "hydra_plugins.hydra_submitit_launcher": {"LocalLauncher", "SlurmLauncher"},
    "hydra_plugins.hydra_rq_launcher": {"RQLauncher"},
}
SCHEDULING = ("continuous", "batch")


def launcher_kind(launcher) -> str:
    """'in_process' (the basic launcher), 'threads' (one launch per trial) or 'unknown'."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    if isinstance(launcher, BasicLauncher):
        return "in_process"
    cls = type(launcher)
    for module, names in _OUT_OF_PROCESS.items():
        if cls.__module__.startswith(module) and cls.__name__ in names:
            return "threads"
    return "unknown"


class Scheduler:
    """The trials this worker has in flight, their devices, and the queue their returns come in."""

    def __init__(self, sw, beats):
        self.sw, self.beats = sw, beats
        kind = launcher_kind(sw.launcher)
        self.in_process = kind == "in_process"
        self.barrier = sw.settings.scheduling == "batch" or kind == "unknown"
        self.slots = 1 if self.in_process else sw.settings.n_jobs
        devices.check_slots(sw.settings.devices, self.slots)
        self.pool = devices.DevicePool(sw.settings.devices, sticky=self.in_process)
        self.in_flight: dict[int, object] = {}  # trial id -> trial
        self.stopping = False  # Ctrl-C: the launch threads' errors are the interruption's
        self._returns: queue.Queue = queue.Queue()
        if kind == "unknown" and sw.settings.scheduling != "batch" and sw.settings.n_jobs > 1:
            log.info(
                "launcher %s is not known to run jobs in other processes: trials are launched "
                "%d at a time, each batch waiting for its slowest trial",
                type(sw.launcher).__name__,
                sw.settings.n_jobs,
            )
        if kind == "threads" and type(sw.launcher).__name__ == "RayLauncher":
            sw.launcher.launch([], initial_job_idx=0)  # ray.init once, before launches race to it

    def room(self) -> int:
        """Trials this worker may launch now (before the study's own limit)."""
        if self.barrier and self.in_flight:
            return 0
        return self.slots - len(self.in_flight)

    def launch(self, trials: list, extra: list[str] | None = None) -> None:
        """Launch `trials` (each its own job: one call per trial, or one call for all at a
        barrier); `extra` overrides go to every job (an out-of-memory retry's batch size)."""
        lines = []
        for trial in trials:
            device = self.pool.take(trial._trial_id, self._held_elsewhere())
            if device is not None:
                self.sw.storage.set_trial_user_attr(trial._trial_id, devices.DEVICE_ATTR, device)
            lines.append(launch.job_lines(self.sw, trial) + devices.job_lines(device))
            if extra:
                lines[-1] = _replace(lines[-1], extra)
            self.in_flight[trial._trial_id] = trial
        groups = (
            [(trials, lines)] if self.barrier else [([t], [ln]) for t, ln in zip(trials, lines)]
        )
        for group in groups:
            if self.in_process:
                self._run(*group)
            else:
                threading.Thread(target=self._run, args=group, daemon=True).start()

    def _run(self, trials: list, lines: list) -> None:
        """One launcher call (in a launch thread, or here for the basic launcher); each job's
        return, or why there is none, goes to the queue."""
        err = "the launcher returned no result for this job"
        try:
            returns = list(self.sw.launcher.launch(lines, initial_job_idx=trials[0].number))
        except Exception as exc:  # e.g. a job's config failed to compose: fail it, keep sweeping
            err = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
            if not self.stopping:
                log.error("launching trial(s) %s failed: %s", [t.number for t in trials], err)
            returns = []
        returns += [None] * (len(trials) - len(returns))
        for trial, ret in zip(trials, returns):
            self._returns.put((trial, ret, err))

    def finished(self, timeout: float):
        """(trial, job return, error) of the next job that ended, or None after `timeout` s."""
        try:
            trial, ret, err = self._returns.get(timeout=timeout)
        except queue.Empty:
            return None
        self.in_flight.pop(trial._trial_id, None)
        self.pool.give_back(trial._trial_id)
        return trial, ret, err

    def interrupt(self) -> None:
        """Ctrl-C: the trials in flight are failed as interrupted (the same command runs them
        again) and the joblib workers running them are stopped, as joblib itself does when its
        call is interrupted in the main thread; other launchers' jobs stop on their own signal."""
        from optuna.trial import TrialState

        self.stopping = True
        for tid in list(self.in_flight):
            if self.sw.storage.get_trial(tid).state == TrialState.RUNNING:
                self.sw.storage.set_trial_user_attr(tid, "interrupted", True)
                launch.fail(self.sw.storage, tid)
        if self.in_flight and type(self.sw.launcher).__name__ == "JoblibLauncher":
            try:
                from joblib.externals.loky import reusable_executor

                if reusable_executor._executor is not None:
                    reusable_executor._executor.shutdown(wait=False, kill_workers=True)
            except Exception as exc:  # best effort: at worst the exit waits for the jobs
                log.debug("could not stop the joblib workers: %s", exc)
            _kill_worker_processes()

    def _held_elsewhere(self) -> set[str]:
        """Devices other workers' running trials hold (their `device` user attribute)."""
        if not self.pool.devices:
            return set()
        from optuna.trial import TrialState

        return {
            str(t.user_attrs[devices.DEVICE_ATTR])
            for t in self.sw.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if devices.DEVICE_ATTR in t.user_attrs and t._trial_id not in self.in_flight
        }


def _kill_worker_processes() -> None:
    """Every worker process this one started and still runs (loky's, from any executor: two launch
    threads may each have made one), so the exit after Ctrl-C does not wait for their jobs."""
    import multiprocessing

    for proc in multiprocessing.active_children():
        try:
            proc.kill()
        except Exception as exc:  # already gone
            log.debug("worker %s not killed: %s", proc.pid, exc)


def _replace(lines: list[str], extra: list[str]) -> list[str]:
    """`lines` with the keys of `extra` overridden by `extra`."""
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    return [ln for ln in lines if ln.split("=", 1)[0].lstrip("+") not in keys] + list(extra)


class FailureWindow:
    """hydra-optuna-sweeper's per-batch rule without batches: judged over every n consecutive
    trials this worker finished (and over the last, shorter run of them at the end)."""

    def __init__(self, n: int, rate: float | None):
        self.n, self.rate = n, rate
        self.finished: list = []

    def add(self, frozen) -> None:
        if self.rate is None:
            return
        self.finished.append(frozen)
        if len(self.finished) >= self.n:
            self.close()

    def close(self) -> None:
        from thaw.sweeper.failures import check_failures

        window, self.finished = self.finished, []
        if window and self.rate is not None:
            check_failures(
                window,
                self.rate,
                1,
                f"hydra.sweeper.max_failure_rate={self.rate}, per {self.n} consecutive trials",
            )
