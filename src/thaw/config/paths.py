"""Where the config tree lives: a source checkout (editable install) or THAW_CONF_DIR."""

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/thaw/config/paths.py


def conf_dir() -> Path:
    env = os.environ.get("THAW_CONF_DIR")
    if env:
        return Path(env).resolve()
    return _REPO_ROOT / "conf"


def experiments_dir() -> Path:
    env = os.environ.get("THAW_EXPERIMENTS_DIR")
    if env:
        return Path(env).resolve()
    return _REPO_ROOT / "experiments"
