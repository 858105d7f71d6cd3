"""Compiling a phase's fit model: its loss and metrics, learning-rate schedule, optimizer with
per-block rates, and reusing an already compiled step."""

from __future__ import annotations

import logging

from thaw.model import optimizers, unfreeze
from thaw.train.phases import Phase, Run

log = logging.getLogger("thaw.train")


def _learning_rate(lr_cfg, initial: float, epochs: int, steps_per_epoch: int):
    from thaw.model.compiled import learning_rate

    return learning_rate(
        lr_cfg.name, initial, epochs * steps_per_epoch, lr_cfg.get("final_fraction", 0.0)
    )


def loss_and_metrics(num_classes: int, label_smoothing: float = 0.0):
    import keras

    if num_classes == 2:
        extra = {"label_smoothing": float(label_smoothing)} if label_smoothing else {}
        return (
            keras.losses.BinaryCrossentropy(from_logits=True, **extra),
            [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
        )
    loss = (
        smoothed_sparse_crossentropy(label_smoothing)
        if label_smoothing
        else keras.losses.SparseCategoricalCrossentropy()
    )
    return loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def smoothed_sparse_crossentropy(label_smoothing: float):
    """Keras' sparse cross-entropy has no label smoothing: integer labels to one-hot, then the
    categorical loss with it (the head's softmax output, as SparseCategoricalCrossentropy reads
    it)."""
    import keras

    class SmoothedSparseCrossentropy(keras.losses.Loss):
        def __init__(self, smoothing: float):
            super().__init__(name="smoothed_sparse_crossentropy")
            self.label_smoothing = smoothing

        def call(self, y_true, y_pred):
            ops = keras.ops
            labels = ops.one_hot(
                ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1]
            )
            return keras.losses.categorical_crossentropy(
                labels, y_pred, label_smoothing=self.label_smoothing
            )

    return SmoothedSparseCrossentropy(float(label_smoothing))


def compile_phase(run: Run, data, phase: Phase) -> None:
    """Compile the phase's fit model, or reuse this process's compiled one (thaw.model.compiled)."""
    from thaw.model.compiled import compile_for_fit

    cfg = run.cfg
    lr = _learning_rate(cfg.lr, phase.learning_rate, phase.epochs, run.steps_per_epoch)
    name, fused = cfg.trainer.optimizer, bool(cfg.trainer.get("fused_optimizer", True))
    decay = float(cfg.get("optimizer", {}).get("weight_decay", 0.0))
    rates = _layer_rates(run, phase)
    reused = compile_for_fit(
        data.model,
        optimizers.compiled_name(name, fused, decay, rates),
        lambda: optimizers.make(name, lr, fused, decay, rates),
        lr,
        run.loss,
        lambda: loss_and_metrics(run.ds.num_classes)[1],
        cfg.trainer.jit_compile,
        None if data.train is None else data.train.element_spec,
        pool=run.kept_compiled,
    )
    run.record.phase(phase.name)["compiled"] = "reused" if reused else "new"
    if reused:
        log.info(
            "phase %s: reusing this process's compiled step (optimizer state reset)", phase.name
        )


def _layer_rates(run: Run, phase: Phase) -> dict[str, float]:
    """lr.layer_decay as {layer name: rate multiplier} for the fine-tuning phase's blocks ({} = one
    rate)."""
    decay = float(run.cfg.lr.get("layer_decay", 1.0))
    if phase.name != "finetune" or decay == 1.0 or not phase.blocks:
        return {}
    by_block: dict[str, list] = {}
    for layer, block in unfreeze.layer_blocks(run.clf.base, run.clf.spec).items():
        by_block.setdefault(block, []).append(layer)
    rates = optimizers.block_rates(by_block, phase.blocks, decay)
    run.record.phase(phase.name)["layer_rates"] = {
        b: decay**i for i, b in enumerate(reversed(phase.blocks))
    }
    return rates
