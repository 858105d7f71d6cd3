"""Training in-process: learning actually happens, BatchNorm modes, outputs."""

import json

import numpy as np
import pytest
from conftest import compose_cfg

from thaw.model.classifier import base_training_flag


def test_batchnorm_mode_follows_the_weights():
    assert base_training_flag(compose_cfg(["backbone.weights=imagenet"]).backbone) is False
    assert base_training_flag(compose_cfg(["backbone.weights=null"]).backbone) is None
    assert (
        base_training_flag(
            compose_cfg(["backbone.weights=null", "backbone.batchnorm=inference"]).backbone
        )
        is False
    )


@pytest.mark.parametrize("unfreeze", ["unfreeze=all", "unfreeze.depth=2"], ids=["images", "cut"])
@pytest.mark.parametrize("mode, kept", [("inference", True), ("train", False)])
def test_fine_tuning_keeps_the_bases_batchnorm_statistics(tmp_path, unfreeze, mode, kept):
    """Inference mode holds through fit, on images and from the feature cache's cut: the unfrozen
    blocks' BatchNorm layers keep the statistics the base came with (calling the base with
    training=False alone did not: fit's training=True reached the nested base's layers)."""
    import keras

    from thaw.train.recipe import train

    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.weights=null",  # moving statistics start at mean 0, variance 1
            f"backbone.batchnorm={mode}",
            unfreeze,
            "trainer.restore_best=false",  # the model of the fine-tuning epoch
            "trainer.save_model=true",
        ]
    )
    train(cfg, tmp_path)
    finetune = json.loads((tmp_path / "metrics.json").read_text())["phases"]["finetune"]
    if mode == "inference" and unfreeze.startswith("unfreeze.depth"):  # trained from the cut
        assert finetune["cache"].startswith("at block_"), finetune
    model = keras.saving.load_model(tmp_path / "model.keras")
    bns = [x for x in model._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
    moved = [
        x.name
        for x in bns
        if np.any(x.moving_mean.numpy() != 0) or np.any(x.moving_variance.numpy() != 1)
    ]
    assert bns and (not moved) is kept, moved[:5]


def test_pretrained_head_learns_synthetic_shapes(tmp_path, mnv2_weights):
    from thaw.train.recipe import train

    cfg = compose_cfg(
        [
            "experiment=tiny",
            f"backbone.weights={mnv2_weights}",
            "backbone.image_size=96",
            "trainer.head_epochs=4",
            "trainer.finetune_epochs=1",
            "data.num_train=256",
            "data.num_val=128",
            "unfreeze.depth=2",
        ]
    )
    result = train(cfg, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "complete"
    assert result.objective == m["val_accuracy"]
    assert m["val_accuracy"] >= 0.8, m["history"]
    # the fine-tuning phase trained only block_16 + top on top of the head
    assert m["phases"]["finetune"]["unfrozen_blocks"] == ["block_16", "top"]


def test_multiclass_uses_softmax_and_saves(tmp_path):
    import keras

    from thaw.train.recipe import train

    cfg = compose_cfg(
        [
            "experiment=tiny",
            "data.num_classes=3",
            "data.num_train=48",
            "data.num_val=24",
            "backbone.image_size=32",
            "head=mlp",
            "lr=cosine",
        ]
    )
    train(cfg, tmp_path)
    model = keras.saving.load_model(tmp_path / "model.keras")
    y = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    m = json.loads((tmp_path / "metrics.json").read_text())
    # cosine decays within the phase: the logged end-of-epoch rate is below the start rate
    assert m["history"][0]["lr"] < m["phases"]["head"]["learning_rate"]


def test_nan_loss_fails_the_run(tmp_path):
    from thaw.errors import TrainingError
    from thaw.train.recipe import train

    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.image_size=32",
            "data.num_train=64",
            "data.num_val=16",
            "trainer.head_epochs=3",
        ]
    )
    cfg.lr.base = float("nan")  # a diverging run (validation would refuse this value up front)
    with pytest.raises(TrainingError, match="loss became"):
        train(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow  # ~50 s; the GPU precision path on CPU
def test_mixed_float16_computes_in_half_keeps_float32_logits(tmp_path):
    """The GPU precision path, run on CPU: float16 compute, float32 variables and output."""
    import keras

    from thaw.train.recipe import train

    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.image_size=32",
            "data.num_train=64",
            "data.num_val=32",
            "trainer.precision=mixed_float16",
            "trainer.head_epochs=1",
            "trainer.finetune_epochs=1",
        ]
    )
    try:
        train(cfg, tmp_path)
        model = keras.saving.load_model(tmp_path / "model.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "complete" and np.isfinite(m["history"][-1]["loss"])
    base = next(l for l in model.layers if isinstance(l, keras.Model))
    convs = [l for l in base.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(
        l.compute_dtype == "float16" and l.variable_dtype == "float32" for l in convs
    )
    y = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert y.dtype == np.float32
    assert model.layers[-1].compute_dtype == "float32"
