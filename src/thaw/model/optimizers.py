"""The optimizers `trainer.optimizer` names, and Adam on TensorFlow's fused update kernel.

Keras' Adam builds its update from ~35 graph ops per variable (step count, both bias corrections and
the step size again for every variable, then the moment and weight updates). Tracing and
instantiating them is about half of a new fine-tuning depth's first step (MobileNetV2, top 8 blocks:
4,800 ops with Adam, 2,420 with SGD). `FusedAdam` computes the step's scalars once and updates each
variable with one `ResourceApplyAdam`, the kernel tf.compat.v1's AdamOptimizer runs: the same rule,
m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps),
with 1 - b1 and 1 - b2 taken in float32 inside the kernel where Keras rounds them from float64
(1 - 0.999: 9.99987e-4 against 1.0e-3). trainer.fused_optimizer=false runs Keras' own Adam.

Every optimizer made here skips Keras' cross-replica sum of the gradients when no distribution
strategy is set (`single_replica`): with one replica it is the identity, and in a traced step it
leaks the whole step's graph for the life of the process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

_CLASSES = {
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "sgd": "SGD",
}  # in keras.optimizers
NAMES = tuple(_CLASSES)


def make(
    name: str,
    learning_rate,
    fused: bool = True,
    weight_decay: float = 0.0,
    layer_rates: dict[str, float] | None = None,
):
    """A fresh optimizer for one compile; `fused` applies to Adam (the others have no fused form
    here). `weight_decay` > 0 is Keras' decoupled decay (applied before the update, the fused one
    too); 0 leaves the optimizer exactly as before (AdamW keeps its own default). `layer_rates`:
    {layer name: learning-rate multiplier} for the variables of those layers (lr.layer_decay); None
    or all 1: the optimizer is exactly the plain one."""
    import keras

    extra = {"weight_decay": float(weight_decay)} if weight_decay else {}
    if name == "adam" and fused:  # same variable paths as Adam
        cls, extra["name"] = fused_adam_class(), "adam"
    else:
        cls = single_replica(getattr(keras.optimizers, _CLASSES[name]))
    rates = {k: float(v) for k, v in (layer_rates or {}).items() if float(v) != 1.0}
    if not rates:
        return cls(learning_rate=learning_rate, **extra)
    opt = with_layer_rates(cls)(learning_rate=learning_rate, **extra)
    opt.layer_rates = rates
    return opt


def compiled_name(
    name: str,
    fused: bool,
    weight_decay: float = 0.0,
    layer_rates: dict[str, float] | None = None,
) -> str:
    """What a kept compiled step is keyed by (thaw.model.compiled): a fused and a Keras Adam trace
    differently, and the decay and the per-layer multipliers are constants of the traced step."""
    base = f"{name}+fused" if name == "adam" and fused else name
    if weight_decay:
        base += f"+wd{float(weight_decay)!r}"
    rates = sorted((k, float(v)) for k, v in (layer_rates or {}).items() if float(v) != 1.0)
    return f"{base}+rates{rates!r}" if rates else base


def block_rates(
    block_layers: dict[str, Sequence[str]], blocks: Sequence[str], decay: float
) -> dict[str, float]:
    """{layer name: multiplier}: the top of `blocks` (ordered bottom to top) at 1, each block below
    at `decay` times the block above; layers outside them (the head) keep the full rate."""
    out: dict[str, float] = {}
    if float(decay) == 1.0:
        return out
    for depth_from_top, block in enumerate(reversed(list(blocks))):
        for layer in block_layers.get(block, ()):
            out[layer] = float(decay) ** depth_from_top
    return out


@functools.cache  # one class per optimizer class: defined once, like a module constant
def with_layer_rates(cls: type) -> type:
    """`cls` with a learning-rate multiplier per variable, by the layer that owns it: Keras' update
    rules take it through `update_step`, the fused Adam through its kernel's `lr`."""

    class LayerRates(cls):  # type: ignore[misc, valid-type]
        layer_rates: dict[str, float] = {}

        def build(self, variables):
            super().build(variables)
            self._rate_of = [self.layer_rates.get(_owner(v), 1.0) for v in variables]

        def lr_multiplier(self, variable) -> float:
            return self._rate_of[self._get_variable_index(variable)]

        def update_step(self, gradient, variable, learning_rate):
            m = self.lr_multiplier(variable)
            return super().update_step(
                gradient, variable, learning_rate if m == 1.0 else learning_rate * m
            )

        def _apply_weight_decay(self, variables):
            """Decoupled decay at each variable's own rate, as timm and BEiT apply it: a block
            that trains slower is pulled toward zero slower. Keras' TensorFlow decay with the
            multiplier added (cross-replica, as Keras applies it under a distribution strategy)."""
            if self.weight_decay is None:
                return
            import keras
            import tensorflow as tf

            def decay_all(distribution, variables):
                for variable in variables:
                    value = variable.value if isinstance(variable, keras.Variable) else variable
                    m = self.lr_multiplier(value)

                    def decay(v, m=m):
                        if self._use_weight_decay(v):
                            lr = tf.cast(self.learning_rate, v.dtype)
                            lr = lr if m == 1.0 else lr * tf.constant(m, v.dtype)
                            v.assign_sub(v * tf.cast(self.weight_decay, v.dtype) * lr)

                    distribution.extended.update(value, decay, group=False)

            tf.__internal__.distribute.interim.maybe_merge_call(
                decay_all, self._distribution_strategy, variables
            )

    LayerRates.__name__ = LayerRates.__qualname__ = f"{cls.__name__}WithLayerRates"
    return LayerRates


