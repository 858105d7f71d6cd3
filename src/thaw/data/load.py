"""One entry point for every data source: `load` decodes once per process (and once per machine
under trainer.cache_dir), and the decoded-split cache that makes that so."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from thaw.data import budget
from thaw.data.decode import (
    decoded_bytes,
    decoded_writer,
    load_folder,
    read_decoded,
    stream_folder,
)
from thaw.data.diskarray import DiskArray
from thaw.data.scan import folder_stamp, folder_unchanged, scan_folder
from thaw.data.sources import load_synthetic, load_tfds
from thaw.data.splits import Dataset, size_text
from thaw.data.state import DataState
from thaw.errors import ConfigError

log = logging.getLogger("thaw.data")


def load(
    cfg, image_size: int, seed: int, cache_dir: str | None = None, state: DataState | None = None
) -> Dataset:
    """Decoded, resized splits; reused across the runs that share `state` (a Workspace's; None: a
    fresh one) while the data config is unchanged, and, with a cache_dir, across processes
    (joblib/SLURM workers decode once in all). Data over data.max_memory_mb is streamed from a
    decoded copy on disk."""
    state = state if state is not None else DataState()
    # only synthetic data depends on the seed: a sweep over trainer.seed decodes a folder once
    key = (_image_key(cfg), image_size, seed if cfg.name == "synthetic" else None)
    kept = state.decoded
    if (
        cfg.name != "cats_vs_dogs"
        and kept is not None
        and kept[0] == key
        and folder_unchanged(cfg, kept[2])
    ):
        return kept[1]
    limit = budget.memory_budget(cfg, state.limits)
    disk = DecodedCache(cache_dir, cfg, key) if cache_dir and cfg.name != "synthetic" else None
    data = disk.read(limit) if disk is not None else None
    if data is None and cfg.name == "folder":
        data = _decode_folder(cfg, image_size, key, limit, disk, state)
    elif data is None:
        data = _decode_in_memory(cfg, image_size, seed, limit, disk)
    state.decoded = (key, data, folder_stamp(cfg))
    return data


def _decode_folder(
    cfg, image_size: int, key, limit: int, disk: DecodedCache | None, state: DataState
) -> Dataset:
    """A folder decoded into memory (and the decoded cache), or, when over the memory budget,
    into a copy on disk that training streams from."""
    scan = scan_folder(cfg, state)
    need = decoded_bytes(scan, image_size)
    if need * budget.IN_MEMORY_COPIES <= limit:
        data = load_folder(cfg, image_size, scan)
        if disk is not None:
            disk.write(data)
        return data
    target = (
        disk.dir
        if disk is not None
        else state.limits.disk.temp_dir() / DecodedCache.digest(cfg, key)
    )
    log.info(
        "data: %d images decode to %s at %d px, more than data.max_memory_mb=%d allows in "
        "memory (x%d while training): streaming them from %s",
        need // (image_size**2 * 3),
        size_text(need),
        image_size,
        limit // budget.MB,
        budget.IN_MEMORY_COPIES,
        target,
    )
    state.limits.disk.claim(cfg, target.parent, need, "streaming the decoded images")
    try:
        return stream_folder(scan, cfg, image_size, target)
    except BaseException:
        state.limits.disk.release(need)
        raise


def _decode_in_memory(
    cfg, image_size: int, seed: int, limit: int, disk: DecodedCache | None
) -> Dataset:
    """Synthetic or TensorFlow Datasets data: always held in memory (warned when over budget)."""
    data = _load(cfg, image_size, seed)
    if data.nbytes * budget.IN_MEMORY_COPIES > limit:
        log.warning(
            "data: %s decoded is over data.max_memory_mb=%d but data=%s is held in memory; "
            "for data larger than memory use data=folder",
            size_text(data.nbytes),
            limit // budget.MB,
            cfg.name,
        )
    if disk is not None:
        disk.write(data)
    return data


# keys that do not change the decoded images: a sweep over batch_size or a retrain with
# train_on_val reuses the same decoded copy
_NOT_IMAGES = {
    "batch_size",
    "augment",
    "train_on_val",
    "num_classes",
    "max_memory_mb",
    "max_disk_mb",
}


def _image_key(cfg) -> str:
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(cfg):
        return repr(cfg)
    d = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return OmegaConf.to_yaml({k: v for k, v in d.items() if k not in _NOT_IMAGES})


# how files become pixels; a new value leaves the copies decoded before unread (2: photos upright
# by their EXIF orientation)
DECODE_VERSION = 2


class DecodedCache:
    """Decoded splits as .npy files under <cache_dir>/decoded/<key>/, read by every later process
    (into memory, or a batch at a time when over data.max_memory_mb). The key covers the data
    config, image size and every file's path, size and mtime, so a changed folder is decoded again.
    Written by decode.decoded_writer: atomic."""

    def __init__(self, cache_dir: str, cfg, key):
        self.dir = Path(os.path.expanduser(cache_dir)) / "decoded" / self.digest(cfg, key)

    @staticmethod
    def digest(cfg, key) -> str:
        import json

        files = []
        if cfg.name == "folder" and cfg.path:
            root = os.path.expanduser(str(cfg.path))
            for dirpath, _, names in os.walk(root):
                for name in names:
                    st = os.lstat(os.path.join(dirpath, name))  # a dangling link has no target
                    files.append(
                        (
                            os.path.relpath(os.path.join(dirpath, name), root),
                            st.st_size,
                            st.st_mtime_ns,
                        )
                    )
        return hashlib.sha256(
            json.dumps([DECODE_VERSION, *map(str, key), sorted(files)]).encode()
        ).hexdigest()[:20]

    def read(self, memory_limit: int) -> Dataset | None:
        import json

        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            size = sum(DiskArray(self.dir / f"{name}_images.npy").nbytes for name in meta["splits"])
            data = read_decoded(self.dir, stream=size * budget.IN_MEMORY_COPIES > memory_limit)
        except OSError:
            return None  # not there (or not now): decoded again, the cache left as it is
        except (EOFError, ValueError, KeyError, SyntaxError) as exc:
            self._drop_damaged(exc)  # cut short by a power loss: written again after decoding
            return None
        log.info(
            "data: read the decoded splits from %s%s",
            self.dir,
            " (streamed: over data.max_memory_mb)" if data.streamed_from else "",
        )
        return data

    def _drop_damaged(self, exc: BaseException) -> None:
        import shutil

        log.warning("data: the decoded cache %s is damaged (%s); decoding again", self.dir, exc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, data: Dataset) -> None:
        if self.dir.exists():
            return
        splits = {"train": data.train, "val": data.val}
        if data.test is not None:
            splits["test"] = data.test
        try:
            with decoded_writer(self.dir) as out:
                for name, split in splits.items():
                    out.split(name, split.labels, split.images)
                out.finish(data.class_names, data.skipped)
        except OSError as exc:  # the disk is full: decode next time
            log.debug("decoded cache not written: %s", exc)


def _load(cfg, image_size: int, seed: int) -> Dataset:
    if cfg.name == "synthetic":
        return load_synthetic(cfg, image_size, seed)
    if cfg.name == "folder":
        return load_folder(cfg, image_size)
    if cfg.name == "cats_vs_dogs":
        return load_tfds(cfg, image_size)
    raise ConfigError(f"data.name: unknown data source {cfg.name!r}")
