"""The sweep loop: ask Optuna, launch trials through Hydra's launcher, keep the study consistent.

`n_trials` is the total the study should reach. Counted: COMPLETE, PRUNED, and FAIL trials whose job
raised (their error is in the user attribute `error`). Trials left RUNNING by a dead worker stop
heartbeating, are failed as stale (not counted) and their slot is run again.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from thaw.errors import ConfigError, ThawError
from thaw.runtime.outputs import write_text_atomic
from thaw.runtime.secrets import redact
from thaw.sweeper import confidence, confirm, identity, search_space
from thaw.sweeper import plan as search_space_plan
from thaw.sweeper.hooks import AppHooks
from thaw.sweeper.progress import Progress
from thaw.sweeper.storage import make_storage

log = logging.getLogger("thaw.sweeper")

# Heartbeats and fail_stale_trials are used deliberately outside Study.optimize (ask/tell across
# processes).
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
warnings.filterwarnings("ignore", category=Warning, module="optuna._experimental")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental.*")

POLL_SECONDS = 2.0
DEFAULT_FAILURE_RATE = 0.25  # thaw's rule when hydra.sweeper.max_failure_rate is unset
# thaw-train objectives a trial measures (test_accuracy is measured once, on the best trial)


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


def _running_trial(
    study, params: dict[str, Any], space: dict[str, Any], user_attrs: dict[str, Any]
):
    """A trial with fixed params, created RUNNING for this worker. Optuna's enqueue_trial leaves it
    WAITING, and on SQLite two workers asking at once can both pop the same waiting trial."""
    import datetime

    import optuna
    from optuna.trial import FrozenTrial, TrialState

    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=dict(params),
        distributions={k: space[k] for k in params},
        user_attrs=dict(user_attrs),
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)


def _alive(worker: str) -> bool:
    """Whether a worker `host:pid` still runs (one on another host is assumed to)."""
    import os
    import socket

    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counted(trial) -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and "error" in attrs and "interrupted" not in attrs


class _Heartbeats:
    """Beat for trials this process launched, while the launcher blocks on them."""

    def __init__(self, storage, interval: int | None):
        self.storage, self.interval = storage, interval
        self.ids: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if interval and hasattr(storage, "record_heartbeat"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as exc:
                    log.debug("heartbeat failed for trial id %s: %s", tid, exc)

    def add(self, trial_id):
        if self._thread is None:
            return
        with self._lock:
            self.ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id):
        with self._lock:
            self.ids.discard(trial_id)

    def stop(self):
        self._stop.set()


class SweepRunner:
    def __init__(self, sweeper_cfg: dict[str, Any]):
        self.cfg = sweeper_cfg
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    # ------------------------------------------------------------------ set-up
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

    def _settings(self):
        c = self.cfg
        n_trials = c.get("n_trials")
        if n_trials is None or int(n_trials) < 1:
            raise ConfigError(f"hydra.sweeper.n_trials: must be >= 1, got {n_trials}")
        n_jobs = int(c.get("n_jobs") or 1)
        if n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs: must be >= 1, got {n_jobs}")
        rate = c.get("max_failure_rate")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate: must be in [0, 1] (or unset), got {rate}"
            )
        if int(c.get("failure_min_trials") or 0) < 1:
            raise ConfigError(
                f"hydra.sweeper.failure_min_trials: must be >= 1, got {c.get('failure_min_trials')}"
            )
        direction = c.get("direction")
        if direction is None:
            direction = self.app.default_directions(self.config)
        directions = (
            list(direction)
            if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction)
            else [direction]
        )
        for d in directions:
            if d not in ("maximize", "minimize"):
                raise ConfigError(
                    f"hydra.sweeper.direction: expected maximize or minimize, got {d!r}"
                )
        return (
            int(n_trials),
            n_jobs,
            None if rate is None else float(rate),
            [str(d) for d in directions],
        )

    def _instantiate(self, key: str, default, node=None):
        from hydra.utils import instantiate

        node = self.cfg.get(key) if node is None else node
        if node is None:
            return default
        if not isinstance(
            node, dict
        ):  # Hydra already instantiated it (recursive plugin instantiation)
            return node
        missing = [k for k, v in node.items() if v == "???"]
        if missing:
            raise ConfigError(
                f"hydra.sweeper.{key}.{missing[0]}: {node.get('_target_')} needs a value "
                f"(e.g. hydra.sweeper.{key}.{missing[0]}=2)"
            )
        try:
            return instantiate(node)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise ConfigError(
                f"hydra.sweeper.{key}: cannot build {node.get('_target_')} ({first})"
            ) from None

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]):
        try:
            return self._sweep(arguments)
        except _TooManyFailures as exc:
            log.error("sweep stopped: %s", exc)
            print(
                f"{self._prog()}: error: sweep stopped: {exc.short or exc}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)
        except ThawError as exc:
            print(f"{self._prog()}: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    def _prog(self) -> str:
        return self.app.prog

    def _sweep(self, arguments: list[str]):
        import optuna
        from optuna.trial import TrialState

        n_trials, n_jobs, max_failure_rate, directions = self._settings()
        self.app.check_objectives(self.config)
        self._save_models()
        plan = self.plan = search_space_plan.build(
            self.cfg, self.config, arguments, getattr(self.hydra_context, "config_loader", None)
        )
        space = plan.space
        fixed_lines = list(plan.fixed.values())
        self._check_question(plan, fixed_lines)
        n_trials = self._open_study(directions, plan, n_trials)
        self.n_trials, self.directions = n_trials, directions
        study, url, study_name = self.study, self.url, self.study.study_name
        interval = self.cfg.get("heartbeat_interval")
        beats = _Heartbeats(self.storage, interval)
        progress = Progress(n_trials, _counted, directions)
        progress.start(study.get_trials(deepcopy=False))
        log.info(
            "study %r at %s: %d of %d trials done, searching %s",
            study_name,
            redact(url),
            progress.at_start,
            n_trials,
            ", ".join(
                [f"{k} ~ {type(d).__name__}" for k, d in space.items()]
                + [f"{k} (per {'/'.join(d.owners)})" for k, d in plan.dependent.items()]
                + (["custom_search_space"] if plan.extender else [])
            ),
        )
        interrupted = False
        try:
            from thaw.runtime import interrupt

            while True:
                interrupt.check()
                if interval:
                    optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                done = [t for t in trials if _counted(t)]
                running = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
                if max_failure_rate is None:
                    self._check_failures(
                        done,
                        DEFAULT_FAILURE_RATE,
                        int(self.cfg.get("failure_min_trials") or 5),
                        "max_failure_rate unset: thaw's rule over the finished trials",
                    )
                if len(done) >= n_trials:
                    break
                mine = getattr(
                    self, "baseline_trial", None
                )  # created RUNNING here, not yet launched
                slots = (
                    n_trials
                    - len(done)
                    - len(
                        [
                            t
                            for t in running
                            if t.state == TrialState.RUNNING
                            and (mine is None or t.number != mine.number)
                        ]
                    )
                )
                if slots <= 0:
                    time.sleep(POLL_SECONDS)  # the rest is running in other workers
                    continue
                batch = self._ask_batch(plan, min(n_jobs, slots), beats)
                if not batch:
                    time.sleep(POLL_SECONDS)
                    continue
                self._run_batch(batch, fixed_lines, study_name, beats)
                self._remove_unneeded_models()
                self.write_results()
                if max_failure_rate is not None:  # hydra-optuna-sweeper's meaning: per batch
                    self._check_failures(
                        [self.storage.get_trial(t._trial_id) for t in batch],
                        max_failure_rate,
                        1,
                        f"hydra.sweeper.max_failure_rate={max_failure_rate}, per batch",
                    )
                progress.report(study.get_trials(deepcopy=False), log)
        except KeyboardInterrupt:
            interrupted = True
            log.warning(
                "interrupted: finished trials are kept in %s; run the same command to resume",
                redact(url),
            )
        finally:
            beats.stop()
            self._fail_unfinished(beats)
            if hasattr(self, "study"):
                self.write_results(log_best=interrupted)
        if interrupted:
            sys.exit(130)
        self._log_after_startup()
        try:
            self._confirm(fixed_lines, study_name, beats)
        except KeyboardInterrupt:
            log.warning(
                "interrupted during confirmation: finished runs are kept on the study; run the "
                "same "
                "command to continue"
            )
            self.write_results(log_best=True)
            sys.exit(130)
        self._remove_unneeded_models()
        self._evaluate_best()
        self._nothing_usable()
        self.write_results(log_best=True)
        self._report()
        return self.study

    # ------------------------------------------------------------------ what the study is about
    def _check_question(self, plan, fixed_lines: list[str]) -> None:
        """Compose a trial's fixed config once: searched keys it ignores are refused, a pruner that
        never hears a value is warned about, and the study's identity (and the `{config_hash}` in
        its name) is computed, all before anything is written."""
        self.job_cfg = None
        loader = getattr(self.hydra_context, "config_loader", None)
        searched = list(plan.space) + list(plan.dependent)
        if loader is not None:
            try:
                self.job_cfg = loader.load_sweep_config(self.config, list(fixed_lines))
            except Exception as exc:  # the trials will fail with Hydra's own message
                log.debug("could not compose the fixed config: %s", exc)
        if self.job_cfg is None:
            self.identity_keys = {}
            return
        app = self.app
        app.refuse_ignored(self.job_cfg, searched)
        warning = app.pruning_warning(self.job_cfg) if self.cfg.get("pruner") else None
        if warning:
            log.warning("%s", warning)
        config_keys = app.config_keys(self.job_cfg, searched)
        self.identity_keys = {**config_keys, **app.content_keys(self.job_cfg)}
        name = str(self.cfg.get("study_name") or "thaw")
        expanded = identity.expand_name(name, config_keys)
        if expanded != name:
            from omegaconf import open_dict, read_write

            self.cfg["study_name"] = expanded
            with read_write(self.config), open_dict(self.config):
                self.config.hydra.sweeper.study_name = expanded  # hydra.sweep.dir follows it
        self.baseline_params = self._baseline_params(plan)

    def _baseline_params(self, plan) -> dict[str, Any] | None:
        if not self.cfg.get("baseline"):
            return None
        node = self.cfg.get("sampler")
        if isinstance(node, dict) and str(node.get("_target_", "")).endswith("GridSampler"):
            log.warning(
                "hydra.sweeper.baseline: not enqueued with the grid sampler (the grid decides "
                "every "
                "trial; include unfreeze.depth=0 in it to measure the frozen base)"
            )
            return None
        return self.app.baseline(self.job_cfg, plan.space)

    def _refuse_other_question(self, url: str, study_name: str, sampler, pruner) -> None:
        """An existing study run with another fixed config is refused (one line, nothing
        written)."""
        import optuna

        from thaw.sweeper.storage import journal_path

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else journal_path(url)
        if (path is not None and not Path(path).exists()) or not self.identity_keys:
            return
        attrs = (
            identity.sqlite_study_attrs(path, study_name) if url.startswith("sqlite:///") else None
        )
        if attrs is None:
            try:
                attrs = optuna.load_study(
                    study_name=study_name, storage=make_storage(url), sampler=sampler, pruner=pruner
                ).user_attrs
            except KeyError:
                return
        self.identity_diff = identity.check(
            attrs, self.identity_keys, study_name, bool(self.cfg.get("allow_config_change"))
        )

    def _record_question(self, study, plan) -> None:
        if self.identity_keys:
            identity.record(study, self.identity_keys, getattr(self, "identity_diff", None))
            if getattr(self, "identity_diff", None):
                log.warning(
                    "hydra.sweeper.allow_config_change=true: study %r continues with a changed "
                    "config "
                    "(%s); recorded on the study",
                    study.study_name,
                    "; ".join(self.identity_diff[:5]),
                )
        if self.job_cfg is not None:
            study.set_user_attr("about", self.app.about(self.job_cfg, _space_text(plan)))
        params = getattr(self, "baseline_params", None)
        if params and not study.get_trials(deepcopy=False):
            self.baseline_trial = _running_trial(study, params, plan.space, {"baseline": True})
            # workers starting at once may each create one: the lowest number is the baseline, for
            # all
            first = min(
                t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")
            )
            if first != self.baseline_trial.number:
                study._storage.set_trial_user_attr(self.baseline_trial._trial_id, "baseline", False)
                log.info(
                    "another worker created the baseline (trial %d); trial %d runs as a search "
                    "trial",
                    first,
                    self.baseline_trial.number,
                )
                return
            study.set_user_attr(confirm.BASELINE_ATTR, self.baseline_trial.number)
            log.info(
                "trial 0 is the baseline: %s (the frozen base, the preset's recipe)",
                " ".join(f"{k}={v}" for k, v in params.items()),
            )

    def _sampler_node(self, plan, n_trials: int):
        """The sampler's settings; GridSampler without a search_space walks the params' values, and
        the
        sweep then stops at the grid's size."""
        node = self.cfg.get("sampler")
        if (
            isinstance(node, dict)
            and str(node.get("_target_", "")).endswith("GridSampler")
            and node.get("search_space") is None
        ):
            if plan.dependent or plan.extender:
                raise ConfigError(
                    "hydra/sweeper/sampler=grid: needs a fixed grid (no custom_search_space and "
                    "no param whose range follows another)"
                )
            values = search_space.grid(plan.space)
            size = 1
            for v in values.values():
                size *= len(v)
            if size < n_trials:
                log.info("grid sampler: %d points, so n_trials %d -> %d", size, n_trials, size)
                n_trials = size
            node = {**node, "search_space": values}
        return node, n_trials

    def _open_study(self, directions, plan, n_trials: int) -> int:
        """Sampler, pruner and storage from the config; the study created or resumed (same
        directions).
        Returns n_trials (a grid caps it)."""
        import optuna

        node, n_trials = self._sampler_node(plan, n_trials)
        self.sampler_node = node
        sampler = self._instantiate("sampler", None, node) or optuna.samplers.TPESampler()
        pruner = self._instantiate("pruner", None) or optuna.pruners.NopPruner()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        url = self.cfg.get("storage") or f"sqlite:///{sweep_dir / 'study.db'}"
        study_name = self.cfg.get("study_name") or "thaw"
        self._refuse_other_question(url, study_name, sampler, pruner)
        if self.job_cfg is not None:
            self.app.validate(
                self.job_cfg
            )  # the data folder is scanned only once the study is the right one
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = make_storage(
            url,
            self.cfg.get("heartbeat_interval"),
            self.cfg.get("grace_period"),
            int(self.cfg.get("max_retry") or 0),
        )
        try:
            study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise ConfigError(
                f"hydra.sweeper.storage: cannot open study {study_name!r} at {redact(url)} "
                f"({first})"
            ) from None
        existing = [d.name.lower() for d in study.directions]
        if existing != directions:
            raise ConfigError(
                f"hydra.sweeper.direction: study {study_name!r} was created with {existing}, "
                f"not {directions}"
            )
        self._reseed_on_resume(
            study
        )  # before the baseline is enqueued: a new study is not a resumed one
        self._record_question(study, plan)
        if isinstance(node, dict) and str(node.get("_target_", "")).endswith("GridSampler"):
            _requeue_lost_grid_points(study)
        self.study, self.storage, self.url, self.sweep_dir = study, storage, url, sweep_dir
        return n_trials

    def _ask_batch(self, plan, size: int, beats) -> list:
        """Up to `size` new trials, heartbeating; fewer when other workers filled the study
        meanwhile."""
        batch = []
        baseline = getattr(self, "baseline_trial", None)
        if baseline is not None:  # created RUNNING by this worker: no other worker can take it
            self.baseline_trial = None
            beats.add(baseline._trial_id)
            batch.append(baseline)
        for _ in range(size - len(batch)):
            trial = plan.ask(self.study)
            if self._surplus(trial):
                break
            beats.add(trial._trial_id)
            batch.append(trial)
        return batch

    def _report(self) -> None:
        """report.html + PNGs in the sweep dir, and the W&B sweep-summary run (best effort)."""
        self.app.on_results(self.config, self.study, self.sweep_dir, self.url)

    # ------------------------------------------------------------------ confirm, evaluate
    def _confirmation(self) -> confirm.Confirmation | None:
        settings = confirm.Settings.parse(self.cfg.get("confirm"))
        if not settings.on or len(self.directions) != 1 or self.job_cfg is None:
            return None
        base_seed = OmegaConf.select(self.job_cfg, settings.seed_key, default=None)
        if base_seed is None:
            log.warning(
                "hydra.sweeper.confirm: %s is not a key of this app's config; no confirmation runs "
                "(set hydra.sweeper.confirm.seed_key, or confirm.top_k=0)",
                settings.seed_key,
            )
            return None
        return confirm.Confirmation(
            settings,
            self.study,
            self.directions[0] == "maximize",
            int(base_seed),
            self.app.confirmation_order,
        )

    def _confirm(self, fixed_lines: list[str], study_name: str, beats) -> None:
        """Re-run the top trials and the baseline with more seeds (recorded on the study, not told
        to
        Optuna), n_jobs at a time through the launcher."""
        conf = self._confirmation()
        if conf is None:
            return
        pending = conf.pending()
        if not pending:
            return
        owner = self._confirmation_owner()
        if owner is not None:
            log.info(
                "confirmation: left to the worker %s of this study (it runs every confirmation run "
                "once)",
                owner,
            )
            return
        log.info(
            "confirming: %d run(s) of trials %s with seeds %s (the winner is the best mean)",
            len(pending),
            sorted({t.number for t, _ in pending}),
            conf.seeds,
        )
        extra = self.app.confirmation_overrides(self.job_cfg, conf.base_seed, conf.s.reuse_views)
        n_jobs = int(self.cfg.get("n_jobs") or 1)
        for i in range(0, len(pending), n_jobs):
            from thaw.runtime import interrupt

            interrupt.check()
            batch = pending[i : i + n_jobs]
            lines = [
                fixed_lines
                + conf.overrides(t, seed)
                + extra
                + [f"hydra.sweeper.storage={self.url}", f"hydra.sweeper.study_name={study_name}"]
                for t, seed in batch
            ]
            started = time.monotonic()
            try:
                returns = self.launcher.launch(lines, initial_job_idx=10_000 + i)
            except Exception as exc:
                returns = [exc] * len(batch)
            seconds = time.monotonic() - started
            results = []
            for (trial, seed), ret in zip(batch, returns):
                value, error = _confirmation_value(ret)
                results.append((trial, seed, value, error))
                log.log(
                    logging.INFO if error is None else logging.WARNING,
                    "confirm trial %d seed %d: %s",
                    trial.number,
                    seed,
                    f"value {value:.4f}" if error is None else f"failed ({error})",
                )
            conf.store(results, seconds)
            self.write_results()
        spent = self._seconds(self.study.get_trials(deepcopy=False))
        if spent.get("confirmation_share") is not None:
            log.info(
                "confirmation: %.0f s in all, %.0f %% of the search's %.0f s "
                "(hydra.sweeper.confirm sets "
                "how many runs)",
                spent["confirmation"],
                100 * spent["confirmation_share"],
                spent["search"],
            )

    def _confirmation_owner(self) -> str | None:
        """None when this worker runs the confirmation, else the worker that does: several workers
        finishing one study's search would otherwise run the same confirmation runs into the same
        dirs."""
        import os
        import socket

        attr, me = "confirmation_owner", f"{socket.gethostname()}:{os.getpid()}"
        owner = self.study.user_attrs.get(attr)
        if owner and owner != me and _alive(owner):
            return owner
        self.study.set_user_attr(attr, me)
        time.sleep(1.0)  # two workers claiming at once: the later write stands, both read it back
        owner = self.study.user_attrs.get(attr)
        return None if owner == me else owner

    def _chosen(self):
        """The trial the sweep answers with: the confirmed winner, else Optuna's best."""
        conf = self._confirmation()
        summary = conf.summary() if conf is not None else None
        if summary is not None:
            return self.study.get_trials(deepcopy=False)[summary["winner"]], summary
        return self.study.best_trial, None

    def _evaluate_best(self) -> None:
        """The chosen trial (and the baseline, the fixed reference) once on the held-out test
        split."""
        if len(self.directions) != 1:
            return
        if self._save_models() == "none":
            log.info(
                "save_models=none: no model to evaluate on the test split (thaw-retrain rebuilds "
                "the winner)"
            )
            return
        from optuna.trial import TrialState

        if not any(t.state == TrialState.COMPLETE for t in self.study.get_trials(deepcopy=False)):
            return
        chosen, _ = self._chosen()
        self._evaluate_once("test_eval", chosen, "chosen trial")
        base = confirm.baseline_number(self.study)
        if base is not None and base != chosen.number:
            self._evaluate_once(
                "test_eval_baseline", self.study.get_trials(deepcopy=False)[base], "baseline"
            )

    def _evaluate_once(self, attr: str, trial, what: str) -> None:
        done = self.study.user_attrs.get(attr) or {}
        run_dir = trial.user_attrs.get("run_dir")
        if done.get("trial") == trial.number or not run_dir:
            return
        try:
            res = self.app.evaluate(run_dir)
        except Exception as exc:  # the sweep's results stand without it
            log.warning("could not evaluate %s %d on the test split: %s", what, trial.number, exc)
            return
        if res:  # finished trials are immutable in Optuna: the result lives on the study
            self.study.set_user_attr(attr, {"trial": trial.number, **res})
            log.info(
                "%s %d on the held-out test split: accuracy %.4f (%d images)",
                what,
                trial.number,
                res["test_accuracy"],
                res["num_test"],
            )

    def _reseed_on_resume(self, study) -> None:
        """A seeded sampler restarted on an existing study would replay the same random draws and
        repeat earlier configurations: offset its seed by the number of trials already there."""
        from hydra.utils import instantiate

        n = len(study.get_trials(deepcopy=False))
        node = self.sampler_node
        if not n or not isinstance(node, dict) or node.get("seed") is None:
            return
        if str(node.get("_target_", "")).endswith("GridSampler"):
            # its seed orders the grid, and the grid ids of the finished trials must keep meaning
            return
        try:
            study.sampler = instantiate({**node, "seed": int(node["seed"]) + n})
            log.info(
                "resuming: sampler seed %d offset by the %d existing trials", int(node["seed"]), n
            )
        except Exception as exc:
            log.warning("could not re-seed the sampler on resume: %s", exc)

    def _surplus(self, trial) -> bool:
        """Another worker filled the last slot between our count and our ask: give this one back."""
        from optuna.trial import TrialState

        before = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.number < trial.number
            and (_counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
        ]
        if len(before) < self.n_trials:
            return False
        self.study._storage.set_trial_user_attr(trial._trial_id, "surplus", True)
        self._fail(trial._trial_id)
        return True

    def _fail(self, trial_id) -> None:
        """FAIL through the storage: Study.tell would run sampler hooks (BruteForceSampler calls
        Study.stop, which raises outside Study.optimize, before the state is written)."""
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def _run_batch(self, batch, fixed_lines, study_name, beats) -> None:
        from optuna.trial import TrialState

        job_overrides = []
        for trial in batch:
            sampled = [f"{k}={search_space.format_value(v)}" for k, v in trial.params.items()]
            no_model = self.app.no_model_overrides() if self._save_models() == "none" else []
            job_overrides.append(
                fixed_lines
                + sampled
                + no_model
                + [
                    f"hydra.sweeper.trial_number={trial.number}",
                    f"hydra.sweeper.storage={self.url}",
                    f"hydra.sweeper.study_name={study_name}",
                    f"hydra.sweep.subdir=trial_{trial.number}",
                ]
            )
            log.info("trial %d: %s", trial.number, " ".join(sampled))
        err = (
            "the launcher returned no result for this job"  # a None return, unless launch() raised
        )
        try:
            returns = self.launcher.launch(job_overrides, initial_job_idx=batch[0].number)
        except (
            Exception
        ) as exc:  # e.g. a job's config failed to compose: fail the batch, keep sweeping
            err = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
            log.error("launching trial(s) %s failed: %s", [t.number for t in batch], err)
            returns = [None] * len(batch)
        finally:
            for trial in batch:
                beats.remove(trial._trial_id)
        for trial, ret in zip(batch, returns):
            if ret is None:
                if self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    self.storage.set_trial_user_attr(trial._trial_id, "error", err)
                    self._fail(trial._trial_id)
                continue
            frozen = self.storage.get_trial(trial._trial_id)
            run_dir = frozen.user_attrs.get("run_dir") or _output_dir(ret)
            if (
                frozen.state == TrialState.RUNNING
            ):  # the job never told its trial (died, or a foreign task)
                if run_dir:
                    self.storage.set_trial_user_attr(trial._trial_id, "run_dir", run_dir)
                self._tell_from_return(trial, ret)
                frozen = self.storage.get_trial(trial._trial_id)
            value = (
                frozen.values
                if frozen.values is None or len(frozen.values) > 1
                else frozen.values[0]
            )
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
        from thaw.sweeper.current import release

        release()  # an in-process job's trial handle (basic launcher) stops heartbeating

    def _save_models(self) -> str:
        mode = str(self.cfg.get("save_models") or "all")
        if mode not in ("all", "best", "none"):
            raise ConfigError(
                f"hydra.sweeper.save_models: expected all, best or none, got {mode!r}"
            )
        return mode

    def _remove_unneeded_models(self) -> None:
        """save_models=best: delete model.keras (and model.h5) of every COMPLETE trial that is not
        the
        best (several objectives: not on the Pareto front). Judged on the whole study, so it holds
        across resumes and workers; a trial that is not the best in a snapshot never becomes the
        best
        later (the best only improves), so deleting its model is safe."""
        if self._save_models() != "best":
            return
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not trials:
            return
        keep = (
            {t.number for t in self.study.best_trials}
            if len(self.directions) > 1
            else {self.study.best_trial.number}
        )
        keep |= self._models_confirmation_needs(keep)
        for t in trials:
            run_dir = t.user_attrs.get("run_dir")
            if t.number in keep or not run_dir:
                continue
            for name in ("model.keras", "model.h5"):
                path = Path(run_dir) / name
                if path.exists():
                    path.unlink()
                    log.info(
                        "save_models=best: removed %s (trial %d is not the best)", path, t.number
                    )

    def _models_confirmation_needs(self, keep: set) -> set:
        """The baseline's model (the test split's reference) and, until confirmation is done, the
        top
        trials' (any may win); after it, the winner's instead of Optuna's best."""
        base = confirm.baseline_number(self.study)
        extra = set() if base is None else {base}
        conf = self._confirmation() if len(self.directions) == 1 else None
        if conf is None:
            return extra
        if conf.pending():
            return extra | {t.number for t in conf.candidates()}
        summary = conf.summary()
        if summary is not None:
            keep.clear()
            extra.add(summary["winner"])
        return extra

    def _tell_from_return(self, trial, ret) -> None:
        """A job that did not tell its trial itself (any Hydra app): its return value, or its
        exception
        (optuna.TrialPruned = PRUNED at the last reported step), decides the state."""
        import optuna
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        value = ret._return_value
        if ret.status == JobStatus.FAILED and isinstance(value, optuna.TrialPruned):
            self.storage.set_trial_user_attr(
                trial._trial_id, "pruned", str(value) or "pruned by the app"
            )
            return self._tell(trial, state=TrialState.PRUNED)
        if ret.status == JobStatus.FAILED:
            error = f"{type(value).__name__}: {value}"
        else:
            values, error = _objective_values(value, len(self.directions))
            if error is None:
                return self._tell(trial, values=values)
        self.storage.set_trial_user_attr(trial._trial_id, "error", error[:2000])
        self._fail(trial._trial_id)

    def _tell(self, trial, **kwargs) -> None:
        """Study.tell; a grid or brute-force sampler that finished its space calls Study.stop, which
        raises outside Study.optimize after the state is written."""
        try:
            self.study.tell(trial, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    @staticmethod
    def _check_failures(done, max_rate: float, min_trials: int, rule: str) -> None:
        """Raise when more than max_rate of `done` failed, judged once at least min_trials are
        done."""
        from optuna.trial import TrialState

        if len(done) < max(1, min_trials):
            return
        failed = [t for t in done if t.state == TrialState.FAIL]
        rate = len(failed) / len(done)
        if failed and rate > max_rate:
            last = failed[-1]
            raise _TooManyFailures(
                f"{len(failed)} of {len(done)} trials failed (rate {rate:.2f} > {max_rate}; "
                f"{rule}); last error, trial {last.number}: {last.user_attrs.get('error', '?')}"
            )

    def _nothing_usable(self) -> None:
        """A sweep that ends with failures and not one COMPLETE trial failed, whatever the rule
        said."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        failed = [t for t in trials if t.state == TrialState.FAIL and _counted(t)]
        if failed and not any(t.state == TrialState.COMPLETE for t in trials):
            self._report()
            raise _TooManyFailures(
                f"no trial completed ({len(failed)} failed); last error, trial "
                f"{failed[-1].number}: {failed[-1].user_attrs.get('error', '?')}",
                f"no trial completed ({len(failed)} failed; each trial's error is in the log "
                "above and on the trial in the study)",
            )

    def _fail_unfinished(self, beats) -> None:
        """Trials this process asked for but did not finish (Ctrl-C) are failed, not left
        RUNNING."""
        from optuna.trial import TrialState

        if not hasattr(self, "study"):
            return
        for tid in list(beats.ids):
            try:
                if self.storage.get_trial(tid).state == TrialState.RUNNING:
                    self.storage.set_trial_user_attr(tid, "interrupted", True)
                    self.storage.set_trial_state_values(tid, TrialState.FAIL)
            except Exception as exc:
                log.warning("could not fail interrupted trial id %s: %s", tid, exc)

    # ------------------------------------------------------------------ results
    def results(self) -> dict[str, Any]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        counts = {s.name: 0 for s in TrialState}
        for t in trials:
            counts[t.state.name] += 1
        out: dict[str, Any] = {
            # as hydra-optuna-sweeper writes it (scripts read it): the search is Optuna's
            "name": "optuna",
            "study_name": self.study.study_name,
            "storage": redact(self.url),
            "direction": self.directions[0] if len(self.directions) == 1 else self.directions,
            "n_trials": self.n_trials,
            "n_counted": sum(1 for t in trials if _counted(t)),
            "trial_counts": counts,
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(self.directions) == 1:
            best, summary = self._chosen()
            out.update(
                best_value=best.value,
                best_params=dict(best.params),
                best_trial={
                    "number": best.number,
                    "run_dir": self._relative(best.user_attrs.get("run_dir")),
                },
            )
            if best.number != self.study.best_trial.number:
                out["search_best_trial"] = {
                    "number": self.study.best_trial.number,
                    "value": self.study.best_trial.value,
                }
            if summary is not None:
                out["best_trial"]["mean"] = next(
                    r["mean"] for r in summary["confirmed"] if r["number"] == best.number
                )
                out.update(
                    {
                        k: summary[k]
                        for k in ("baseline", "confirmed", "winner", "gain_vs_baseline", "seeds")
                        if k in summary
                    }
                )
            out["best_trial"].update(self._test_info(best))
            out["seconds"] = self._seconds(trials)
            after = self._after_startup(trials)
            if after is not None:
                out["after_startup"] = after
            out["verdict"] = self._verdict(best, out)
            self.study.set_user_attr("verdict", out["verdict"])
        elif complete:
            best_trials = self.study.best_trials
            out["best_trials"] = [
                {
                    "number": t.number,
                    "values": t.values,
                    "params": dict(t.params),
                    "run_dir": self._relative(t.user_attrs.get("run_dir")),
                }
                for t in best_trials
            ]
            out["solutions"] = [
                {"params": dict(t.params), "values": t.values} for t in best_trials
            ]  # HOS's key
        return out

    def _after_startup(self, trials) -> dict[str, Any] | None:
        """Did the search keep learning after the pruner's start-up trials? A pruner that prunes
        every
        later trial leaves the start-up's best as the sweep's answer."""
        from optuna.trial import TrialState

        startup = (self.cfg.get("pruner") or {}).get("n_startup_trials")
        counted = sorted((t for t in trials if _counted(t)), key=lambda t: t.number)
        if startup is None or len(counted) <= int(startup) or len(self.directions) != 1:
            return None
        later = counted[int(startup) :]
        out = {
            "startup_trials": int(startup),
            "later_trials": len(later),
            "later_complete": sum(t.state == TrialState.COMPLETE for t in later),
            "later_pruned": sum(t.state == TrialState.PRUNED for t in later),
        }
        if any(t.state == TrialState.COMPLETE for t in counted):
            out["best_found_after_startup"] = self.study.best_trial.number in {
                t.number for t in later
            }
        return out

    def _log_after_startup(self) -> None:
        info = (
            self._after_startup(self.study.get_trials(deepcopy=False))
            if hasattr(self, "study")
            else None
        )
        if info is None:
            return
        best = info.get("best_found_after_startup")
        log.info(
            "search: %d of %d trials after the pruner's %d start-up trials completed (%d pruned); "
            "the best "
            "trial was found %s",
            info["later_complete"],
            info["later_trials"],
            info["startup_trials"],
            info["later_pruned"],
            "after the start-up" if best else "among the start-up trials",
        )

    def _seconds(self, trials) -> dict[str, float]:
        """What the answer cost: the search's trials (start to end, summed) and the confirmation's
        launches (wall), so the price of "how sure" is on record."""
        search = sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.datetime_complete is not None and t.datetime_start is not None
        )
        out = {"search": round(search, 1)}
        conf = self._confirmation()
        if conf is not None:
            out["confirmation"] = round(conf.recorded()["seconds"], 1)
            out["confirmation_share"] = (
                round(out["confirmation"] / out["search"], 3) if out["search"] > 0 else None
            )
        return out

    def _relative(self, run_dir: str | None) -> str | None:
        """A trial's run dir relative to the sweep dir (a copied or moved sweep dir still finds
        it)."""
        if not run_dir:
            return run_dir
        try:
            return str(Path(run_dir).resolve().relative_to(self.sweep_dir.resolve()))
        except ValueError:
            return run_dir

    def _test_info(self, best) -> dict[str, Any]:
        """The chosen trial's test accuracy with its 95 % Wilson interval, and its paired gap to the
        baseline's on the same images."""
        test_eval = self.study.user_attrs.get("test_eval") or {}
        if test_eval.get("trial") != best.number:
            return {}
        acc, n = test_eval["test_accuracy"], int(test_eval["num_test"])
        info = {k: v for k, v in test_eval.items() if k not in ("trial", "correct")}
        info["test_interval"] = confidence.wilson(round(acc * n), n)
        base = self.study.user_attrs.get("test_eval_baseline") or {}
        if (
            base.get("trial") == confirm.baseline_number(self.study)
            and test_eval.get("correct")
            and base.get("correct")
        ):
            info["baseline_test_accuracy"] = base["test_accuracy"]
            info["test_gain_vs_baseline"] = confidence.paired_gap(
                test_eval["correct"], base["correct"]
            )
        return info

    def _verdict(self, best, res: dict[str, Any]) -> str:
        """The sweep's answer in words: the winner against the frozen base, and how sure."""
        points = str(best.user_attrs.get("objective_name", "")).endswith("accuracy")
        fmt = (lambda v: f"{100 * v:.1f} points") if points else (lambda v: f"{v:.4g}")
        rng = (lambda v: f"{100 * v:.1f}") if points else (lambda v: f"{v:.4g}")
        what = ", ".join(
            f"{_label(k)} {v:.3g}" if isinstance(v, float) else f"{_label(k)} {v}"
            for k, v in best.params.items()
        )
        gain, base = res.get("gain_vs_baseline"), res.get("baseline")
        if gain is None or base is None:
            text = f"trial {best.number} ({what}) is the best, value {best.value:.4g}"
            if "confirmed" in res:
                mean, seeds = res["best_trial"].get("mean", best.value), len(res.get("seeds", []))
                text += f", mean {mean:.4g} over {seeds} seeds"
            base_number = confirm.baseline_number(self.study)
            base_trial = next(
                (
                    t
                    for t in self.study.get_trials(deepcopy=False)
                    if t.number == base_number and t.value is not None
                ),
                None,
            )
            if base_trial is None:
                text += " (no baseline to compare with)"
            elif best.number == base_trial.number:
                text += " and is the frozen base; not confirmed over seeds "
                text += "(hydra.sweeper.confirm.top_k=0)"
            else:
                text += (
                    f"; the frozen base (trial {base_trial.number}) scored {base_trial.value:.4g}, "
                    "one seed each: not confirmed (hydra.sweeper.confirm.top_k=0)"
                )
        else:
            n = gain["count"]
            interval = (
                f", 95 % interval {rng(gain['low'])} to {rng(gain['high'])}"
                if gain["low"] is not None
                else " (one seed: no interval)"
            )
            tuned = gain["trial"]
            sign = 1 if self.directions[0] == "maximize" else -1
            if best.number == base["number"]:
                text = (
                    f"the frozen base (trial {best.number}) has the best mean; the best fine-tuned "
                    f"trial {tuned} "
                    f"differs by {fmt(gain['mean'])}{interval}, over {n} seeds"
                )
            elif gain["low"] is not None and sign * gain["low"] > 0:
                by = fmt(sign * gain["mean"])
                text = f"{what} (trial {tuned}) beats the frozen base by {by}{interval}"
                text += f", over {n} seeds"
            else:
                text = (
                    f"{what} (trial {tuned}) is not distinguishable from the frozen base: "
                    f"{fmt(sign * gain['mean'])}"
                    f"{interval}, over {n} seeds"
                )
        t = res["best_trial"]
        if "test_accuracy" in t:
            iv = t["test_interval"]
            text += (
                f". Test split ({t['num_test']} images): {100 * t['test_accuracy']:.1f} % "
                f"(95 % interval {100 * iv['low']:.1f} to {100 * iv['high']:.1f})"
            )
            if "test_gain_vs_baseline" in t:
                g = t["test_gain_vs_baseline"]
                text += (
                    f", frozen base {100 * t['baseline_test_accuracy']:.1f} %: gap "
                    f"{100 * g['mean']:+.1f} points "
                    f"(95 % interval {100 * g['low']:.1f} to {100 * g['high']:.1f})"
                )
        return text

    def write_results(self, log_best: bool = False) -> None:
        res = self.results()
        write_text_atomic(
            self.sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(res))
        )
        if log_best:
            if "best_value" in res:
                log.info(
                    "best trial %d: value %s params %s (run dir %s)",
                    res["best_trial"]["number"],
                    res["best_value"],
                    res["best_params"],
                    res["best_trial"]["run_dir"],
                )
            log.info(
                "trials by state: %s; results in %s",
                {k: v for k, v in res["trial_counts"].items() if v},
                self.sweep_dir / "optimization_results.yaml",
            )
            if res.get("verdict"):
                log.info("verdict: %s", res["verdict"])


