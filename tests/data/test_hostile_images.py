"""Hostile image files, one row each: refused with the file named (data.on_bad_image=error, the
default), or skipped with a warning and counted (data.on_bad_image=skip). Never a crash
mid-epoch."""

import os
import struct
import zlib

import numpy as np
import pytest
from imagefiles import make_folder, write_image
from omegaconf import OmegaConf

from thaw.config.schema import DataConfig
from thaw.data import load
from thaw.errors import DataError

GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def _png_chunk(kind, data):
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_png(path, side=10000):
    """A real, valid 10000x10000 grayscale PNG (100 M pixels; a few hundred KB compressed)."""
    raw = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * side
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def png_of(path, array):
    import tensorflow as tf

    path.write_bytes(tf.io.encode_png(array).numpy())


def make_case(root, case):
    make_folder(root, per_class=4)
    target = root / "cats" / f"odd_{case}"
    if case == "zero_byte":
        target = target.with_suffix(".jpg")
        target.write_bytes(b"")
    elif case == "truncated_jpeg":
        target = write_image(target.with_suffix(".jpg"), (90, 10, 10), size=96)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 3])
    elif case == "text_as_jpg":
        target = target.with_suffix(".jpg")
        target.write_text("<html>not an image</html>")
    elif case == "gif":
        target = target.with_suffix(".gif")
        target.write_bytes(GIF_1X1)
    elif case == "grayscale_png":
        target = target.with_suffix(".png")
        png_of(target, np.full((20, 20, 1), 200, np.uint8))
    elif case == "rgba_png":
        target = target.with_suffix(".png")
        png_of(
            target,
            np.dstack([np.full((20, 20, 3), 200, np.uint8), np.zeros((20, 20, 1), np.uint8)]),
        )
    elif case == "png_16bit":
        target = target.with_suffix(".png")
        png_of(target, np.full((20, 20, 3), 65535, np.uint16))
    elif case == "huge_10000px":
        target = target.with_suffix(".png")
        huge_png(target)
    elif case == "symlink_loop":
        target = target.with_suffix(".jpg")
        os.symlink(target, target)
    return target


# case -> None (a usable image: loaded) or the reason it is refused/skipped
CASES = {
    "zero_byte": "empty file",
    "truncated_jpeg": "cannot decode",
    "text_as_jpg": "not a JPEG",
    "gif": None,
    "grayscale_png": None,
    "rgba_png": None,
    "png_16bit": None,
    "huge_10000px": "too large",
    "symlink_loop": "not a regular file",
}


def cfg(path, on_bad):
    return OmegaConf.merge(
        OmegaConf.structured(DataConfig(name="folder")),
        {"path": str(path), "val_fraction": 0.25, "on_bad_image": on_bad},
    )


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_image(tmp_path, case):
    target = make_case(tmp_path, case)
    reason = CASES[case]
    if reason is None:
        ds = load(cfg(tmp_path, "error"), 24, 0)
        assert len(ds.train) + len(ds.val) == 9 and not ds.skipped
        assert ds.train.images.shape[1:] == (24, 24, 3) and ds.train.images.dtype == np.uint8
        if case == "png_16bit":  # 16-bit white is scaled to 8-bit white, not wrapped
            imgs = np.concatenate([ds.train.images, ds.val.images])
            assert (imgs.reshape(len(imgs), -1).min(axis=1) == 255).any()
        return
    with pytest.raises(DataError) as info:
        load(cfg(tmp_path, "error"), 24, 0)
    msg = str(info.value)
    assert target.name in msg and reason in msg and "\n" not in msg
    ds = load(cfg(tmp_path, "skip"), 24, 0)
    assert str(target) in ds.skipped
    assert len(ds.train) + len(ds.val) == 8
