"""Frozen-prefix activation cache: compute what the frozen layers output once, train only the rest.

With augmentation off and the base in inference mode, the frozen part of the network is a fixed
function of the image. Phase 1 then trains the head on cached pooled features; phase 2 trains the
unfrozen top blocks (+ head) on cached activations at the unfreeze boundary. The layers are the same
objects as in the full model, so the saved model.keras is the trained full model. Activations are
reused across epochs, phases and, keyed by backbone, weights, size, boundary and data, across trials
in one process (memory, bounded) and across processes (cache_dir on disk).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import numpy as np

log = logging.getLogger(__name__)

_MEMORY: "OrderedDict[str, np.ndarray]" = OrderedDict()


def _memory_bytes() -> int:
    return sum(a.nbytes for a in _MEMORY.values())


def clear_memory_cache() -> None:
    _MEMORY.clear()


def fingerprint_array(arr: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:16]


def weights_fingerprint(cfg_backbone, seed: int) -> str:
    w = cfg_backbone.weights
    if w is None:
        return f"random-{seed}"
    if w == "imagenet":
        return "imagenet"
    st = os.stat(w)
    return f"{os.path.abspath(w)}:{st.st_size}:{int(st.st_mtime)}"


class FeatureCache:
    def __init__(self, max_bytes: int, cache_dir: Optional[str]):
        self.max_bytes = max_bytes
        self.dir = Path(cache_dir) if cache_dir else None
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in _MEMORY or (self.dir is not None and (self.dir / f"{key}.npy").is_file())

    def put(self, key: str, arr: np.ndarray) -> None:
        self._remember(key, arr)
        self._write(key, arr)

    def get_or_compute(self, key: str, compute) -> np.ndarray:
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            self.hits += 1
            return _MEMORY[key]
        path = self.dir / f"{key}.npy" if self.dir else None
        if path is not None and path.is_file():
            try:
                arr = np.load(path, mmap_mode=None)
                self.hits += 1
                self._remember(key, arr)
                return arr
            except (OSError, ValueError) as exc:
                log.warning("feature cache file %s unreadable (%s); recomputing", path, exc)
        self.misses += 1
        arr = compute()
        self._remember(key, arr)
        self._write(key, arr)
        return arr

    def _write(self, key: str, arr: np.ndarray) -> None:
        if self.dir is None:
            return
        path = self.dir / f"{key}.npy"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("feature cache not written to %s: %s", path, exc)

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        _MEMORY[key] = arr
        while _memory_bytes() > self.max_bytes and len(_MEMORY) > 1:
            _MEMORY.popitem(last=False)


def boundary_tensor(base, trainable_layers: set):
    """The single tensor the trainable top consumes from the frozen prefix, or None if not single."""
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


def predict(model, x: np.ndarray, batch_size: int) -> List[np.ndarray]:
    """Each output of the frozen prefix over all images, as one traced function (eager per-batch
    calls of a functional model spend most of their time dispatching ops on a CPU)."""
    import keras
    import tensorflow as tf

    forward = tf.function(lambda b: keras.tree.flatten(model(tf.cast(b, tf.float32), training=False)),
                          reduce_retracing=True)
    batches = [[t.numpy() for t in forward(b)] for b in tf.data.Dataset.from_tensor_slices(x).batch(batch_size)]
    return [np.concatenate(outs) for outs in zip(*batches)]


def split_key(prefix: str, split_name: str, images_fingerprint: str) -> str:
    return hashlib.sha1(f"{prefix}|{split_name}|{images_fingerprint}".encode()).hexdigest()[:24]
