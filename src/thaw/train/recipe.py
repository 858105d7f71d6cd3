"""One configuration, two phases: train the head on a frozen base, then fine-tune its top blocks.

`_train` is the recipe, top to bottom: prepare (data, model, run record), freeze the base and train
the head, unfreeze the top blocks and fine-tune, save, evaluate the test split once. What each phase
fits (images, or cached activations of the frozen layers) comes from `features.PhaseInputs`; what is
recorded goes through `record.RunRecord` (metrics.json, rewritten every epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thaw.data import folder as data_mod
from thaw.errors import ConfigError, DataError, TrainingError
from thaw.model import optimizers, unfreeze
from thaw.runtime import interrupt
from thaw.train import checkpoint
from thaw.train.record import RunRecord, objective_names

log = logging.getLogger("thaw.train")


class Pruned(Exception):
    """The sweeper's pruner stopped this trial; metrics so far are kept."""


@dataclass
class TrainResult:
    objective: Any  # float, or list of floats for several objectives
    metrics: dict[str, Any]
    status: str = "complete"


@dataclass(frozen=True)
class Phase:
    """One phase of the recipe: which blocks of the base train, for how many epochs, how fast."""

    name: str  # "head" or "finetune"
    epochs: int
    learning_rate: float
    first_epoch: int  # epochs trained before this phase (Keras' initial_epoch)
    total_epochs: int  # both phases together (for the progress line)
    blocks: tuple[str, ...] = ()  # blocks of the base that train; none in the head phase
    done: int = 0  # epochs of this phase already trained (a resumed run)

    @property
    def start(self) -> int:
        """Keras' initial_epoch: the first epoch this process trains."""
        return self.first_epoch + self.done

    @property
    def remaining(self) -> int:
        return self.epochs - self.done


def head_phase(cfg) -> Phase:
    t = cfg.trainer
    return Phase(
        "head",
        int(t.head_epochs),
        float(cfg.lr.base),
        0,
        int(t.head_epochs) + int(t.finetune_epochs),
    )


def finetune_phase(cfg, blocks) -> Phase:
    t = cfg.trainer
    return Phase(
        "finetune",
        int(t.finetune_epochs),
        float(cfg.lr.base * cfg.lr.finetune_factor),
        int(t.head_epochs),
        int(t.head_epochs) + int(t.finetune_epochs),
        tuple(blocks),
    )


@dataclass
class Run:
    """What the phases of one run share: built once by `_prepare`, read by `fit_phase`."""

    cfg: Any
    ds: Any  # data.Dataset: decoded splits
    clf: Any  # model.Classifier: model, base, spec
    inputs: Any  # features.PhaseInputs
    record: RunRecord
    tracker: Any
    reporter: Any  # the sweep trial (report -> prune?), or None
    loss: Any
    steps_per_epoch: int
    best: Any  # callbacks.BestWeights: the best validation epoch so far and its weights

    @property
    def num_train(self) -> int:
        return len(self.ds.train)

    @property
    def objective_name(self) -> str:
        names = objective_names(self.cfg)
        return names[0] if len(names) == 1 else ""


def _learning_rate(lr_cfg, initial: float, epochs: int, steps_per_epoch: int):
    from thaw.model.compiled import learning_rate

    return learning_rate(
        lr_cfg.name, initial, epochs * steps_per_epoch, lr_cfg.get("final_fraction", 0.0)
    )


def _loss_and_metrics(num_classes: int, label_smoothing: float = 0.0):
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


def configure_devices(cfg_trainer):
    """Memory growth on every GPU (two workers can share a card) and, optionally, logical CPUs.
    Must run before TensorFlow initialises its devices; later calls in the same process are
    no-ops."""
    import tensorflow as tf

    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        if cfg_trainer.cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(cfg_trainer.cpu_devices)
            )
    except RuntimeError as exc:  # devices already initialised (an earlier trial in this process)
        log.debug("device configuration unchanged: %s", exc)


_STRATEGIES: dict[tuple, Any] = {}


def make_strategy(cfg_trainer):
    """One MirroredStrategy per device set and process: models kept for later trials
    (thaw.model.compiled)
    belong to the strategy they were built under, and TensorFlow refuses to mix two."""
    import tensorflow as tf

    if cfg_trainer.strategy != "mirrored":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
    if devices not in _STRATEGIES:
        _STRATEGIES[devices] = tf.distribute.MirroredStrategy(devices=list(devices))
    return _STRATEGIES[devices]


