"""A Hydra app whose `depth` range depends on the `model` group it searches (model.n blocks)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="depth_conf", config_name="config")
def depth(cfg: DictConfig) -> float:
    if not 0 <= cfg.depth <= cfg.model.n:
        raise ValueError(f"depth {cfg.depth} outside 0..{cfg.model.n} for model {cfg.model.name}")
    return float(cfg.depth)


if __name__ == "__main__":
    depth()
