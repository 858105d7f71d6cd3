"""Optuna storages from one URL: SQLite (default), PostgreSQL/MySQL, or a journal file."""

from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat

from thaw.errors import ConfigError, first_line
from thaw.runtime.secrets import redact, scrub

log = logging.getLogger("thaw.sweeper")

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def journal_path(url: str) -> str | None:
    """The file of a journal storage URL (`journal:///path` or a path ending in
    .log/.journal/.jsonl)."""
    if url.startswith("journal://"):
        return url[len("journal://") :]
    return url if "://" not in url and url.endswith(JOURNAL_SUFFIXES) else None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file with heartbeats of its own.

    Optuna's JournalStorage has no heartbeat, so a trial whose worker was killed stays RUNNING for
    ever and a resumed sweep waits on it. Here each beat touches `<journal>.heartbeats/<trial id>`
    (the journal itself does not grow); a RUNNING trial whose file (or, before its first beat, its
    start) is older than the grace period is stale, and Optuna's `fail_stale_trials` fails it and
    runs the retry callback, as with an RDB storage. The folder lives beside the journal, so it is
    on the same shared file system.
    """

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int | None, callback):
        from optuna.storages.journal import JournalFileBackend

        super().__init__(JournalFileBackend(path))
        self._beats = Path(path + ".heartbeats")
        self._beats.mkdir(parents=True, exist_ok=True)
        self._interval = int(heartbeat_interval)
        self._grace = int(grace_period) if grace_period else 2 * self._interval
        self._callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        beat = self._beats / str(trial_id)
        beat.touch()
        os.utime(beat)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.trial import TrialState

        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                last = (self._beats / str(t._trial_id)).stat().st_mtime
            except FileNotFoundError:
                last = t.datetime_start.timestamp() if t.datetime_start else now
            if now - last > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


def make_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 0,
):
    """The storage a URL names: a journal file (heartbeats of its own when asked), else an RDB."""
    import optuna.storages as storages
    from optuna.storages import RetryFailedTrialCallback

    # Optuna >= 4.9 names it for what it does; RetryFailedTrialCallback is the same, deprecated
    # there
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", RetryFailedTrialCallback)
    callback = NoteStale(retry(max_retry=max_retry) if max_retry > 0 else None)
    path = journal_path(url)
    if path is not None:
        return _journal(path, heartbeat_interval, grace_period, callback)
    return _rdb(url, heartbeat_interval, grace_period, callback)


class NoteStale:
    """Optuna's stale-trial callback. A trial whose worker stopped beating ends FAIL with no word
    of why (Optuna fails it first, and a finished trial takes no attributes): this says it in the
    log, then runs Optuna's retry callback when hydra.sweeper.max_retry asks for one. The report
    names the reason from the trial having no `error`."""

    def __init__(self, retry=None):
        self.retry = retry

    def __call__(self, study, trial) -> None:
        log.warning(
            "trial %d: no heartbeat within the grace period (its worker was killed or lost): "
            "failed, not counted; %s",
            trial.number,
            "hydra.sweeper.max_retry re-runs its params while retries remain"
            if self.retry
            else "a new trial takes its slot",
        )
        if self.retry is not None:
            self.retry(study, trial)


def _journal(path: str, heartbeat_interval: int | None, grace_period: int | None, callback):
    from optuna.storages.journal import JournalFileBackend

    try:
        if heartbeat_interval:
            return HeartbeatJournalStorage(path, heartbeat_interval, grace_period, callback)
        return JournalStorage(JournalFileBackend(path))
    except OSError as exc:
        raise ConfigError(
            f"hydra.sweeper.storage: cannot open journal file {path} ({exc})"
        ) from None
    except ValueError as exc:  # a line that is no JSON: another program's file, or damaged
        raise ConfigError(f"{path}: not an Optuna journal file ({first_line(exc, 120)})") from None


def existing_study_db(url: str, shown: str) -> None:
    """A reader of a study (thaw-report, thaw-dashboard) never creates or migrates a database: an
    SQLite URL must name an existing file that already holds Optuna's tables, or Optuna would add
    them to another program's file (or make an empty one) before saying there is no study."""
    if not url.startswith("sqlite:///"):
        return
    path = _sqlite_file(url)
    if not path.is_file():
        raise ConfigError(f"{shown}: no such SQLite file")
    if not {"studies", "alembic_version"} <= _tables(path, shown):
        raise ConfigError(
            f"{shown}: {path} is an SQLite file without Optuna's tables, not a study database"
        )


def refuse_foreign_sqlite(url: str, shown: str = "hydra.sweeper.storage") -> None:
    """A sweep may make Optuna's tables in a new or empty SQLite file, never in another program's
    database. (A file with any of Optuna's tables is Optuna's: a worker starting beside another
    may find it half made.)"""
    if not url.startswith("sqlite:///"):
        return
    path = _sqlite_file(url)
    if not path.is_file() or not path.stat().st_size:
        return
    tables = _tables(path, shown)
    if tables and not tables & OPTUNA_TABLES:
        raise ConfigError(
            f"{shown}: {path} is another program's SQLite database (tables: "
            f"{', '.join(sorted(tables)[:5])}); give the study a file of its own"
        )


OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version", "study_directions"}


def _sqlite_file(url: str) -> Path:
    return Path(url[len("sqlite:///") :].split("?", 1)[0])


def _tables(path: Path, shown: str) -> set[str]:
    """The tables of an SQLite file, read-only (the check itself changes nothing), waiting for a
    writer's lock as the sweep's own connections do."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=120)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{shown}: cannot read the SQLite file {path} ({exc})") from None
    return {name for (name,) in rows}


def _rdb(url: str, heartbeat_interval: int | None, grace_period: int | None, callback):
    import optuna
    from optuna.storages import RDBStorage

    refuse_foreign_sqlite(url)
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # several workers on one file: wait for the lock instead of failing with "database is
        # locked"
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    # Optuna >= 4.9 names the callback for what it does (failed_trial_callback is deprecated there)
    params = inspect.signature(RDBStorage).parameters
    name = next(
        n for n in ("heartbeat_stale_trial_callback", "failed_trial_callback") if n in params
    )
    for attempt in range(6):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                **{name: callback},
            )
        except Exception as exc:  # sqlalchemy / driver errors
            first = first_line(exc)
            # Several processes creating the schema of a new database at once race on it
            # ("UNIQUE constraint failed: alembic_version"): the loser retries and finds it made.
            if attempt < 5 and any(
                k in first
                for k in ("IntegrityError", "UniqueViolation", "already exists", "locked")
            ):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(
                f"hydra.sweeper.storage: cannot open {redact(url)} ({scrub(first, url)})"
            ) from None
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