def train(cfg, output_dir, reporter=None, tracker=None) -> TrainResult:
    """Train one configuration; writes metrics.json (every epoch) and model.keras into output_dir.
    `tracker` may be a Tracker or a function that starts one, called once data and model are
    ready."""
    from thaw.runtime.tf_startup import claim_import_seconds, import_tensorflow

    import_tensorflow()
    configure_devices(cfg.trainer)
    strategy = make_strategy(cfg.trainer)
    with strategy.scope():
        return _train(
            cfg,
            Path(output_dir),
            reporter,
            tracker,
            int(strategy.num_replicas_in_sync),
            claim_import_seconds(),
        )


def _train(
    cfg, out: Path, reporter, tracker, replicas: int, import_seconds: float = 0.0
) -> TrainResult:
    run = _prepare(cfg, out, reporter, tracker, replicas)
    run.record.update(import_seconds=import_seconds)
    base, spec = run.clf.base, run.clf.spec
    with _recorded(run.record):
        resume = _resume(run, out)  # a killed earlier attempt's last epoch, or None
        interrupt.check()
        # Phase 1: the whole base frozen, only the head learns.
        unfreeze.freeze_all(base)
        fit_phase(run, head_phase(cfg), resume)
        # Phase 2: the top blocks join, at a lower learning rate so pretrained features are nudged,
        # not overwritten. The base keeps training=False (see model.base_training_flag).
        blocks = unfreeze.apply(base, spec, cfg.unfreeze.name, int(cfg.unfreeze.depth))
        run.record.phase("finetune")["unfrozen_blocks"] = blocks
        fit_phase(run, finetune_phase(cfg, blocks), resume)
        run.record.summarize(run.best.monitor, restore_best=bool(cfg.trainer.restore_best))
        if cfg.trainer.save_model:
            _, save_s = _timed(save_model, run.clf.model, out, cfg.trainer.export_h5)
            run.record.update(model_path=str(out / "model.keras"), save_seconds=save_s)
        # A sweep trial never evaluates the test split; the sweeper evaluates only its best trial,
        # once.
        if reporter is None:
            run.record.update(test_seconds=_timed(evaluate_test_split, run)[1])
        objective = run.record.complete(objective_names(cfg))
        checkpoint.remove(out)  # the run is done: model.keras and metrics.json hold the result
    return TrainResult(objective, run.record.data)


def _prepare(cfg, out: Path, reporter, tracker, replicas: int) -> Run:
    """Seeds, data, model, run record and phase inputs: everything the phases share."""
    from thaw.data import augment
    from thaw.model.classifier import build_classifier
    from thaw.runtime.tracking import Tracker
    from thaw.train.callbacks import BestWeights
    from thaw.train.features import PhaseInputs

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _seed_and_precision(cfg.trainer)
    ds, load_s = _timed(load_data, cfg)
    if reporter is not None:  # the pruner's tolerance is the validation split's standard error
        reporter.describe(num_val=len(ds.val))
    clf, build_s = _timed(build_classifier, cfg, ds.num_classes)
    record = RunRecord.for_run(
        out / "metrics.json", cfg, ds, replicas, data_seconds=load_s, build_seconds=build_s
    )
    record.started = started
    aug = augment.resolve(cfg)
    inputs = PhaseInputs(cfg, clf, ds, sweep=reporter is not None, aug=aug)
    record.update(
        feature_cache=inputs.cached,
        augment=None
        if aug is None
        else {"config": augment.signature(aug), "views": inputs.views, "seed": inputs.view_seed},
    )
    name = objective_names(cfg)[0]
    best = BestWeights(
        name if name in ("val_accuracy", "val_loss") else "val_accuracy",
        keep_weights=bool(cfg.trainer.restore_best),
    )
    # Fresh loss/metric objects for every compile: a metric object reused by a newly compiled model
    # keeps the state of its last pass until the model's metrics are built (stale accuracy).
    loss, _ = _loss_and_metrics(ds.num_classes, float(cfg.trainer.get("label_smoothing", 0.0)))
    steps = math.ceil(len(ds.train) / int(cfg.data.batch_size))
    if callable(tracker):  # a factory: start tracking now that the data and model are ready
        tracker = tracker()
    return Run(cfg, ds, clf, inputs, record, tracker or Tracker(), reporter, loss, steps, best)


