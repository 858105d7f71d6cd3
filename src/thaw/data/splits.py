"""The data a run trains on: file lists from a scan, decoded splits, the data set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thaw.data.diskarray import DiskArray, DiskArrayWriter

log = logging.getLogger("thaw.data")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TRAIN_DIRS = ("train",)
VAL_DIRS = ("validation", "val", "valid")  # valid/: the layout Roboflow and YOLO exports use
TEST_DIRS = ("test",)


@dataclass
class FileSplit:
    files: list[str]
    labels: list[int]


@dataclass
class FolderScan:
    class_names: list[str]
    train: FileSplit
    val: FileSplit
    test: FileSplit | None
    skipped: list[str] = field(default_factory=list)


@dataclass
class Split:
    images: Any  # uint8 (N, S, S, 3): an np.ndarray in memory, or a DiskArray streamed from disk
    labels: np.ndarray  # int32, (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    class_names: list[str]
    train: Split
    val: Split
    test: Split | None = None
    skipped: list[str] = field(default_factory=list)
    streamed_from: str | None = None  # the directory of the decoded .npy files, when streamed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def nbytes(self) -> int:
        return sum(s.images.nbytes for s in (self.train, self.val, self.test) if s is not None)


def with_val_in_train(ds: Dataset, disk) -> Dataset:
    """Validation images join training (retraining a chosen config on all labelled data); a copy
    on disk is claimed on `disk` (the Workspace's budget.DiskLedger)."""
    from dataclasses import replace

    labels = np.concatenate([ds.train.labels, ds.val.labels])
    if ds.streamed_from is None:
        return replace(ds, train=Split(np.concatenate([ds.train.images, ds.val.images]), labels))
    path = (
        Path(ds.streamed_from) / "train_val_images.npy"
    )  # derived from the entry: made once, kept
    if path.is_file():
        try:
            both = DiskArray(path)
            if len(both) == len(labels):
                return replace(ds, train=Split(both, labels))
        except (OSError, ValueError, SyntaxError):
            pass
    size = ds.train.images.nbytes + ds.val.images.nbytes
    disk.claim(None, path.parent, size, "data.train_on_val (train + validation copy)")
    writer = DiskArrayWriter(
        path, ds.train.images.shape[1:], np.uint8, on_abort=lambda: disk.release(size)
    )
    try:
        for part in (ds.train.images, ds.val.images):
            for chunk in part.chunks():
                writer.append(chunk)
    except BaseException:
        writer.abort()
        raise
    return replace(ds, train=Split(writer.close(), labels))


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"
