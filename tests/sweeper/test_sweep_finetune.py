"""sweep=finetune: the wider search (depth, rate, per-block decay, weight decay, label smoothing,
augmentation) on depth_lr's pruner, baseline and confirmation, with a multivariate TPE sampler."""

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

SEARCHED = {  # the keys sweep=finetune searches
    "unfreeze.depth",
    "lr.base",
    "lr.layer_decay",
    "optimizer.weight_decay",
    "trainer.label_smoothing",
    "augment",
}


def _composed(*overrides):
    return compose_cfg(["experiment=tiny", "sweep=finetune", *overrides], hydra_config=True)


def test_the_preset_searches_the_wider_space_with_depth_lrs_pruner_and_a_multivariate_sampler():
    cfg = _composed()
    sweeper = cfg.hydra.sweeper
    assert set(sweeper.params) == SEARCHED
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


@pytest.mark.slow  # default-run budget; `-m slow` (and .ci/run) runs it
def test_the_preset_runs_and_every_searched_value_reaches_its_trial(tmp_path):
    """Three tiny trials of sweep=finetune (the baseline and two sampled): each sampled value is
    what the trial's run trained with, as its metrics.json and Hydra's overrides record it."""
    import json

    import optuna
    import yaml
    from conftest import thaw_train
    from test_sweeper import STUDY_ONLY, TINY

    sw = tmp_path / "sw"
    res = thaw_train(
        [
            "--multirun",
            *TINY,
            *STUDY_ONLY,
            "logger=none",
            "sweep=finetune",
            f"hydra.sweep.dir={sw}",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.study_name=wide",
            "hydra.sweeper.confirm.top_k=0",
            "unfreeze.depth=range(0,4)",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    trials = optuna.load_study(study_name="wide", storage=f"sqlite:///{sw}/study.db").get_trials()
    assert len(trials) == 3
    for t in trials:
        assert set(t.params) == SEARCHED
        run = sw / f"trial_{t.number}"
        m = json.loads((run / "metrics.json").read_text())
        assert m["unfreeze"]["depth"] == t.params["unfreeze.depth"]
        assert m["lr"]["base"] == pytest.approx(t.params["lr.base"])
        assert m["lr"]["layer_decay"] == pytest.approx(t.params["lr.layer_decay"])
        assert m["regularization"] == {
            "weight_decay": pytest.approx(t.params["optimizer.weight_decay"]),
            "label_smoothing": pytest.approx(t.params["trainer.label_smoothing"]),
        }
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert f"augment={t.params['augment']}" in overrides
