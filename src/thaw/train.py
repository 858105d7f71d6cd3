"""One configuration, two phases: train the head on a frozen base, then fine-tune its top blocks.

Data flows one way: config -> data + model -> training -> metrics.json / model.keras.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from thaw import data as data_mod
from thaw import interrupt, unfreeze
from thaw.backbones import get_spec
from thaw.errors import TrainingError
from thaw.outputs import write_json_atomic

log = logging.getLogger(__name__)


class Pruned(Exception):
    """The sweeper's pruner stopped this trial; metrics so far are kept."""


@dataclass
class TrainResult:
    objective: Any  # float, or list of floats for several objectives
    metrics: Dict[str, Any]
    status: str = "complete"


@dataclass
class _RunState:
    history: List[Dict[str, Any]] = field(default_factory=list)
    phases: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)


def _optimizer(name: str, learning_rate):
    import keras

    cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
           "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[name]
    return cls(learning_rate=learning_rate)


def _learning_rate(lr_cfg, initial: float, epochs: int, steps_per_epoch: int):
    import keras

    if lr_cfg.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=initial, decay_steps=max(1, epochs * steps_per_epoch),
            alpha=lr_cfg.final_fraction)
    return initial


def _loss_and_metrics(num_classes: int):
    import keras

    if num_classes == 2:
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])
    return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def _make_callback(phase: str, epochs_before: int, total_epochs: int, n_train: int, state: _RunState,
                   write_metrics, reporter, objective_name: str, tracker, trainable: int):
    import keras

    class EpochCallback(keras.callbacks.Callback):
        """Per-epoch progress line, metrics.json after every epoch, pruning, NaN guard."""

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if interrupt.REQUESTED.is_set():  # Ctrl-C/SIGTERM: stop at a batch boundary
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            secs = time.perf_counter() - self._t0
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row = {"phase": phase, "epoch": epoch + 1,
                   **{k: float(v) for k, v in logs.items() if k != "learning_rate"},
                   "lr": lr, "seconds": secs, "images_per_sec": n_train / secs if secs > 0 else None}
            state.history.append(row)
            tracker.log_epoch({**row, "trainable_params": trainable}, step=len(state.history) - 1)
            log.info("[%s] epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  lr %.2e  "
                     "%.1fs (%.0f img/s)", phase, epoch + 1, total_epochs, logs.get("loss", math.nan),
                     logs.get("accuracy", math.nan), logs.get("val_loss", math.nan),
                     logs.get("val_accuracy", math.nan), lr, secs, row["images_per_sec"] or 0)
            write_metrics("running")
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(loss):
                self.model.stop_training = True
                state.errors["nan"] = f"loss became {loss} in {phase} epoch {epoch + 1}"
                return
            if reporter is not None and objective_name in ("val_accuracy", "val_loss"):
                value = logs.get(objective_name)
                if value is not None and reporter.report(len(state.history) - 1, float(value)):
                    self.model.stop_training = True
                    state.errors["pruned"] = (
                        f"pruned after {phase} epoch {epoch + 1} ({objective_name}={value:.4f})")

    return EpochCallback()


def _feature_cache(cfg):
    """The cache to use, or None: only valid when the frozen prefix is a fixed function of the image."""
    from thaw.errors import ConfigError
    from thaw.model import base_training_flag

    mode = cfg.trainer.cache_features
    if mode in (False, "false"):
        return None
    reasons = []
    if cfg.data.augment:
        reasons.append("data.augment=true changes the images every epoch")
    if base_training_flag(cfg.backbone) is not False:
        reasons.append("the random-init base trains BatchNorm (backbone.batchnorm=inference allows caching)")
    if reasons:
        if mode in (True, "true"):
            raise ConfigError("trainer.cache_features=true: " + "; ".join(reasons))
        log.info("feature cache off: %s", "; ".join(reasons))
        return None
    from thaw.features import FeatureCache

    return FeatureCache(int(cfg.trainer.cache_max_mb) * 2 ** 20, cfg.trainer.cache_dir)


def _shallower_boundaries(base, spec, boundary, depth: int, cache, keys, n_images: int):
    """(tensor, tag) of the single boundary tensors of fewer than `depth` top blocks, not yet
    cached, whose float32 activations for n_images fit in half the cache budget together."""
    from thaw import features

    budget = cache.max_bytes // 2 - _nbytes(boundary, n_images)
    seen = {id(boundary)}
    out = []
    for d in range(depth - 1, 0, -1):
        bt = features.boundary_tensor(base, unfreeze.top_block_layers(base, spec, d))
        if bt is None or id(bt) in seen:
            continue
        seen.add(id(bt))
        tag = f"at {bt._keras_history[0].name}"
        need = _nbytes(bt, n_images)
        if need > budget or all(k in cache for k in keys(tag)):
            continue
        budget -= need
        out.append((bt, tag))
    return out


