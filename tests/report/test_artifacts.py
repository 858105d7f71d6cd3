"""A sweep's files attached to its study for optuna-dashboard (thaw.report.artifacts), on a real
SQLite study: a round cut short by a locked database attaches nothing twice."""

import json
import sqlite3

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution

from thaw.report import artifacts


class LockingStore(FileSystemArtifactStore):
    """Optuna's file store; before its second file, another connection takes the study
    database's write lock and keeps it, as a sweep's long commit does."""

    def __init__(self, root, db):
        super().__init__(root)
        self.db, self.writes, self.lock = db, 0, None

    def write(self, artifact_id, content_body):
        self.writes += 1
        if self.writes == 2:
            self.lock = sqlite3.connect(self.db, isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")
        super().write(artifact_id, content_body)


def _sweep(tmp_path, trials=2):
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for _ in range(trials):
        t = study.ask({"lr.base": FloatDistribution(1e-4, 1e-2, log=True)})
        run_dir = tmp_path / f"trial_{t.number}"
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"trial": t.number}))
        (run_dir / "train.log").write_text(f"trial {t.number}\n")
        t.set_user_attr("run_dir", str(run_dir))
        study.tell(t, 0.5)
    (tmp_path / "artifacts").mkdir()
    return study, db


def _live(storage, study_id) -> list[tuple[str, str]]:
    """(key prefix, filename) of every artifact optuna-dashboard shows."""
    attrs = storage.get_study_system_attrs(study_id)
    metas = [(k.rsplit(":", 1)[0], json.loads(v)) for k, v in attrs.items() if ":artifacts:" in k]
    return sorted((k, m["filename"]) for k, m in metas if m)


def test_a_round_cut_short_by_a_locked_database_attaches_nothing_twice(tmp_path):
    study, db = _sweep(tmp_path)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 0.5}}
    )
    store = LockingStore(tmp_path / "artifacts", db)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        artifacts.sync(storage, study._study_id, store, tmp_path)
    store.lock.execute("ROLLBACK")
    store.lock.close()
    assert len(_live(storage, study._study_id)) == 1  # the round's first file, before the lock

    artifacts.sync(storage, study._study_id, FileSystemArtifactStore(tmp_path / "artifacts"))
    live = _live(storage, study._study_id)
    assert len(live) == 4 and len(set(live)) == 4, live  # 2 trials x (metrics.json, train.log)
    assert artifacts.sync(storage, study._study_id, store) == 0  # nothing new: nothing attached


def test_a_changed_file_replaces_its_earlier_copy(tmp_path):
    study, db = _sweep(tmp_path, trials=1)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    assert artifacts.sync(storage, study._study_id, store, tmp_path) == 2
    (tmp_path / "trial_0" / "metrics.json").write_text(json.dumps({"trial": 0, "more": 1}))
    assert artifacts.sync(storage, study._study_id, store, tmp_path) == 1
    assert len(_live(storage, study._study_id)) == 2
    assert len(list((tmp_path / "artifacts").iterdir())) == 2  # the earlier copy's file removed
