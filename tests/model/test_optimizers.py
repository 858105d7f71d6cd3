"""thaw.model.optimizers: Adam on TensorFlow's fused kernel follows Keras' Adam, with far fewer ops
to trace."""

import collections

import numpy as np
import pytest


def _fit(optimizer, steps_per_epoch=8, epochs=5, strategy=None):
    import keras

    keras.utils.set_random_seed(0)

    def build():
        inp = keras.Input((16,))
        x = keras.layers.Dense(32, activation="relu")(inp)
        model = keras.Model(inp, keras.layers.Dense(1)(x))
        model.compile(optimizer=optimizer(), loss="mse")
        return model

    if strategy is None:
        model = build()
    else:
        with strategy.scope():
            model = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32 * steps_per_epoch, 16)).astype("float32")
    y = x[:, :1] * 2 + 0.1
    hist = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False)
    return model, hist.history["loss"]


def test_fused_adam_follows_keras_adam():
    import keras

    from thaw.model.optimizers import make

    fused, fused_loss = _fit(lambda: make("adam", 1e-2, fused=True))
    plain, plain_loss = _fit(lambda: keras.optimizers.Adam(1e-2))
    assert (
        type(fused.optimizer).__name__ == "FusedAdam"
        and type(plain.optimizer) is keras.optimizers.Adam
    )
    assert int(fused.optimizer.iterations.numpy()) == 40
    for a, b in zip(
        fused.weights, plain.weights
    ):  # 40 steps: the float32 rounding of 1 - beta, no more
        a, b = a.numpy(), b.numpy()
        assert np.max(np.abs(a - b)) <= 3e-5 * max(1e-3, float(np.max(np.abs(b)))), a.shape
        assert (
            np.max(np.abs(a - b)) > 0 or a.ndim == 0
        )  # really the other kernel, not Keras' update again
    assert np.allclose(fused_loss, plain_loss, rtol=1e-4)
    assert fused_loss[-1] < 0.5 * fused_loss[0]  # it trains
    # the same optimizer variables in the same order, under the same name: checkpoints move between
    # the two
    assert [tuple(v.shape) for v in fused.optimizer.variables] == [
        tuple(v.shape) for v in plain.optimizer.variables
    ]
    assert [v.path.split("/", 1)[0] for v in fused.optimizer.variables] == ["adam"] * len(
        fused.optimizer.variables
    )


def test_fused_adam_traces_far_fewer_ops():
    import keras
    import tensorflow as tf

    from thaw.model.optimizers import make

    def op_count(optimizer):
        inp = keras.Input((8,))
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dense(4)(inp)))
        model.compile(optimizer=optimizer, loss="mse")
        ds = tf.data.Dataset.from_tensor_slices(
            (np.zeros((4, 8), "float32"), np.zeros((4, 1), "float32"))
        ).batch(2)
        model._symbolic_build(data_batch=ds.element_spec)
        graph = (
            tf.function(lambda b: model.train_step(b)).get_concrete_function(next(iter(ds))).graph
        )
        return collections.Counter(op.type for op in graph.get_operations())

    fused, plain = op_count(make("adam", 1e-3, fused=True)), op_count(keras.optimizers.Adam(1e-3))
    assert fused["ResourceApplyAdam"] == 4 and plain["ResourceApplyAdam"] == 0  # one per variable
    assert sum(fused.values()) < 0.65 * sum(plain.values()), (
        sum(fused.values()),
        sum(plain.values()),
    )