def _label(key: str) -> str:
    """'unfreeze.depth' -> 'depth', 'lr.base' -> 'lr': a searched key as a sentence names it."""
    parts = key.split(".")
    return parts[0] if parts[-1] in ("base", "name") else parts[-1]


def _space_text(plan) -> str:
    def describe(d) -> str:
        if hasattr(d, "low"):
            return f"{d.low:g}..{d.high:g}{' (log)' if getattr(d, 'log', False) else ''}"
        return "/".join(map(str, d.choices))

    return ", ".join([f"{k} {describe(d)}" for k, d in plan.space.items()] + list(plan.dependent))


def _requeue_lost_grid_points(study) -> None:
    """A grid point whose trial died (stale, interrupted: not counted) is asked again; GridSampler
    alone would count it visited and the sweep would end short of the grid."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = {
        repr(sorted(t.params.items()))
        for t in trials
        if _counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)
    }
    for t in trials:
        key = repr(sorted(t.params.items()))
        if t.state == TrialState.FAIL and not _counted(t) and t.params and key not in live:
            study.enqueue_trial(dict(t.params))
            live.add(key)
            log.info("grid point %s of dead trial %d asked again", dict(t.params), t.number)


def _confirmation_value(ret):
    """(value, None) from a confirmation job's return, or (None, why)."""
    from hydra.core.utils import JobStatus

    if ret is None or isinstance(ret, BaseException):
        return (
            None,
            f"launch failed: {ret}" if ret is not None else "the launcher returned no result",
        )
    if ret.status == JobStatus.FAILED:
        return None, f"{type(ret._return_value).__name__}: {ret._return_value}"[:500]
    values, error = _objective_values(ret._return_value, 1)
    return (values[0], None) if error is None else (None, error)


def _output_dir(ret) -> str | None:
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        return None


def _objective_values(value, n: int):
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


class _TooManyFailures(ThawError):
    exit_code = 1

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short
