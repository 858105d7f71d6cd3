"""One configuration, two phases: train the head on a frozen base, then fine-tune its top blocks.

`_train` is the recipe, top to bottom: prepare (data, model, run record), freeze the base and train
the head, unfreeze the top blocks and fine-tune, save, evaluate the test split once. What each phase
fits (images, or cached activations of the frozen layers) comes from `phase_inputs.PhaseInputs`;
what is recorded goes through `record.RunRecord` (metrics.json, rewritten every epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thaw import data as data_mod
from thaw.errors import ConfigError, DataError, TrainingError
from thaw.model import unfreeze
from thaw.model.classifier import base_training_flag
from thaw.runtime import interrupt
from thaw.train import checkpoint
from thaw.train.compile_step import compile_phase, loss_and_metrics
from thaw.train.devices import configure_devices, make_strategy, seed_and_precision
from thaw.train.phases import Phase, Pruned, Run, TrainResult, finetune_phase, head_phase
from thaw.train.record import RunRecord, objective_names
from thaw.train.resume import checkpointer, resume_run
from thaw.train.workspace import Workspace

log = logging.getLogger("thaw.train")


def train(
    cfg, output_dir, reporter=None, tracker=None, workspace: Workspace | None = None
) -> TrainResult:
    """Train one configuration; writes metrics.json (every epoch) and model.keras into output_dir.
    `tracker` may be a Tracker or a function that starts one, called once data and model are
    ready. `workspace` is what the process keeps between runs (None: a fresh one, nothing
    reused)."""
    workspace = workspace if workspace is not None else Workspace()
    workspace.import_tensorflow()
    configure_devices(cfg.trainer)
    strategy = make_strategy(cfg.trainer, workspace.devices)
    with strategy.scope():
        replicas = int(strategy.num_replicas_in_sync)
        run = _prepare(cfg, Path(output_dir), reporter, tracker, replicas, workspace)
        run.record.update(import_seconds=workspace.claim_import_seconds())
        return _train(run, Path(output_dir))


def _train(run: Run, out: Path) -> TrainResult:
    cfg, reporter = run.cfg, run.reporter
    base, spec = run.clf.base, run.clf.spec
    with _recorded(run.record):
        resume = resume_run(run, out)  # a killed earlier attempt's last epoch, or None
        interrupt.check()
        # Phase 1: the whole base frozen, only the head learns.
        unfreeze.freeze_all(base)
        fit_phase(run, head_phase(cfg), resume)
        # Phase 2: the top blocks join, at a lower learning rate so pretrained features are nudged,
        # not overwritten. A pretrained base's BatchNorm layers stay frozen: inference mode, their
        # ImageNet statistics kept (see model.base_training_flag).
        blocks = unfreeze.apply(
            base,
            spec,
            cfg.unfreeze.name,
            int(cfg.unfreeze.depth),
            frozen_batchnorm=base_training_flag(cfg.backbone) is False,
        )
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


def _prepare(cfg, out: Path, reporter, tracker, replicas: int, workspace: Workspace) -> Run:
    """Seeds, data, model, run record and phase inputs: everything the phases share."""
    from thaw.data import augment
    from thaw.model.classifier import build_classifier
    from thaw.runtime.tracking import Tracker
    from thaw.train.callbacks import BestWeights
    from thaw.train.phase_inputs import PhaseInputs

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seed_and_precision(cfg.trainer, workspace.devices)
    ds, load_s = _timed(load_data, cfg, workspace)
    if reporter is not None:  # the pruner's tolerance is the validation split's standard error
        reporter.describe(num_val=len(ds.val))
    clf, build_s = _timed(build_classifier, cfg, ds.num_classes, workspace.models)
    record = RunRecord.for_run(
        out / "metrics.json", cfg, ds, replicas, data_seconds=load_s, build_seconds=build_s
    )
    record.started = started
    aug = augment.resolve(cfg)
    inputs = PhaseInputs(cfg, clf, ds, reporter is not None, workspace, aug)
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
    loss, _ = loss_and_metrics(ds.num_classes, float(cfg.trainer.get("label_smoothing", 0.0)))
    steps = math.ceil(len(ds.train) / int(cfg.data.batch_size))
    if callable(tracker):  # a factory: start tracking now that the data and model are ready
        tracker = tracker()
    tracker = tracker or Tracker()
    return Run(cfg, ds, clf, inputs, record, tracker, reporter, loss, steps, best, workspace)


def fit_phase(run: Run, phase: Phase, resume=None) -> None:
    """Compile and fit one phase; raises TrainingError on a NaN loss, Pruned when the pruner stops
    it. With `resume` (a checkpoint), a phase behind it is skipped and the one it stopped in
    continues."""
    from thaw.train.callbacks import EpochCallback

    position = resume.position(phase.name) if resume is not None else "fresh"
    if position == "skip":
        log.info("phase %s: already done (checkpoint)", phase.name)
        return
    if position == "continue":
        phase = dataclasses.replace(phase, done=resume.done)
    data = run.inputs.for_phase(phase)
    info = run.record.phase(phase.name)
    _note_inputs(info, data)
    if phase.epochs > 0:
        compile_phase(run, data, phase)
    if position == "continue":
        _resume_optimizer(data.model, resume)
    n_trainable = _describe_phase(run, phase, data, info)
    if phase.epochs == 0:
        info["seconds"] = 0.0
        return
    callback = EpochCallback(
        phase,
        run,
        n_trainable,
        state=resume.callback if position == "continue" else None,
        checkpoint=checkpointer(run, phase.name, data.model.optimizer),
    )
    _fit(data, phase, callback, info)
    interrupt.check()
    _restore_best(run, info, callback)
    if callback.stop_reason not in ("nan", "pruned"):
        callback.save_checkpoint(ended=True)
    run.tracker.log_phase(phase.name, info)
    _record_throughput(run.record, phase.name)
    _raise_if_stopped(run.record, callback)


def _note_inputs(info: dict[str, Any], data) -> None:
    """What the phase fits on, in its record: the feature cache and augmented views it used."""
    if data.cache_tag is not None:
        info.update(cache=data.cache_tag, cache_seconds=data.cache_seconds)
    if data.views:
        info["augment_views"] = data.views
        if data.source == "features":
            info["views_computed"] = data.cache_misses > 0  # false: the views came from the cache


def _resume_optimizer(model, resume) -> None:
    """A continued phase gets its optimizer's moments back from the checkpoint."""
    if not model.optimizer.built:  # a LossScaleOptimizer built twice adds variables
        model.optimizer.build(model.trainable_variables)
    try:
        checkpoint.assign(model.optimizer.variables, resume.optimizer, "optimizer")
    except ValueError as exc:  # weights resumed; the optimizer's moments start again
        log.warning("checkpoint: %s; this phase continues with a fresh optimizer state", exc)


