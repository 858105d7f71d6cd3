"""Per-epoch checkpoint of one run, so a killed run (or sweep trial) resumes at the next epoch.

One file, `<run dir>/checkpoint.npz`, replaced atomically after every epoch and at each phase's end:
every variable of the model (weights, BatchNorm statistics, the dropout RNG state), the phase's
optimizer variables, the best epoch's weights (restore_best), and a JSON header with where the run
is (phase, epochs done in it, whether the phase ended), its history and phase records, the
early-stopping state and a fingerprint of the config. The data order of epoch e is drawn from
(seed, e) (data.epoch_batches), so a resumed epoch sees the same batches as an uninterrupted one.

Rule: the file is deleted when the run ends COMPLETE or PRUNED (model.keras and metrics.json hold
what is left to know); it stays when the run fails, is interrupted or is killed, for the next
attempt. A checkpoint that cannot be read, or was written for another config, is refused with one
line, renamed checkpoint.refused.npz (checkpoint.refused-2.npz ... when one is there), and the run
starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thaw.errors import ConfigError, first_line

log = logging.getLogger("thaw.train")

NAME = "checkpoint.npz"
VERSION = 1
# keys that do not change what a run computes: a resume may change them
_FREE = (
    "logger",
    "trainer.resume",
    "trainer.checkpoint",
    "trainer.save_model",
    "trainer.export_h5",
    "name",
    # how the step is compiled and run: the optimizer's variables are the same either way
    "trainer.reuse_compiled",
    "trainer.kept_fit_models",
    "trainer.fused_optimizer",
)


@dataclass
class Checkpoint:
    phase: str  # "head" or "finetune"
    done: int  # epochs of that phase already trained
    ended: bool  # the phase finished (best weights put back): the next one starts
    history: list[dict[str, Any]]
    phases: dict[str, dict[str, Any]]
    best: dict[str, Any]  # {"value", "step"}
    callback: dict[str, Any]  # {"phase_best", "waited", "stop_reason", "stop_message"}
    model: list[np.ndarray] = field(repr=False)
    optimizer: list[np.ndarray] = field(repr=False)
    # the best epoch's weights (model.get_weights() order), None without restore_best. Saved: only
    # those that differ from the current weights (frozen layers never do); loaded: {index: array}
    best_weights: Any = field(default=None, repr=False)
    resumed: list[dict[str, Any]] = field(default_factory=list)  # earlier resumes of this run
    seconds: float = (
        0.0  # wall seconds of the attempts so far (a resumed run's wall time counts them)
    )

    @property
    def epoch(self) -> int:
        """Epochs trained in all (history rows)."""
        return len(self.history)

    def position(self, phase: str) -> str:
        """'skip' (this phase is behind the checkpoint), 'continue' (resume inside it) or
        'fresh'."""
        order = ("head", "finetune")
        if order.index(phase) < order.index(self.phase) or (phase == self.phase and self.ended):
            return "skip"
        return "continue" if phase == self.phase else "fresh"


def fingerprint(cfg) -> str:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in _FREE:
        node, *rest = key.split(".")
        if rest and isinstance(data.get(node), dict):
            data[node].pop(rest[0], None)
        elif not rest:
            data.pop(node, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(out: Path, cfg, ckpt: Checkpoint, current_weights: list[np.ndarray]) -> None:
    """Write the checkpoint next to metrics.json, atomically (a kill leaves the previous one)."""
    header = {
        "version": VERSION,
        "fingerprint": fingerprint(cfg),
        "phase": ckpt.phase,
        "done": ckpt.done,
        "ended": ckpt.ended,
        "history": ckpt.history,
        "phases": ckpt.phases,
        "best": ckpt.best,
        "callback": ckpt.callback,
        "resumed": ckpt.resumed,
        "seconds": ckpt.seconds,
        "n_model": len(ckpt.model),
        "n_optimizer": len(ckpt.optimizer),
    }
    best = ckpt.best_weights or []
    header["best_differs"] = [
        i for i, (b, m) in enumerate(zip(best, current_weights)) if not np.array_equal(b, m)
    ]
    header["has_best"] = bool(best)
    arrays = {"header": np.frombuffer(json.dumps(header, default=float).encode(), dtype=np.uint8)}
    arrays.update({f"m{i}": a for i, a in enumerate(ckpt.model)})
    arrays.update({f"o{i}": a for i, a in enumerate(ckpt.optimizer)})
    arrays.update({f"b{i}": best[i] for i in header["best_differs"]})
    tmp = out / f".{NAME}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / NAME)
    _fault_injection(out, ckpt)


# Fault injection, for tests only: kill this process right after a given checkpoint is on disk (a
# real signal at an exact point of the recipe). Off unless THAW_TEST_FAULTS=1 switches it on: a
# THAW_KILL_AFTER_CHECKPOINT left in a user's environment does nothing.
FAULTS_SWITCH = "THAW_TEST_FAULTS"
KILL_AFTER = "THAW_KILL_AFTER_CHECKPOINT"
_KILL_POINT = re.compile(r"(?:([A-Z0-9]+)@)?(?:([\w.-]+)/)?(head|finetune):(end|[0-9]+)")


def kill_point() -> tuple[int, str, str | None] | None:
    """(signal number, "phase:epoch" or "phase:end", run dir name or None) to kill at, or None
    (off).

    THAW_TEST_FAULTS=1 THAW_KILL_AFTER_CHECKPOINT=head:1 / head:end / finetune:2 (SIGKILL) or
    TERM@finetune:1 (SIGTERM; any SIG<NAME> as <NAME>@); trial_1/head:1 acts only in a run dir of
    that name (one trial of a sweep). A bad value raises ConfigError: the command checks it before
    the run starts (exit 2, one line), not at the first checkpoint."""
    import signal

    switch = os.environ.get(FAULTS_SWITCH, "")
    if switch not in ("", "0", "1"):
        raise ConfigError(
            f"{FAULTS_SWITCH}={switch!r}: expected 1 (test-only fault injection on) or unset"
        )
    target = os.environ.get(KILL_AFTER, "")
    if switch != "1" or not target:
        return None
    m = _KILL_POINT.fullmatch(target)
    sig = getattr(signal, f"SIG{m.group(1)}", None) if m and m.group(1) else signal.SIGKILL
    if not m or not isinstance(sig, signal.Signals):
        raise ConfigError(
            f"{KILL_AFTER}={target!r}: expected [SIGNAL@][RUN_DIR/]head|finetune:EPOCH|end, "
            "e.g. head:1, finetune:end, trial_1/head:1 or TERM@finetune:2 (SIGNAL a name from "
            "the signal module without SIG)"
        )
    return int(sig), f"{m.group(3)}:{m.group(4)}", m.group(2)


def _fault_injection(out: Path, ckpt: Checkpoint) -> None:
    point = kill_point()
    if point is None or point[1] != f"{ckpt.phase}:{'end' if ckpt.ended else ckpt.done}":
        return
    if point[2] is None or point[2] == out.name:
        os.kill(os.getpid(), point[0])


# what a truncated, foreign or damaged file raises while it is read
_UNREADABLE = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    EOFError,
    zipfile.BadZipFile,
)


def load(out: Path, cfg, shapes=None) -> Checkpoint | None:
    """The run dir's checkpoint, or None (none there, or refused: one line, file kept aside).
    `shapes`: the model's variable shapes, which the checkpoint must match."""
    path = out / NAME
    if not path.is_file():
        return None
    try:
        header, model, optimizer, best = _read(path, cfg, shapes)
    except _UNREADABLE as exc:
        refused = _aside(out)
        os.replace(path, refused)
        log.warning(
            "checkpoint %s refused (%s); kept as %s, starting over",
            path,
            first_line(exc),
            refused.name,
        )
        return None
    return Checkpoint(
        header["phase"],
        int(header["done"]),
        bool(header["ended"]),
        header["history"],
        header["phases"],
        header["best"],
        header["callback"],
        model,
        optimizer,
        best,
        header.get("resumed", []),
        float(header.get("seconds", 0.0)),
    )


