"""lr.layer_decay: per-block learning rates in the fine-tuning phase. The multiplier reaches every
update rule thaw runs (fused Adam, Keras' optimizers, under loss scaling), a decay of 1 is the
plain optimizer, and a run records the rates it used."""

import math

import numpy as np
import pytest
from conftest import TINY_RUN, thaw_multirun, thaw_train


def _model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="lower")(x)
    y = keras.layers.Dense(1, name="upper")(h)
    return keras.Model(x, y)


def _one_step(opt, seed=0):
    """Weights before and after one optimizer step on the same batch."""
    import tensorflow as tf

    model = _model(seed)
    x = tf.constant(np.random.default_rng(1).normal(size=(8, 4)), tf.float32)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - 1.0))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply(grads, model.trainable_variables)
    return before, [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize(
    "name,fused", [("adam", True), ("adam", False), ("sgd", False), ("rmsprop", False)]
)
def test_a_layers_multiplier_is_its_learning_rate(name, fused):
    """One step with `lower` at 0.25x equals, for `lower`, a plain step at a quarter of the rate,
    and for `upper`, a plain step at the full rate."""
    from thaw.model.optimizers import make

    before, scaled = _one_step(make(name, 1e-2, fused, layer_rates={"lower": 0.25}))
    _, full = _one_step(make(name, 1e-2, fused))
    _, quarter = _one_step(make(name, 2.5e-3, fused))
    for i in range(2):  # lower/kernel, lower/bias
        np.testing.assert_allclose(
            scaled[i] - before[i], quarter[i] - before[i], rtol=1e-5, atol=1e-9
        )
        assert not np.allclose(scaled[i] - before[i], full[i] - before[i])
    for i in range(2, 4):  # upper/kernel, upper/bias
        np.testing.assert_allclose(scaled[i], full[i], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,fused", [("sgd", False), ("adam", True), ("adam", False)])
def test_the_multiplier_survives_loss_scaling(name, fused):
    """Mixed precision wraps the optimizer in a LossScaleOptimizer: the fused Adam's kernel and
    Keras' update rules still get each layer's rate."""
    import keras

    from thaw.model.optimizers import make

    before, scaled = _one_step(
        keras.optimizers.LossScaleOptimizer(make(name, 1e-2, fused, layer_rates={"lower": 0.5}))
    )
    _, half = _one_step(keras.optimizers.LossScaleOptimizer(make(name, 5e-3, fused)))
    np.testing.assert_allclose(scaled[0] - before[0], half[0] - before[0], rtol=1e-5, atol=1e-9)


def test_decay_one_is_the_plain_optimizer_and_keys_the_compiled_step():
    import keras

    from thaw.model.optimizers import block_rates, compiled_name, fused_adam_class, make

    assert block_rates({"b1": ["x"], "b2": ["y"]}, ["b1", "b2"], 1.0) == {}
    assert type(make("adam", 1e-3, True, layer_rates={})) is fused_adam_class()
    plain_sgd = type(make("sgd", 1e-3))
    assert issubclass(plain_sgd, keras.optimizers.SGD)
    assert type(make("sgd", 1e-3, layer_rates={"x": 1.0})) is plain_sgd
    rates = block_rates({"b1": ["x1", "x2"], "b2": ["y"], "b3": ["z"]}, ["b1", "b2", "b3"], 0.5)
    assert rates == {
        "z": 1.0,
        "y": 0.5,
        "x1": 0.25,
        "x2": 0.25,
    }  # the top block at the phase's rate
    # a kept compiled step is keyed by its multipliers (they are constants of the traced step)
    assert compiled_name("adam", True, 0.0, rates) != compiled_name("adam", True, 0.0, {})
    assert compiled_name("adam", True, 0.0, {}) == "adam+fused"


# images: -m slow (each further run on images traces the whole base again, ~4x the cached path)
@pytest.mark.parametrize("path", [pytest.param("images", marks=pytest.mark.slow), "cached"])
def test_a_run_with_layer_decay_trains_differently_and_records_its_rates(tmp_path, path, request):
    # the cached path needs a base in inference mode that learns: pretrained (a random base in
    # inference mode normalises nothing and stays at chance, every rate alike)
    extra = []
    if path == "cached":
        extra = [f"backbone.weights={request.getfixturevalue('mnv2_weights')}"]
    runs = thaw_multirun(
        [*TINY_RUN, "lr.base=0.01", *extra, "lr.layer_decay=1.0,0.1"], tmp_path / "sw", tmp_path
    )
    plain, decayed = runs[("lr.layer_decay=1.0",)], runs[("lr.layer_decay=0.1",)]
    if path == "cached":
        assert decayed["phases"]["finetune"]["cache"].startswith("at "), "not from the cache"
    rates = decayed["phases"]["finetune"]["layer_rates"]
    blocks = decayed["phases"]["finetune"]["unfrozen_blocks"]
    assert (
        rates == pytest.approx({b: 0.1**i for i, b in enumerate(reversed(blocks))})
        and len(blocks) == 3
    )
    assert "layer_rates" not in plain["phases"]["finetune"]
    curve = lambda m: [(r["loss"], r["val_loss"]) for r in m["history"]]  # noqa: E731
    # tiny: one head epoch, the same in both (the decay is a fine-tuning setting); the fine-tuning
    # epoch differs
    assert curve(decayed)[0] == curve(plain)[0]
    assert curve(decayed)[1][0] != curve(plain)[1][0]


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_a_bad_decay_is_refused_in_one_line(tmp_path, value):
    res = thaw_train([*TINY_RUN, f"lr.layer_decay={value}"], tmp_path)
    assert (
        res.returncode == 2 and "lr.layer_decay" in res.stderr and "Traceback" not in res.stderr
    ), res.stderr


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_the_keys_train_under_mixed_precision_from_the_cache(tmp_path, mnv2_weights):
    """Mixed precision (a LossScaleOptimizer over the fused Adam) with per-block rates, weight
    decay and label smoothing, fine-tuning from the feature cache: each run trains and records its
    keys, and the rates and the decay change the fine-tuning epoch."""
    runs = thaw_multirun(
        [
            *TINY_RUN,
            "lr.base=0.01",
            f"backbone.weights={mnv2_weights}",
            "trainer.precision=mixed_float16",
            "trainer.label_smoothing=0.1",
            "lr.layer_decay=1.0,0.5",
            "optimizer.weight_decay=0,0.01",
        ],
        tmp_path / "sw",
        tmp_path,
    )
    plain = runs[("lr.layer_decay=1.0", "optimizer.weight_decay=0")]
    both = runs[("lr.layer_decay=0.5", "optimizer.weight_decay=0.01")]
    for m in runs.values():
        assert m["phases"]["finetune"]["cache"].startswith("at "), "not from the cache"
        assert m["regularization"]["label_smoothing"] == 0.1
        assert all(math.isfinite(r["loss"]) for r in m["history"])
    assert both["lr"]["layer_decay"] == 0.5 and "layer_rates" in both["phases"]["finetune"]
    assert both["regularization"]["weight_decay"] == 0.01
    loss = lambda m: [r["loss"] for r in m["history"]]  # noqa: E731
    assert loss(both)[1] != loss(plain)[1]
    assert loss(runs[("lr.layer_decay=0.5", "optimizer.weight_decay=0")])[1] != loss(plain)[1]
    assert loss(runs[("lr.layer_decay=1.0", "optimizer.weight_decay=0.01")])[1] != loss(plain)[1]
