"""Compiled fit models kept across the trials of a process: a trial at a depth seen before pays no trace.

Keras traces a model's train step the first time `fit` runs after `compile()`; a new model object or a
new compile traces again. For the unfrozen top of a MobileNetV2 that costs 5-18 s on 2 CPU cores,
against about a second of compute per epoch at sweep sizes (and less on a GPU, where the trace costs
the same). Two things cut it (trainer.reuse_compiled, on by default):
- the optimizer, metric and loss state is built before the first trace. Keras defers it into the
  trace when no distribution strategy is set; the variables created there make TensorFlow trace the
  step a second time (measured: the first epoch of a depth-10 fine-tune 9.8 s -> 5.0 s);
- each classifier keeps one fit model per (cut, trainable set, optimizer), compiled once. A later
  trial zeroes its optimizer state, sets its learning rate and fits it again on its own data: the
  traced step is reused, and the trial computes exactly what a fresh process computes (tested).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

log = logging.getLogger("thaw.train")

MAX_FIT_MODELS = 8  # per classifier: the head on pooled features plus a few fine-tuning depths
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> how it was compiled


class FitModels:
    """The models a classifier's phases fit, by what they take and train (LRU, MAX_FIT_MODELS)."""

    def __init__(self):
        self._models: "OrderedDict[Hashable, Any]" = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]):
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = self._models[key] = make()
        while len(self._models) > MAX_FIT_MODELS:
            self._models.popitem(last=False)
            release_frozen()
        return model


def release_frozen() -> None:
    """A kept model was dropped: objects frozen out of garbage collection (cli._release_graphs) go back
    to it, so the dropped model's reference cycles are collected."""
    import gc

    gc.unfreeze()


def compile_for_fit(model, optimizer_name: str, make_optimizer: Callable[[], Any], learning_rate, loss,
                    make_metrics: Callable[[], list], jit_compile, element_spec=None, reuse: bool = True) -> bool:
    """Compile `model` for one phase, or, when it was compiled the same way before (same optimizer,
    learning-rate form, loss, trainable variables), reset its optimizer state and learning rate in
    place so its traced train step is reused. Returns True when reused."""
    key = (optimizer_name, _rate_form(learning_rate), type(loss).__name__, getattr(loss, "from_logits", None),
           str(jit_compile), tuple(id(v) for v in model.trainable_variables))
    if reuse and _COMPILED.get(model) == key:
        _reset_optimizer(model.optimizer, learning_rate)
        model.reset_metrics()
        return True
    _COMPILED.pop(model, None)
    model.compile(optimizer=make_optimizer(), loss=loss, metrics=make_metrics(), jit_compile=jit_compile)
    if reuse:
        if element_spec is not None:
            build_state(model, element_spec)
        _COMPILED[model] = key
    return False


def build_state(model, element_spec) -> None:
    """Create the optimizer, metric and loss variables now, outside the traced step, from the shapes of
    a batch (a tf.data element_spec), so the step is traced once, not twice."""
    try:
        model._symbolic_build(data_batch=element_spec)  # what Keras runs under a distribution strategy
    except (AttributeError, TypeError, ValueError) as exc:  # a Keras without it: the deferred build
        log.debug("state not built before tracing: %s", exc)


def _rate_form(learning_rate) -> Hashable:
    """A constant rate lives in a variable (set in place on reuse); a schedule is baked into the trace."""
    if isinstance(learning_rate, (int, float)):
        return "constant"
    return (type(learning_rate).__name__, repr(sorted(learning_rate.get_config().items())))


def _reset_optimizer(opt, learning_rate: Optional[float]) -> None:
    """The state a fresh optimizer starts from: every slot and the iteration count zero, the new rate."""
    import numpy as np

    for v in opt.variables:
        v.assign(np.zeros(v.shape, dtype=v.dtype))
    if isinstance(learning_rate, (int, float)):
        opt.learning_rate = float(learning_rate)
