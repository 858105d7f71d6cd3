"""A Keras callback that reports a metric to the sweep trial every epoch and stops a pruned
trial."""

from __future__ import annotations

import keras
import optuna

from thaw.sweeper.current import current_trial


class PruningCallback(keras.callbacks.Callback):
    """model.fit(..., callbacks=[PruningCallback("val_loss")]) in any Hydra app swept by thaw.

    Reports `monitor` at each epoch end; when the study's pruner says stop, raises
    optuna.TrialPruned, which ends fit() and the job: the sweeper records the trial as PRUNED with
    its values so far. Outside a thaw sweep it does nothing.
    """

    def __init__(self, monitor: str = "val_loss", trial=None):
        super().__init__()
        self.monitor = monitor
        self.trial = trial if trial is not None else current_trial()

    def on_epoch_end(self, epoch, logs=None):
        if not self.trial.in_sweep:
            return
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"PruningCallback: monitor {self.monitor!r} is not in the epoch's logs "
                f"({', '.join(sorted(logs)) or 'none'})"
            )
        value = float(logs[self.monitor])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.monitor}={value:.4g}")
