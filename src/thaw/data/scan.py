"""Scanning a photo folder in pure Python (no TensorFlow): classes, splits, files that are not
images, with Pillow sniffing each file's header."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

from thaw.data.splits import (
    IMAGE_EXTENSIONS,
    TEST_DIRS,
    TRAIN_DIRS,
    VAL_DIRS,
    FileSplit,
    FolderScan,
)
from thaw.errors import ConfigError, DataError

log = logging.getLogger("thaw.data")


def _name_key(path: str) -> str:
    """Deterministic, name-based order for splitting (independent of directory listing order)."""
    return hashlib.sha1(os.path.basename(path).encode()).hexdigest()


MAX_PIXELS = 50_000_000  # a decompression bomb (or a 10000x10000 scan) is refused before decoding
# What thaw decodes (TensorFlow; WebP with Pillow: thaw.data.photos), by Pillow's format name
# (MPO: multi-picture JPEG from cameras) -> the name a message gives.
DECODABLE_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "GIF": "GIF",
    "BMP": "BMP",
    "WEBP": "WebP",
}
_NAMES = tuple(dict.fromkeys(DECODABLE_FORMATS.values()))
FORMATS_TEXT = f"a {', '.join(_NAMES[:-1])} or {_NAMES[-1]} image"


def sniff_image(path: str, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why a file cannot be an image we decode, or None if its header looks right.

    Pillow reads only the header here (format and size); pixels are decoded later, in parallel.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (width, height) = im.format, im.size
    except UnidentifiedImageError:
        return f"not {FORMATS_TEXT}"
    except Image.DecompressionBombError as exc:
        return f"image too large ({exc}; the limit is {max_pixels:,} pixels)"
    except OSError as exc:  # errno set: the file system refused; else Pillow found a broken header
        return f"unreadable ({exc.strerror})" if exc.errno else f"cannot decode image ({exc})"
    if fmt not in DECODABLE_FORMATS:
        return f"not {FORMATS_TEXT} (a {fmt} file)"
    if width * height > max_pixels:
        return f"image too large ({width}x{height} pixels; the limit is {max_pixels:,})"
    return None


def list_class_dir(
    class_dir: Path, on_bad: str, skipped: list[str], ignored: Counter | None = None
) -> list[str]:
    """The image files of one class folder; files of other kinds are counted in `ignored` (by
    extension, or "sub-folder")."""
    files = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            if ignored is not None:
                ignored[_kind(entry)] += 1
            continue
        try:
            if not entry.is_file():  # also false for a dangling or looping symlink
                raise OSError
        except OSError:
            problem = "not a regular file (broken or looping link?)"
        else:
            problem = sniff_image(entry.path)
        if problem:
            if on_bad == "skip":
                log.warning("skipping %s: %s", entry.path, problem)
                skipped.append(entry.path)
                continue
            raise DataError(f"{entry.path}: {problem} (remove it, or set data.on_bad_image=skip)")
        files.append(entry.path)
    return files


def _kind(entry: os.DirEntry) -> str:
    try:
        if entry.is_dir():
            return "sub-folder"
    except OSError:
        pass
    return os.path.splitext(entry.name)[1].lower() or "no extension"


def class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _scan_split(root: Path, on_bad: str, skipped: list[str], what: str, ignored: Counter) -> dict:
    classes = class_dirs(root)
    if not classes:
        raise DataError(f"{root}: no class sub-folders found in the {what} folder")
    out = {}
    for name in classes:
        found: Counter = Counter()
        n_skipped = len(skipped)
        files = list_class_dir(root / name, on_bad, skipped, found)
        ignored.update(found)
        if not files:
            alone = len(classes) == 1 and what == "data"  # a folder data.path could name
            raise _no_images(root / name, found, len(skipped) - n_skipped, alone)
        out[name] = files
    if len(out) < 2:
        raise DataError(
            f"{root}: only one class ({classes[0]}); a classifier needs at least two "
            "class sub-folders"
        )
    return out


def _no_images(class_dir: Path, found: Counter, n_skipped: int, alone: bool) -> DataError:
    """What an empty class folder holds instead, and the likely fix: an unzipped archive's own
    folder one level above the classes, photos one level deeper, or a format thaw does not read."""
    text = f"{class_dir}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})"
    if n_skipped:
        text += f" left after {n_skipped} bad image file(s) were skipped"
    if found:
        text += f"; it holds {', '.join(f'{kind}: {n}' for kind, n in found.most_common())}"
    if found["sub-folder"] and alone:
        text += f"; if its sub-folders are the classes, set data.path to {class_dir}"
    elif found["sub-folder"]:
        text += "; images in sub-folders are not read: put each class's images in its folder"
    return DataError(text)


def _take(files: list[str], limit: int | None) -> list[str]:
    return files[:limit] if limit else files


def scan_folder(cfg, state=None) -> FolderScan:
    """Find classes and files, split them deterministically by file name; no image is decoded here.
    With `state` (a thaw.data.state.DataState: a sweep's trials check the config and load), reused
    while the data config and the folder's directory times are unchanged."""
    import copy

    from omegaconf import OmegaConf

    key = repr(
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        if OmegaConf.is_config(cfg)
        else cfg
    )
    stamp = folder_stamp(cfg)
    if state is not None and stamp is not None and state.scan and state.scan[0] == (key, stamp):
        return copy.deepcopy(state.scan[1])
    scan = _scan_folder(cfg)
    if state is not None:
        state.scan = ((key, stamp), copy.deepcopy(scan))
    return scan


def _scan_folder(cfg) -> FolderScan:
    root = _root(cfg)
    skipped: list[str] = []
    ignored: Counter = Counter()
    train_map, val_map = _class_files(cfg, root, skipped, ignored)
    _warn_ignored(root, ignored)
    class_names = sorted(train_map)
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ConfigError(
            f"data.num_classes: set to {cfg.num_classes} but {root} has "
            f"{len(class_names)} classes ({', '.join(class_names)})"
        )
    train, val, test = _labelled_splits(cfg, class_names, train_map, val_map)
    return FolderScan(class_names, train, val, test, skipped)


def _root(cfg) -> Path:
    """data.path, checked to be a directory."""
    if not cfg.path:
        raise ConfigError("data.path: required for data=folder (a directory of class sub-folders)")
    root = Path(os.path.expanduser(str(cfg.path)))
    if not root.exists():
        raise DataError(f"data.path: no such directory: {root}")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is a file; expected a directory of class sub-folders")
    return root


def _warn_ignored(root: Path, ignored: Counter) -> None:
    """One line for the files a class folder holds that are not read (a folder of .heic photos,
    or photos one level deeper, would otherwise be left out without a word)."""
    if ignored:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in ignored.most_common())
        log.warning(
            "data: %d entries in the class folders of %s are not read (%s); thaw reads %s files",
            sum(ignored.values()),
            root,
            kinds,
            ", ".join(IMAGE_EXTENSIONS),
        )


