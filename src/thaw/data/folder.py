"""Data: scan a folder (pure Python, before TensorFlow), decode every image once, serve tf.data.

Images are decoded and resized once into uint8 arrays; epochs and phases never read a JPEG again.
Splits that fit `data.max_memory_mb` are held in memory; larger ones are decoded once, chunk by
chunk,
into .npy files on disk (under trainer.cache_dir, or a temp dir) and streamed a batch at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thaw.data import budget
from thaw.data.diskarray import DiskArray, DiskArrayWriter
from thaw.errors import ConfigError, DataError

log = logging.getLogger("thaw.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TRAIN_DIRS = ("train",)
VAL_DIRS = ("validation", "val")


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


def with_val_in_train(ds: Dataset) -> Dataset:
    """Validation images join training (retraining a chosen config on all labelled data)."""
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
    budget.LEDGER.claim(None, path.parent, size, "data.train_on_val (train + validation copy)")
    writer = DiskArrayWriter(
        path, ds.train.images.shape[1:], np.uint8, on_abort=lambda: budget.LEDGER.release(size)
    )
    try:
        for part in (ds.train.images, ds.val.images):
            for chunk in part.chunks():
                writer.append(chunk)
    except BaseException:
        writer.abort()
        raise
    return replace(ds, train=Split(writer.close(), labels))


def _name_key(path: str) -> str:
    """Deterministic, name-based order for splitting (independent of directory listing order)."""
    return hashlib.sha1(os.path.basename(path).encode()).hexdigest()


MAX_PIXELS = 50_000_000  # a decompression bomb (or a 10000x10000 scan) is refused before decoding
# What TensorFlow's decode_image reads, by Pillow's format name (MPO: multi-picture JPEG from
# cameras).
DECODABLE_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP"}


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
        return "not a JPEG, PNG, GIF or BMP image"
    except Image.DecompressionBombError as exc:
        return f"image too large ({exc}; the limit is {max_pixels:,} pixels)"
    except OSError as exc:  # errno set: the file system refused; else Pillow found a broken header
        return f"unreadable ({exc.strerror})" if exc.errno else f"cannot decode image ({exc})"
    if fmt not in DECODABLE_FORMATS:
        return f"not a JPEG, PNG, GIF or BMP image (a {fmt} file)"
    if width * height > max_pixels:
        return f"image too large ({width}x{height} pixels; the limit is {max_pixels:,})"
    return None


def _list_class_dir(class_dir: Path, on_bad: str, skipped: list[str]) -> list[str]:
    files = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
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


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _scan_split(root: Path, on_bad: str, skipped: list[str], what: str) -> dict:
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"{root}: no class sub-folders found in the {what} folder")
    out = {}
    for name in classes:
        files = _list_class_dir(root / name, on_bad, skipped)
        if not files:
            raise DataError(
                f"{root / name}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        out[name] = files
    if len(out) < 2:
        raise DataError(
            f"{root}: only one class ({classes[0]}); a classifier needs at least two "
            "class sub-folders"
        )
    return out


def _take(files: list[str], limit: int | None) -> list[str]:
    return files[:limit] if limit else files


_SCANNED: dict = {}  # the last scan: a sweep's trials (config check and load) list the folder once


def scan_folder(cfg) -> FolderScan:
    """Find classes and files, split them deterministically by file name; no image is decoded here.
    Reused while the data config and the folder's directory times are unchanged."""
    import copy

    from omegaconf import OmegaConf

    key = repr(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg)
    stamp = _folder_stamp(cfg)
    if stamp is not None and _SCANNED.get("key") == (key, stamp):
        return copy.deepcopy(_SCANNED["scan"])
    scan = _scan_folder(cfg)
    _SCANNED.update(key=(key, stamp), scan=copy.deepcopy(scan))
    return scan


