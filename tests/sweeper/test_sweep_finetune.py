"""sweep=finetune: the wider search (depth, rate, per-block decay, weight decay, label smoothing,
augmentation) on depth_lr's pruner, baseline and confirmation, with a multivariate TPE sampler."""

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf


def _composed(*overrides):
    return compose_cfg(["experiment=tiny", "sweep=finetune", *overrides], hydra_config=True)


def test_the_preset_searches_the_wider_space_with_depth_lrs_pruner_and_a_multivariate_sampler():
    cfg = _composed()
    sweeper = cfg.hydra.sweeper
    assert set(sweeper.params) == {
        "unfreeze.depth",
        "lr.base",
        "lr.layer_decay",
        "optimizer.weight_decay",
        "trainer.label_smoothing",
        "augment",
    }
    assert (
        sweeper.sampler.multivariate is True
        and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    )
    depth_lr = _composed("sweep=depth_lr").hydra.sweeper
    assert OmegaConf.to_container(sweeper.pruner) == OmegaConf.to_container(depth_lr.pruner)
    assert sweeper.baseline is True and sweeper.confirm.top_k == depth_lr.confirm.top_k
    assert sweeper.n_trials >= 30 and sweeper.study_name.startswith("finetune-")


def test_its_baseline_is_the_preset_with_the_base_frozen_a_group_by_its_option():
    from thaw.commands.sweep_hooks import ThawTrainSweep
    from thaw.sweeper import search_space

    cfg = _composed("augment=flip")
    space, _ = search_space.parse(
        OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True), []
    )
    base = ThawTrainSweep().baseline(cfg, space)
    assert base == {
        "unfreeze.depth": 0,
        "lr.base": pytest.approx(1e-3),
        "lr.layer_decay": 1.0,
        "optimizer.weight_decay": 0.0,
        "trainer.label_smoothing": 0.0,
        "augment": "flip",
    }


def test_layer_decay_is_refused_where_no_block_trains():
    from thaw.config.checks import ignored

    assert "lr.layer_decay" in ignored(
        compose_cfg(["experiment=tiny", "unfreeze=none"]), ["lr.layer_decay"]
    )
    assert "lr.layer_decay" in ignored(
        compose_cfg(["experiment=tiny", "trainer.finetune_epochs=0"]), ["lr.layer_decay"]
    )
    assert not ignored(compose_cfg(["experiment=tiny"]), ["lr.layer_decay"])
