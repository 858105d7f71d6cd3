"""Training-image augmentation as numbered draws, so augmented images can go through the cache.

A draw is one row of parameters per image (flip, rotation, zoom, shift, contrast), made with
stateless random ops from (seed, view): view `v` of image `i` is the same tensor in every process,
every trial and every run. That is what lets the feature cache store `V` augmented views per image
(`trainer.augment_views`) and serve them to every trial, and what makes the cached and the
on-the-fly path train on exactly the same pixels. One affine warp
(`keras.ops.image.affine_transform`) applies flip, rotation, zoom and shift together; contrast
follows. Validation and test images are never augmented.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

# columns of a draw: horizontal flip, vertical flip, angle (radians), scale, shift x, shift y,
# contrast
NUM_PARAMS = 7
# on-the-fly draws (augment_views=0) use views _FRESH + epoch, disjoint from cached ones
_FRESH = 1_000_003


def active(cfg_aug) -> bool:
    return cfg_aug is not None and (
        cfg_aug.flip != "none"
        or cfg_aug.rotation > 0
        or cfg_aug.zoom > 0
        or cfg_aug.translate > 0
        or cfg_aug.contrast > 0
    )


def resolve(cfg) -> Any | None:
    """The augmentation config a run uses, or None; `data.augment=true` is a deprecated alias."""
    aug = cfg.get("augment")
    if active(aug):
        return aug
    if cfg.data.get("augment"):
        from omegaconf import OmegaConf

        log.warning(
            "data.augment=true is deprecated: use augment=flip (or augment=standard); running "
            "with a horizontal flip + rotation 0.1 as before, now on trainer.augment_views cached "
            "views (trainer.augment_views=0: fresh draws every epoch, as before)"
        )
        return OmegaConf.create(
            {
                "name": "data.augment",
                "flip": "horizontal",
                "rotation": 0.1,
                "zoom": 0.0,
                "translate": 0.0,
                "contrast": 0.0,
            }
        )
    return None


def signature(aug) -> str:
    """What the cache key needs to know about an augmentation config."""
    return (
        f"flip={aug.flip},rot={float(aug.rotation)},zoom={float(aug.zoom)},"
        f"shift={float(aug.translate)},contrast={float(aug.contrast)}"
    )


def draw(aug, n: int, seed: int, view):
    """(n, NUM_PARAMS) float32 parameters of draw `view` for n images; stateless and
    deterministic."""
    import tensorflow as tf

    view = tf.cast(view, tf.int64)
    u = tf.random.stateless_uniform(
        [n, NUM_PARAMS], seed=tf.stack([tf.constant(int(seed), tf.int64), view])
    )
    horizontal = aug.flip in ("horizontal", "horizontal_and_vertical")
    vertical = aug.flip in ("vertical", "horizontal_and_vertical")

    def spread(col, amount):  # uniform in [-amount, amount]
        return (2.0 * u[:, col] - 1.0) * float(amount)

    cols = [
        tf.cast(u[:, 0] < 0.5, tf.float32) * float(horizontal),
        tf.cast(u[:, 1] < 0.5, tf.float32) * float(vertical),
        spread(2, aug.rotation) * 2.0 * math.pi,  # Keras RandomRotation: a fraction of a full turn
        1.0 + spread(3, aug.zoom),
        spread(4, aug.translate),
        spread(5, aug.translate),
        1.0 + spread(6, aug.contrast),
    ]
    return tf.stack(cols, axis=1)


def apply(images, params):
    """Augment a batch of float32 images (pixels 0..255) with one row of parameters per image."""
    import keras
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    fx, fy = 1.0 - 2.0 * params[:, 0], 1.0 - 2.0 * params[:, 1]
    cos, sin, scale = tf.cos(params[:, 2]), tf.sin(params[:, 2]), params[:, 3]
    tx, ty = params[:, 4] * w, params[:, 5] * h
    # output pixel o comes from input c + F R(-angle) (o - c - t) / scale  (F: the flips)
    m00, m01 = fx * cos / scale, fx * sin / scale
    m10, m11 = -fy * sin / scale, fy * cos / scale
    a2 = cx - (m00 * (cx + tx) + m01 * (cy + ty))
    b2 = cy - (m10 * (cx + tx) + m11 * (cy + ty))
    zeros = tf.zeros_like(m00)
    transform = tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)
    out = keras.ops.image.affine_transform(
        images, transform, interpolation="bilinear", fill_mode="reflect"
    )
    mean = tf.reduce_mean(out, axis=[1, 2], keepdims=True)
    out = (out - mean) * params[:, 6][:, None, None, None] + mean
    return tf.clip_by_value(out, 0.0, 255.0)


def view_offsets(n: int, views: int, seed: int):
    """Per-image offset: epoch e uses view (e + offset) % views, so no image repeats a view before
    it has used all of them, and images do not move through the views in lockstep."""
    import tensorflow as tf

    return tf.random.stateless_uniform(
        [n], seed=[int(seed), 7919], minval=0, maxval=max(1, views), dtype=tf.int64
    )


def epoch_views(offsets, epoch, views: int):
    import tensorflow as tf

    if views <= 0:  # on the fly: a fresh draw every epoch
        return tf.fill(tf.shape(offsets), tf.cast(epoch, tf.int64) + _FRESH)
    return (tf.cast(epoch, tf.int64) + offsets) % views
