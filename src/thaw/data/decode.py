"""Decoding a scanned folder once into uint8 arrays (Pillow + TensorFlow resize): in memory, or
chunk by chunk into .npy files on disk that are streamed a batch at a time.

Photos are decoded upright: phone cameras store a JPEG's pixels as the sensor saw them and the
turn that shows them upright in the EXIF orientation tag, which TensorFlow's decoder ignores
(a portrait photo would train on its side). Pillow reads the tag from the file's header, and the
few photos that have one are turned after the resize, as Pillow's ImageOps.exif_transpose shows
them: squashing to a square and turning by quarter turns or mirroring commute, and the pipeline of
every other photo stays as it was."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from thaw.data import budget
from thaw.data.diskarray import DiskArray, DiskArrayWriter
from thaw.data.scan import scan_folder
from thaw.data.splits import Dataset, FileSplit, FolderScan, Split, size_text
from thaw.errors import DataError

log = logging.getLogger("thaw.data")


EXIF_ORIENTATION = 0x0112  # 1 = upright; 2-8: mirrored and/or turned by a multiple of 90 degrees
# what shows a square image of each orientation upright (Pillow's exif_transpose, value by value)
_UPRIGHT = {
    2: lambda img: img[:, ::-1],
    3: lambda img: np.rot90(img, 2),
    4: lambda img: img[::-1],
    5: lambda img: img.transpose(1, 0, 2),
    6: lambda img: np.rot90(img, 3),  # the usual portrait photo from a phone
    7: lambda img: np.rot90(img.transpose(1, 0, 2), 2),
    8: lambda img: np.rot90(img, 1),
}


def exif_orientation(path: str) -> int:
    """A JPEG's EXIF orientation (1 for other formats, no tag, or an unreadable file: the decoder
    reports the file)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format not in ("JPEG", "MPO"):
                return 1
            value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a bad file is the decoder's to report, one line per file
        return 1
    return value if value in _UPRIGHT else 1


def _turn_upright(images: np.ndarray, orientations: list[int]) -> None:
    """Turn, in place, each decoded (square) image whose photo has an EXIF orientation."""
    for i, orientation in enumerate(orientations):
        if orientation != 1:
            images[i] = _UPRIGHT[orientation](images[i]).copy()


def _decode_fn(image_size: int):
    import tensorflow as tf

    def decode(path):
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
        img.set_shape([None, None, 3])
        img = tf.image.resize(img, (image_size, image_size), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    return decode


def decode_files(files: list[str], image_size: int, on_bad: str, skipped: list[str]):
    """Decode all files in parallel, upright; if any fails, find which ones file by file."""
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
    out = _allocate(len(files), image_size)
    orientations = [exif_orientation(f) for f in files]
    if _decode_batched(ds, out):
        _turn_upright(out, orientations)
        return out, np.ones(len(files), bool)
    out[:] = 0
    ok = _decode_one_by_one(files, decode, out, on_bad, skipped)
    _turn_upright(out, orientations)
    return out[ok], ok


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


def _decode_batched(ds, out: np.ndarray) -> bool:
    """Fill `out` from the parallel pipeline; False when some file did not decode."""
    import tensorflow as tf

    try:
        at = 0
        for b in ds:
            out[at : at + len(b)] = b.numpy()
            at += len(b)
        return True
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.UnknownError,
        tf.errors.ResourceExhaustedError,
    ):
        return False


def _decode_one_by_one(
    files: list[str], decode, out: np.ndarray, on_bad: str, skipped: list[str]
) -> np.ndarray:
    """Decode file by file into `out`: a bad file raises DataError, or (on_bad=skip) is logged,
    listed in `skipped` and left out; which files decoded."""
    import tensorflow as tf

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
    return ok


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
