"""A Hydra app that is not thaw-train: reports a loss curve per step through
thaw.sweeper.current_trial
and raises optuna.TrialPruned when the study's pruner says so (the pattern the README shows)."""

import hydra
import optuna
from omegaconf import DictConfig

from thaw.sweeper import current_trial


@hydra.main(version_base=None, config_path="curve_conf", config_name="config")
def curve(cfg: DictConfig) -> float:
    trial = current_trial()
    value = 0.0
    for step in range(cfg.steps):
        value = cfg.rate * (step + 1)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: {value}")
    print(f"curve done: rate={cfg.rate} in_sweep={trial.in_sweep} value={value}")
    return value


if __name__ == "__main__":
    curve()