def _class_files(cfg, root: Path, skipped: list[str], ignored: Counter) -> tuple[dict, dict]:
    """{class: files} for training and validation: a folder's own train/ and val/ sub-folders,
    else every class folder split by file name."""
    on_bad = cfg.on_bad_image
    train_dir = _first_dir(root, TRAIN_DIRS)
    val_dir = _first_dir(root, VAL_DIRS)
    if train_dir is None or val_dir is None:
        _refuse_half_a_split_layout(root, train_dir or val_dir)
        return _split_by_name(cfg, root, _scan_split(root, on_bad, skipped, "data", ignored))
    test_dir = _first_dir(root, TEST_DIRS)
    if test_dir is not None:
        log.warning(
            "data: %s is not read: the test split is held out of %s by data.test_fraction (now %s)",
            test_dir,
            val_dir,
            cfg.test_fraction,
        )
    train_map = _scan_split(train_dir, on_bad, skipped, "train", ignored)
    val_map = _scan_split(val_dir, on_bad, skipped, "validation", ignored)
    if set(train_map) != set(val_map):
        raise DataError(
            f"data.path: train/ and {val_dir.name}/ have different classes "
            f"({sorted(train_map)} vs {sorted(val_map)})"
        )
    return train_map, val_map


def has_own_split(path) -> bool:
    """Whether a folder holds its own train and validation folders (so data.val_fraction does not
    split it)."""
    root = Path(os.path.expanduser(str(path)))
    return _first_dir(root, TRAIN_DIRS) is not None and _first_dir(root, VAL_DIRS) is not None


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / d for d in names if (root / d).is_dir()), None)


