"""What thaw-predict, thaw-evaluate and thaw-export share: the trained model a user points at (a run
dir, a sweep dir meaning its best trial, or a model.keras), its class names and input size, and
image files decoded the way training decoded them, with bad files reported one by one, not fatal."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thaw.errors import ConfigError, DataError, ThawError, first_line


def run_command(prog: str, fn: Callable[[], int], per_file_logs: bool = False) -> int:
    """Bad input: one line on stderr, exit code 2, no traceback. Bad image files are reported by
    the command itself (CSV column, evaluation.json), not as a log line per file."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not per_file_logs:
        logging.getLogger("thaw.data").setLevel(logging.ERROR)
    try:
        return fn()
    except ThawError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2


RESOLVED_CONFIG = (
    "resolved_config.yaml"  # written by every run: interpolations resolved, paths absolute
)


def run_config(run_dir: Path, needs: tuple[str, ...] = ("backbone", "data", "trainer")):
    """The config a run ran with: its resolved copy (reads the same from any directory), or, for a
    run made before thaw wrote one, Hydra's `.hydra/config.yaml`. A damaged one is one line naming
    the file, not a YAML or OmegaConf error later (`needs`: the groups the caller reads)."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    path = run_config_file(Path(run_dir))
    try:
        cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable ({first_line(exc, 160)})") from None
    keys = cfg if isinstance(cfg, DictConfig) else {}
    missing = [k for k in needs if k not in keys]
    if missing:
        raise ConfigError(f"{path}: not a thaw run's config (no {missing[0]} settings)")
    return cfg


def run_config_file(run_dir: Path) -> Path:
    for path in (run_dir / RESOLVED_CONFIG, run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    raise ConfigError(f"{run_dir}: not a thaw run dir (no {RESOLVED_CONFIG} or .hydra/config.yaml)")


def best_trial_dir(sweep: Path) -> Path:
    """The sweep's chosen trial, located inside `sweep` (a copied or moved sweep dir serves its own
    model, never the original's)."""
    import yaml

    try:
        res = yaml.safe_load((sweep / "optimization_results.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{sweep / 'optimization_results.yaml'}: unreadable ({first_line(exc, 160)})"
        ) from None
    best = res.get("best_trial") if isinstance(res, dict) else None
    if not best:
        raise ConfigError(
            f"{sweep}: the sweep has no completed trial yet (optimization_results.yaml)"
        )
    if not isinstance(best, dict) or not isinstance(best.get("number"), int):
        raise ConfigError(
            f"{sweep / 'optimization_results.yaml'}: best_trial is not a trial (expected its "
            f"number and run_dir, found {str(best)[:80]!r})"
        )
    recorded = (
        Path(str(best["run_dir"])) if best.get("run_dir") else Path(f"trial_{best['number']}")
    )
    candidates = (
        [sweep / recorded] if not recorded.is_absolute() else [sweep / recorded.name, recorded]
    )
    candidates.append(sweep / f"trial_{best['number']}")
    for run in candidates:
        if run.is_dir():
            return run
    raise ConfigError(
        f"{sweep}: the best trial's run dir is missing (looked in "
        f"{', '.join(str(c) for c in dict.fromkeys(candidates))})"
    )


def find_run(target: str) -> tuple[Path, Path | None]:
    """(model.keras, run dir or None) for a run dir, a sweep dir (its best trial) or a model
    file."""
    p = Path(os.path.expanduser(target))
    if not p.exists():
        raise ConfigError(
            f"{target}: no such file or directory (expected a run dir, a sweep dir or a "
            "model.keras)"
        )
    if p.is_file():
        if p.suffix != ".keras":
            raise ConfigError(
                f"{target}: not a .keras model file (expected a run dir, a sweep dir or a "
                "model.keras)"
            )
        return p, p.parent if (p.parent / "metrics.json").is_file() else None
    if not p.is_dir():
        raise ConfigError(
            f"{target}: not a regular file or directory (expected a run dir, a sweep dir or a "
            "model.keras)"
        )
    run = best_trial_dir(p) if (p / "optimization_results.yaml").is_file() else p
    if not (run / "model.keras").is_file():
        raise ConfigError(_no_model(run, p))
    return run / "model.keras", run


def _no_model(run: Path, given: Path) -> str:
    """Why a directory gives no model, and where one is: a run saved without it is retrained; a
    folder of runs (outputs/NAME/, multirun/sweeps/) names its newest run or sweep."""
    if (run / "metrics.json").is_file():
        return f"{run}: no model.keras ({_why_no_model(run)}); retrain it with thaw-retrain {given}"
    if run != given:
        return f"{run}: the sweep's best trial has no model.keras and no metrics.json"
    text = f"{given}: not a thaw run dir, sweep dir or model.keras"
    inside = [
        d
        for d in given.iterdir()
        if (d / "model.keras").is_file() or (d / "optimization_results.yaml").is_file()
    ]
    if inside:
        newest = max(inside, key=lambda d: d.stat().st_mtime)
        text += f"; it holds {len(inside)} run or sweep dir(s), the newest {newest}"
    return text


def _why_no_model(run: Path) -> str:
    """Why a run with a metrics.json has no model: pruned, not saved, or removed by the sweep."""
    try:
        status = json.loads((run / "metrics.json").read_text()).get("status")
        saved = bool(run_config(run, needs=("trainer",)).trainer.get("save_model", True))
    except Exception:
        status, saved = None, True
    if status == "pruned":
        return "the trial was pruned: pruned trials keep no model; its sweep dir gives the winner"
    if not saved:
        return "the run was made with trainer.save_model=false"
    return (
        "it is gone: deleted or moved since, or removed by the sweep "
        "(hydra.sweeper.save_models=best keeps only the best trial's)"
    )


@dataclass
class Trained:
    path: Path
    run_dir: Path | None
    class_names: list[str]
    image_size: int
    model: Any

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, classes) probabilities; a binary model's single logit becomes [1 - p, p]."""
        out = self.model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
        return as_probabilities(out)


