"""report.html's own plots on a real Optuna study with every kind of trial."""

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from thaw.report import plots as report_plots
from thaw.report.html import build_report
from thaw.runtime.chosen_trial import chosen_trial

SPACE = {
    "unfreeze.depth": IntDistribution(0, 8),
    "lr.base": FloatDistribution(1e-5, 1e-2, log=True),
}


def _study(tmp_path):
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize"
    )
    plan = [
        ("COMPLETE", [0.70, 0.80, 0.85, 0.90]),
        ("PRUNED", [0.55, 0.60]),
        ("COMPLETE", [0.72, 0.81, 0.84, 0.86]),
        ("PRUNED", [0.50]),
        ("FAIL", [0.52, 0.53, 0.40]),
        ("PRUNED", [0.65, 0.66]),
    ]
    for state, curve in plan:
        t = study.ask(SPACE)
        t.set_user_attr("head_epochs", 2)
        t.set_user_attr("objective_name", "val_accuracy")
        for step, v in enumerate(curve):
            t.report(v, step)
        if state == "COMPLETE":
            study.tell(t, curve[-1])
        else:
            study.tell(t, state=TrialState[state])
    return study


def test_every_trial_is_in_the_depth_lr_plane_by_state(tmp_path):
    study = _study(tmp_path)
    fig = report_plots.trials_plane(study)
    by_name = {tr.name: tr for tr in fig.data}
    assert set(by_name) == {"complete (2)", "pruned (3)", "fail (1)", "chosen: trial 0"}
    states = [tr for tr in fig.data if not tr.name.startswith("chosen")]
    assert sum(len(tr.x) for tr in states) == 6  # none vanish, unlike Optuna's slice plot
    pruned = by_name["pruned (3)"]
    assert list(pruned.marker.color) == [0.60, 0.50, 0.66]  # at their last reported value
    assert list(by_name["fail (1)"].marker.color) == [0.40]
    trials = study.get_trials()
    assert list(pruned.x) == [trials[i].params["unfreeze.depth"] for i in (1, 3, 5)]
    assert fig.layout.xaxis.title.text == "unfreeze depth (blocks)"
    assert (
        fig.layout.yaxis.type == "log"
        and fig.layout.coloraxis.colorbar.title.text == "validation accuracy"
    )


def test_a_surplus_trial_is_on_no_plot(tmp_path):
    """A trial given back unrun (another worker took the last slot) is no failed point."""
    study = _study(tmp_path)
    given_back = study.ask(SPACE)
    study._storage.set_trial_user_attr(given_back._trial_id, "surplus", True)
    study.tell(given_back, state=TrialState.FAIL)
    by_name = {tr.name: tr for tr in report_plots.trials_plane(study).data}
    assert "fail (1)" in by_name and "fail (2)" not in by_name
    shown = [x for tr in report_plots.trial_times(study).data for x in tr.x]
    assert given_back.number not in shown and len(shown) == 6


def test_learning_curves_mark_where_fine_tuning_starts(tmp_path):
    fig = report_plots.learning_curves(_study(tmp_path))
    assert len(fig.data) == 6
    by_name = {tr.name: tr for tr in fig.data}
    assert list(by_name["trial 2 (complete)"].x) == [1, 2, 3, 4]
    assert fig.layout.xaxis.title.text == "epoch"
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].x0 == 2.5  # after epoch 2 of the head phase
    assert fig.layout.yaxis.title.text == "validation accuracy"


def test_learning_curves_show_the_chosen_trial_and_group_the_rest_by_state(tmp_path):
    study = _study(tmp_path)
    fig = report_plots.learning_curves(study)
    chosen = fig.data[-1]  # drawn last, on top
    assert chosen.name == "trial 0 (chosen)" and chosen.legendgroup == "chosen"
    assert chosen.line.color == report_plots.CHOSEN_COLOUR and chosen.line.width > 2
    others = fig.data[:-1]
    assert {tr.legendgroup for tr in others} == {"COMPLETE", "PRUNED", "FAIL"}
    assert all((tr.line.dash == "dot") == (tr.legendgroup == "PRUNED") for tr in others)
    assert all(tr.line.width < chosen.line.width for tr in others)
    # the sweep's confirmed winner, not the search's best, once the sweep records it
    study.set_user_attr("chosen_trial", 2)
    assert report_plots.learning_curves(study).data[-1].name == "trial 2 (chosen)"
    ring = [tr for tr in report_plots.trials_plane(study).data if tr.name.startswith("chosen")]
    assert len(ring) == 1 and ring[0].name == "chosen: trial 2"
    assert list(ring[0].x) == [study.trials[2].params["unfreeze.depth"]]