def _describe_phase(run: Run, phase: Phase, data, info: dict[str, Any]) -> int:
    """Log and record what the phase trains, and on what; the number of trainable parameters."""
    from thaw.model.classifier import count_trainable

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
    return n_trainable


def _fit(data, phase: Phase, callback, info: dict[str, Any]) -> None:
    """The phase's epochs still to run (none when a resumed phase had already stopped), timed."""
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
        ds.test,
        int(run.cfg.data.batch_size),
        shuffle=False,
        seed=int(run.cfg.trainer.seed),
        state=run.workspace.data,
    )
    reused = compile_for_fit(
        model,
        None,
        None,
        None,
        run.loss,
        lambda: loss_and_metrics(ds.num_classes)[1],
        run.cfg.trainer.jit_compile,
        test.element_spec,
        pool=run.kept_compiled,
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


def load_data(cfg, workspace: Workspace):
    """Decoded splits, checked against the config; logs what was loaded."""
    size = int(cfg.backbone.image_size)
    t0 = time.perf_counter()
    ds = data_mod.load(cfg.data, size, int(cfg.trainer.seed), cfg.trainer.cache_dir, workspace.data)
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
        ds = data_mod.with_val_in_train(ds, workspace.data.limits.disk)
        log.warning(
            "data.train_on_val: training on train + validation (%d images); validation metrics are "
            "optimistic from here, the test split%s stays held out",
            len(ds.train),
            "" if ds.test else " (none here)",
        )
    return ds


def _timed(fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


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
    """model.keras (and model.h5), replaced atomically and on disk before the rename: neither a
    crash nor a power loss leaves half a model (the checkpoint is deleted once it is saved)."""
    for name in ("model.keras", "model.h5") if export_h5 else ("model.keras",):
        tmp = out / f".model.tmp{Path(name).suffix}"
        model.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out / name)
