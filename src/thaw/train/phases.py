"""The two phases of a run and the state a run carries through them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thaw.train.record import RunRecord, objective_names

log = logging.getLogger("thaw.train")


class Pruned(Exception):
    """The sweeper's pruner stopped this trial; metrics so far are kept."""


@dataclass
class TrainResult:
    objective: Any  # float, or list of floats for several objectives
    metrics: dict[str, Any]
    status: str = "complete"


@dataclass(frozen=True)
class Phase:
    """One phase of the recipe: which blocks of the base train, for how many epochs, how fast."""

    name: str  # "head" or "finetune"
    epochs: int
    learning_rate: float
    first_epoch: int  # epochs trained before this phase (Keras' initial_epoch)
    total_epochs: int  # both phases together (for the progress line)
    blocks: tuple[str, ...] = ()  # blocks of the base that train; none in the head phase
    done: int = 0  # epochs of this phase already trained (a resumed run)

    @property
    def start(self) -> int:
        """Keras' initial_epoch: the first epoch this process trains."""
        return self.first_epoch + self.done

    @property
    def remaining(self) -> int:
        return self.epochs - self.done


def head_phase(cfg) -> Phase:
    t = cfg.trainer
    return Phase(
        "head",
        int(t.head_epochs),
        float(cfg.lr.base),
        0,
        int(t.head_epochs) + int(t.finetune_epochs),
    )


def finetune_phase(cfg, blocks) -> Phase:
    t = cfg.trainer
    return Phase(
        "finetune",
        int(t.finetune_epochs),
        float(cfg.lr.base * cfg.lr.finetune_factor),
        int(t.head_epochs),
        int(t.head_epochs) + int(t.finetune_epochs),
        tuple(blocks),
    )


@dataclass
class Run:
    """What the phases of one run share: built once by `_prepare`, read by `fit_phase`."""

    cfg: Any
    ds: Any  # data.Dataset: decoded splits
    clf: Any  # model.Classifier: model, base, spec
    inputs: Any  # phase_inputs.PhaseInputs
    record: RunRecord
    tracker: Any
    reporter: Any  # the sweep trial (report -> prune?), or None
    loss: Any
    steps_per_epoch: int
    best: Any  # callbacks.BestWeights: the best validation epoch so far and its weights
    workspace: Any  # workspace.Workspace: what the process keeps between runs

    @property
    def kept_compiled(self):
        """Where compiled fit models are kept for later runs (None: trainer.reuse_compiled=false,
        every phase compiles afresh)."""
        return self.workspace.models if self.cfg.trainer.reuse_compiled else None

    @property
    def num_train(self) -> int:
        return len(self.ds.train)

    @property
    def objective_name(self) -> str:
        names = objective_names(self.cfg)
        return names[0] if len(names) == 1 else ""
