"""Decoding a scanned folder once into uint8 arrays (TensorFlow's decoders in a parallel tf.data
pipeline, Pillow for what they do not do right: thaw.data.photos): in memory, or chunk by chunk
into .npy files on disk that are streamed a batch at a time. Photos come out upright."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from thaw.data import budget, photos
from thaw.data.diskarray import DiskArray, DiskArrayWriter
from thaw.data.scan import scan_folder
from thaw.data.splits import Dataset, FileSplit, FolderScan, Split, size_text
from thaw.errors import DataError, first_line

log = logging.getLogger("thaw.data")


def _decode_fn(image_size: int):
    import tensorflow as tf

    def decode(path):
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
        img.set_shape([None, None, 3])
        return photos.resize_to_square(img, image_size)

    return decode


def decode_files(files: list[str], image_size: int, on_bad: str, skipped: list[str]):
    """Decode all files, upright: TensorFlow's in parallel (if any fails, found file by file),
    then the WebP files with Pillow. (images of the files that decoded, which did)."""
    if not files:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.ones(0, bool)
    out = _allocate(len(files), image_size)
    headers = [photos.read_header(f) for f in files]
    ok = np.ones(len(files), bool)
    by_tf = np.array([i for i, h in enumerate(headers) if not h.by_pillow], np.int64)
    if len(by_tf):
        ok[by_tf] = _decode_with_tensorflow(files, by_tf, image_size, out, on_bad, skipped)
    for i, header in enumerate(headers):
        if header.by_pillow:
            try:
                out[i] = photos.decode_with_pillow(files[i], image_size)
            except Exception as exc:  # whatever Pillow raises, it is this file's problem
                ok[i] = _bad_file(files[i], exc, on_bad, skipped)
    photos.turn_upright(out, [h.orientation for h in headers])
    return (out, ok) if ok.all() else (out[ok], ok)


def _decode_with_tensorflow(files, at, image_size: int, out, on_bad: str, skipped) -> np.ndarray:
    """files[at] decoded into out[at] by the parallel pipeline; which of them decoded."""
    import tensorflow as tf

    decode = _decode_fn(image_size)
    ds = (
        tf.data.Dataset.from_tensor_slices([files[i] for i in at])
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(256)
        .prefetch(2)
    )
    if _decode_batched(ds, out, at):
        return np.ones(len(at), bool)
    out[at] = 0
    return _decode_one_by_one(files, at, decode, out, on_bad, skipped)


def _allocate(n: int, image_size: int) -> np.ndarray:
    """The array the decoded images fill in place (held once); DataError when it does not fit."""
    try:
        return np.empty((n, image_size, image_size, 3), np.uint8)
    except MemoryError:
        raise DataError(
            f"data: {n} decoded images ({size_text(n * image_size**2 * 3)}) do not fit in the "
            "memory this process may use; lower data.max_memory_mb (or leave it unset) to stream "
            "them from disk"
        ) from None


def _decode_batched(ds, out: np.ndarray, at: np.ndarray) -> bool:
    """Fill out[at] from the parallel pipeline; False when some file did not decode."""
    import tensorflow as tf

    contiguous = len(at) == len(out)  # every file (no WebP): slices, no index arrays
    try:
        done = 0
        for b in ds:
            rows = slice(done, done + len(b)) if contiguous else at[done : done + len(b)]
            out[rows] = b.numpy()
            done += len(b)
        return True
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.UnknownError,
        tf.errors.ResourceExhaustedError,
    ):
        return False


def _decode_one_by_one(
    files: list[str], at: np.ndarray, decode, out: np.ndarray, on_bad: str, skipped: list[str]
) -> np.ndarray:
    """Decode files[at] one by one into out[at]; which decoded (see _bad_file for the others)."""
    import tensorflow as tf

    ok = np.ones(len(at), bool)
    for k, i in enumerate(at):
        try:
            out[i] = decode(tf.constant(files[i])).numpy()
        except (tf.errors.OpError, ValueError) as exc:
            ok[k] = _bad_file(files[i], exc, on_bad, skipped)
    return ok


def _bad_file(path: str, exc: Exception, on_bad: str, skipped: list[str]) -> bool:
    """A file that did not decode: DataError naming it, or (on_bad=skip) logged, listed in
    `skipped` and left out (False)."""
    msg = first_line(exc, 120)
    if on_bad != "skip":
        raise DataError(
            f"{path}: cannot decode image ({msg}); remove it, or set data.on_bad_image=skip"
        ) from None
    log.warning("skipping %s: cannot decode image (%s)", path, msg)
    skipped.append(path)
    return False


def _materialize(split: FileSplit, image_size: int, on_bad: str, skipped: list[str]) -> Split:
    images, ok = decode_files(split.files, image_size, on_bad, skipped)
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
            images, ok = decode_files(
                split.files[start : start + DECODE_CHUNK], image_size, on_bad, skipped
            )
            writer.append(images)
            keep[start : start + len(ok)] = ok
    except BaseException:
        writer.abort()
        raise
    return Split(writer.close(), labels[keep])


def stream_folder(scan: FolderScan, cfg, image_size: int, target: Path) -> Dataset:
    """The decoded splits as .npy files in `target`, decoded chunk by chunk and read a batch at a
    time."""
    skipped = list(scan.skipped)
    splits = {"train": scan.train, "val": scan.val, **({"test": scan.test} if scan.test else {})}
    with decoded_writer(target) as out:
        for name, split in splits.items():
            done = _stream_split(split, image_size, cfg.on_bad_image, skipped, out.images(name))
            out.split(name, done.labels)
        out.finish(scan.class_names, skipped)
    return read_decoded(target, stream=True)


class DecodedWriter:
    """Writes the decoded-splits layout that read_decoded reads: `<split>_images.npy`,
    `<split>_labels.npy` per split, then meta.json (class names, skipped files, splits)."""

    def __init__(self, where: Path):
        self.dir, self.names = where, []

    def images(self, name: str) -> Path:
        return self.dir / f"{name}_images.npy"

    def split(self, name: str, labels, images=None) -> None:
        """A split's labels, and its images unless they were streamed into images(name)."""
        if images is not None:
            np.save(self.images(name), images)
        np.save(self.dir / f"{name}_labels.npy", np.asarray(labels))
        self.names.append(name)

    def finish(self, class_names, skipped) -> None:
        import json

        meta = {"class_names": list(class_names), "skipped": list(skipped), "splits": self.names}
        (self.dir / "meta.json").write_text(json.dumps(meta))


@contextmanager
def decoded_writer(target: Path):
    """The one way decoded splits are written (the decoded cache, streamed data): into a temp dir
    beside `target`, renamed to it when complete, so a reader sees a whole set or none. Another
    process that renamed its set first wins (theirs is read); a failure removes the temp dir."""
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    budget.remove_stale(target.parent)  # left by a killed process of this host
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{budget.tmp_tag()}"))
    try:
        yield DecodedWriter(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process wrote the same data first: read theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_decoded(where: Path, stream: bool) -> Dataset:
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
