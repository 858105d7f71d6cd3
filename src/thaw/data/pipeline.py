"""Decoded splits as tf.data pipelines: batches drawn by index from arrays in memory or on disk,
each epoch's order a function of (seed, epoch) so a resumed run sees the same batches."""

from __future__ import annotations

import logging

import numpy as np

from thaw.data.diskarray import DiskArray
from thaw.data.splits import Split
from thaw.data.state import DataState

log = logging.getLogger("thaw.data")


def rows(array, state: DataState | None = None):
    """idx -> array[idx] as a tensor, for tf.data: a gather from the array's one tf.constant when it
    is in memory (what data.max_memory_mb counts twice; kept by `state`, a Workspace's, for every
    pipeline over the array), a pread per row (tf.numpy_function) for a DiskArray; only its batch
    is copied into TensorFlow."""
    import tensorflow as tf

    if not isinstance(array, DiskArray):
        const = state.constant(array) if state is not None else tf.constant(array)
        return lambda idx: tf.gather(const, idx)
    dtype, row_shape = tf.as_dtype(array.dtype), tuple(array.shape[1:])

    def take(idx):
        out = tf.numpy_function(lambda i: array[i], [idx], dtype, stateful=False)
        out.set_shape((None,) + row_shape)
        return out

    return take


def in_order(array, batch_size: int, state: DataState | None = None):
    """Batches of an array (memory or disk) in order, float32."""
    import tensorflow as tf

    take = rows(array, state)
    return (
        tf.data.Dataset.range(len(array))
        .batch(batch_size)
        .map(lambda idx: tf.cast(take(idx), tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
    )


def to_tf(split: Split, batch_size: int, shuffle: bool, seed: int, state: DataState | None = None):
    """A batched, prefetched tf.data pipeline over the split (float32 pixels 0..255)."""
    import tensorflow as tf

    order = tf.data.Dataset.range(len(split))
    if shuffle:
        order = order.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    take, labels = rows(split.images, state), tf.constant(split.labels)
    ds = order.batch(batch_size).map(
        lambda idx: (tf.cast(take(idx), tf.float32), tf.gather(labels, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def train_epochs(
    split: Split,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    state: DataState | None = None,
):
    """Training batches for epochs first_epoch.. (float32 inputs): epoch e's order is drawn from
    (seed, e) alone, so a run resumed at epoch e sees the batches an uninterrupted run saw."""
    import tensorflow as tf

    take, y = rows(split.images, state), tf.constant(split.labels)
    return epoch_batches(
        len(split),
        batch_size,
        seed,
        first_epoch,
        epochs,
        lambda idx, _: (tf.cast(take(idx), tf.float32), tf.gather(y, idx)),
    )


def epoch_batches(n: int, batch_size: int, seed: int, first_epoch: int, epochs: int, batch_fn):
    """Several epochs as one tf.data pipeline: epoch e is a permutation of range(n) drawn from
    (seed, e), batched, each batch made by batch_fn(indices, e) -> (x, y). Fit it with
    steps_per_epoch=ceil(n / batch_size) (Keras then keeps one iterator across epochs), so a batch
    knows its epoch: the view rotation of augmented training needs it."""
    import tensorflow as tf

    # the orders are drawn up front (NumPy, from (seed, e)); tf.data only slices them, so the
    # pipeline's functions are trivial to trace and batch_fn is traced once, at the top level
    first = int(first_epoch)
    orders = (
        np.stack(
            [
                np.random.default_rng([int(seed), e]).permutation(n)
                for e in range(first, first + epochs)
            ]
        )
        if epochs > 0
        else np.zeros((0, n), np.int64)
    )
    ds = tf.data.Dataset.from_tensor_slices(
        (orders, np.arange(first, first + epochs, dtype=np.int64))
    )
    ds = ds.flat_map(
        lambda order, e: (
            tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(lambda idx: (idx, e))
        )
    )
    ds = ds.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
