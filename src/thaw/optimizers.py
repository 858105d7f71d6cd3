"""The optimizers `trainer.optimizer` names, and Adam on TensorFlow's fused update kernel.

Keras' Adam builds its update from ~35 graph ops per variable (step count, both bias corrections and
the step size again for every variable, then the moment and weight updates). Tracing and
instantiating them is about half of a new fine-tuning depth's first step (MobileNetV2, top 8 blocks:
4,800 ops with Adam, 2,420 with SGD). `FusedAdam` computes the step's scalars once and updates each
variable with one `ResourceApplyAdam`, the kernel tf.compat.v1's AdamOptimizer runs: the same rule,
m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps),
with 1 - b1 and 1 - b2 taken in float32 inside the kernel where Keras rounds them from float64
(1 - 0.999: 9.99987e-4 against 1.0e-3). trainer.fused_optimizer=false runs Keras' own Adam.
"""

from __future__ import annotations

from typing import Any

_CLASSES = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}  # in keras.optimizers
NAMES = tuple(_CLASSES)
_FUSED: list = []


def make(name: str, learning_rate, fused: bool = True, weight_decay: float = 0.0):
    """A fresh optimizer for one compile; `fused` applies to Adam (the others have no fused form here).
    `weight_decay` > 0 is Keras' decoupled decay (applied before the update, the fused one too); 0
    leaves the optimizer exactly as before (AdamW keeps its own default)."""
    import keras

    extra = {"weight_decay": float(weight_decay)} if weight_decay else {}
    if name == "adam" and fused:  # same variable paths as Adam
        return fused_adam_class()(learning_rate=learning_rate, name="adam", **extra)
    return getattr(keras.optimizers, _CLASSES[name])(learning_rate=learning_rate, **extra)


def compiled_name(name: str, fused: bool, weight_decay: float = 0.0) -> str:
    """What a kept compiled step is keyed by (thaw.compiled): a fused and a Keras Adam trace differently,
    and the decay is a constant of the traced step."""
    base = f"{name}+fused" if name == "adam" and fused else name
    return f"{base}+wd{float(weight_decay)!r}" if weight_decay else base


def fused_adam_class():
    if not _FUSED:
        _FUSED.append(_define())
    return _FUSED[0]


def _define() -> Any:
    import keras
    import tensorflow as tf

    class FusedAdam(keras.optimizers.Adam):
        """keras.optimizers.Adam whose TensorFlow update is one fused kernel per variable. Falls back to
        Keras' own update under a distribution strategy, with amsgrad, sparse gradients or another backend."""

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
            if not self._fusable(grads, variables):
                return super()._backend_update_step(grads, trainable_variables, learning_rate)
            dtype = variables[0].dtype
            step = tf.cast(self.iterations + 1, dtype)
            b1, b2 = tf.constant(self.beta_1, dtype), tf.constant(self.beta_2, dtype)
            scalars = dict(beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step),
                           lr=tf.cast(learning_rate, dtype), beta1=b1, beta2=b2,
                           epsilon=tf.constant(self.epsilon, dtype))
            for grad, var in zip(grads, variables):
                i = self._get_variable_index(var)
                tf.raw_ops.ResourceApplyAdam(var=var.handle, m=self._momentums[i].value.handle,
                                             v=self._velocities[i].value.handle, grad=tf.cast(grad, dtype),
                                             use_locking=False, **scalars)

        def _fusable(self, grads, variables) -> bool:
            return (keras.backend.backend() == "tensorflow" and not tf.distribute.has_strategy()
                    and not self.amsgrad and bool(variables)
                    and len({v.dtype for v in variables}) == 1
                    and variables[0].dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64)
                    and all(isinstance(g, tf.Tensor) for g in grads)
                    and all(hasattr(v, "handle") for v in variables))

    return FusedAdam
