"""thaw's Hydra sweeper on current Optuna: search space, study storage, trial attach, pruning.

Public for any Hydra app swept with `hydra/sweeper=thaw`: `current_trial()` (report / should_prune)
and `PruningCallback` (Keras; imported on first use, so this package does not import Keras).
"""

from thaw.sweeper.current import CurrentTrial, current_trial

__all__ = ["CurrentTrial", "PruningCallback", "current_trial"]


def __getattr__(name):
    if name == "PruningCallback":
        from thaw.sweeper.keras_pruning import PruningCallback

        return PruningCallback
    raise AttributeError(f"module 'thaw.sweeper' has no attribute {name!r}")
