"""`thaw-report SWEEP_A SWEEP_B ...`: several sweeps on one page (real studies, real command)."""

from conftest import command
from sweeps import make_sweep

from thaw.report import compare


def test_trials_of_every_sweep_share_one_plane_and_curves_overlay(tmp_path):
    a = make_sweep(tmp_path / "a", "a")
    b = make_sweep(tmp_path / "b", "b", plan=[("COMPLETE", [0.6, 0.7]), ("PRUNED", [0.4])])
    c = make_sweep(tmp_path / "c", "a")  # the same study name elsewhere: told apart
    studies = [a, b, c]
    labels = compare._labels(studies)
    assert labels == ["a", "b", "a #2"]
    plane = compare.trials_plane(studies, labels)
    rings = [tr for tr in plane.data if "chosen" in tr.name]
    assert [tr.name for tr in rings] == [f"{g}: chosen (trial 0)" for g in labels]  # each sweep's
    plane.data = [tr for tr in plane.data if "chosen" not in tr.name]
    per_sweep = {}
    for tr in plane.data:
        per_sweep[tr.legendgroup] = per_sweep.get(tr.legendgroup, 0) + len(tr.x)
    assert per_sweep == {"a": 4, "b": 2, "a #2": 4}  # every trial, failed and pruned too
    # each sweep a little apart at a depth: two that drew the same points do not hide each other
    offsets = {}
    for study, label in zip(studies, labels):
        xs = sorted(x for tr in plane.data if tr.legendgroup == label for x in tr.x)
        depths = sorted(t.params["unfreeze.depth"] for t in study.trials)
        offsets[label] = {round(x - d, 6) for x, d in zip(xs, depths)}
    assert all(len(o) == 1 and abs(next(iter(o))) <= 0.25 for o in offsets.values()), offsets
    assert len({next(iter(o)) for o in offsets.values()}) == 3
    assert all("<br>depth " in text for tr in plane.data for text in tr.text)  # the true depth
    assert plane.layout.yaxis.type == "log"
    lines = compare.curves(studies, labels)
    assert len(lines.data) == 10 and sum(tr.showlegend for tr in lines.data) == 3
    assert {tr.line.color for tr in lines.data if tr.legendgroup == "b"} == {compare.PALETTE[1]}


def test_report_command_compares_sweeps_side_by_side(tmp_path):
    make_sweep(tmp_path / "a", "a")
    make_sweep(tmp_path / "b", "b", plan=[("COMPLETE", [0.6, 0.95])])
    r = command("thaw-report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "2 sweeps compared" in page and 'id="plot-trials"' in page and 'id="plot-curves"' in page
    assert "<td>0.9500</td>" in page and "<td>0.9200</td>" in page  # the best of each
    import optuna

    a = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a' / 'study.db'}")
    a.set_user_attr("chosen_trial", 2)  # the confirmation chose trial 2 (0.89), not trial 0
    r = command("thaw-report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out2")
    page = (tmp_path / "out2" / "compare.html").read_text()
    assert r.returncode == 0 and "<td>0.8900</td>" in page and "<td>0.9200</td>" not in page
    assert not (tmp_path / "a" / "report.html").exists()  # each sweep's own report untouched


def test_comparing_with_a_missing_sweep_or_one_study_name_is_one_line(tmp_path):
    make_sweep(tmp_path / "a", "a")
    r = command("thaw-report", tmp_path / "a", tmp_path / "nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr, r.stderr
    r = command("thaw-report", tmp_path / "a", tmp_path / "a", "--study", "a")
    assert r.returncode == 2 and "--study" in r.stderr and "Traceback" not in r.stderr