def fit_phase(run: Run, phase: Phase, resume=None) -> None:
    """Compile and fit one phase; raises TrainingError on a NaN loss, Pruned when the pruner stops
    it.
    With `resume` (a checkpoint), a phase behind it is skipped and the one it stopped in
    continues."""
    from thaw.model.classifier import count_trainable
    from thaw.train.callbacks import EpochCallback

    position = resume.position(phase.name) if resume is not None else "fresh"
    if position == "skip":
        log.info("phase %s: already done (checkpoint)", phase.name)
        return
    if position == "continue":
        phase = dataclasses.replace(phase, done=resume.done)
    data = run.inputs.for_phase(phase)
    info = run.record.phase(phase.name)
    if data.cache_tag is not None:
        info.update(cache=data.cache_tag, cache_seconds=data.cache_seconds)
    if data.views:
        info["augment_views"] = data.views
        if data.source == "features":
            info["views_computed"] = data.cache_misses > 0  # false: the views came from the cache
    if phase.epochs > 0:
        _compile(run, data, phase)
    if position == "continue":
        if not data.model.optimizer.built:  # a LossScaleOptimizer built twice adds variables
            data.model.optimizer.build(data.model.trainable_variables)
        try:
            checkpoint.assign(data.model.optimizer.variables, resume.optimizer, "optimizer")
        except ValueError as exc:  # weights resumed; the optimizer's moments start again
            log.warning("checkpoint: %s; this phase continues with a fresh optimizer state", exc)
    n_trainable = count_trainable(run.clf.model)
    log.info(
        "phase %s: %d epoch(s) at lr %.2e, %s trainable parameters, on %s",
        phase.name,
        phase.epochs,
        phase.learning_rate,
        f"{n_trainable:,}",
        "cached activations" if data.source == "features" else "images",
    )
    info.update(
        epochs=phase.epochs,
        learning_rate=phase.learning_rate,
        trainable_params=n_trainable,
        trained_on="cached activations" if data.source == "features" else "images",
    )
    if phase.epochs == 0:
        info["seconds"] = 0.0
        return
    callback = EpochCallback(
        phase,
        run,
        n_trainable,
        state=resume.callback if position == "continue" else None,
        checkpoint=_checkpointer(run, phase.name, data.model.optimizer),
    )
    t0 = time.perf_counter()
    if phase.remaining > 0 and callback.stop_reason is None:
        data.model.fit(
            data.train,
            validation_data=data.val,
            epochs=phase.first_epoch + phase.epochs,
            initial_epoch=phase.start,
            steps_per_epoch=data.steps_per_epoch,
            callbacks=[callback],
            verbose=0,
            shuffle=False,
        )
    info["seconds"] = time.perf_counter() - t0
    interrupt.check()
    _restore_best(run, info, callback)
    if callback.stop_reason not in ("nan", "pruned"):
        callback.save_checkpoint(ended=True)
    run.tracker.log_phase(phase.name, info)
    _record_throughput(run.record, phase.name)
    _raise_if_stopped(run.record, callback)


def evaluate_test_split(run: Run) -> None:
    """The held-out test split, once, on the full model (the phases may have fit a sub-model)."""
    from thaw.model.compiled import compile_for_fit, wrapper

    ds = run.ds
    if ds.test is None or not len(ds.test):
        return
    model = run.clf.fits.get(
        ("evaluate",), lambda: wrapper(run.clf.model)
    )  # model.keras stays uncompiled
    test = data_mod.to_tf(
        ds.test, int(run.cfg.data.batch_size), shuffle=False, seed=int(run.cfg.trainer.seed)
    )
    reused = compile_for_fit(
        model,
        None,
        None,
        None,
        run.loss,
        lambda: _loss_and_metrics(ds.num_classes)[1],
        run.cfg.trainer.jit_compile,
        test.element_spec,
        reuse=bool(run.cfg.trainer.reuse_compiled),
    )
    res = model.evaluate(test, verbose=0, return_dict=True)
    run.record.update(
        test_accuracy=float(res["accuracy"]),
        test_loss=float(res["loss"]),
        test_compiled="reused" if reused else "new",
    )
    log.info(
        "test: accuracy %.4f  loss %.4f (%d images)", res["accuracy"], res["loss"], len(ds.test)
    )


