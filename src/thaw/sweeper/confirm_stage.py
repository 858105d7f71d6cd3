"""After the search: the confirmation runs (confirm.py's record), the trial the sweep answers with,
and that trial's one evaluation on the held-out test split.

One worker of a study runs the confirmation; the others leave it to that one, so no run is made
twice into the same dir.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from thaw.sweeper import confirm
from thaw.sweeper.launch import confirmation_value
from thaw.sweeper.state import SweepState

log = logging.getLogger("thaw.sweeper")
OWNER_ATTR = "confirmation_owner"  # host:pid of the worker that runs the confirmation


def confirmation(sw: SweepState) -> confirm.Confirmation | None:
    settings = confirm.Settings.parse(sw.cfg.get("confirm"))
    if not settings.on or len(sw.directions) != 1 or sw.job_cfg is None:
        return None
    base_seed = OmegaConf.select(sw.job_cfg, settings.seed_key, default=None)
    if base_seed is None:
        if "seed_key" not in sw.warned:  # asked after every trial: said once
            sw.warned.add("seed_key")
            log.warning(
                "hydra.sweeper.confirm: %s is not a key of this app's config; no confirmation "
                "runs (set hydra.sweeper.confirm.seed_key, or confirm.top_k=0)",
                settings.seed_key,
            )
        return None
    return confirm.Confirmation(
        settings,
        sw.study,
        sw.directions[0] == "maximize",
        int(base_seed),
        sw.app.confirmation_order,
    )


def run(sw: SweepState, save: Callable[[], None]) -> str | None:
    """Re-run the top trials and the baseline with more seeds (recorded on the study, not told to
    Optuna), n_jobs at a time through the launcher; `save` writes the results after each batch.
    Returns the other worker that runs them, if one does (its answer is the sweep's)."""
    from thaw.runtime import interrupt

    conf = confirmation(sw)
    if conf is None:
        return None
    pending = conf.pending()
    # every run done: a live owner is still testing the winner and writing the answer
    owner = confirmation_owner(sw.study) if pending else live_owner(sw.study)
    if owner is not None:
        log.info(
            "confirmation: left to the worker %s of this study (it runs every confirmation run "
            "once, then writes the answer to %s)",
            owner,
            sw.sweep_dir / "optimization_results.yaml",
        )
        return owner
    if not pending:
        return None
    log.info(
        "confirming: %d run(s) of trials %s with seeds %s (the winner is the best mean)",
        len(pending),
        sorted({t.number for t, _ in pending}),
        conf.seeds,
    )
    extra = sw.app.confirmation_overrides(sw.job_cfg, conf.base_seed, conf.s.reuse_views)
    n_jobs = sw.settings.n_jobs
    for i in range(0, len(pending), n_jobs):
        interrupt.check()
        _run_batch(sw, conf, pending[i : i + n_jobs], extra, 10_000 + i)
        save()
    _log_cost(sw)
    return None


def _run_batch(sw: SweepState, conf, batch, extra: list[str], job_idx: int) -> None:
    lines = [
        sw.fixed_lines
        + conf.overrides(t, seed)
        + extra
        + [f"hydra.sweeper.storage={sw.url}", f"hydra.sweeper.study_name={sw.study.study_name}"]
        for t, seed in batch
    ]
    started = time.monotonic()
    try:
        returns = sw.launcher.launch(lines, initial_job_idx=job_idx)
    except Exception as exc:
        returns = [exc] * len(batch)
    seconds = time.monotonic() - started
    results = []
    for (trial, seed), ret in zip(batch, returns):
        value, error = confirmation_value(ret)
        results.append((trial, seed, value, error))
        log.log(
            logging.INFO if error is None else logging.WARNING,
            "confirm trial %d seed %d: %s",
            trial.number,
            seed,
            f"value {value:.4f}" if error is None else f"failed ({error})",
        )
    conf.store(results, seconds * _slots(sw.launcher, len(batch)))


def _log_cost(sw: SweepState) -> None:
    spent = seconds(sw, sw.study.get_trials(deepcopy=False))
    if spent.get("confirmation_share") is not None:
        log.info(
            "confirmation: %.0f s in all, %.0f %% of the search's %.0f s "
            "(hydra.sweeper.confirm sets how many runs)",
            spent["confirmation"],
            100 * spent["confirmation_share"],
            spent["search"],
        )


def _slots(launcher, runs: int) -> int:
    """Slots a batch of runs held for its wall time: Hydra's basic launcher runs them one after
    another (its wall time is their sum), a parallel launcher all at once."""
    return 1 if type(launcher).__name__ == "BasicLauncher" else runs


def seconds(sw: SweepState, trials, conf=None) -> dict[str, float]:
    """What the answer cost: the search's trials (start to end, summed) and the confirmation's
    launches (slot time: wall times the runs a parallel launcher ran at once), so the price of
    "how sure" is on record."""
    search = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    out = {"search": round(search, 1)}
    conf = conf if conf is not None else confirmation(sw)
    if conf is not None:
        out["confirmation"] = round(conf.recorded()["seconds"], 1)
        out["confirmation_share"] = (
            round(out["confirmation"] / out["search"], 3) if out["search"] > 0 else None
        )
    return out


def confirmation_owner(study) -> str | None:
    """None when this worker runs the confirmation, else the worker that does: several workers
    finishing one study's search would otherwise run the same confirmation runs into the same
    dirs."""
    owner = live_owner(study)
    if owner is not None:
        return owner
    study.set_user_attr(OWNER_ATTR, _me())
    time.sleep(1.0)  # two workers claiming at once: the later write stands, both read it back
    owner = study.user_attrs.get(OWNER_ATTR)
    return None if owner == _me() else owner


def live_owner(study) -> str | None:
    """Another worker that claimed the confirmation and still runs, if one did."""
    owner = study.user_attrs.get(OWNER_ATTR)
    return owner if owner and owner != _me() and alive(owner) else None


def _me() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def alive(worker: str) -> bool:
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


def chosen(sw: SweepState, conf=None) -> tuple[Any, dict[str, Any] | None]:
    """The trial the sweep answers with: the confirmed winner, else Optuna's best. (`conf`: the
    sweep's confirmation, if the caller has it.)"""
    conf = conf if conf is not None else confirmation(sw)
    summary = conf.summary() if conf is not None else None
    if summary is not None:
        return sw.study.get_trials(deepcopy=False)[summary["winner"]], summary
    return sw.study.best_trial, None


def evaluate_best(sw: SweepState) -> None:
    """The chosen trial (and the baseline, the fixed reference) once on the held-out test
    split."""
    from optuna.trial import TrialState

    if len(sw.directions) != 1:
        return
    if sw.settings.save_models == "none":
        log.info(
            "save_models=none: no model to evaluate on the test split (thaw-retrain rebuilds "
            "the winner)"
        )
        return
    if not any(t.state == TrialState.COMPLETE for t in sw.study.get_trials(deepcopy=False)):
        return
    best, _ = chosen(sw)
    _evaluate_once(sw, "test_eval", best, "chosen trial")
    base = confirm.baseline_number(sw.study)
    if base is not None and base != best.number:
        _evaluate_once(
            sw, "test_eval_baseline", sw.study.get_trials(deepcopy=False)[base], "baseline"
        )


def _evaluate_once(sw: SweepState, attr: str, trial, what: str) -> None:
    done = sw.study.user_attrs.get(attr) or {}
    run_dir = trial.user_attrs.get("run_dir")
    if done.get("trial") == trial.number or not run_dir:
        return
    try:
        res = sw.app.evaluate(run_dir)
    except Exception as exc:  # the sweep's results stand without it
        log.warning("could not evaluate %s %d on the test split: %s", what, trial.number, exc)
        return
    if res:  # finished trials are immutable in Optuna: the result lives on the study
        sw.study.set_user_attr(attr, {"trial": trial.number, **res})
        log.info(
            "%s %d on the held-out test split: accuracy %.4f (%d images)",
            what,
            trial.number,
            res["test_accuracy"],
            res["num_test"],
        )