def _nbytes(tensor, n_images: int) -> int:
    return int(math.prod(int(d) for d in tensor.shape[1:])) * 4 * n_images


def _objective_value(name: str, metrics: Dict[str, Any]) -> float:
    value = metrics.get(name)
    if value is None:
        raise TrainingError(f"trainer.objective: {name} was not measured in this run")
    return float(value)


def configure_devices(cfg_trainer):
    """Memory growth on every GPU (two workers can share a card) and, optionally, logical CPUs.
    Must run before TensorFlow initialises its devices; later calls in the same process are no-ops."""
    import tensorflow as tf

    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        if cfg_trainer.cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(cfg_trainer.cpu_devices))
    except RuntimeError as exc:  # devices already initialised (an earlier trial in this process)
        log.debug("device configuration unchanged: %s", exc)


def make_strategy(cfg_trainer):
    import tensorflow as tf

    if cfg_trainer.strategy != "mirrored":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


def train(cfg, output_dir, reporter=None, tracker=None) -> TrainResult:
    """Train one configuration; writes metrics.json (every epoch) and model.keras into output_dir."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure_devices(cfg.trainer)
    strategy = make_strategy(cfg.trainer)
    with strategy.scope():
        result = _train(cfg, output_dir, reporter, tracker, strategy)
    return result


def _train(cfg, output_dir, reporter, tracker, strategy) -> TrainResult:
    import keras
    import numpy as np

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tracker is None:
        from thaw.tracking import Tracker

        tracker = Tracker()
    t_start = time.perf_counter()
    seed = int(cfg.trainer.seed)
    keras.utils.set_random_seed(seed)
    # float32, or mixed precision on a GPU (the output layer stays float32, see heads.py)
    keras.mixed_precision.set_global_policy(cfg.trainer.precision)
    if cfg.trainer.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    size = int(cfg.backbone.image_size)
    t0 = time.perf_counter()
    ds = data_mod.load(cfg.data, size, seed)
    load_s = time.perf_counter() - t0
    log.info("data: %d train / %d validation%s images, classes %s, decoded at %d px in %.1fs%s",
             len(ds.train), len(ds.val), f" / {len(ds.test)} test" if ds.test else "",
             ds.class_names, size, load_s, f"; {len(ds.skipped)} bad file(s) skipped" if ds.skipped else "")
    if cfg.data.num_classes is not None and cfg.data.num_classes != ds.num_classes:
        from thaw.errors import ConfigError

        raise ConfigError(f"data.num_classes: set to {cfg.data.num_classes} but the data has "
                          f"{ds.num_classes} classes")
    for split_name, split in (("train", ds.train), ("validation", ds.val)):
        if len(split) == 0:
            from thaw.errors import DataError

            raise DataError(f"data: the {split_name} split is empty after skipping bad images")

    spec = get_spec(cfg.backbone.name)
    from thaw.model import build_classifier, count_trainable

    t0 = time.perf_counter()
    model, base, base_out = build_classifier(cfg, ds.num_classes)
    build_s = time.perf_counter() - t0
    bs = int(cfg.data.batch_size)
    val_ds = data_mod.to_tf(ds.val, bs, shuffle=False, seed=seed)
    steps = math.ceil(len(ds.train) / bs)
    # Fresh loss/metric objects for every compile: a metric object reused by a newly compiled model
    # keeps the state of its last pass until the model's metrics are built (stale accuracy).
    loss, _ = _loss_and_metrics(ds.num_classes)
    objectives = list(cfg.trainer.objective) if not isinstance(cfg.trainer.objective, str) else [cfg.trainer.objective]
    state = _RunState()
    metrics: Dict[str, Any] = {
        "status": "running",
        "name": cfg.name,
        "objective_name": objectives[0] if len(objectives) == 1 else objectives,
        "backbone": cfg.backbone.name, "image_size": size,
        "unfreeze": {"mode": cfg.unfreeze.name, "depth": int(cfg.unfreeze.depth)},
        "lr": {"base": float(cfg.lr.base), "finetune": float(cfg.lr.base * cfg.lr.finetune_factor),
               "schedule": cfg.lr.name},
        "classes": ds.class_names,
        "num_train": len(ds.train), "num_val": len(ds.val), "num_test": len(ds.test) if ds.test else 0,
        "skipped_files": ds.skipped, "num_skipped_files": len(ds.skipped),
        "data_seconds": load_s, "build_seconds": build_s,
        "strategy": {"name": cfg.trainer.strategy, "replicas": int(strategy.num_replicas_in_sync)},
        "history": state.history, "phases": state.phases,
    }

    def write_metrics(status: str) -> None:
        metrics["status"] = status
        metrics["wall_seconds"] = time.perf_counter() - t_start
        write_json_atomic(out / "metrics.json", {k: v for k, v in metrics.items()})

    head_epochs = int(cfg.trainer.head_epochs)
    ft_epochs = int(cfg.trainer.finetune_epochs)
    total_epochs = head_epochs + ft_epochs
    objective_name = objectives[0] if len(objectives) == 1 else ""

    cache = _feature_cache(cfg)
    metrics["feature_cache"] = cache is not None

    def phase_inputs(phase: str):
        """(model to fit, train data, val data): the full model on images, or its trainable top on
        cached activations of the frozen prefix (same layer objects, so the full model learns)."""
        if cache is None or phase_epochs[phase] == 0:
            # a fresh pipeline per phase: the same shuffle order as the cached path
            return model, data_mod.to_tf(ds.train, bs, shuffle=True, seed=seed), val_ds, "images"
        from thaw import features

        wfp = features.weights_fingerprint(cfg.backbone, seed)
        prefix = f"{spec.name}|{cfg.backbone.alpha}|{size}|{wfp}"
        for split_name, split in (("train", ds.train), ("val", ds.val)):
            if split_name not in fingerprints:  # hashing the images once per run, not per key
                fingerprints[split_name] = features.fingerprint_array(split.images)

        def keys(tag):
            return tuple(features.split_key(f"{prefix}|{tag}", n, fingerprints[n]) for n in ("train", "val"))

        trainable_names = {l.name for l in base.layers if l.trainable}
        t0 = time.perf_counter()
        extras = []
        if not trainable_names:  # only the head trains: pooled features
            pool_out = model.get_layer("head_pool").output
            feat_model = keras.Model(model.input, pool_out)
            fit_model = keras.Model(pool_out, model.output)
            tag = "pooled"
        else:
            bt = features.boundary_tensor(base, trainable_names)
            if bt is None:
                log.info("feature cache: no single boundary tensor for these blocks; training on images")
                return model, data_mod.to_tf(ds.train, bs, shuffle=True, seed=seed), val_ds, "images"
            top = keras.Model(bt, base.output)
            head = keras.Model(base_out, model.output)
            inp = keras.Input(tuple(bt.shape[1:]))
            fit_model = keras.Model(inp, head(top(inp, training=False)))
            tag = f"at {bt._keras_history[0].name}"
            if reporter is not None and not all(k in cache for k in keys(tag)):
                # A sweep trial: the same pass also stores the boundaries of shallower depths (later,
                # smaller tensors) within half the cache budget, so later trials at those depths hit.
                depth = len(state.phases["finetune"]["unfrozen_blocks"])
                extras = _shallower_boundaries(base, spec, bt, depth, cache, keys, len(ds.train) + len(ds.val))
            prefix_model = keras.Model(base.input, [bt] + [t for t, _ in extras])
            img = keras.Input((size, size, 3))
            feat_model = keras.Model(img, prefix_model(model.get_layer("preprocess")(img), training=False))
        k_train, k_val = keys(tag)
        if extras:
            cache.misses += 1
            outs_train = features.predict(feat_model, ds.train.images, max(bs, 64))
            outs_val = features.predict(feat_model, ds.val.images, max(bs, 64))
            for t, a_tr, a_va in zip([tag] + [t for _, t in extras], outs_train, outs_val):
                k_tr, k_va = keys(t)
                cache.put(k_tr, a_tr)
                cache.put(k_va, a_va)
            x_train, x_val = outs_train[0], outs_val[0]
        else:
            x_train = cache.get_or_compute(k_train, lambda: features.predict(feat_model, ds.train.images, max(bs, 64))[0])
            x_val = cache.get_or_compute(k_val, lambda: features.predict(feat_model, ds.val.images, max(bs, 64))[0])
        secs = time.perf_counter() - t0
        log.info("feature cache (%s): %d+%d activations of shape %s ready in %.1fs (hits %d, misses %d%s)",
                 tag, len(x_train), len(x_val), x_train.shape[1:], secs, cache.hits, cache.misses,
                 f"; {len(extras)} shallower boundaries stored too" if extras else "")
        state.phases.setdefault(phase, {}).update({"cache": tag, "cache_seconds": secs})
        tr = data_mod.to_tf(data_mod.Split(x_train, ds.train.labels), bs, shuffle=True, seed=seed)
        va = data_mod.to_tf(data_mod.Split(x_val, ds.val.labels), bs, shuffle=False, seed=seed)
        return fit_model, tr, va, "features"

    phase_epochs = {"head": head_epochs, "finetune": ft_epochs}
    fingerprints: Dict[str, str] = {}

    def run_phase(phase: str, lr0: float, epochs: int, first_epoch: int) -> None:
        fit_model, tr_ds, va_ds, source = phase_inputs(phase)
        fit_model.compile(optimizer=_optimizer(cfg.trainer.optimizer,
                                               _learning_rate(cfg.lr, lr0, epochs, steps)),
                          loss=loss, metrics=_loss_and_metrics(ds.num_classes)[1],
                          jit_compile=cfg.trainer.jit_compile)
        n_trainable = count_trainable(model)
        log.info("phase %s: %d epoch(s) at lr %.2e, %s trainable parameters, on %s", phase, epochs, lr0,
                 f"{n_trainable:,}", "cached activations" if source == "features" else "images")
        info = state.phases.setdefault(phase, {})
        info.update({"epochs": epochs, "learning_rate": lr0, "trainable_params": n_trainable})
        if epochs == 0:
            info["seconds"] = 0.0
            return
        cb = _make_callback(phase, first_epoch, total_epochs, len(ds.train), state, write_metrics,
                            reporter, objective_name, tracker, n_trainable)
        t0 = time.perf_counter()
        fit_model.fit(tr_ds, validation_data=va_ds, epochs=first_epoch + epochs, initial_epoch=first_epoch,
                      callbacks=[cb], verbose=0, shuffle=False)
        info["seconds"] = time.perf_counter() - t0
        interrupt.check()
        tracker.log_phase(phase, info)
        run_rows = [r for r in state.history if r["phase"] == phase]
        if run_rows:
            info["images_per_sec"] = float(np.median([r["images_per_sec"] for r in run_rows]))
        errors = state.errors
        if "nan" in errors:
            write_metrics("failed")
            raise TrainingError(errors["nan"])
        if "pruned" in errors:
            metrics["pruned_reason"] = errors["pruned"]
            write_metrics("pruned")
            raise Pruned(errors["pruned"])

    try:
        interrupt.check()
        # Phase 1: the whole base frozen, only the head learns.
        unfreeze.freeze_all(base)
        run_phase("head", float(cfg.lr.base), head_epochs, 0)
        # Phase 2: the top blocks join, at a lower learning rate so pretrained features are nudged,
        # not overwritten. The base keeps training=False (see model.base_training_flag).
        blocks = unfreeze.apply(base, spec, cfg.unfreeze.name, int(cfg.unfreeze.depth))
        state.phases.setdefault("finetune", {})["unfrozen_blocks"] = blocks
        run_phase("finetune", float(cfg.lr.base * cfg.lr.finetune_factor), ft_epochs, head_epochs)
    except KeyboardInterrupt:
        write_metrics("interrupted")
        raise
    except (Pruned, TrainingError):
        raise
    except Exception as exc:
        metrics["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        write_metrics("failed")
        raise

    last = state.history[-1]
    metrics["val_accuracy"] = last.get("val_accuracy")
    metrics["val_loss"] = last.get("val_loss")
    metrics["train_accuracy"] = last.get("accuracy")
    metrics["train_loss"] = last.get("loss")
    best = max(range(len(state.history)), key=lambda i: state.history[i].get("val_accuracy", -1))
    metrics["best_epoch"] = best + 1
    metrics["best_val_accuracy"] = state.history[best].get("val_accuracy")
    metrics["trainable_params"] = state.phases.get("finetune", {}).get("trainable_params")
    if cfg.trainer.save_model:
        _save_model(model, out, cfg.trainer.export_h5)
        metrics["model_path"] = str(out / "model.keras")
    # A sweep trial never evaluates the test split; the sweeper evaluates only its best trial, once.
    if reporter is None and ds.test is not None and len(ds.test):
        # the phases may have fit a sub-model (feature cache): compile the full model afresh
        model.compile(loss=loss, metrics=_loss_and_metrics(ds.num_classes)[1])
        test_ds = data_mod.to_tf(ds.test, bs, shuffle=False, seed=seed)
        res = model.evaluate(test_ds, verbose=0, return_dict=True)
        metrics["test_accuracy"] = float(res["accuracy"])
        metrics["test_loss"] = float(res["loss"])
        log.info("test: accuracy %.4f  loss %.4f (%d images)", metrics["test_accuracy"],
                 metrics["test_loss"], len(ds.test))
    metrics["wall_seconds"] = time.perf_counter() - t_start
    values = [_objective_value(name, metrics) for name in objectives]
    metrics["objective"] = values[0] if len(values) == 1 else values
    write_metrics("complete")
    return TrainResult(metrics["objective"], metrics)


def _save_model(model, out: Path, export_h5: bool) -> None:
    tmp = out / ".model.tmp.keras"
    model.save(tmp)
    os.replace(tmp, out / "model.keras")
    if export_h5:
        tmp = out / ".model.tmp.h5"
        model.save(tmp)
        os.replace(tmp, out / "model.h5")