def _scan_folder(cfg) -> FolderScan:
    if not cfg.path:
        raise ConfigError("data.path: required for data=folder (a directory of class sub-folders)")
    root = Path(os.path.expanduser(str(cfg.path)))
    if not root.exists():
        raise DataError(f"data.path: no such directory: {root}")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is a file; expected a directory of class sub-folders")
    skipped: list[str] = []
    on_bad = cfg.on_bad_image
    train_dir = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    val_dir = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None)
    if train_dir is not None and val_dir is not None:
        train_map = _scan_split(train_dir, on_bad, skipped, "train")
        val_map = _scan_split(val_dir, on_bad, skipped, "validation")
        if set(train_map) != set(val_map):
            raise DataError(
                f"data.path: train/ and {val_dir.name}/ have different classes "
                f"({sorted(train_map)} vs {sorted(val_map)})"
            )
    else:
        all_map = _scan_split(root, on_bad, skipped, "data")
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
    class_names = sorted(train_map)
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise ConfigError(
            f"data.num_classes: set to {cfg.num_classes} but {root} has "
            f"{len(class_names)} classes ({', '.join(class_names)})"
        )

    train = FileSplit([], [])
    val = FileSplit([], [])
    test = FileSplit([], []) if cfg.test_fraction > 0 else None
    for label, name in enumerate(class_names):
        for f in _take(train_map[name], cfg.max_per_class):
            train.files.append(f)
            train.labels.append(label)
        vfiles = val_map[name]
        if test is not None:
            ordered = sorted(vfiles, key=_name_key)
            n_test = int(round(len(ordered) * cfg.test_fraction))
            if n_test < 1 or n_test >= len(ordered):
                raise DataError(
                    f"data.test_fraction={cfg.test_fraction}: class {name} has "
                    f"{len(ordered)} validation image(s), too few to hold out a test split"
                )
            for f in _take(sorted(ordered[:n_test]), cfg.max_per_class):
                test.files.append(f)
                test.labels.append(label)
            vfiles = sorted(ordered[n_test:])
        for f in _take(vfiles, cfg.max_per_class):
            val.files.append(f)
            val.labels.append(label)
    return FolderScan(class_names, train, val, test, skipped)


# ---------------------------------------------------------------- decoding (TensorFlow from here
# on)


