"""Real photos and real ImageNet weights (../shared): catches a broken weights-loading path
(wrong layer order, wrong preprocessing, BatchNorm in training mode) that synthetic data would
not."""

import json

import pytest
from conftest import compose_cfg

pytestmark = pytest.mark.slow


def _train(tmp_path, name, cats_dogs, *overrides):
    from thaw.train.recipe import train

    out = tmp_path / name
    cfg = compose_cfg(
        [
            "experiment=cats_vs_dogs_local",
            "logger=none",
            f"data.path={cats_dogs}",
            "backbone.image_size=96",
            "data.max_per_class=150",
            "data.test_fraction=0",
            "trainer.head_epochs=8",
            "trainer.finetune_epochs=0",
            "lr.base=2e-3",
            "trainer.save_model=false",
            *overrides,
        ]
    )
    train(cfg, out)
    return json.loads((out / "metrics.json").read_text())


def test_pretrained_base_clearly_beats_random_init(tmp_path, cats_dogs, mnv2_weights):
    pre = _train(tmp_path, "pretrained", cats_dogs, f"backbone.weights={mnv2_weights}")
    rnd = _train(tmp_path, "random", cats_dogs, "backbone.weights=null")
    assert pre["num_train"] == 300 and pre["num_val"] == 300
    assert pre["val_accuracy"] >= 0.8, pre["history"]
    assert pre["val_accuracy"] >= rnd["val_accuracy"] + 0.2, (
        pre["val_accuracy"],
        rnd["val_accuracy"],
    )


def test_batchnorm_in_training_mode_would_hurt(tmp_path, cats_dogs, mnv2_weights):
    """The guard the Keras guide asks for: the pretrained base keeps its BatchNorm statistics."""
    m = _train(
        tmp_path,
        "bn",
        cats_dogs,
        f"backbone.weights={mnv2_weights}",
        "trainer.finetune_epochs=1",
        "unfreeze=all",
    )
    # fine-tuning the whole base at lr/10 with BN in inference mode keeps the accuracy up
    assert m["val_accuracy"] >= 0.8, m["history"]
