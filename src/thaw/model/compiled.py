"""Compiled fit models kept across the trials of a process: a trial at a depth seen before pays no
trace.

Keras traces a model's train step the first time `fit` runs after `compile()`; a new model object or
a new compile traces again. For the unfrozen top of a MobileNetV2 that costs 4-12 s on 2 CPU cores,
against under a second of compute per epoch at sweep sizes (and less on a GPU, where the trace costs
the same). Three things cut it (trainer.reuse_compiled, on by default):
- the optimizer, metric and loss state is built before the first trace. Keras defers it into the
  trace when no distribution strategy is set; the variables created there make TensorFlow trace the
  step a second time (measured: the first epoch of a depth-10 fine-tune 9.8 s -> 5.0 s);
- each classifier keeps one fit model per (cut, trainable set), compiled once. A later trial puts
  its optimizer's variables back to their state right after building (zero slots, the loss scale of
  a mixed-precision optimizer), sets its learning rate (a variable, also inside a cosine schedule)
  and fits it again on its own data: the traced step is reused and the trial computes exactly what a
  fresh process computes (tests/test_reuse.py);
- TensorFlow's global seed is not set again when unchanged (devices.seed_and_precision): setting it
  clears the kernel cache, and every kept function would be instantiated again (2-4 s a trial).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from thaw.model.pool import ModelPool, release_frozen

log = logging.getLogger("thaw.train")

MAX_FIT_MODELS = 8  # per classifier (trainer.kept_fit_models): the head plus a few depths
# ... and together they train at most this many times the weights the whole classifier can train
# (each counted when kept): a compiled step's traced graph grows with the layers it trains, so 8
# deep steps held 3x the memory of 8 shallow ones, and a long sweep that drifted deep grew by half
# (benchmarks/soak.py). A step that trains nothing (evaluation) costs nothing.
FIT_MODELS_SIZE = 2.0


class FitModels:
    """The models a classifier's phases fit, by what they take and train: least recently used
    dropped first, beyond `max_models` (trainer.kept_fit_models) or beyond `max_weights` trained
    weights in all (the newest is always kept)."""

    def __init__(self, max_weights: int | None = None, max_models: int = MAX_FIT_MODELS):
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        self._cost: dict[Hashable, int] = {}
        self.max_weights = max_weights
        self.max_models = max_models

    def bound(self, max_models: int) -> None:
        """Keep at most `max_models` from now on: a run with a lower bound drops the extra ones at
        once, so what it keeps is what a fresh process would keep."""
        self.max_models = int(max_models)
        self._trim()

    def __len__(self) -> int:
        return len(self._models)

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        return list(self._models)

    def weights(self) -> int:
        """The weights the kept models train, each counted as it was kept."""
        return sum(self._cost.values())

    def get(self, key: Hashable, make: Callable[[], Any]):
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = self._models[key] = make()
        self._cost[key] = len(model.trainable_weights)  # layers share flags: count them now
        self._trim()
        return model

    def _trim(self) -> None:
        while len(self._models) > 1 and (
            len(self._models) > self.max_models
            or (self.max_weights is not None and self.weights() > self.max_weights)
        ):
            dropped, _ = self._models.popitem(last=False)
            del self._cost[dropped]
            release_frozen()


def compile_for_fit(
    model,
    optimizer_name: str | None,
    make_optimizer: Callable[[], Any] | None,
    learning_rate,
    loss,
    make_metrics: Callable[[], list],
    jit_compile,
    element_spec=None,
    pool: ModelPool | None = None,
) -> bool:
    """Compile `model` for one phase, or, when `pool` (a Workspace's) holds it compiled the same
    way before (same optimizer, learning-rate form, loss, trainable variables), put its optimizer
    back to its built state with the new learning rate, so its traced train step is reused.
    Returns True when reused; None for `pool` compiles afresh and keeps nothing. No optimizer
    (`make_optimizer` None): compiled to evaluate, its traced test step reused the same way."""
    key = (
        optimizer_name,
        rate_form(learning_rate),
        type(loss).__name__,
        getattr(loss, "from_logits", None),
        getattr(loss, "label_smoothing", None),
        str(jit_compile),
        tuple(id(v) for v in model.trainable_variables) if make_optimizer else (),
    )
    kept = pool.compiled.get(model) if pool is not None else None
    if kept is not None and kept[0] == key:
        if model.optimizer is not None:
            _restore_optimizer(model.optimizer, kept[1], learning_rate)
        model.reset_metrics()
        return True
    if kept is not None:
        del pool.compiled[model]
        release_frozen()  # the step traced for the old compile becomes garbage
    model.compile(
        optimizer=make_optimizer and make_optimizer(),
        loss=loss,
        metrics=make_metrics(),
        jit_compile=jit_compile,
    )
    if pool is not None and element_spec is not None and build_state(model, element_spec):
        pool.compiled[model] = (
            key,
            [v.numpy() for v in model.optimizer.variables] if model.optimizer else [],
        )
    return False


def wrapper(model):
    """A model of its own over `model`'s layers: it can be compiled and fit (or evaluated) for one
    purpose and kept, while `model` itself, the one saved to model.keras, stays uncompiled."""
    import keras

    return keras.Model(model.inputs, model.outputs)


def build_state(model, element_spec) -> bool:
    """Create the optimizer, metric and loss variables now, outside the traced step, from the shapes
    of a batch (a tf.data element_spec), so the step is traced once, not twice. False if it could
    not."""
    try:
        # what Keras runs under a distribution strategy
        model._symbolic_build(data_batch=element_spec)
    except Exception as exc:  # a Keras without it, or a model it cannot build: Keras' own way
        log.debug("state not built before tracing: %s", exc)
        return False
    return model.optimizer is None or bool(model.optimizer.built)


def learning_rate(name: str, initial: float, decay_steps: int, final_fraction: float):
    """The phase's learning rate: a float, or a cosine decay whose start and length are variables,
    so a kept compiled step (which bakes in constants) serves every rate and schedule length."""
    if name != "cosine":
        return initial
    return _cosine_class()(float(initial), max(1, int(decay_steps)), float(final_fraction))


@functools.cache  # defined on first use (Keras is imported lazily), then a constant
def _cosine_class():
    import keras

    class VariableCosineDecay(keras.optimizers.schedules.CosineDecay):
        """keras' CosineDecay with its start and length in variables (same arithmetic, float32)."""

        def __init__(self, initial, steps, alpha):
            super().__init__(initial_learning_rate=initial, decay_steps=steps, alpha=alpha)
            self.initial_learning_rate = keras.Variable(
                initial, dtype="float32", trainable=False, name="lr_start"
            )
            self.decay_steps = keras.Variable(
                float(steps), dtype="float32", trainable=False, name="lr_steps"
            )

        def get_config(self):
            return {
                **super().get_config(),
                "initial_learning_rate": float(self.initial_learning_rate.numpy()),
                "decay_steps": int(self.decay_steps.numpy()),
            }

    return VariableCosineDecay


def rate_form(learning_rate) -> Hashable:
    """What a traced step bakes in of the learning rate: nothing for a float (a variable) or a
    VariableCosineDecay (its start and length are variables); a schedule's whole config
    otherwise."""
    if learning_rate is None or isinstance(learning_rate, (int, float)):
        return "constant"
    config = learning_rate.get_config()
    if type(learning_rate).__name__ == "VariableCosineDecay":
        return (
            "cosine",
            config.get("alpha"),
            config.get("warmup_target"),
            config.get("warmup_steps"),
        )
    return (type(learning_rate).__name__, repr(sorted(config.items())))


def _restore_optimizer(opt, built_state, learning_rate) -> None:
    """The state the optimizer had right after building (zero slots and step count, a
    mixed-precision loss scale at its initial value), then this phase's learning rate."""
    for v, value in zip(opt.variables, built_state):
        v.assign(value)
    if isinstance(learning_rate, (int, float)):
        opt.learning_rate = float(learning_rate)
        return
    kept = getattr(opt, "inner_optimizer", opt)._learning_rate  # the VariableCosineDecay traced in
    kept.initial_learning_rate.assign(float(learning_rate.initial_learning_rate.numpy()))
    kept.decay_steps.assign(float(learning_rate.decay_steps.numpy()))
