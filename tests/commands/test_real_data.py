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


def test_whole_base_fine_tuning_keeps_the_imagenet_batchnorm_statistics(
    tmp_path, cats_dogs, mnv2_weights
):
    """The guard the Keras guide asks for: fine-tuning the whole base keeps its BatchNorm layers in
    inference mode, so their ImageNet statistics come out as they went in, and the fine-tuned
    model (not the head epoch restore_best would keep) still classifies."""
    import h5py
    import keras
    import numpy as np

    m = _train(
        tmp_path,
        "bn",
        cats_dogs,
        f"backbone.weights={mnv2_weights}",
        "trainer.finetune_epochs=1",
        "unfreeze=all",
        "trainer.restore_best=false",
        "trainer.save_model=true",
    )
    assert m["kept_phase"] == "finetune" and m["last_val_accuracy"] >= 0.7, m["history"]
    model = keras.saving.load_model(tmp_path / "bn" / "model.keras")
    bns = [x for x in model._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
    with h5py.File(mnv2_weights) as f:
        moved = [
            x.name
            for x in bns
            if not np.array_equal(x.moving_mean.numpy(), f[x.name][x.name]["moving_mean:0"][()])
            or not np.array_equal(
                x.moving_variance.numpy(), f[x.name][x.name]["moving_variance:0"][()]
            )
        ]
    assert len(bns) == 52 and not moved, moved[:5]
