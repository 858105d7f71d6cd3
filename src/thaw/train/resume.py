"""A run that resumes: the checkpoint read back before the first phase, and the per-epoch
checkpoint writer each phase gets."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from thaw.train import checkpoint
from thaw.train.phases import Run

log = logging.getLogger("thaw.train")


def resume_run(run: Run, out: Path):
    """Load the run dir's checkpoint (trainer.resume=auto) into the model, record, best epoch and
    the trial; returns it, or None to start from epoch 1."""
    if run.cfg.trainer.resume == "never":
        return None
    resume = checkpoint.load(out, run.cfg, [tuple(v.shape) for v in run.clf.model.variables])
    if resume is None:
        return None
    checkpoint.assign(run.clf.model.variables, resume.model, "model")
    run.record.history[:] = resume.history
    run.record.phases.clear()
    run.record.phases.update(resume.phases)
    run.best.value, run.best.step = resume.best["value"], resume.best["step"]
    if resume.best_weights is not None:  # the differing ones; the rest equal the restored weights
        run.best.weights = run.clf.model.get_weights()
        for i, value in resume.best_weights.items():
            run.best.weights[i] = value
    run.record.update(
        resumed=resume.resumed
        + [{"after_epoch": resume.epoch, "phase": resume.phase, "phase_ended": resume.ended}]
    )
    run.record.started -= (
        resume.seconds
    )  # wall_seconds covers every attempt (their set-up lands in "other")
    if run.reporter is not None and run.objective_name in ("val_accuracy", "val_loss"):
        for row in resume.history:  # a retried trial gets the dead trial's values once; none twice
            if row.get(run.objective_name) is not None:
                run.reporter.replay(int(row["epoch"]) - 1, float(row[run.objective_name]))
    log.info("resuming from %s: %s", out / checkpoint.NAME, checkpoint.describe(resume))
    return resume


def checkpointer(run: Run, phase: str, optimizer):
    """What the epoch callback calls after each epoch (and at the phase's end): None when off."""
    if not run.cfg.trainer.checkpoint:
        return None
    out = run.record.path.parent

    def save(done: int, ended: bool, state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        model = run.clf.model
        variables = checkpoint.arrays(model.variables)  # read once: the weights are among them
        where = {id(v): i for i, v in enumerate(model.variables)}
        weights = [variables[where[id(w)]] for w in model.weights]
        checkpoint.save(
            out,
            run.cfg,
            checkpoint.Checkpoint(
                phase,
                done,
                ended,
                run.record.history,
                run.record.phases,
                {"value": run.best.value, "step": run.best.step},
                state,
                variables,
                checkpoint.arrays(optimizer.variables),
                run.best.weights,
                run.record.get("resumed", []),
                time.perf_counter() - run.record.started,
            ),
            weights if run.best.weights is not None else [],
        )
        run.record.update(
            checkpoint_seconds=run.record.get("checkpoint_seconds", 0.0) + time.perf_counter() - t0
        )

    return save