def test_fused_adam_is_keras_adam_under_a_distribution_strategy():
    """Under a strategy (MirroredStrategy) the update goes through Keras' own Adam, bit for bit."""
    import keras
    import tensorflow as tf

    from thaw.model.optimizers import make

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    fused, _ = _fit(lambda: make("adam", 1e-2, fused=True), epochs=2, strategy=strategy)
    plain, _ = _fit(lambda: keras.optimizers.Adam(1e-2), epochs=2, strategy=strategy)
    assert type(fused.optimizer).__name__ == "FusedAdam"
    for a, b in zip(fused.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_make_builds_each_named_optimizer(name):
    from thaw.model.optimizers import make

    fused, plain = make(name, 1e-3, fused=True), make(name, 1e-3, fused=False)
    assert (type(fused).__name__ == "FusedAdam") == (name == "adam")
    assert type(plain).__name__ != "FusedAdam"
    assert float(fused.learning_rate.numpy()) == pytest.approx(1e-3)


@pytest.mark.parametrize("name,fused", [("adam", True), ("adam", False), ("sgd", False)])
def test_weight_decay_shrinks_each_weight_by_rate_times_decay_per_step(name, fused):
    """Decoupled decay at its stated strength (w -= lr * weight_decay * w per step, apart from the
    gradient's update): with zero gradients the update is zero and only the decay moves a weight."""
    import keras

    from thaw.model.optimizers import make

    opt = make(name, 0.1, fused=fused, weight_decay=0.5)
    w = keras.Variable(np.full((3,), 2.0, "float32"))
    for _ in range(4):
        opt.apply_gradients([(keras.ops.zeros((3,)), w)])
    np.testing.assert_allclose(w.numpy(), 2.0 * (1 - 0.1 * 0.5) ** 4, rtol=1e-6)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("name,fused", [("adam", True), ("adam", False), ("sgd", False)])
def test_weight_decay_follows_each_layers_rate_multiplier(name, fused, traced):
    """With lr.layer_decay a layer at half the rate is also decayed at half the rate (timm's rule):
    zero gradients, so only the decay moves the weights."""
    import keras
    import tensorflow as tf

    from thaw.model.optimizers import make

    layers = {n: keras.layers.Dense(1, use_bias=False, name=n) for n in ("slow", "fast")}
    for layer in layers.values():
        layer.build((None, 3))
        layer.set_weights([np.full((3, 1), 2.0, "float32")])
    opt = make(name, 0.1, fused=fused, weight_decay=0.5, layer_rates={"slow": 0.5})
    kernels = [layers["slow"].kernel, layers["fast"].kernel]

    def step():
        opt.apply_gradients([(tf.zeros((3, 1)), k) for k in kernels])

    step = tf.function(step) if traced else step
    for _ in range(4):
        step()
    np.testing.assert_allclose(kernels[0].numpy(), 2.0 * (1 - 0.1 * 0.5 * 0.5) ** 4, rtol=1e-6)
    np.testing.assert_allclose(kernels[1].numpy(), 2.0 * (1 - 0.1 * 0.5) ** 4, rtol=1e-6)
    assert opt.weight_decay == 0.5


TWO_REPLICAS = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from thaw.model.optimizers import make
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    layers = [keras.layers.Dense(1, use_bias=False, name=n) for n in ("slow", "fast")]
    for layer in layers:
        layer.build((None, 3))
        layer.set_weights([np.full((3, 1), 2.0, "float32")])
    opt = make("adam", 0.1, fused=True, weight_decay=0.5, layer_rates={"slow": 0.5})
    kernels = [layer.kernel for layer in layers]
    opt.build(kernels)

@tf.function
def step():
    strategy.run(lambda: opt.apply_gradients([(tf.zeros((3, 1)), k) for k in kernels]))

for _ in range(4):
    step()
print(float(kernels[0].numpy()[0, 0]), float(kernels[1].numpy()[0, 0]), opt.weight_decay)
"""


def test_weight_decay_per_layer_under_a_two_replica_strategy(tmp_path):
    """Under MirroredStrategy each replica runs the step in its own thread: the decay is applied
    once per variable, at its layer's rate, with nothing shared changed (a fresh process: the two
    logical CPUs must be set before TensorFlow starts)."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    slow, fast, decay = (float(x) for x in res.stdout.split()[-3:])
    assert slow == pytest.approx(2.0 * (1 - 0.1 * 0.5 * 0.5) ** 4, rel=1e-6)
    assert fast == pytest.approx(2.0 * (1 - 0.1 * 0.5) ** 4, rel=1e-6)
    assert decay == 0.5


def _registered_gradients() -> int:
    from tensorflow.python.framework import ops

    return len(ops.gradient_registry.list())


@pytest.mark.parametrize(
    "name,fused",
    [("sgd", False), ("rmsprop", False), ("adamw", False), ("adam", False), ("adam", True)],
)
def test_a_dropped_model_leaves_no_traced_step_behind(name, fused):
    """Keras' cross-replica gradient sum registers a tf.custom_gradient that holds the traced step's
    graph for the life of the process; in-process trials would keep every step they compiled."""
    import keras

    from thaw.model.optimizers import make

    before = _registered_gradients()  # process-wide: what a traced step leaves there stays
    model, _ = _fit(lambda: make(name, 1e-2, fused=fused), steps_per_epoch=2, epochs=1)
    del model
    keras.backend.clear_session()
    assert _registered_gradients() == before


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adamw", "adam"])
def test_skipping_the_one_replica_sum_changes_no_weight(name):
    import keras

    from thaw.model.optimizers import make

    made, made_loss = _fit(lambda: make(name, 1e-2, fused=False), epochs=2)
    plain, plain_loss = _fit(
        lambda: getattr(keras.optimizers, type(made.optimizer).__name__)(1e-2), epochs=2
    )
    assert type(plain.optimizer) is not type(made.optimizer)
    for a, b in zip(made.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert made_loss == plain_loss