# ---------------------------------------------------------------- small parts of the recipe


def load_data(cfg):
    """Decoded splits, checked against the config; logs what was loaded."""
    size = int(cfg.backbone.image_size)
    t0 = time.perf_counter()
    ds = data_mod.load(cfg.data, size, int(cfg.trainer.seed), cfg.trainer.cache_dir)
    log.info(
        "data: %d train / %d validation%s images, classes %s, decoded at %d px in %.1fs%s; %s",
        len(ds.train),
        len(ds.val),
        f" / {len(ds.test)} test" if ds.test else "",
        ds.class_names,
        size,
        time.perf_counter() - t0,
        f"; {len(ds.skipped)} bad file(s) skipped" if ds.skipped else "",
        f"{data_mod.size_text(ds.nbytes)} streamed from disk ({ds.streamed_from})"
        if ds.streamed_from
        else f"{data_mod.size_text(ds.nbytes)} held in memory",
    )
    if cfg.data.num_classes is not None and cfg.data.num_classes != ds.num_classes:
        raise ConfigError(
            f"data.num_classes: set to {cfg.data.num_classes} but the data has "
            f"{ds.num_classes} classes"
        )
    for split_name, split in (("train", ds.train), ("validation", ds.val)):
        if len(split) == 0:
            raise DataError(f"data: the {split_name} split is empty after skipping bad images")
    if cfg.data.train_on_val:
        ds = data_mod.with_val_in_train(ds)
        log.warning(
            "data.train_on_val: training on train + validation (%d images); validation metrics are "
            "optimistic from here, the test split%s stays held out",
            len(ds.train),
            "" if ds.test else " (none here)",
        )
    return ds


def _resume(run: Run, out: Path):
    """Load the run dir's checkpoint (trainer.resume=auto) into the model, record, best epoch and
    the
    trial; returns it, or None to start from epoch 1."""
    if run.cfg.trainer.resume == "never":
        return None
    resume = checkpoint.load(out, run.cfg, [tuple(v.shape) for v in run.clf.model.variables])
    if resume is None:
        return None
    checkpoint.assign(run.clf.model.variables, resume.model, "model")
    run.record.history[:] = resume.history
    run.record.phases.clear()
    run.record.phases.update(resume.phases)
    run.best.value, run.best.step = resume.best["value"], resume.best["step"]
    if resume.best_weights is not None:  # the differing ones; the rest equal the restored weights
        run.best.weights = run.clf.model.get_weights()
        for i, value in resume.best_weights.items():
            run.best.weights[i] = value
    run.record.update(
        resumed=resume.resumed
        + [{"after_epoch": resume.epoch, "phase": resume.phase, "phase_ended": resume.ended}]
    )
    run.record.started -= (
        resume.seconds
    )  # wall_seconds covers every attempt (their set-up lands in "other")
    if run.reporter is not None and run.objective_name in ("val_accuracy", "val_loss"):
        for row in resume.history:  # a retried trial gets the dead trial's values once; none twice
            if row.get(run.objective_name) is not None:
                run.reporter.replay(int(row["epoch"]) - 1, float(row[run.objective_name]))
    log.info("resuming from %s: %s", out / checkpoint.NAME, checkpoint.describe(resume))
    return resume


