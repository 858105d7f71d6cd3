"""The frozen prefix run once over images (or augmented views of them): its outputs at the
pooling layer and at block boundaries, streamed into the feature cache's sinks."""

from __future__ import annotations

import logging
import math
import weakref

import numpy as np

from thaw import data as data_mod
from thaw.data import budget
from thaw.data.diskarray import DiskArray

log = logging.getLogger("thaw.train.features")


def boundary_tensor(base, trainable_layers: set):
    """The single tensor the trainable top consumes from the frozen prefix, or None if not
    single."""
    produced_outside = {}
    for layer in base.layers:
        if layer.name not in trainable_layers:
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for t in inputs:
            op = t._keras_history[0]
            if op.name not in trainable_layers:
                produced_outside[id(t)] = t
    if len(produced_outside) != 1:
        return None
    return next(iter(produced_outside.values()))


def _forward(model, kept: weakref.WeakKeyDictionary):
    """One traced function per prefix model, shared by every call (training views, validation) and
    kept in `kept` (the Workspace's ModelPool.forward): eager per-batch calls of a functional model
    spend most of their time dispatching ops on a CPU, and a new trace per call costs seconds."""
    import keras
    import tensorflow as tf

    if model not in kept:
        ref = weakref.ref(model)  # a value holding its key would keep every prefix model alive
        kept[model] = tf.function(
            lambda b: keras.tree.flatten(ref()(b, training=False)), reduce_retracing=True
        )
    return kept[model]


def _run(model, batches, workspace, sinks=()) -> list:
    """Each output over all batches: an array in memory, or, where sinks[j] is a writer, a DiskArray
    written batch by batch (never held whole)."""
    import tensorflow as tf

    forward = _forward(model, workspace.models.forward)
    outs: list = []
    try:
        for b in batches.prefetch(tf.data.AUTOTUNE):
            got = forward(b)
            if not outs:
                outs = [[] for _ in got]
            for j, t in enumerate(got):
                sink = sinks[j] if j < len(sinks) else None
                (sink.append if sink is not None else outs[j].append)(t.numpy())
    except BaseException:
        for sink in sinks:
            if sink is not None:
                sink.abort()
        raise
    return [
        sinks[j].close() if j < len(sinks) and sinks[j] is not None else np.concatenate(o)
        for j, o in enumerate(outs)
    ]


def predict(model, x, batch_size: int, workspace, sinks=()) -> list:
    """Each output of the frozen prefix over all images (in memory, or streamed from disk)."""
    return _run(model, data_mod.in_order(x, batch_size, workspace.data), workspace, sinks)


def predict_views(model, x, table, batch_size: int, workspace, sinks=()) -> list:
    """Each output of the frozen prefix over V augmented views of all images, as (V, n, ...) arrays;
    `table` holds one augmentation draw per view and image, (V, n, augment.NUM_PARAMS)."""
    import tensorflow as tf

    from thaw.data import augment

    views, n = int(table.shape[0]), len(x)
    take = data_mod.rows(x, workspace.data)

    def batch(k):  # rows k = view * n + image
        params = tf.gather_nd(table, tf.stack([k // n, k % n], axis=1))
        return augment.apply(take(k % n), params)

    ds = (
        tf.data.Dataset.range(views * n)
        .batch(batch_size)
        .map(batch, num_parallel_calls=tf.data.AUTOTUNE)
    )
    outs = _run(
        model, ds, workspace, sinks
    )  # a writer's output has its final (V, n, ...) shape already
    return [
        o if j < len(sinks) and sinks[j] is not None else o.reshape((views, n) + o.shape[1:])
        for j, o in enumerate(outs)
    ]


def view_table(aug, n: int, seed: int, views: int):
    """(V, n, augment.NUM_PARAMS): the draw of each view of each image, one table for the views
    cached through the prefix and the views augmented as they are fed, so both train alike."""
    import tensorflow as tf

    from thaw.data import augment

    return tf.stack([augment.draw(aug, n, seed, v) for v in range(views)])


def activation_bytes(tensor, n_images: int) -> int:
    return int(math.prod(int(d) for d in tensor.shape[1:])) * 4 * n_images


def activation_shape(tensor, n_images: int) -> tuple:
    return (n_images,) + tuple(int(d) for d in tensor.shape[1:])


def stored_where(arr) -> str:
    return (
        f"; on disk, {arr.nbytes / budget.MB:.0f} MB read per batch"
        if isinstance(arr, DiskArray)
        else ""
    )