@functools.cache  # one class per optimizer class: defined once, like a module constant
def single_replica(cls: type) -> type:
    """`cls` that, with no distribution strategy set, leaves the gradients as they are instead of
    summing them over the one replica. Keras' TensorFlow optimizers sum through the replica
    context's all_reduce, a tf.custom_gradient: traced, it registers a gradient function in
    TensorFlow's process-wide gradient registry, never removed, that holds the traced step's whole
    graph (tensorflow/tensorflow#97697, #27492). In-process trials compile many steps: an SGD
    sweep's RSS rose about 17 MiB a trial (benchmarks/results/soak-2026-12-04-sgd-before.jsonl).
    Under a strategy the sum runs as in Keras."""
    import tensorflow as tf

    class SingleReplica(cls):  # type: ignore[misc, valid-type]
        def _all_reduce_sum_gradients(self, grads_and_vars):
            if tf.distribute.has_strategy():
                return super()._all_reduce_sum_gradients(grads_and_vars)
            return list(grads_and_vars)

    SingleReplica.__name__ = SingleReplica.__qualname__ = cls.__name__
    return SingleReplica


def _owner(variable) -> str:
    """The name of the layer a Keras variable belongs to (its path is `layer/variable`)."""
    path = getattr(variable, "path", "") or ""
    return path.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in path else path


@functools.cache  # defined on first use (Keras is imported lazily), then a constant
def fused_adam_class():
    return _define()


def _define() -> Any:
    import keras
    import tensorflow as tf

    class FusedAdam(single_replica(keras.optimizers.Adam)):
        """keras.optimizers.Adam whose TensorFlow update is one fused kernel per variable. Falls
        back to Keras' own update under a distribution strategy, with amsgrad, sparse gradients or
        another backend."""

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            variables = [
                v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
            ]
            if not self._fusable(grads, variables):
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
            dtype = variables[0].dtype
            scalars = _adam_scalars(self, learning_rate, dtype)
            multiplier = getattr(self, "lr_multiplier", None)
            for grad, var in zip(grads, variables):
                i = self._get_variable_index(var)
                m = 1.0 if multiplier is None else multiplier(var)
                args = (
                    scalars if m == 1.0 else dict(scalars, lr=scalars["lr"] * tf.constant(m, dtype))
                )
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle,
                    m=self._momentums[i].value.handle,
                    v=self._velocities[i].value.handle,
                    grad=tf.cast(grad, dtype),
                    use_locking=False,
                    **args,
                )

        def _fusable(self, grads, variables) -> bool:
            return (
                keras.backend.backend() == "tensorflow"
                and not tf.distribute.has_strategy()
                and not self.amsgrad
                and bool(variables)
                and len({v.dtype for v in variables}) == 1
                and variables[0].dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64)
                and all(isinstance(g, tf.Tensor) for g in grads)
                and all(hasattr(v, "handle") for v in variables)
            )

    return FusedAdam


def _adam_scalars(opt, learning_rate, dtype) -> dict:
    """The fused kernel's scalars for this step, computed once for all variables."""
    import tensorflow as tf

    step = tf.cast(opt.iterations + 1, dtype)
    b1, b2 = tf.constant(opt.beta_1, dtype), tf.constant(opt.beta_2, dtype)
    return dict(
        beta1_power=tf.pow(b1, step),
        beta2_power=tf.pow(b2, step),
        lr=tf.cast(learning_rate, dtype),
        beta1=b1,
        beta2=b2,
        epsilon=tf.constant(opt.epsilon, dtype),
    )