def as_probabilities(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-out[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    return out


def _class_names(run_dir: Path | None, n: int) -> list[str] | None:
    """The run's class names from its metrics.json; None where it has none for `n` classes."""
    try:
        record = json.loads((run_dir / "metrics.json").read_text()) if run_dir else None
    except (OSError, ValueError):
        record = None
    names = record.get("classes") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        return None
    return names if len(names) == n else None


def load_trained(target: str, prog: str = "thaw") -> Trained:
    import zipfile

    path, run_dir = find_run(target)
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a file that is there
        raise ConfigError(f"{path}: not a Keras model file (a .keras file is a zip archive)")
    from thaw.runtime.tf_startup import import_tensorflow

    import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load the model ({first_line(exc)})") from None
    size = int(model.input_shape[1])
    n = 2 if int(model.output_shape[-1]) == 1 else int(model.output_shape[-1])
    names = _class_names(run_dir, n)
    if names is None:
        names = [f"class_{i}" for i in range(n)]
        print(
            f"{prog}: warning: no metrics.json beside {path}: its classes are named "
            f"{', '.join(names)} (copy the run's metrics.json next to it for their names)",
            file=sys.stderr,
        )
    return Trained(path, run_dir, names, size, model)


def list_images(inputs: list[str], prog: str = "thaw") -> list[str]:
    """Files as given, folders searched recursively (sorted); only image extensions from folders;
    a folder with none is named on stderr (the others are still read)."""
    from thaw.data import IMAGE_EXTENSIONS

    files: list[str] = []
    for item in inputs:
        p = Path(os.path.expanduser(item))
        if p.is_dir():
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found and len(inputs) > 1:
                print(f"{prog}: warning: {item}: no image files in it", file=sys.stderr)
            files += found
        elif p.exists() or p.is_symlink():
            files.append(str(p))
        else:
            raise DataError(f"{item}: no such file or directory")
    if not files:
        raise DataError(f"{' '.join(inputs)}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


CHUNK_FILES = 512  # files decoded and predicted at a time: memory stays bounded on any folder


def probabilities_in_chunks(
    trained: Trained, files: list[str], batch_size: int, prog: str, chunk: int | None = None
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(the files that decoded, their class probabilities, {bad file: why}), `chunk` files decoded
    and predicted at a time; with more than one chunk, a progress line on stderr after each."""
    import time

    chunk = chunk or CHUNK_FILES
    good: list[str] = []
    parts: list[np.ndarray] = []
    problems: dict[str, str] = {}
    t0 = time.monotonic()
    for start in range(0, len(files), chunk):
        images, ok, bad = decode_images(files[start : start + chunk], trained.image_size)
        if ok:
            parts.append(trained.probabilities(images, batch_size))
        good += ok
        problems.update(bad)
        done = min(start + chunk, len(files))
        if len(files) > chunk:
            rate = done / max(time.monotonic() - t0, 1e-9)
            print(
                f"{prog}: {done}/{len(files)} images, {rate:.0f} img/s, about "
                f"{(len(files) - done) / rate:.0f} s left",
                file=sys.stderr,
                flush=True,
            )
    n_classes = len(trained.class_names)
    return good, (np.concatenate(parts) if parts else np.zeros((0, n_classes))), problems


def decode_images(
    files: list[str], image_size: int
) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """(images of the good files, the good files, {bad file: why}); decoded as in training."""
    from thaw.data.decode import decode_files
    from thaw.data.scan import sniff_image

    problems: dict[str, str] = {}
    for f in files:
        why = "not a regular file" if not os.path.isfile(f) else sniff_image(f)
        if why:
            problems[f] = why
    candidates = [f for f in files if f not in problems]
    skipped: list[str] = []
    images, ok = decode_files(candidates, image_size, "skip", skipped)
    for f in skipped:
        problems[f] = "cannot decode image"
    good = [f for f, keep in zip(candidates, ok) if keep]
    return images, good, problems
