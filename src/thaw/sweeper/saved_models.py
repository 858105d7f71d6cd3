"""hydra.sweeper.save_models=best: which trials' saved models the sweep still needs, and removing
the others' (all keeps every model; none never saves one, see launch.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from thaw.sweeper import confirm
from thaw.sweeper.confirm_stage import confirmation
from thaw.sweeper.state import SweepState

log = logging.getLogger("thaw.sweeper")


def remove_unneeded(sw: SweepState) -> None:
    """save_models=best: delete model.keras (and model.h5) of every COMPLETE trial that is not the
    best (several objectives: not on the Pareto front). Judged on the whole study, so it holds
    across resumes and workers; a trial that is not the best in a snapshot never becomes the best
    later (the best only improves), so deleting its model is safe."""
    if sw.settings.save_models != "best":
        return
    from optuna.trial import TrialState

    trials = sw.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return
    keep = (
        {t.number for t in sw.study.best_trials}
        if len(sw.directions) > 1
        else {sw.study.best_trial.number}
    )
    keep |= _confirmation_needs(sw, keep)
    for t in trials:
        run_dir = t.user_attrs.get("run_dir")
        if t.number in keep or not run_dir:
            continue
        for name in ("model.keras", "model.h5"):
            path = Path(run_dir) / name
            if path.exists():
                path.unlink()
                log.info("save_models=best: removed %s (trial %d is not the best)", path, t.number)


def _confirmation_needs(sw: SweepState, keep: set) -> set:
    """The baseline's model (the test split's reference) and, until confirmation is done, the top
    trials' (any may win); after it, the winner's instead of Optuna's best."""
    base = confirm.baseline_number(sw.study)
    extra = set() if base is None else {base}
    conf = confirmation(sw) if len(sw.directions) == 1 else None
    if conf is None:
        return extra
    if conf.pending():
        return extra | {t.number for t in conf.candidates()}
    summary = conf.summary()
    if summary is not None:
        keep.clear()
        extra.add(summary["winner"])
    return extra
