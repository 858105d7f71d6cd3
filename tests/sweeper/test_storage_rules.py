"""The failure rule of a sweep and the journal file's heartbeats, on real Optuna objects."""

import os
import time

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback, fail_stale_trials
from optuna.trial import TrialState, create_trial

from thaw.sweeper.failures import TooManyFailures, check_failures, counted
from thaw.sweeper.storage import HeartbeatJournalStorage, make_storage


def _trials(*states):
    return [
        create_trial(state=TrialState[s], value=0.5 if s == "COMPLETE" else None) for s in states
    ]


def test_thaw_rule_ignores_one_early_failure_and_stops_a_failing_sweep():
    check = check_failures
    check(
        _trials("FAIL"), 0.25, 5, "thaw"
    )  # one failure in the first trial of a long sweep: goes on
    check(_trials("FAIL", "COMPLETE", "COMPLETE", "PRUNED"), 0.25, 5, "thaw")  # 4 finished < 5
    check(_trials("FAIL", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"), 0.25, 5, "thaw")  # 1 of 5
    with pytest.raises(TooManyFailures, match="2 of 5 trials failed"):
        check(_trials("FAIL", "COMPLETE", "FAIL", "PRUNED", "COMPLETE"), 0.25, 5, "thaw")


def test_hydra_optuna_sweeper_meaning_is_per_batch():
    check = check_failures
    with pytest.raises(TooManyFailures):
        check(_trials("FAIL"), 0.0, 1, "per batch")  # HOS's default 0.0: any failed batch stops
    check(_trials("COMPLETE", "FAIL"), 0.5, 1, "per batch")  # 0.5 is not more than 0.5
    with pytest.raises(TooManyFailures):
        check(_trials("FAIL", "FAIL", "COMPLETE"), 0.5, 1, "per batch")


# the sweeper asks outside Study.optimize on purpose and silences this (thaw.sweeper.core)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_journal_heartbeats_fail_a_dead_workers_trial_and_retry_it(tmp_path, caplog):
    path = str(tmp_path / "study.log")
    storage = make_storage(path, heartbeat_interval=1, grace_period=5, max_retry=1)
    assert isinstance(storage, HeartbeatJournalStorage)
    study = optuna.create_study(study_name="s", storage=storage)
    dead, alive = study.ask(), study.ask()
    for t in (dead, alive):
        storage.record_heartbeat(t._trial_id)
    old = time.time() - 60  # the dead worker's last beat, a minute ago
    os.utime(tmp_path / "study.log.heartbeats" / str(dead._trial_id), (old, old))
    # another process (a resumed sweep) opens the same journal and looks for stale trials
    other = optuna.load_study(study_name="s", storage=make_storage(path, 1, 5, max_retry=1))
    with caplog.at_level("WARNING", logger="thaw.sweeper"):
        fail_stale_trials(other)
    states = {t.number: t.state for t in other.get_trials()}
    assert states[dead.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    # the log says why, and the dead trial is not counted (no `error`: its slot runs again)
    assert not counted(other.get_trials()[dead.number])
    assert f"trial {dead.number}: no heartbeat within the grace period" in caplog.text
    assert "max_retry re-runs its params while retries remain" in caplog.text
    retried = [
        t
        for t in other.get_trials()
        if RetryFailedTrialCallback.retried_trial_number(t) == dead.number
    ]
    assert len(retried) == 1 and retried[0].state == TrialState.WAITING
    # without heartbeats configured a journal is Optuna's plain JournalStorage
    assert not isinstance(make_storage(path), HeartbeatJournalStorage)


@pytest.mark.parametrize(
    "password",
    [
        "plain",
        "with/slash",
        "a:b",
        "q?x=1",
        "h#frag",
        "at@sign",
        "pct%40enc",
        "all/:?#@%2F",
        "",
        "ends/",
    ],
)
def test_redact_hides_any_password(password):
    from thaw.runtime.secrets import redact, scrub

    url = f"postgresql+psycopg://thaw:{password}@db.example.org:5432/studies?sslmode=require"
    want = "postgresql+psycopg://thaw:***@db.example.org:5432/studies?sslmode=require"
    assert redact(url) == want
    # in free text too (a log line, an echoed command line, a YAML file), URL by URL
    line = f"storage={url} and mysql://u:{password}@h/db, sqlite:///x/study.db journal:///j.log"
    assert (
        redact(line)
        == f"storage={want} and mysql://u:***@h/db, sqlite:///x/study.db journal:///j.log"
    )
    assert redact(f"storage: {url}\nnext: 1\n") == f"storage: {want}\nnext: 1\n"
    if password:  # a driver's message quoting the password, as written or percent-decoded
        assert password not in scrub(
            f"failed for {password!r} ({password.replace('%40', '@')})", url
        )


def test_redact_keeps_urls_without_a_password():
    from thaw.runtime.secrets import redact

    for url in (
        "sqlite:////abs/study.db",
        "journal:///tmp/j.log",
        "postgresql://thaw@h:5432/db",
        "mysql+pymysql://h:3306/db",
        "/tmp/sweep/journal.log",
    ):
        assert redact(url) == url
    assert (
        redact("postgresql://h/db?user=u&password=s/e:c@r")
        == "postgresql://h/db?user=u&password=***"
    )
