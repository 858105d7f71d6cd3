"""What a study is about: its fixed config (searched and run-local keys left out) plus what the app
adds (thaw-train: the data by content, the weights file by its hash). A different fixed config aimed
at an existing study is refused before any trial or file is written, so a sweep never answers with
another question's trials.

The default study name holds `{config_hash}`, replaced by 8 hex digits of the fixed config: the same
command resumes its study, a command on other data or settings starts its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

from thaw.errors import ConfigError

HASH_TOKEN = "{config_hash}"
ATTR = "identity"  # study user attribute: {"fingerprint": ..., "keys": {key: value}}
CHANGES_ATTR = "identity_changes"  # every accepted change (hydra.sweeper.allow_config_change=true)
MAX_NAMED = 5
SEARCH_SPACE = "hydra.sweeper.params"  # the identity key of the searched ranges


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """{'data.path': '/x', 'trainer.seed': '42', ...}: every leaf as a JSON text (stable,
    comparable)."""
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for key in sorted(node, key=str):
            out.update(flatten(node[key], f"{prefix}{key}." if prefix or key else ""))
        return out
    out[prefix.rstrip(".")] = json.dumps(node, sort_keys=True, default=str)
    return out


def _dropped(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def without_hydra(job_cfg):
    """The app's part of a composed job config (`hydra` holds per-job values not yet set here)."""
    return OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"])


def fixed_keys(job_cfg, searched: Iterable[str], run_local: Iterable[str]) -> dict[str, str]:
    """The composed job config, resolved, without `hydra`, the searched keys and the run-local
    keys."""
    container = OmegaConf.to_container(without_hydra(job_cfg), resolve=True, enum_to_str=True)
    drop = list(searched) + list(run_local)
    return {k: v for k, v in flatten(container).items() if not _dropped(k, drop)}


def digest(keys: dict[str, str], length: int = 16) -> str:
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:length]


def expand_name(name: str, config_keys: dict[str, str]) -> str:
    return name.replace(HASH_TOKEN, digest(config_keys, 8)) if HASH_TOKEN in name else name


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """'data.path: /a -> /b' for each differing key (a key the old study lacks reads 'unset';
    the search space, recorded since 2026-12-05, is not compared with a study that lacks it)."""
    keys = sorted(
        set(old) | set(new), key=lambda k: (k != "data.path", not k.startswith("data"), k)
    )
    return [
        f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}"
        for k in keys
        if old.get(k) != new.get(k) and (k in old or k != SEARCH_SPACE)
    ]


def _show(value: str | None) -> str:
    if value is None:
        return "unset"
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return str(v) if not isinstance(v, str) else v


def check(
    study_attrs: dict[str, Any], keys: dict[str, str], study_name: str, allow_change: bool
) -> list | None:
    """None when the study is about the same thing (or has no identity yet); the differences when
    allowed to change; raises ConfigError (one line) when not."""
    recorded = study_attrs.get(ATTR)
    if not recorded or recorded.get("fingerprint") == digest(keys):
        return None
    diff = differences(recorded.get("keys") or {}, keys)
    if not diff:
        return None
    if allow_change:
        return diff
    more = f" (and {len(diff) - MAX_NAMED} more)" if len(diff) > MAX_NAMED else ""
    raise ConfigError(
        f"study {study_name!r} was run with a different fixed config or search space: "
        f"{'; '.join(diff[:MAX_NAMED])}{more}. "
        "Its trials would answer another question: give this sweep its own "
        "hydra.sweeper.study_name or "
        "hydra.sweep.dir, or set hydra.sweeper.allow_config_change=true to continue it "
        "deliberately "
        "(the study records the change)"
    )


def record(study, keys: dict[str, str], diff: list | None) -> None:
    """Store the identity on the study (and, for an allowed change, what changed)."""
    if diff:
        import datetime

        changes = list(study.user_attrs.get(CHANGES_ATTR) or [])
        changes.append(
            {
                "at": datetime.datetime.now().isoformat(timespec="seconds"),
                "trials_before": len(study.get_trials(deepcopy=False)),
                "changed": diff,
            }
        )
        study.set_user_attr(CHANGES_ATTR, changes)
    study.set_user_attr(ATTR, {"fingerprint": digest(keys), "keys": keys})


def sqlite_study_attrs(path: str, study_name: str) -> dict[str, Any] | None:
    """A study's user attributes read straight from Optuna's SQLite schema, read-only: the refusal
    check runs before SQLAlchemy and Alembic load (~0.7 s). {} for no such study; None when the file
    cannot be read this way (the caller asks Optuna instead)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = con.execute(
            "SELECT study_id FROM studies WHERE study_name = ?", (study_name,)
        ).fetchone()
        if row is None:
            return {}
        rows = con.execute(
            "SELECT key, value_json FROM study_user_attributes WHERE study_id = ?", row
        ).fetchall()
        return {key: json.loads(value) for key, value in rows}
    except (sqlite3.Error, ValueError):
        return None
    finally:
        con.close()
