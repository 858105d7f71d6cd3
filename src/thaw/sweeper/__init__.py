"""thaw's Hydra sweeper on current Optuna: search space, study storage, trial attach, pruning."""