def _refuse_half_a_split_layout(root: Path, split_dir: Path | None) -> None:
    """A train/ (or validation/) folder of class folders without its other half: not classes
    named "train" and "test" to split by name."""
    if split_dir is None or not class_dirs(split_dir):
        return
    other = "validation" if split_dir.name in TRAIN_DIRS else "train"
    names = "/, ".join(VAL_DIRS if other == "validation" else TRAIN_DIRS) + "/"
    raise DataError(
        f"data.path: {root} has {split_dir.name}/ with class folders but no {other} folder "
        f"({names}); add one, or set data.path to {split_dir} to split it by data.val_fraction"
    )


def _split_by_name(cfg, root: Path, all_map: dict) -> tuple[dict, dict]:
    """Each class's files split into train and validation by a hash of their names (the same split
    whatever order the folder lists them in)."""
    train_map, val_map = {}, {}
    for name, files in all_map.items():
        ordered = sorted(files, key=_name_key)
        n_val = max(1, int(round(len(ordered) * cfg.val_fraction)))
        if n_val >= len(ordered):
            raise DataError(
                f"{root / name}: {len(ordered)} image(s) cannot be split into train and "
                f"validation with data.val_fraction={cfg.val_fraction}"
            )
        val_map[name] = sorted(ordered[:n_val])
        train_map[name] = sorted(ordered[n_val:])
    return train_map, val_map


def _labelled_splits(cfg, class_names: list[str], train_map: dict, val_map: dict) -> tuple:
    """(train, val, test) FileSplits, labels by class order; the test split is held out of each
    class's validation files, and every split is capped at data.max_per_class a class."""
    train = FileSplit([], [])
    val = FileSplit([], [])
    test = FileSplit([], []) if cfg.test_fraction > 0 else None
    for label, name in enumerate(class_names):
        _extend(train, _take(train_map[name], cfg.max_per_class), label)
        vfiles = val_map[name]
        if test is not None:
            test_files, vfiles = _hold_out_test(cfg, name, vfiles)
            _extend(test, _take(test_files, cfg.max_per_class), label)
        _extend(val, _take(vfiles, cfg.max_per_class), label)
    return train, val, test


def _hold_out_test(cfg, name: str, vfiles: list[str]) -> tuple[list[str], list[str]]:
    """(test files, remaining validation files) of one class, split by a hash of their names."""
    ordered = sorted(vfiles, key=_name_key)
    n_test = int(round(len(ordered) * cfg.test_fraction))
    if n_test < 1 or n_test >= len(ordered):
        raise DataError(
            f"data.test_fraction={cfg.test_fraction}: class {name} has "
            f"{len(ordered)} validation image(s), too few to hold out a test split"
        )
    return sorted(ordered[:n_test]), sorted(ordered[n_test:])


def _extend(split: FileSplit, files: list[str], label: int) -> None:
    """Append one class's files to a split, each with the class's label."""
    for f in files:
        split.files.append(f)
        split.labels.append(label)


# ---------------------------------------------------------------- decoding (TensorFlow from here
# on)


def folder_stamp(cfg):
    """The mtimes of the folder and its class folders: a file added or removed changes one."""
    if cfg.name != "folder" or not cfg.path:
        return None
    root = os.path.expanduser(str(cfg.path))
    stamps = []
    try:  # a file added or removed changes the mtime of its class folder (depth 1 or 2)
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):  # class folders may be links
            stamps.append((dirpath, os.stat(dirpath).st_mtime_ns))
            if dirpath.count(os.sep) - root.rstrip(os.sep).count(os.sep) >= 2:
                dirnames[:] = []
    except OSError:
        return None
    return tuple(stamps)


def folder_unchanged(cfg, stamp) -> bool:
    return folder_stamp(cfg) == stamp
