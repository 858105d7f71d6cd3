"""Which images a run has already seen: thaw-evaluate asks it of the folder it is given, since an
accuracy on images that trained the model, or chose it, is no estimate of anything new."""

from __future__ import annotations

import hashlib
from pathlib import Path


def seen_in_splits(data_cfg, files: list[str]) -> dict[str, int] | None:
    """How many of `files` are the training, validation (they chose the best epoch, or a sweep's
    winner) or test images of a run with data config `data_cfg`, matched by content so a copy under
    another name counts too; None where the run did not read a folder that is still there."""
    from thaw.data.scan import scan_folder
    from thaw.errors import ThawError

    if data_cfg.name != "folder":
        return None
    try:
        scan = scan_folder(data_cfg)
    except (ThawError, OSError):
        return None
    digests: dict[str, str | None] = {}
    splits = {"train": scan.train, "validation": scan.val, "test": scan.test}
    seen = {
        name: same_content(files, split.files, digests)
        for name, split in splits.items()
        if split is not None
    }
    if data_cfg.get("train_on_val"):
        seen["train"], seen["validation"] = seen["train"] + seen["validation"], 0
    return seen


def same_content(files: list[str], known: list[str], digests: dict[str, str | None]) -> int:
    """How many of `files` have the bytes of one of `known`; only files of a size in `known` are
    read (a photo's size is nearly unique), each once (`digests`)."""

    def digest(path: str) -> str | None:
        if path not in digests:
            try:
                digests[path] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            except OSError:
                digests[path] = None
        return digests[path]

    by_size: dict[int, list[str]] = {}
    for f in known:
        by_size.setdefault(_size(f), []).append(f)
    count = 0
    for f in files:
        candidates = by_size.get(_size(f), [])
        if candidates and digest(f) in {digest(c) for c in candidates} - {None}:
            count += 1
    return count


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1
