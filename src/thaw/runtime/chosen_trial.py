"""The trial a sweep answers with, as every view of the sweep names it (report, compare page,
W&B sweep summary): the confirmed winner where the sweep recorded one, else the search's best."""

from __future__ import annotations


def chosen_trial(study):
    """The trial the sweep answers with: its confirmed winner (recorded by thaw-train sweeps, or
    the trial its test split was evaluated on), else the search's best; None with several
    objectives or no completed trial."""
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        return None
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    number = attrs.get("chosen_trial", (attrs.get("test_eval") or {}).get("trial"))
    if type(number) is int and 0 <= number < len(trials):
        if trials[number].state == TrialState.COMPLETE:
            return trials[number]
    try:
        return study.best_trial
    except ValueError:
        return None
