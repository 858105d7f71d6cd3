"""Which study storage a sweep dir holds, for the commands that read a sweep (thaw-report,
thaw-dashboard): its own study.db or journal file, so a copied or moved sweep reads its copy;
else the storage its optimization_results.yaml records (PostgreSQL, or a file kept elsewhere)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from thaw.errors import ConfigError, first_line
from thaw.sweeper.storage import JOURNAL_SUFFIXES, journal_path

log = logging.getLogger("thaw.sweeper")


def storage_of(path: Path, command: str) -> str | None:
    """The storage URL (or journal file path) of the sweep dir `path`; None where it holds none.
    `command` names who reads it in the line said when it reads a copy."""
    recorded = _recorded_storage(path)
    if (path / "study.db").is_file():
        return _own(f"sqlite:///{(path / 'study.db').resolve()}", recorded, command)
    recorded_journal = journal_path(recorded) if recorded else None
    if recorded_journal is not None and is_journal(path / Path(recorded_journal).name):
        return _own(str((path / Path(recorded_journal).name).resolve()), recorded, command)
    if recorded:
        return recorded
    journals = [p for p in sorted(path.iterdir()) if p.suffix in JOURNAL_SUFFIXES]
    journals = [p for p in journals if p.is_file() and is_journal(p)]
    return str(journals[0].resolve()) if len(journals) == 1 else None


def is_journal(path: Path) -> bool:
    """A journal file: its first line is one of Optuna's journal operations."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("{") and '"op_code"' in first


def _recorded_storage(path: Path) -> str | None:
    """The storage URL optimization_results.yaml records, if any."""
    results = path / "optimization_results.yaml"
    if not results.is_file():
        return None
    try:
        url = (yaml.safe_load(results.read_text()) or {}).get("storage")
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{results}: unreadable ({first_line(exc, None)})") from None
    if url and "***" in str(url) and not (path / "study.db").is_file():
        raise ConfigError(
            f"{path}: the study lives in {url} (password redacted there): pass that storage "
            "URL with its password instead of the sweep dir"
        )
    return str(url) if url else None


def _own(url: str, recorded: str | None, command: str) -> str:
    """The sweep dir's own storage, said where the sweep recorded another (a copy or a move)."""
    target = journal_path(url) or url.removeprefix("sqlite:///")
    was = journal_path(recorded) if recorded else None
    was = was or (recorded.removeprefix("sqlite:///") if recorded else None)
    if was and Path(was).resolve() != Path(target):
        log.info("%s: reading this dir's copy of the study (the sweep ran on %s)", command, was)
    return url