def _checkpointer(run: Run, phase: str, optimizer):
    """What the epoch callback calls after each epoch (and at the phase's end): None when off."""
    if not run.cfg.trainer.checkpoint:
        return None
    out = run.record.path.parent

    def save(done: int, ended: bool, state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        model = run.clf.model
        variables = checkpoint.arrays(model.variables)  # read once: the weights are among them
        where = {id(v): i for i, v in enumerate(model.variables)}
        weights = [variables[where[id(w)]] for w in model.weights]
        checkpoint.save(
            out,
            run.cfg,
            checkpoint.Checkpoint(
                phase,
                done,
                ended,
                run.record.history,
                run.record.phases,
                {"value": run.best.value, "step": run.best.step},
                state,
                variables,
                checkpoint.arrays(optimizer.variables),
                run.best.weights,
                run.record.get("resumed", []),
                time.perf_counter() - run.record.started,
            ),
            weights if run.best.weights is not None else [],
        )
        run.record.update(
            checkpoint_seconds=run.record.get("checkpoint_seconds", 0.0) + time.perf_counter() - t0
        )

    return save


def _compile(run: Run, data, phase: Phase) -> None:
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
        lambda: _loss_and_metrics(run.ds.num_classes)[1],
        cfg.trainer.jit_compile,
        None if data.train is None else data.train.element_spec,
        reuse=bool(cfg.trainer.reuse_compiled),
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


def _timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


_TF_SEED: list = []  # TensorFlow's global seed as this process last set it


def _seed_and_precision(cfg_trainer) -> None:
    import keras

    seed = int(cfg_trainer.seed)
    if cfg_trainer.reuse_compiled and _TF_SEED == [seed]:
        _reseed_keeping_kernels(seed)
    else:
        keras.utils.set_random_seed(seed)
        _TF_SEED[:] = [seed]
    # float32, or mixed precision on a GPU (the output layer stays float32, see heads.py)
    keras.mixed_precision.set_global_policy(cfg_trainer.precision)
    if cfg_trainer.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _reseed_keeping_kernels(seed: int) -> None:
    """keras.utils.set_random_seed without setting TensorFlow's global seed again (it is already
    this
    seed): setting it clears TensorFlow's kernel cache, so every function of the kept compiled
    models
    (thaw.model.compiled) would be instantiated again on its next call (2-4 s a trial at depth 8 on
    2 CPU
    cores). thaw's TensorFlow random ops are stateless or take an op seed, so nothing else
    changes."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    # the rest of what set_random_seed does: Keras' global SeedGenerator restarts from the seed
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        global_state.set_global_attribute("global_random_seed", seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except (ImportError, AttributeError):  # another Keras layout: the full reseed, kernels and all
        import keras

        keras.utils.set_random_seed(seed)


@contextmanager
def _recorded(record: RunRecord):
    """Whatever ends the run early is written to metrics.json before it propagates."""
    try:
        yield
    except KeyboardInterrupt:
        record.write("interrupted")
        raise
    except (Pruned, TrainingError) as exc:
        if (
            record["status"] == "running"
        ):  # not yet recorded (e.g. an objective this run never measured)
            record.fail(exc)
        raise
    except Exception as exc:
        record.fail(exc)
        raise


def _record_throughput(record: RunRecord, phase: str) -> None:
    import numpy as np

    rows = [r["images_per_sec"] for r in record.history if r["phase"] == phase]
    if rows:
        record.phase(phase)["images_per_sec"] = float(np.median(rows))


def _restore_best(run: Run, info: dict[str, Any], callback) -> None:
    """After a phase: note an early stop, and put the best epoch's weights back (restore_best), so
    fine-tuning starts from the best head and model.keras holds the best epoch."""
    if callback.stop_reason == "patience":
        info["stopped_early"] = callback.stop_message
        log.info("%s", callback.stop_message)
    if callback.stop_reason in ("nan", "pruned") or not run.cfg.trainer.restore_best:
        return
    step = run.best.restore(run.clf.model, len(run.record.history) - 1)
    if step is not None:
        info["restored_epoch"] = run.record.epoch_number(step)
        log.info(
            "restored the weights of epoch %d (best %s %.4f)",
            info["restored_epoch"],
            run.best.monitor,
            run.best.value,
        )


def _raise_if_stopped(record: RunRecord, callback) -> None:
    if callback.stop_reason == "nan":
        error = TrainingError(callback.stop_message)
        record.fail(error)
        raise error
    if callback.stop_reason == "pruned":
        record.update(pruned_reason=callback.stop_message)
        record.write("pruned")
        checkpoint.remove(record.path.parent)  # a pruned trial is finished: nothing to resume
        raise Pruned(callback.stop_message)


def save_model(model, out: Path, export_h5: bool) -> None:
    """model.keras (and model.h5), replaced atomically: a crash never leaves half a model."""
    tmp = out / ".model.tmp.keras"
    model.save(tmp)
    os.replace(tmp, out / "model.keras")
    if export_h5:
        tmp = out / ".model.tmp.h5"
        model.save(tmp)
        os.replace(tmp, out / "model.h5")
