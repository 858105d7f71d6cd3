"""A sweep's files as optuna-dashboard artifacts: each trial carries its metrics.json and train.log,
the study its report (report.html and report_png/*.png), in a FileSystemArtifactStore beside the
study (<sweep dir>/artifacts).

They are attached through the study's system attributes, the way optuna-dashboard records a
trial's artifacts uploaded from its own page: Optuna refuses to change a finished trial's
attributes, while the study's stay writable, so finished trials and a live sweep's trials alike
carry their files, on every storage (SQLite, journal file, RDB). A file that changed since it was
attached (a running trial's metrics.json, a report written again) replaces its earlier copy.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import uuid
from pathlib import Path

from thaw.report.review import local_run_dir

log = logging.getLogger(__name__)

STUDY_PREFIX = "artifacts:"  # optuna.artifacts' key prefix, read by optuna-dashboard
TRIAL_PREFIX = "dashboard:artifacts:{trial_id}:"  # optuna-dashboard's, for a trial, on the study
ATTACHED = "thaw:artifacts"  # {what: [artifact id, file signature]} of the files attached
TRIAL_FILES = ("metrics.json", "train.log")
MIMETYPES = {".json": "application/json", ".log": "text/plain", ".html": "text/html"}


def report_files(sweep_dir: Path | None) -> list[Path]:
    if sweep_dir is None:
        return []
    pngs = sorted((Path(sweep_dir) / "report_png").glob("*.png"))
    page = Path(sweep_dir) / "report.html"
    return ([page] if page.is_file() else []) + pngs


def sync(storage, study_id: int, store, sweep_dir: Path | None = None) -> int:
    """Attach what is new or changed since the last call; returns how many files were attached."""
    attached = dict(storage.get_study_system_attrs(study_id).get(ATTACHED) or {})
    count = 0
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        run_dir = local_run_dir(trial.user_attrs.get("run_dir"), sweep_dir)
        if run_dir is None:
            continue
        prefix = TRIAL_PREFIX.format(trial_id=trial._trial_id)
        for name in TRIAL_FILES:
            what = f"trial {trial.number}/{name}"
            count += _attach(storage, study_id, store, run_dir / name, prefix, what, attached)
    for path in report_files(sweep_dir):
        what = f"report/{path.relative_to(sweep_dir)}"
        count += _attach(storage, study_id, store, path, STUDY_PREFIX, what, attached)
    return count


def _attach(storage, study_id: int, store, path: Path, prefix: str, what: str, attached) -> int:
    try:
        stat = path.stat()
    except OSError:
        return 0
    signature = f"{stat.st_mtime_ns}:{stat.st_size}"
    old = attached.get(what)
    if old is not None and old[1] == signature:
        return 0
    artifact_id = str(uuid.uuid4())
    try:
        with open(path, "rb") as f:
            store.write(artifact_id, f)
    except OSError as exc:
        log.warning("artifact %s not attached: %s", path, exc)
        return 0
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": MIMETYPES.get(path.suffix)
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream",
        "encoding": None,
    }
    storage.set_study_system_attr(study_id, prefix + artifact_id, json.dumps(meta))
    attached[what] = [artifact_id, signature]
    # recorded at once: a round cut short later (a sweep holding the SQLite lock) must not
    # attach this file a second time next round
    storage.set_study_system_attr(study_id, ATTACHED, attached)
    if old is not None:  # the earlier copy: gone from the dashboard (as its delete button does)
        storage.set_study_system_attr(study_id, prefix + old[0], json.dumps(None))
        try:
            store.remove(old[0])
        except Exception as exc:
            log.debug("earlier copy of %s not removed: %s", what, exc)
    return 1