def _decode_fn(image_size: int):
    import tensorflow as tf

    def decode(path):
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
        img.set_shape([None, None, 3])
        img = tf.image.resize(img, (image_size, image_size), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    return decode


def _decode_files(files: list[str], image_size: int, on_bad: str, skipped: list[str]):
    """Decode all files in parallel; if any fails, find which ones file by file."""
    import tensorflow as tf

    if not files:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.ones(0, bool)
    decode = _decode_fn(image_size)
    ds = (
        tf.data.Dataset.from_tensor_slices(files)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(256)
        .prefetch(2)
    )
    try:
        out = np.empty(
            (len(files), image_size, image_size, 3), np.uint8
        )  # filled in place: held once
    except MemoryError:
        raise DataError(
            f"data: {len(files)} decoded images ({size_text(len(files) * image_size**2 * 3)}) do "
            "not fit "
            "in the memory this process may use; lower data.max_memory_mb (or leave it unset) to "
            "stream them from disk"
        ) from None
    try:
        at = 0
        for b in ds:
            out[at : at + len(b)] = b.numpy()
            at += len(b)
        return out, np.ones(len(files), bool)
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.UnknownError,
        tf.errors.ResourceExhaustedError,
    ):
        pass
    out[:] = 0
    ok = np.ones(len(files), bool)
    for i, f in enumerate(files):
        try:
            out[i] = decode(tf.constant(f)).numpy()
        except (tf.errors.OpError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            if on_bad != "skip":
                raise DataError(
                    f"{f}: cannot decode image ({msg}); remove it, or set data.on_bad_image=skip"
                ) from None
            log.warning("skipping %s: cannot decode image (%s)", f, msg)
            skipped.append(f)
            ok[i] = False
    return out[ok], ok


def _materialize(split: FileSplit, image_size: int, on_bad: str, skipped: list[str]) -> Split:
    images, ok = _decode_files(split.files, image_size, on_bad, skipped)
    labels = np.asarray(split.labels, np.int32)[ok]
    return Split(images, labels)


DECODE_CHUNK = 1024  # images decoded at a time when streaming: ~20 MB at 80 px, ~150 MB at 224 px


def _stream_split(
    split: FileSplit, image_size: int, on_bad: str, skipped: list[str], path: Path
) -> Split:
    """Decode chunk by chunk into a .npy file on disk; bad images are found here, before
    training."""
    writer = DiskArrayWriter(path, (image_size, image_size, 3), np.uint8)
    labels = np.asarray(split.labels, np.int32)
    keep = np.ones(len(labels), bool)
    from thaw.runtime import interrupt

    try:
        for start in range(0, len(split.files), DECODE_CHUNK):
            interrupt.check()  # SIGTERM/Ctrl-C: stop between chunks, the partial copy removed
            images, ok = _decode_files(
                split.files[start : start + DECODE_CHUNK], image_size, on_bad, skipped
            )
            writer.append(images)
            keep[start : start + len(ok)] = ok
    except BaseException:
        writer.abort()
        raise
    return Split(writer.close(), labels[keep])


def stream_folder(scan: FolderScan, cfg, image_size: int, target: Path) -> Dataset:
    """The decoded splits as .npy files in `target` (written to a temp dir and renamed: a reader
    sees
    a complete set or none), read a batch at a time."""
    import json
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    budget.remove_stale(target.parent)  # left by a killed process of this host
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{budget.tmp_tag()}"))
    skipped = list(scan.skipped)
    splits = {"train": scan.train, "val": scan.val, **({"test": scan.test} if scan.test else {})}
    try:
        labels = {}
        for name, split in splits.items():
            out = _stream_split(
                split, image_size, cfg.on_bad_image, skipped, tmp / f"{name}_images.npy"
            )
            np.save(tmp / f"{name}_labels.npy", out.labels)
            labels[name] = out.labels
        (tmp / "meta.json").write_text(
            json.dumps(
                {"class_names": scan.class_names, "skipped": skipped, "splits": list(splits)}
            )
        )
        try:
            os.rename(tmp, target)
        except OSError:  # another process wrote the same data first: read theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _read_decoded(target, stream=True)


def _read_decoded(where: Path, stream: bool) -> Dataset:
    import json

    meta = json.loads((where / "meta.json").read_text())
    splits = {}
    for name in meta["splits"]:
        images = (
            DiskArray(where / f"{name}_images.npy")
            if stream
            else np.load(where / f"{name}_images.npy")
        )
        splits[name] = Split(images, np.load(where / f"{name}_labels.npy"))
    return Dataset(
        meta["class_names"],
        splits["train"],
        splits["val"],
        splits.get("test"),
        meta["skipped"],
        streamed_from=str(where) if stream else None,
    )


def decoded_bytes(scan: FolderScan, image_size: int) -> int:
    n = sum(len(s.files) for s in (scan.train, scan.val, scan.test) if s is not None)
    return n * image_size * image_size * 3


def load_folder(cfg, image_size: int, scan: FolderScan | None = None) -> Dataset:
    scan = scan or scan_folder(cfg)
    skipped = list(scan.skipped)
    train = _materialize(scan.train, image_size, cfg.on_bad_image, skipped)
    val = _materialize(scan.val, image_size, cfg.on_bad_image, skipped)
    test = _materialize(scan.test, image_size, cfg.on_bad_image, skipped) if scan.test else None
    return Dataset(scan.class_names, train, val, test, skipped)


# ---------------------------------------------------------------- synthetic shapes

SHAPES = ("circle", "square", "triangle", "cross")


def _draw(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
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
        np.stack([_draw(rng, int(lab), size) for lab in labels])
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
    import tensorflow as tf

    def take(split_name):
        try:
            ds, info = tfds.load(
                cfg.tfds_name,
                split=split_name,
                as_supervised=True,
                with_info=True,
                data_dir=cfg.tfds_data_dir,
            )
        except Exception as exc:  # download or preparation failure
            first = (
                str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            )
            raise DataError(
                f"data.tfds_name={cfg.tfds_name}: could not load split {split_name} ({first}); "
                "offline, use data=folder data.path=/path/to/images"
            ) from None
        ds = ds.map(
            lambda x, y: (
                tf.cast(
                    tf.clip_by_value(
                        tf.round(tf.image.resize(x, (image_size, image_size))), 0, 255
                    ),
                    tf.uint8,
                ),
                y,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if cfg.max_per_class:
            ds = ds.take(cfg.max_per_class * info.features["label"].num_classes)
        imgs, labels = [], []
        for x, y in ds.batch(256):
            imgs.append(x.numpy())
            labels.append(y.numpy())
        return Split(np.concatenate(imgs), np.concatenate(labels).astype(np.int32)), info

    train, info = take(cfg.tfds_train_split)
    val, _ = take(cfg.tfds_val_split)
    test = take(cfg.tfds_test_split)[0] if cfg.tfds_test_split and cfg.test_fraction > 0 else None
    return Dataset(list(info.features["label"].names), train, val, test)


_LAST: dict = {}  # the last decoded data set: trials of an in-process sweep decode once


def load(cfg, image_size: int, seed: int, cache_dir: str | None = None) -> Dataset:
    """Decoded, resized splits; reused across the trials of one process while the data config is
    unchanged, and, with a cache_dir, across processes (joblib/SLURM workers decode once in all).
    Data over data.max_memory_mb is streamed from a decoded copy on disk."""
    # only synthetic data depends on the seed: a sweep over trainer.seed decodes a folder once
    key = (_image_key(cfg), image_size, seed if cfg.name == "synthetic" else None)
    if (
        cfg.name != "cats_vs_dogs"
        and _LAST.get("key") == key
        and _folder_unchanged(cfg, _LAST.get("stamp"))
    ):
        return _LAST["data"]
    limit = budget.memory_budget(cfg)
    disk = DecodedCache(cache_dir, cfg, key) if cache_dir and cfg.name != "synthetic" else None
    data = disk.read(limit) if disk is not None else None
    if data is None and cfg.name == "folder":
        scan = scan_folder(cfg)
        need = decoded_bytes(scan, image_size)
        if need * budget.IN_MEMORY_COPIES > limit:
            target = (
                disk.dir
                if disk is not None
                else budget.LEDGER.temp_dir() / DecodedCache.digest(cfg, key)
            )
            log.info(
                "data: %d images decode to %s at %d px, more than data.max_memory_mb=%d allows in "
                "memory "
                "(x%d while training): streaming them from %s",
                need // (image_size**2 * 3),
                size_text(need),
                image_size,
                limit // budget.MB,
                budget.IN_MEMORY_COPIES,
                target,
            )
            budget.LEDGER.claim(cfg, target.parent, need, "streaming the decoded images")
            try:
                data = stream_folder(scan, cfg, image_size, target)
            except BaseException:
                budget.LEDGER.release(need)
                raise
        else:
            data = load_folder(cfg, image_size, scan)
            if disk is not None:
                disk.write(data)
    elif data is None:
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
    _LAST.clear()
    _LAST.update(key=key, data=data, stamp=_folder_stamp(cfg))
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
    d = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_yaml({k: v for k, v in d.items() if k not in _NOT_IMAGES})


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"


class DecodedCache:
    """Decoded splits as .npy files under <cache_dir>/decoded/<key>/, read by every later process
    (into memory, or a batch at a time when over data.max_memory_mb). The key covers the data
    config,
    image size and every file's path, size and mtime, so a changed folder is decoded again.
    Written to a temp dir and renamed: atomic."""

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
                    st = os.stat(os.path.join(dirpath, name))
                    files.append(
                        (
                            os.path.relpath(os.path.join(dirpath, name), root),
                            st.st_size,
                            st.st_mtime_ns,
                        )
                    )
        return hashlib.sha256(
            json.dumps(list(map(str, key)) + [sorted(files)]).encode()
        ).hexdigest()[:20]

    def read(self, memory_limit: int) -> Dataset | None:
        import json

        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            size = sum(DiskArray(self.dir / f"{name}_images.npy").nbytes for name in meta["splits"])
            data = _read_decoded(self.dir, stream=size * budget.IN_MEMORY_COPIES > memory_limit)
        except (OSError, ValueError, KeyError, SyntaxError):
            return None
        log.info(
            "data: read the decoded splits from %s%s",
            self.dir,
            " (streamed: over data.max_memory_mb)" if data.streamed_from else "",
        )
        return data

    def write(self, data: Dataset) -> None:
        import json
        import shutil
        import tempfile

        if self.dir.exists():
            return
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".tmp-"))
        splits = {
            "train": data.train,
            "val": data.val,
            **({"test": data.test} if data.test is not None else {}),
        }
        try:
            for name, split in splits.items():
                np.save(tmp / f"{name}_images.npy", split.images)
                np.save(tmp / f"{name}_labels.npy", split.labels)
            (tmp / "meta.json").write_text(
                json.dumps(
                    {
                        "class_names": list(data.class_names),
                        "skipped": list(data.skipped),
                        "splits": list(splits),
                    }
                )
            )
            os.rename(tmp, self.dir)
        except (
            OSError
        ) as exc:  # another process won the rename, or the disk is full: decode next time
            log.debug("decoded cache not written: %s", exc)
            shutil.rmtree(tmp, ignore_errors=True)


def _folder_stamp(cfg):
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


def _folder_unchanged(cfg, stamp) -> bool:
    return _folder_stamp(cfg) == stamp


def _load(cfg, image_size: int, seed: int) -> Dataset:
    if cfg.name == "synthetic":
        return load_synthetic(cfg, image_size, seed)
    if cfg.name == "folder":
        return load_folder(cfg, image_size)
    if cfg.name == "cats_vs_dogs":
        return load_tfds(cfg, image_size)
    raise ConfigError(f"data.name: unknown data source {cfg.name!r}")


_CONSTANTS: dict = {}  # id(array) -> its tf.constant, dropped when the array is collected


def _constant(array):
    """One tf.constant per array object for the whole process (a new one per pipeline made a copy
    per feature pass: 8000 images at 160 px, peak RSS 3.8 GB for 0.6 GB of images)."""
    import weakref

    import tensorflow as tf

    key = id(array)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = tf.constant(array)
        weakref.finalize(array, _CONSTANTS.pop, key, None)
    return _CONSTANTS[key]


def rows(array):
    """idx -> array[idx] as a tensor, for tf.data: a gather from the array's one tf.constant when it
    is in memory (what data.max_memory_mb counts twice), a pread per row (tf.numpy_function) for a
    DiskArray; only its batch is copied into TensorFlow."""
    import tensorflow as tf

    if not isinstance(array, DiskArray):
        const = _constant(array)
        return lambda idx: tf.gather(const, idx)
    dtype, row_shape = tf.as_dtype(array.dtype), tuple(array.shape[1:])

    def take(idx):
        out = tf.numpy_function(lambda i: array[i], [idx], dtype, stateful=False)
        out.set_shape((None,) + row_shape)
        return out

    return take


def in_order(array, batch_size: int):
    """Batches of an array (memory or disk) in order, float32."""
    import tensorflow as tf

    take = rows(array)
    return (
        tf.data.Dataset.range(len(array))
        .batch(batch_size)
        .map(lambda idx: tf.cast(take(idx), tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
    )


def to_tf(split: Split, batch_size: int, shuffle: bool, seed: int):
    """A batched, prefetched tf.data pipeline over the split (float32 pixels 0..255)."""
    import tensorflow as tf

    order = tf.data.Dataset.range(len(split))
    if shuffle:
        order = order.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    take, labels = rows(split.images), tf.constant(split.labels)
    ds = order.batch(batch_size).map(
        lambda idx: (tf.cast(take(idx), tf.float32), tf.gather(labels, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def train_epochs(split: Split, batch_size: int, seed: int, first_epoch: int, epochs: int):
    """Training batches for epochs first_epoch.. (float32 inputs): epoch e's order is drawn from
    (seed, e) alone, so a run resumed at epoch e sees the batches an uninterrupted run saw."""
    import tensorflow as tf

    take, y = rows(split.images), tf.constant(split.labels)
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
