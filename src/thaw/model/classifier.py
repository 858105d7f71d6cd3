"""Assemble input -> preprocess_input -> base -> head as one Keras model.

Augmentation is not part of the model: it is applied to training batches (thaw.data.augment), so the
frozen layers can be cached per augmented view and model.keras is clean for inference."""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

from thaw.model.backbones import build_base, get_spec, preprocessing_layer
from thaw.model.heads import build_head
from thaw.model.pool import ModelPool

log = logging.getLogger("thaw.train")


def base_training_flag(cfg_backbone):
    """What `training` the base is called with.

    A pretrained base runs BatchNorm in inference mode in both phases (training=False), as the
    Keras transfer-learning guide requires: updating its statistics on a small new data set wrecks
    the features. The flag alone does not hold during fit (Keras passes fit's training=True down
    to a nested model's layers), so fine-tuning also keeps such a base's BatchNorm layers frozen
    (model.unfreeze.apply). A random-init base has no statistics worth keeping, so its BatchNorm
    trains normally (training=None follows fit/predict), or it stays at chance.
    """
    mode = cfg_backbone.batchnorm
    if mode == "inference":
        return False
    if mode == "train":
        return None
    return None if cfg_backbone.weights is None else False


class Classifier(NamedTuple):
    model: Any  # image (raw RGB 0..255) -> logits / probabilities
    base: Any  # the convolutional base (a nested keras.Model), frozen and unfrozen by blocks
    base_output: Any  # the base's output tensor in the model's graph (the head's input)
    spec: Any  # thaw.model.backbones.BackboneSpec: block names, preprocessing
    fits: Any = (
        None  # thaw.model.compiled.FitModels: the models phases fit, kept with the classifier
    )


def build_classifier(cfg, num_classes: int, pool: ModelPool | None = None) -> Classifier:
    """The classifier for this run: built, or the one `pool` (a Workspace's) kept from an earlier
    run, with every variable (base, head, dropout seed state), BatchNorm momenta and the RNG state
    after building put back, so the run computes exactly what it would in a fresh process. Base and
    classifier are kept (instead of rebuilding the graph and re-reading the weights file); a reused
    classifier keeps its compiled fit models (thaw.model.compiled)."""
    pool = pool if pool is not None else ModelPool()
    weights = cfg.backbone.weights
    if weights is not None and weights != "imagenet":
        weights = str(weights)
    spec = get_spec(cfg.backbone.name)
    key = _classifier_key(spec, cfg, weights, num_classes)
    hit = pool.get("classifiers", key)
    if hit is not None:
        clf, initial = hit
        _restore(clf.model.variables, clf.base, initial)
        log.info(
            "model: reusing this process's %s classifier (initial weights restored in memory)",
            spec.name,
        )
        clf.fits.bound(_kept_fit_models(cfg))
        return clf
    clf = _build(spec, cfg, weights, num_classes, pool)
    pool.keep("classifiers", key, clf, _snapshot(clf.model.variables, clf.base))
    return clf


def _classifier_key(spec, cfg, weights, num_classes: int) -> tuple:
    from omegaconf import OmegaConf

    head = (
        OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True)
        if OmegaConf.is_config(cfg.head)
        else dict(cfg.head)
    )
    return (
        _base_key(spec, cfg, int(cfg.backbone.image_size), weights),
        repr(sorted(head.items())),
        int(num_classes),
        base_training_flag(cfg.backbone),
        cfg.backbone.get("batchnorm_momentum"),
    )


def _build(spec, cfg, weights, num_classes: int, pool: ModelPool) -> Classifier:
    import keras

    from thaw.model.compiled import FIT_MODELS_SIZE, FitModels

    size = cfg.backbone.image_size
    base = _base(spec, cfg, size, weights, pool)
    set_batchnorm_momentum(base, cfg.backbone.get("batchnorm_momentum"))
    inputs = keras.Input((size, size, 3), name="image")  # raw RGB pixels, 0..255
    x = inputs
    x = preprocessing_layer(spec)(x)
    features = base(x, training=base_training_flag(cfg.backbone))
    outputs = build_head(features, cfg.head, num_classes)
    model = keras.Model(inputs, outputs, name=f"thaw_{spec.name}")
    trainable = sum(1 for w in model.weights if w.trainable)  # when every layer is unfrozen
    fits = FitModels(int(FIT_MODELS_SIZE * trainable), _kept_fit_models(cfg))
    return Classifier(model, base, features, spec, fits)


def _kept_fit_models(cfg) -> int:
    from thaw.model.compiled import MAX_FIT_MODELS

    return int(cfg.trainer.get("kept_fit_models", MAX_FIT_MODELS))


def _base_key(spec, cfg, size: int, weights) -> tuple:
    import keras
    import tensorflow as tf

    stamp = None
    if weights not in (None, "imagenet") and os.path.exists(weights):
        st = os.stat(weights)
        stamp = (st.st_mtime_ns, st.st_size)
    strategy = tf.distribute.get_strategy()
    # the seed is in the key because building draws initializer seeds from Python's RNG: a reused
    # base must leave the RNG where a fresh build would, or the head would start differently
    return (
        spec.name,
        float(cfg.backbone.alpha),
        int(size),
        weights,
        stamp,
        int(cfg.trainer.seed),
        keras.mixed_precision.global_policy().name,
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )


def _base(spec, cfg, size: int, weights, pool: ModelPool):
    """The base for this run: built, or the pool's earlier one with its initial state restored
    (weights and BatchNorm statistics, trainable flags, momenta, and the RNG state after building),
    so the run computes exactly what it would in a fresh process."""
    key = _base_key(spec, cfg, size, weights)
    hit = pool.get("bases", key)
    if hit is not None:
        base, initial = hit
        _restore(base.variables, base, initial)
        log.info(
            "backbone: reusing this process's %s base (initial weights restored in memory)",
            spec.name,
        )
        return base
    base = build_base(spec, float(cfg.backbone.alpha), size, weights)
    pool.keep("bases", key, base, _snapshot(base.variables, base))
    return base


class _Initial(NamedTuple):
    """What a kept model goes back to for the next run: its variables' values, BatchNorm momenta and
    the RNG state right after building (building draws initializer seeds from Python's RNG)."""

    values: list
    momenta: list
    py_state: Any
    np_state: Any


def _snapshot(variables, base) -> _Initial:
    import random

    import numpy as np

    momenta = [
        (layer, layer.momentum) for layer in base._flatten_layers() if hasattr(layer, "momentum")
    ]
    return _Initial(
        [v.numpy() for v in variables], momenta, random.getstate(), np.random.get_state()
    )


def _restore(variables, base, initial: _Initial) -> None:
    import random

    import numpy as np

    base.trainable = True
    for v, value in zip(variables, initial.values):
        v.assign(value)
    for layer, momentum in initial.momenta:
        layer.momentum = momentum
    random.setstate(initial.py_state)
    np.random.set_state(initial.np_state)


def set_batchnorm_momentum(base, momentum) -> int:
    """Every BatchNormalization layer's moving-average momentum; returns how many were set."""
    import keras

    if momentum is None:
        return 0
    layers = [
        layer
        for layer in base._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def count_trainable(model) -> int:
    import numpy as np

    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
