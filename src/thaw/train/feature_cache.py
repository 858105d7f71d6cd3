"""Frozen-prefix activation cache: compute what the frozen layers output once, train only the rest.

With augmentation off and the base in inference mode, the frozen part of the network is a fixed
function of the image. Phase 1 then trains the head on cached pooled features; phase 2 trains the
unfrozen top blocks (+ head) on cached activations at the unfreeze boundary. The layers are the same
objects as in the full model, so the saved model.keras is the trained full model. Activations are
reused across epochs, phases and, keyed by backbone, weights, size, boundary and data, across trials
in one process (memory, bounded) and across processes (cache_dir on disk). An array over half the
memory budget (min of trainer.cache_max_mb and data.max_memory_mb) is written to disk as it is
computed and read a batch at a time: large data still trains on cached activations.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from thaw.data import budget
from thaw.data.diskarray import ArrayWriter, DiskArray, DiskArrayWriter
from thaw.data.state import Limits
from thaw.errors import DataError

log = logging.getLogger("thaw.train.features")


# An array over 1/SPILL_FRACTION of the memory bound goes to disk: a phase holds its training and
# validation arrays while the previous phase's stay cached for later trials.
SPILL_FRACTION = 4


class ActivationStore:
    """The activations a Workspace keeps between runs: arrays in memory (least recently used
    first) and arrays this process spilled to disk (temp dir or cache_dir)."""

    def __init__(self):
        self.memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.disk: dict[str, DiskArray] = {}

    def memory_bytes(self) -> int:
        return sum(a.nbytes for a in self.memory.values())

    def memory_keys(self) -> list[str]:
        """The keys held in memory, least recently used first."""
        return list(self.memory)


def fingerprint_array(arr) -> str:
    if isinstance(arr, DiskArray):
        return arr.fingerprint()  # the same digest, read in chunks
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
    """Activations by key: in memory (LRU within max_bytes), on disk under cache_dir, and, for an
    array over spill_bytes, only on disk (cache_dir, or this process's temp dir), read per batch.
    What is kept lives in `store` and is counted on `limits` (a Workspace's)."""

    def __init__(
        self,
        max_bytes: int,
        cache_dir: str | None,
        store: ActivationStore,
        limits: Limits,
        spill_bytes: int | None = None,
        data_cfg=None,
    ):
        self.store, self.limits = store, limits
        self.max_bytes = max_bytes
        self.spill_bytes = spill_bytes
        self.data_cfg = data_cfg
        self.dir = Path(cache_dir) if cache_dir else None
        self.hits = 0
        self.misses = 0
        self.spilled: list[str] = []

    def __contains__(self, key: str) -> bool:
        return (
            key in self.store.memory
            or key in self.store.disk
            or (self.dir is not None and (self.dir / f"{key}.npy").is_file())
        )

    def put(self, key: str, arr) -> None:
        if isinstance(arr, DiskArray):
            self.store.disk[key] = arr
            return
        self._remember(key, arr)
        self._write(key, arr)

    def get_or_compute(self, key: str, compute, shape=None, lead: int = 1):
        """The cached array, or compute() (compute(sink) when `shape`, the array's shape, is given:
        sink is None, or a writer that takes the rows of an array to keep on disk)."""
        hit = self._lookup(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        if shape is None:
            arr = compute()
        else:
            arr = compute(self.sink(key, shape, lead))
        self.put(key, arr)
        return arr

    def _lookup(self, key: str):
        memory, disk = self.store.memory, self.store.disk
        if key in memory:
            memory.move_to_end(key)
            return memory[key]
        if key in disk:
            return disk[key]
        path = self.dir / f"{key}.npy" if self.dir else None
        if path is not None and path.is_file():
            try:
                on_disk = DiskArray(path)  # reads the header only
                if self.spill_bytes is not None and on_disk.nbytes > self.spill_bytes:
                    disk[key] = on_disk
                    return on_disk
                arr = np.load(path, mmap_mode=None)
                self._remember(key, arr)
                return arr
            except (OSError, ValueError, SyntaxError) as exc:
                log.warning("feature cache file %s unreadable (%s); recomputing", path, exc)
        return None

    def sink(self, key: str, shape, lead: int = 1):
        """Where an array of `shape` is written as it is computed: a DiskArrayWriter when it is over
        spill_bytes, else an ArrayWriter in memory. Raises DataError when the disk bound has no room
        for it (the caller trains on images instead)."""
        nbytes = int(math.prod(shape)) * 4
        if self.spill_bytes is None or nbytes <= self.spill_bytes:
            return ArrayWriter(shape, shape[lead:])
        ledger = self.limits.disk
        where = self.dir if self.dir is not None else ledger.temp_dir() / "features"
        ledger.claim(self.data_cfg, where, nbytes, "the feature cache")
        budget.remove_stale(where)  # temp files of killed processes of this host
        self.spilled.append(key)
        log.info(
            "feature cache: %.0f MB of activations are over a quarter of the memory bound (%.0f "
            "MB): "
            "they go to disk at %s",
            nbytes / budget.MB,
            self.spill_bytes * SPILL_FRACTION / budget.MB,
            where,
        )
        return DiskArrayWriter(
            where / f"{key}.npy",
            shape[lead:],
            np.float32,
            final_shape=shape,
            on_abort=lambda: ledger.release(nbytes),
        )

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
        # An entry over half the budget (a deep cut: activations nearly as large as the images) is
        # used by its run but not kept: it would evict many small entries that later trials reuse.
        if arr.nbytes > self.max_bytes // 2:
            return
        memory = self.store.memory
        memory[key] = arr
        while self.store.memory_bytes() > self.max_bytes and len(memory) > 1:
            self._evict(*memory.popitem(last=False))

    def _evict(self, key: str, arr: np.ndarray) -> None:
        """An array leaving memory goes to this process's disk while the disk bound has room: a
        later trial at that depth (a sweep's confirmation runs re-run its best trials) reads it
        a batch at a time instead of computing it again. With cache_dir it is already there."""
        if self.dir is not None or self.data_cfg is None:
            return
        ledger = self.limits.disk
        where = ledger.temp_dir() / "features"
        try:
            ledger.claim(self.data_cfg, where, arr.nbytes, "the feature cache")
        except DataError:
            return  # no room: dropped, as before
        try:
            where.mkdir(parents=True, exist_ok=True)
            np.save(where / f"{key}.npy", arr)
            self.store.disk[key] = DiskArray(where / f"{key}.npy")
        except OSError as exc:
            ledger.release(arr.nbytes)
            log.warning("feature cache: %s not kept on disk (%s)", key, exc)


def split_key(prefix: str, split_name: str, images_fingerprint: str) -> str:
    return hashlib.sha1(f"{prefix}|{split_name}|{images_fingerprint}".encode()).hexdigest()[:24]


# ---------------------------------------------------------------- what each phase fits


def open_cache(cfg, workspace, aug=None, data_bytes: int = 0) -> FeatureCache | None:
    """The cache to use (over the Workspace's activations), or None: only valid when the frozen
    prefix is a fixed function of the image (and of the augmentation draw, with augmentation)."""
    from thaw.errors import ConfigError
    from thaw.model.classifier import base_training_flag

    mode = cfg.trainer.cache_features
    if mode in (False, "false"):
        return None
    reasons = []
    if aug is not None and int(cfg.trainer.augment_views) == 0:
        reasons.append(
            "trainer.augment_views=0 draws new augmentations every epoch (set it > 0 to cache "
            "views)"
        )
    if base_training_flag(cfg.backbone) is not False:
        reasons.append(
            "the random-init base trains BatchNorm (backbone.batchnorm=inference allows caching)"
        )
    if reasons:
        if mode in (True, "true"):
            raise ConfigError("trainer.cache_features=true: " + "; ".join(reasons))
        log.info("feature cache off: %s", "; ".join(reasons))
        return None
    # one memory bound for the data: what the decoded images held in memory leave of it
    limits = workspace.data.limits
    room = max(0, budget.memory_budget(cfg.data, limits) - budget.IN_MEMORY_COPIES * data_bytes)
    max_bytes = min(int(cfg.trainer.cache_max_mb) * budget.MB, room)
    return FeatureCache(
        max_bytes,
        cfg.trainer.cache_dir,
        workspace.activations,
        limits,
        spill_bytes=max_bytes // SPILL_FRACTION,
        data_cfg=cfg.data,
    )
