"""The per-epoch Keras callback of a phase: progress line, run record, tracking, pruning, NaN guard.

Imported only once training starts (it imports Keras).
"""

from __future__ import annotations

import logging
import math
import time

import keras

from thaw.runtime import interrupt

log = logging.getLogger("thaw.train")


class EpochCallback(keras.callbacks.Callback):
    """Records every epoch and decides whether the phase stops early.

    `stop_reason` says why it stopped the phase: "nan", "pruned" (the sweeper's pruner),
    "patience" (no improvement for trainer.patience epochs) or None; `stop_message` is the one line
    that goes into metrics.json and the log. Every epoch that beats the run's best so far hands its
    weights to `run.best` (restore_best), like EarlyStopping(restore_best_weights=True) across
    phases.
    """

    def __init__(self, phase, run, trainable: int, state: dict | None = None, checkpoint=None):
        super().__init__()
        self.phase = phase
        self.run = run
        self.trainable = trainable
        self.checkpoint = checkpoint  # fn(done, ended, state) after every epoch, or None
        state = state or {}
        self.stop_reason: str | None = state.get("stop_reason")
        self.stop_message = state.get("stop_message", "")
        self._phase_best: float | None = state.get("phase_best")
        self._waited = int(state.get("waited", 0))
        self._done = phase.done

    def state(self) -> dict:
        """What a resumed phase needs to stop where this one would have (patience, stop reasons)."""
        return {
            "stop_reason": self.stop_reason,
            "stop_message": self.stop_message,
            "phase_best": self._phase_best,
            "waited": self._waited,
        }

    def save_checkpoint(self, ended: bool = False) -> None:
        if self.checkpoint is not None:
            self.checkpoint(self._done, ended, self.state())

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if interrupt.REQUESTED.is_set():  # Ctrl-C/SIGTERM: stop at a batch boundary
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if (
            interrupt.REQUESTED.is_set()
        ):  # stopped mid-epoch: not a whole epoch, neither recorded nor
            self.model.stop_training = (
                True  # checkpointed (a resume redoes it from the last whole one)
            )
            return
        logs = dict(logs or {})
        secs = time.perf_counter() - self._t0
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        n_train = self.run.num_train
        row = {
            "phase": self.phase.name,
            "epoch": epoch + 1,
            **{k: float(v) for k, v in logs.items() if k != "learning_rate"},
            "lr": lr,
            "seconds": secs,
            "images_per_sec": n_train / secs if secs > 0 else None,
        }
        step = self.run.record.add_epoch(row)
        self.run.tracker.log_epoch({**row, "trainable_params": self.trainable}, step=step)
        log.info(
            "[%s] epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  lr %.2e  "
            "%.1fs (%.0f img/s)",
            self.phase.name,
            epoch + 1,
            self.phase.total_epochs,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan),
            logs.get("val_accuracy", math.nan),
            lr,
            secs,
            row["images_per_sec"] or 0,
        )
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop("nan", f"loss became {loss} in {self.phase.name} epoch {epoch + 1}")
            return
        self._track_best(step, epoch, logs)
        # the pruner's step is the planned epoch (a phase stopped early leaves a gap), so step k
        # means the same point of the recipe in every trial
        self._maybe_prune(epoch, logs)
        self._done = epoch + 1 - self.phase.first_epoch
        self.save_checkpoint()

    def _track_best(self, step: int, epoch: int, logs) -> None:
        best = self.run.best
        value = logs.get(best.monitor)
        if value is None or not math.isfinite(value):
            return
        best.offer(step, float(value), self.run.clf.model)
        if self._phase_best is None or best.better(float(value), self._phase_best):
            self._phase_best, self._waited = float(value), 0
            return
        self._waited += 1
        patience = int(self.run.cfg.trainer.patience)
        last = epoch + 1 >= self.phase.first_epoch + self.phase.epochs
        if patience and self._waited >= patience and self.stop_reason is None and not last:
            self.model.stop_training = True
            self.stop_reason = "patience"
            self.stop_message = (
                f"{self.phase.name}: no {best.monitor} improvement for {patience} epoch(s), "
                f"phase stopped after epoch {epoch + 1 - self.phase.first_epoch} of "
                f"{self.phase.epochs}"
            )

    def _maybe_prune(self, epoch: int, logs) -> None:
        reporter, name = self.run.reporter, self.run.objective_name
        if reporter is None or name not in ("val_accuracy", "val_loss"):
            return
        value = logs.get(name)
        if value is None:
            return
        # the run's last planned epoch is recorded, never judged: stopping there saves nothing and
        # would throw a finished result out of the sweep's best
        final = epoch + 1 >= self.phase.total_epochs
        if reporter.report(epoch, float(value), judge=not final):
            self._stop(
                "pruned", f"pruned after {self.phase.name} epoch {epoch + 1} ({name}={value:.4f})"
            )

    def _stop(self, reason: str, message: str) -> None:
        self.model.stop_training = True
        self.stop_reason, self.stop_message = reason, message


class BestWeights:
    """The best validation epoch of a run so far (across both phases) and, with restore_best, its
    weights."""

    def __init__(self, monitor: str, keep_weights: bool):
        self.monitor = monitor  # val_accuracy (higher is better) or val_loss (lower)
        self.keep_weights = keep_weights
        self.value: float | None = None
        self.step: int | None = None
        self.weights = None

    def better(self, value: float, than: float) -> bool:
        return value < than if self.monitor.endswith("loss") else value > than

    def offer(self, step: int, value: float, model) -> None:
        if self.value is None or self.better(value, self.value):
            self.value, self.step = value, step
            if self.keep_weights:
                self.weights = model.get_weights()

    def restore(self, model, last_step: int) -> int | None:
        """Put the best epoch's weights back; returns that epoch's step, or None if nothing
        changed."""
        if self.weights is None or self.step == last_step:
            return None
        model.set_weights(self.weights)
        return self.step
