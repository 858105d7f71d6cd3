"""The sweep's answer: optimization_results.yaml, written after every batch and at the end.

Its keys are hydra-optuna-sweeper's (scripts read them) plus thaw's: the confirmed winner, the test
split, what the answer cost and the verdict in words.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from thaw.runtime.outputs import write_text_atomic
from thaw.runtime.secrets import redact
from thaw.sweeper import confidence, confirm
from thaw.sweeper.confirm_stage import chosen, confirmation, seconds
from thaw.sweeper.failures import counted
from thaw.sweeper.state import SweepState
from thaw.sweeper.verdict import verdict

log = logging.getLogger("thaw.sweeper")

# what the confirmation adds to the results, in this order
CONFIRMED_KEYS = ("baseline", "confirmed", "winner", "gain_vs_baseline", "seeds")


def results(sw: SweepState) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = sw.study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    out: dict[str, Any] = {
        # as hydra-optuna-sweeper writes it (scripts read it): the search is Optuna's
        "name": "optuna",
        "study_name": sw.study.study_name,
        "storage": redact(sw.url),
        "direction": sw.directions[0] if len(sw.directions) == 1 else sw.directions,
        "n_trials": sw.n_trials,
        "n_counted": sum(1 for t in trials if counted(t)),
        "trial_counts": counts,
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(sw.directions) == 1:
        _add_best(sw, trials, out)
    elif complete:
        _add_front(sw, out)
    return out


def _add_best(sw: SweepState, trials, out: dict[str, Any]) -> None:
    """One objective: the chosen trial, the confirmation, the test split, the cost, the verdict."""
    study = sw.study
    conf = confirmation(sw)
    best, summary = chosen(sw, conf)
    out.update(
        best_value=best.value,
        best_params=dict(best.params),
        best_trial={
            "number": best.number,
            "run_dir": relative(sw.sweep_dir, best.user_attrs.get("run_dir")),
        },
    )
    if best.number != study.best_trial.number:
        out["search_best_trial"] = {
            "number": study.best_trial.number,
            "value": study.best_trial.value,
        }
    if summary is not None:
        out["best_trial"]["mean"] = next(
            r["mean"] for r in summary["confirmed"] if r["number"] == best.number
        )
        out.update({k: summary[k] for k in CONFIRMED_KEYS if k in summary})
    out["best_trial"].update(held_out_info(study, best))
    out["seconds"] = seconds(sw, trials, conf)
    after = after_startup(study, sw.directions, sw.cfg.get("pruner"), trials)
    if after is not None:
        out["after_startup"] = after
    pending = len(conf.pending()) if conf is not None else 0
    if pending:  # during the search, or while another worker confirms
        out["confirmation_pending"] = pending
    out["verdict"] = verdict(study, sw.directions, best, out)
    study.set_user_attr("verdict", out["verdict"])
    study.set_user_attr("chosen_trial", best.number)  # the report marks it


def _add_front(sw: SweepState, out: dict[str, Any]) -> None:
    """Several objectives: the Pareto front."""
    best_trials = sw.study.best_trials
    out["best_trials"] = [
        {
            "number": t.number,
            "values": t.values,
            "params": dict(t.params),
            "run_dir": relative(sw.sweep_dir, t.user_attrs.get("run_dir")),
        }
        for t in best_trials
    ]
    out["solutions"] = [
        {"params": dict(t.params), "values": t.values} for t in best_trials
    ]  # HOS's key


def after_startup(study, directions, pruner, trials) -> dict[str, Any] | None:
    """Did the search keep learning after the pruner's start-up trials? A pruner that prunes every
    later trial leaves the start-up's best as the sweep's answer."""
    from optuna.trial import TrialState

    startup = (pruner or {}).get("n_startup_trials")
    done = sorted((t for t in trials if counted(t)), key=lambda t: t.number)
    if startup is None or len(done) <= int(startup) or len(directions) != 1:
        return None
    later = done[int(startup) :]
    out = {
        "startup_trials": int(startup),
        "later_trials": len(later),
        "later_complete": sum(t.state == TrialState.COMPLETE for t in later),
        "later_pruned": sum(t.state == TrialState.PRUNED for t in later),
    }
    if any(t.state == TrialState.COMPLETE for t in done):
        out["best_found_after_startup"] = study.best_trial.number in {t.number for t in later}
    return out


def log_after_startup(sw: SweepState) -> None:
    trials = sw.study.get_trials(deepcopy=False)
    info = after_startup(sw.study, sw.directions, sw.cfg.get("pruner"), trials)
    if info is None:
        return
    best = info.get("best_found_after_startup")
    log.info(
        "search: %d of %d trials after the pruner's %d start-up trials completed (%d pruned); "
        "the best trial was found %s",
        info["later_complete"],
        info["later_trials"],
        info["startup_trials"],
        info["later_pruned"],
        "after the start-up" if best else "among the start-up trials",
    )


def relative(sweep_dir: Path, run_dir: str | None) -> str | None:
    """A trial's run dir relative to the sweep dir (a copied or moved sweep dir still finds
    it)."""
    if not run_dir:
        return run_dir
    try:
        return str(Path(run_dir).resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return run_dir


def held_out_info(study, best) -> dict[str, Any]:
    """The chosen trial's test accuracy with its 95 % Wilson interval, and its paired gap to the
    baseline's on the same images."""
    test_eval = study.user_attrs.get("test_eval") or {}
    if test_eval.get("trial") != best.number:
        return {}
    acc, n = test_eval["test_accuracy"], int(test_eval["num_test"])
    info = {k: v for k, v in test_eval.items() if k not in ("trial", "correct")}
    info["test_interval"] = confidence.wilson(round(acc * n), n)
    base = study.user_attrs.get("test_eval_baseline") or {}
    if (
        base.get("trial") == confirm.baseline_number(study)
        and test_eval.get("correct")
        and base.get("correct")
    ):
        info["baseline_test_accuracy"] = base["test_accuracy"]
        info["test_gain_vs_baseline"] = confidence.paired_gap(test_eval["correct"], base["correct"])
    return info


def write_results(sw: SweepState, log_best: bool = False) -> None:
    res = results(sw)
    path = sw.sweep_dir / "optimization_results.yaml"
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(res)))
    if not log_best:
        return
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
        path,
    )
    if res.get("verdict"):
        log.info("verdict: %s", res["verdict"])
