"""Damaged or foreign files handed to the commands after a sweep (thaw-report, thaw-dashboard,
thaw-predict, thaw-retrain, thaw-export): one line naming the file, exit 2, no traceback, and the
file the user pointed at is left as it was (a reader never creates or migrates a database)."""

import hashlib
import sqlite3

import optuna
import pytest
import yaml
from conftest import command

from thaw.errors import ConfigError


def one_line_exit_2(res, prog: str, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"{prog}: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def other_apps_db(path):
    """An SQLite file of another program: a table of its own, no Optuna tables."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('ada')")
    con.commit()
    con.close()
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sweep_dir_with_a_study(folder):
    folder.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return folder


@pytest.mark.parametrize("prog", ["thaw-report", "thaw-dashboard"])
def test_another_programs_sqlite_file_is_refused_and_left_as_it_was(tmp_path, prog):
    db = other_apps_db(tmp_path / "app.db")
    before = digest(db)
    res = command(prog, f"sqlite:///{db}", timeout=120)
    one_line_exit_2(res, prog, str(db), "without Optuna's tables")
    assert digest(db) == before
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["users"]
    con.close()


def test_a_report_on_a_missing_sqlite_file_makes_none(tmp_path):
    res = command("thaw-report", f"sqlite:///{tmp_path / 'new.db'}", timeout=120)
    one_line_exit_2(res, "thaw-report", "no such SQLite file")
    assert not (tmp_path / "new.db").exists()


def test_a_journal_file_that_is_no_journal_is_one_line(tmp_path):
    bad = tmp_path / "notes.log"
    bad.write_text("garbage\nmore\n")
    res = command("thaw-report", bad, timeout=120)
    one_line_exit_2(res, "thaw-report", str(bad), "not an Optuna journal file")
    assert bad.read_text() == "garbage\nmore\n"


@pytest.mark.parametrize(
    "args, needle",
    [(["--port", "99999"], "--port: must be 0 to 65535"), (["--sync-seconds", "0"], "must be > 0")],
)
def test_dashboard_options_out_of_range_are_one_line_and_make_nothing(tmp_path, args, needle):
    sweep = sweep_dir_with_a_study(tmp_path / "sweep")
    res = command("thaw-dashboard", sweep, *args, timeout=120)
    one_line_exit_2(res, "thaw-dashboard", needle)
    assert not (sweep / "artifacts").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"data: [unclosed\n", "unreadable"),
        (b"\xff\xfe\x00bad", "unreadable"),
        (b"x", "no backbone"),
    ],
    ids=["bad-yaml", "not-utf8", "not-a-mapping"],
)
def test_retrain_names_the_runs_damaged_config_not_a_temporary_copy(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved_config.yaml").write_bytes(content)
    res = command("thaw-retrain", run, timeout=120)
    one_line_exit_2(res, "thaw-retrain", str(run / "resolved_config.yaml"), needle)
    assert "winner.yaml" not in res.stderr


def test_a_path_that_is_neither_file_nor_folder_is_one_line():
    from thaw.model.inference import find_run

    with pytest.raises(ConfigError, match="not a regular file or directory"):
        find_run("/dev/null")


@pytest.mark.parametrize("best", [5, "trial_3", [3]])
def test_a_malformed_best_trial_is_named(tmp_path, best):
    from thaw.model.inference import best_trial_dir

    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump({"best_trial": best}))
    with pytest.raises(ConfigError, match="best_trial is not a trial"):
        best_trial_dir(tmp_path)


@pytest.mark.parametrize("record", ["[]", '{"classes": 3}', '{"classes": [1, 2]}', "7"])
def test_class_names_from_a_metrics_json_of_another_shape_fall_back(tmp_path, record):
    from thaw.model.inference import _class_names

    (tmp_path / "metrics.json").write_text(record)
    assert _class_names(tmp_path, 2) is None
    (tmp_path / "metrics.json").write_text('{"classes": ["ant", "bee"]}')
    assert _class_names(tmp_path, 2) == ["ant", "bee"]


def test_a_model_file_that_is_no_keras_archive_is_named(tmp_path):
    from thaw.model.inference import load_trained

    (tmp_path / "model.keras").write_text("garbage")
    with pytest.raises(ConfigError, match="not a Keras model file"):
        load_trained(str(tmp_path / "model.keras"))


def test_a_sweep_never_writes_its_study_into_another_programs_database(tmp_path):
    from conftest import thaw_train

    db = other_apps_db(tmp_path / "app.db")
    before = digest(db)
    res = thaw_train(
        [
            "--multirun",
            "experiment=tiny",
            "sweep=depth_lr",
            "logger=none",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage=sqlite:///{db}",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "hydra.sweeper.storage" in res.stderr and "another program's SQLite database" in (
        res.stderr
    )
    assert "Traceback" not in res.stderr and digest(db) == before


def test_an_empty_sqlite_file_is_still_a_new_study(tmp_path):
    from thaw.sweeper.storage import make_storage

    db = tmp_path / "new.db"
    sqlite3.connect(db).close()  # made by another tool, no tables yet: Optuna makes them
    assert make_storage(f"sqlite:///{db}").get_all_studies() == []


def test_a_dangling_link_in_the_data_folder_does_not_stop_the_decoded_cache(tmp_path, caplog):
    import numpy as np
    from conftest import compose_cfg
    from imagefiles import make_folder

    from thaw.data.load import DecodedCache, load

    photos = make_folder(tmp_path / "photos", per_class=8)
    (photos / "cats" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    cfg = compose_cfg(["data=folder", f"data.path={photos}", "data.on_bad_image=skip"]).data
    cache = str(tmp_path / "cache")
    with caplog.at_level("INFO"):
        first = load(cfg, 32, 0, cache)
        caplog.clear()
        again = load(cfg, 32, 0, cache)  # a fresh process's load: from the decoded cache
    assert "read the decoded splits" in caplog.text
    assert np.array_equal(first.train.images, again.train.images)
    assert np.array_equal(first.val.labels, again.val.labels)
    # the link counts as a file of the folder: removing it is another folder, another entry
    before = DecodedCache.digest(cfg, ("key",))
    (photos / "cats" / "gone.jpg").unlink()
    assert DecodedCache.digest(cfg, ("key",)) != before


def test_a_cache_dir_that_is_a_file_is_refused_before_the_run(tmp_path):
    from conftest import compose_cfg

    from thaw.config.checks import validate

    (tmp_path / "cache").write_text("a file")
    cfg = compose_cfg(["experiment=tiny", f"trainer.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="^trainer.cache_dir: .* is a file"):
        validate(cfg)


def test_weights_given_as_a_directory_are_named_as_one(tmp_path):
    from conftest import compose_cfg

    from thaw.config.checks import validate

    cfg = compose_cfg(["experiment=tiny", f"backbone.weights={tmp_path}"])
    with pytest.raises(ConfigError, match="^backbone.weights: a directory, not a file"):
        validate(cfg)


def test_a_second_retrain_goes_beside_the_first_unless_the_first_was_cut_short(tmp_path):
    from thaw.commands.retrain import retrain_argv
    from thaw.train.checkpoint import NAME

    run = tmp_path / "trial_3"
    run.mkdir()
    (run / "resolved_config.yaml").write_text("backbone: {}\ndata: {}\ntrainer: {}\n")

    def run_dir():
        argv = retrain_argv(str(run), [], False, tmp_path / "search")
        return next(a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir="))

    first = tmp_path / "retrain_trial_3"
    assert run_dir() == str(first)
    first.mkdir()
    (first / "metrics.json").write_text("{}")  # a finished retrain
    assert run_dir() == str(tmp_path / "retrain_trial_3-2")
    (first / NAME).write_bytes(b"")  # a retrain that was killed: continued in place
    assert run_dir() == str(first)
