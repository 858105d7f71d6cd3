"""The data sources that are not a folder: synthetic shapes (tests, smoke runs) and TensorFlow
Datasets' cats_vs_dogs."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from thaw.data import photos
from thaw.data.splits import Dataset, Split
from thaw.errors import DataError, first_line

log = logging.getLogger("thaw.data")


SHAPES = ("circle", "square", "triangle", "cross")


def draw_shape(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bg = rng.uniform(0, 120, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    img += rng.normal(0, 12, img.shape)
    r = rng.uniform(0.18, 0.32)
    cy, cx = rng.uniform(r, 1 - r, 2)
    dy, dx = yy - cy, xx - cx
    shape = SHAPES[label]
    if shape == "circle":
        mask = dy**2 + dx**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif shape == "triangle":
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    else:
        w = r * 0.3
        mask = ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    img[mask] = rng.uniform(130, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _synth_split(n: int, classes: int, size: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % classes
    rng.shuffle(labels)
    images = (
        np.stack([draw_shape(rng, int(lab), size) for lab in labels])
        if n
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return Split(images, labels)


def load_synthetic(cfg, image_size: int, seed: int) -> Dataset:
    """Coloured shapes on noisy backgrounds: a learnable task with no download."""
    k = cfg.num_classes or 2
    train = _synth_split(cfg.num_train, k, image_size, seed)
    val = _synth_split(cfg.num_val, k, image_size, seed + 1)
    test = _synth_split(cfg.num_test, k, image_size, seed + 2) if cfg.num_test else None
    return Dataset(list(SHAPES[:k]), train, val, test)


# ---------------------------------------------------------------- TensorFlow Datasets


def load_tfds(cfg, image_size: int) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "data=cats_vs_dogs needs tensorflow-datasets (pip install -e '.[tfds]'); "
            "offline, use data=folder data.path=/path/to/images"
        ) from None

    def take(split_name):
        return _tfds_split(tfds, cfg, image_size, split_name)

    train, info = take(cfg.tfds_train_split)
    val, _ = take(cfg.tfds_val_split)
    test = take(cfg.tfds_test_split)[0] if cfg.tfds_test_split and cfg.test_fraction > 0 else None
    return Dataset(list(info.features["label"].names), train, val, test)


def _tfds_split(tfds, cfg, image_size: int, split_name: str) -> tuple[Split, Any]:
    """(one split resized to image_size and decoded into memory, the data set's info)."""
    import tensorflow as tf

    try:
        ds, info = tfds.load(
            cfg.tfds_name,
            split=split_name,
            as_supervised=True,
            with_info=True,
            data_dir=cfg.tfds_data_dir,
        )
    except Exception as exc:  # download or preparation failure
        first = first_line(exc, 160)
        raise DataError(
            f"data.tfds_name={cfg.tfds_name}: could not load split {split_name} ({first}); "
            "offline, use data=folder data.path=/path/to/images"
        ) from None
    ds = ds.map(
        lambda x, y: (photos.resize_to_square(x, image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if cfg.max_per_class:
        ds = ds.take(cfg.max_per_class * info.features["label"].num_classes)
    imgs, labels = [], []
    for x, y in ds.batch(256):
        imgs.append(x.numpy())
        labels.append(y.numpy())
    return Split(np.concatenate(imgs), np.concatenate(labels).astype(np.int32)), info