def _aside(out: Path) -> Path:
    """Where a refused checkpoint is kept: checkpoint.refused.npz, or the next free
    checkpoint.refused-N.npz (an earlier refused one is never overwritten)."""
    refused, n = out / "checkpoint.refused.npz", 1
    while refused.exists():
        n += 1
        refused = out / f"checkpoint.refused-{n}.npz"
    return refused


def _read(path: Path, cfg, shapes) -> tuple[dict, list, list, dict | None]:
    """(header, model arrays, optimizer arrays, best weights) of a checkpoint written by this
    version for this config and model; ValueError (one line: why) otherwise."""
    if not zipfile.is_zipfile(path):  # numpy would call any other bytes "pickled data"
        raise ValueError("not a checkpoint file (no .npz archive)")
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["header"]).decode())
        if header.get("version") != VERSION:
            raise ValueError(f"format version {header.get('version')}, expected {VERSION}")
        if header["fingerprint"] != fingerprint(cfg):
            raise ValueError("it was written for another configuration")
        model = [z[f"m{i}"] for i in range(header["n_model"])]
        if shapes is not None and [tuple(s) for s in shapes] != [a.shape for a in model]:
            raise ValueError(
                f"it does not fit this model ({len(model)} variables saved, "
                f"{len(shapes)} in the model, or other shapes)"
            )
        optimizer = [z[f"o{i}"] for i in range(header["n_optimizer"])]
        best = {i: z[f"b{i}"] for i in header["best_differs"]} if header["has_best"] else None
    return header, model, optimizer, best


def remove(out: Path) -> None:
    for name in (NAME, f".{NAME}.tmp"):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def arrays(variables) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in variables]


def assign(variables, values: list[np.ndarray], what: str) -> None:
    variables = list(variables)
    if len(variables) != len(values):
        raise ValueError(
            f"{what}: checkpoint has {len(values)} variables, the model {len(variables)}"
        )
    for var, value in zip(variables, values):
        var.assign(value)


def adopt(source_dir: str | None, out: Path) -> bool:
    """A retried trial continues the dead trial's checkpoint: copy it into this run dir (the dead
    trial's dir is left as it was)."""
    if not source_dir or (out / NAME).exists():
        return False
    src = Path(source_dir) / NAME
    if not src.is_file():
        return False
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    tmp = out / f".{NAME}.tmp"
    shutil.copyfile(src, tmp)  # streamed, not read whole into memory
    os.replace(tmp, out / NAME)
    return True


def describe(ckpt: Checkpoint) -> str:
    where = f"{ckpt.phase} epoch {ckpt.done}" + (" (phase ended)" if ckpt.ended else "")
    return f"{ckpt.epoch} epoch(s) done, last {where}"