def test_epochs_a_trial_skipped_are_a_gap_not_a_line(tmp_path):
    """A head phase stopped early by patience: fine-tuning still counts from the planned head
    epochs, and the line does not pretend the epochs between were trained."""
    study = optuna.create_study(direction="maximize")
    t = study.ask(SPACE)
    for step, v in zip((0, 1, 4, 5), (0.6, 0.7, 0.8, 0.85)):
        t.report(v, step)
    study.tell(t, 0.85)
    assert list(report_plots.learning_curves(study).data[0].x) == [1, 2, None, 5, 6]


def test_time_per_trial_is_stacked_by_where_it_went(tmp_path):
    study = _study(tmp_path)
    t = study.ask(SPACE)
    t.set_user_attr(
        "time_breakdown",
        {
            "import": 7.0,
            "data": 1.0,
            "build": 2.0,
            "feature_extraction": 0.0,
            "trace": 9.0,
            "compute": 30.0,
            "save": 0.5,
            "test_evaluation": 0.0,
            "other": 1.5,
            "total": 51.0,
        },
    )
    study.tell(t, 0.9)
    fig = report_plots.trial_times(study)
    stacked = {tr.name: list(tr.y) for tr in fig.data if list(tr.x) == [6]}
    assert (
        stacked["compute"] == [30.0] and stacked["trace"] == [9.0] and fig.layout.barmode == "stack"
    )
    assert sum(v[0] for v in stacked.values()) == 51.0
    assert (
        sum(len(tr.x) for tr in fig.data if list(tr.x) != [6]) == 6
    )  # the others: wall time by state


def test_page_puts_them_first_and_says_its_size(tmp_path, caplog):
    import logging

    _study(tmp_path)
    with caplog.at_level(logging.INFO):
        page_path = build_report(str(tmp_path))
    page = page_path.read_text()
    order = [page.index(f'id="plot-{slug}"') for slug in ("trials", "curves", "times", "history")]
    assert order == sorted(order)
    times = report_plots.trial_times(
        optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    )
    assert sum(len(tr.x) for tr in times.data) == 6 and times.layout.yaxis.title.text == "seconds"
    assert "MB, self-contained" in caplog.text


def test_page_names_the_chosen_trial_when_confirmation_overruled_the_search(tmp_path):
    study = _study(tmp_path)
    assert "Chosen trial <b>0</b>" in build_report(str(tmp_path)).read_text()
    study.set_user_attr("chosen_trial", 2)
    page = build_report(str(tmp_path)).read_text()
    assert "Chosen trial <b>2</b>" in page and "The search's best" not in page  # no confirmation
    study.set_user_attr("confirmation", {"runs": {"0": {"43": 0.8}, "2": {"43": 0.86}}})
    page = build_report(str(tmp_path)).read_text()
    assert "The search's best, trial 0 (0.9" in page and "ranked below trial 2" in page


def test_boundary_of_older_trials_comes_from_their_run_dir(tmp_path):
    run = tmp_path / "trial_0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  head_epochs: 3\n")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", direction="maximize")
    t = study.ask(SPACE)
    t.set_user_attr("run_dir", str(run))  # what trials recorded before head_epochs was an attribute
    for step, v in enumerate([0.6, 0.7, 0.8, 0.85, 0.9]):
        t.report(v, step)
    study.tell(t, 0.9)
    lines = [s for s in report_plots.learning_curves(study).layout.shapes if s.type == "line"]
    assert [s.x0 for s in lines] == [3.5]


def test_slice_plots_outline_their_points(tmp_path):
    """Optuna colours a slice plot's points by trial number from white: the first trials (the
    baseline among them) vanish on the background without an outline."""
    from thaw.report.html import _figures

    figures = {slug: fig for slug, _, fig, _ in _figures(_study(tmp_path))}
    for slug in ("depth", "lr"):
        points = [tr for tr in figures[slug].data if tr.mode == "markers"]
        assert points and all(tr.marker.line.width == 1 and tr.marker.size == 10 for tr in points)


def test_the_chosen_trial_falls_back_to_the_best_unless_it_names_a_completed_one(tmp_path):
    study = _study(tmp_path)  # trial 0 is the best, 2 completed too, 1 was pruned
    assert chosen_trial(study).number == 0
    study.set_user_attr("test_eval", {"trial": 2})  # older sweeps: the trial tested is the answer
    assert chosen_trial(study).number == 2
    for bad in (1, 99, True, "2"):  # pruned, out of range, not a trial number
        study.set_user_attr("chosen_trial", bad)
        assert chosen_trial(study).number == 0, bad


def test_a_sparse_reporting_app_keeps_one_line(tmp_path):
    """An app that reports every 10 steps: its usual step is 10, so only a longer jump is a gap."""
    study = optuna.create_study(direction="maximize")
    t = study.ask(SPACE)
    for step, v in zip((0, 10, 20, 50), (0.6, 0.7, 0.8, 0.85)):
        t.report(v, step)
    study.tell(t, 0.85)
    assert list(report_plots.learning_curves(study).data[0].x) == [1, 11, 21, None, 51]
