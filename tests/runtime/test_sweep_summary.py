"""The W&B sweep-summary run names the trial the sweep answers with, as optimization_results.yaml
and the report do (real wandb, offline; Optuna on SQLite)."""

import optuna
from optuna.distributions import FloatDistribution
from wandb_files import offline_runs, read

from thaw.runtime.sweep_summary import log_sweep_summary

SPACE = {"lr.base": FloatDistribution(1e-4, 1e-2, log=True)}


def _study(tmp_path, values):
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize"
    )
    for v in values:
        study.tell(study.ask(SPACE), v)
    return study


def _summary(tmp_path, study, monkeypatch) -> dict:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log_sweep_summary({"name": "wandb", "mode": "offline"}, study, tmp_path)
    [path] = offline_runs(tmp_path / "wandb")
    return read(path).summary


def test_the_summary_names_the_confirmed_winner_not_the_search_best(tmp_path, monkeypatch):
    study = _study(tmp_path, [0.90, 0.94, 0.92])
    study.set_user_attr("chosen_trial", 2)  # the confirmation overruled the search's trial 1
    study.set_user_attr("verdict", "trial 2 wins")
    summary = _summary(tmp_path, study, monkeypatch)
    assert summary["best_trial"] == 2 and summary["best_value"] == 0.92
    assert summary["best_params"] == study.trials[2].params
    assert summary["search_best_trial"] == 1 and summary["search_best_value"] == 0.94
    assert summary["verdict"] == "trial 2 wins"


def test_without_a_confirmation_the_best_is_the_search_best(tmp_path, monkeypatch):
    summary = _summary(tmp_path, _study(tmp_path, [0.90, 0.94]), monkeypatch)
    assert summary["best_trial"] == 1 and summary["best_value"] == 0.94
    assert "search_best_trial" not in summary
