"""The report answers the review questions: what the sweep was about, what pruning and the cache
saved, why trials failed (real Optuna studies on SQLite, run dirs with metrics.json)."""

import optuna
from conftest import dead_and_retried
from optuna.trial import TrialState
from sweeps import ABOUT, SPACE, make_sweep

from thaw.report import review
from thaw.report.html import build_report


def test_header_names_data_model_search_and_trials(tmp_path):
    facts = dict(review.header_facts(make_sweep(tmp_path / "sw")))
    assert facts["data"] == "/data/hymenoptera"
    assert facts["images"] == "245 train / 76 validation / 77 test, 2 classes"
    assert facts["backbone"] == "mobilenet_v2 alpha 0.35" and facts["image size"] == "160 px"
    assert facts["weights"].endswith("mobilenet_v2_0.35_no_top_imagenet.h5")
    assert facts["search space"].startswith("unfreeze.depth 0..8")
    assert facts["sampler"] == "TPESampler(seed=1234)"
    assert facts["pruner"] == "StepMedianPruner(n_startup_trials=3)"
    assert facts["trials"] == "COMPLETE 2, FAIL 1, PRUNED 1"


def test_sampler_and_pruner_of_older_sweeps_come_from_a_trials_hydra_config(tmp_path):
    about = {k: v for k, v in ABOUT.items() if k not in ("sampler", "pruner")}
    study = make_sweep(tmp_path / "sw", about=about)
    hydra_dir = tmp_path / "sw" / "trial_0" / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "hydra.yaml").write_text(
        "hydra:\n  sweeper:\n    sampler:\n      _target_: optuna.samplers.RandomSampler\n"
        "      seed: 7\n    pruner:\n      _target_: optuna.pruners.NopPruner\n"
    )
    facts = dict(review.header_facts(study))
    assert facts["sampler"] == "RandomSampler(seed=7)" and facts["pruner"] == "NopPruner()"


def test_compute_saved_by_pruning_and_by_the_cache(tmp_path):
    study = make_sweep(tmp_path / "sw")
    recs = review.records(study)
    pruned = review.pruning_saved(study, recs)
    assert (pruned["run"], pruned["planned"]) == (6 + 3 + 6 + 2, 4 * 6)
    # trial 1 was pruned after 3 of 6 epochs; its fine-tuning epochs took 3 s each
    assert pruned["rows"] == [[1, 3, 6, 3, 9.0]] and pruned["seconds"] == 9.0
    cache = review.cache_saved(recs)
    by_trial = {row[0]: row for row in cache["rows"]}
    assert by_trial[0] == [0, "pooled", 20.0, 0.0]  # it built the cache: paid, saved nothing
    assert by_trial[2] == [2, "pooled", 0.0, 20.0]  # reused it: skipped the 20 s extraction
    assert round(cache["seconds"], 2) == 3 * 19.99


def test_failures_say_why_and_what_retried_them(tmp_path):
    study = make_sweep(tmp_path / "sw")
    # a worker killed: no reason recorded, retried as the next trial
    dead, retry = dead_and_retried(f"sqlite:///{tmp_path / 'sw' / 'study.db'}", "s", SPACE)
    study.tell(retry.number, 0.5)
    rows = {r[0]: r for r in review.failures(study)}
    assert rows[3][2] == "TrainingError: loss became nan in finetune epoch 1" and rows[3][3] == ""
    assert "no heartbeat" in rows[dead.number][2] and rows[dead.number][3] == retry.number
    assert "unfreeze.depth=" in rows[3][1]


def test_a_surplus_trial_is_not_called_a_failure(tmp_path):
    """A worker that asked after another took the last slot gives its trial back unrun
    (core._surplus): not a failure, and the header says what it was."""
    study = make_sweep(tmp_path / "sw")
    given_back = study.ask(SPACE)
    study._storage.set_trial_user_attr(given_back._trial_id, "surplus", True)
    study.tell(given_back, state=TrialState.FAIL)
    assert given_back.number not in {r[0] for r in review.failures(study)}
    facts = dict(review.header_facts(study))
    assert facts["trials"] == (
        "COMPLETE 2, FAIL 1, PRUNED 1; 1 surplus, never run (another worker took the last slot)"
    )


def test_report_page_holds_the_answers(tmp_path):
    make_sweep(tmp_path / "sw")
    page = build_report(str(tmp_path / "sw")).read_text()
    for anchor in ("id='about'", "id='compute'", "id='failures'", 'id="plot-trials"'):
        assert anchor in page, anchor
    assert "17 epochs run of 24 planned" in page and "about 60 s of feature extraction" in page
    assert "loss became nan" in page


def test_report_of_a_study_without_run_dirs_still_renders(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.tell(study.ask(SPACE), 0.3)
    page = build_report(str(tmp_path)).read_text()
    assert "no trial recorded its epochs yet" in page and "No trial failed" in page


def test_a_copied_sweep_is_reported_from_its_own_files(tmp_path):
    """The trials recorded their run dirs where the sweep ran; a copy, with the original gone, is
    read from the copy (records, page, dashboard files), not from the recorded paths."""
    import shutil

    from thaw.report.html import open_study

    make_sweep(tmp_path / "ran")
    shutil.copytree(tmp_path / "ran", tmp_path / "copy")
    shutil.rmtree(tmp_path / "ran")
    study, _ = open_study(str(tmp_path / "copy"))
    assert {review.run_dir(t, study).parent for t in study.trials} == {tmp_path / "copy"}
    assert len(review.records(study)) == 4
    page = build_report(str(tmp_path / "copy")).read_text()
    assert str(tmp_path / "ran") not in page and str(tmp_path / "copy" / "trial_0") in page
    assert "no trial recorded its epochs" not in page


def test_report_hints_name_the_sweep_dir(tmp_path):
    import pytest

    from thaw.errors import ConfigError
    from thaw.report.html import open_study

    make_sweep(tmp_path / "sw")
    with pytest.raises(ConfigError, match=r"pass its sweep dir .*sw\) or sqlite:///"):
        open_study(str(tmp_path / "sw" / "study.db"))
    with pytest.raises(ConfigError, match="a trial's run dir: pass its sweep dir"):
        open_study(str(tmp_path / "sw" / "trial_0"))


def test_a_sweep_dir_with_a_journal_file_is_reported(tmp_path):
    """A sweep run on a journal file in its sweep dir: thaw-report takes the dir, as
    thaw-dashboard does."""
    from thaw.report.html import open_study

    sw = tmp_path / "sw"
    sw.mkdir()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sw / "study.log"))
    )
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    study.tell(study.ask(SPACE), 0.7)
    opened, out_dir = open_study(str(sw))
    assert opened.study_name == "j" and out_dir == sw and opened.best_value == 0.7
    assert (build_report(str(sw))).is_file()
