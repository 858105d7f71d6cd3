"""Crash-safe writes: a reader never sees half a file, a crash never truncates an old one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mode(path: Path) -> int:
    """A replaced file keeps its permissions (a user's private 0600 CSV stays private)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o644


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def output_dir(path, flag: str = "--out") -> Path:
    """`path` as a directory to write into, checked before any work: refused in one line where a
    file is in its way (it or a parent). Nothing is created here."""
    from thaw.errors import ConfigError

    path = Path(path).expanduser()
    blocked = _first_existing(path)
    if blocked is not None and not blocked.is_dir():
        raise ConfigError(f"{flag}: {blocked} is a file, not a directory to write into")
    return path


def output_file(path, flag: str = "--out", example: str = "out") -> Path:
    """`path` as a file to write, checked before any work: refused where it names a directory
    (or ends in /) or a parent is a file."""
    from thaw.errors import ConfigError

    text = str(path)
    path = Path(path).expanduser()
    if text.endswith(os.sep) or path.is_dir():
        raise ConfigError(f"{flag}: {text} is a directory; give a file name, e.g. {path / example}")
    output_dir(path.parent, flag)
    return path


def _first_existing(path: Path) -> Path | None:
    """`path` or its nearest parent that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None
