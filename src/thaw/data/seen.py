"""Which images a run has already seen: thaw-evaluate asks it of the folder it is given, since an
accuracy on images that trained the model, or chose it, is no estimate of anything new."""

from __future__ import annotations

import hashlib
from pathlib import Path


def seen_in_splits(data_cfg, files: list[str]) -> dict[str, int] | None:
    """How many of `files` are the training, validation (they chose the best epoch, or a sweep's
    winner) or test images of a run with data config `data_cfg` (splits_of)."""
    found = splits_of(data_cfg, files)
    if found is None:
        return None
    return split_counts(*found)


def split_counts(names: list[str], where: list[str | None]) -> dict[str, int]:
    """{split: how many files it holds} from splits_of's answer."""
    return {name: sum(1 for w in where if w == name) for name in names}


def splits_of(data_cfg, files: list[str]) -> tuple[list[str], list[str | None]] | None:
    """(the run's split names, the split of each of `files`: the first that holds its bytes, so
    renamed copies count too, or None); None where the run did not read a folder that is still
    there."""
    from thaw.data.scan import scan_folder
    from thaw.errors import ThawError

    if data_cfg.name != "folder":
        return None
    try:
        scan = scan_folder(data_cfg)
    except (ThawError, OSError):
        return None
    on_val = bool(data_cfg.get("train_on_val"))  # a retrain trained on its validation images
    splits = {
        "train": scan.train.files + (scan.val.files if on_val else []),
        "validation": [] if on_val else scan.val.files,
    }
    if scan.test is not None:
        splits["test"] = scan.test.files
    index = ContentIndex(splits)
    return list(splits), [index.split_of(f) for f in files]


class ContentIndex:
    """Files by size, their bytes' digests made only for sizes a looked-up file has (a photo's
    size is nearly unique), each file read once."""

    def __init__(self, splits: dict[str, list[str]]) -> None:
        self.by_size: dict[int, list[tuple[str, str]]] = {}
        for name, paths in splits.items():
            for path in paths:
                self.by_size.setdefault(_size(path), []).append((path, name))
        self.digests: dict[int, dict[str, str]] = {}  # size -> {digest: first split holding it}

    def split_of(self, path: str) -> str | None:
        """The first split (in the order given) holding `path`'s bytes; None where none does."""
        size = _size(path)
        if size < 0 or size not in self.by_size:
            return None
        if size not in self.digests:
            known: dict[str, str] = {}
            for candidate, name in self.by_size[size]:
                digest = _digest(candidate)
                if digest is not None:
                    known.setdefault(digest, name)
            self.digests[size] = known
        digest = _digest(path)
        return None if digest is None else self.digests[size].get(digest)


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1
