"""Optuna storages from one URL: SQLite (default), PostgreSQL/MySQL, or a journal file."""

from __future__ import annotations

import re
from typing import Optional

from thaw.errors import ConfigError


def redact(url: str) -> str:
    """The storage URL without its password, for logs and result files."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(url))


def make_storage(url: str, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
                 max_retry: int = 0):
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
    from optuna.storages.journal import JournalFileBackend

    callback = RetryFailedTrialCallback(max_retry=max_retry) if max_retry > 0 else None
    if url.startswith("journal://") or url.endswith((".log", ".journal", ".jsonl")):
        path = url[len("journal://"):] if url.startswith("journal://") else url
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise ConfigError(f"hydra.sweeper.storage: cannot open journal file {path} ({exc})") from None
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # several workers on one file: wait for the lock instead of failing with "database is locked"
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    import time

    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period, failed_trial_callback=callback)
        except Exception as exc:  # sqlalchemy / driver errors
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            # Several processes creating the schema of a new database at once race on it
            # ("UNIQUE constraint failed: alembic_version"): the loser retries and finds it made.
            if attempt < 5 and any(k in first for k in ("IntegrityError", "UniqueViolation", "already exists", "locked")):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"hydra.sweeper.storage: cannot open {redact(url)} ({first})") from None
        finally:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
