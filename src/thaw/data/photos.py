"""One photo file's facts from its header (Pillow), and the decoding TensorFlow's decoder does not
do right: the EXIF turn that shows a phone photo upright, and WebP files, which Pillow decodes.

Phone cameras store a JPEG's pixels as the sensor saw them and the turn that shows them upright in
the EXIF orientation tag, which TensorFlow's decoder ignores (a portrait photo would train on its
side). The few photos with a turn are turned after the resize, as Pillow's ImageOps.exif_transpose
shows them: squashing to a square and quarter turns or mirrors commute. TensorFlow's WebP decoder
refuses WebP files with transparency or animation (and older TensorFlow any WebP), so Pillow
decodes WebP, keeping the first frame and dropping transparency as TensorFlow does for PNG."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

EXIF_ORIENTATION = 0x0112  # 1 = upright; 2-8: mirrored and/or turned by a multiple of 90 degrees
EXIF_FORMATS = ("JPEG", "MPO", "WEBP")  # where Pillow reads EXIF from the header alone
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


class PhotoHeader(NamedTuple):
    orientation: int = 1  # EXIF orientation; 1 also for no tag or an unreadable file
    by_pillow: bool = False  # a WebP file: Pillow decodes it, not TensorFlow


def read_header(path: str) -> PhotoHeader:
    """What decoding `path` needs to know (a bad file gets the defaults: the decoder reports it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return PhotoHeader(orientation_of(im), im.format == "WEBP")
    except Exception:  # a bad file is the decoder's to report, one line per file
        return PhotoHeader()


def orientation_of(im) -> int:
    """An open Pillow image's EXIF orientation, by the rule decoding follows (1: not turned)."""
    value = im.getexif().get(EXIF_ORIENTATION, 1) if im.format in EXIF_FORMATS else 1
    return value if value in _UPRIGHT else 1


def exif_orientation(path: str) -> int:
    return read_header(path).orientation


def turn_upright(images: np.ndarray, orientations: list[int]) -> None:
    """Turn, in place, each decoded (square) image whose photo has an EXIF orientation."""
    for i, orientation in enumerate(orientations):
        if orientation != 1:
            images[i] = _UPRIGHT[orientation](images[i]).copy()


def resize_to_square(img, image_size: int):
    """uint8 pixels squashed to image_size x image_size, bilinear, rounded (a TensorFlow op)."""
    import tensorflow as tf

    img = tf.image.resize(img, (image_size, image_size), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def decode_with_pillow(path: str, image_size: int) -> np.ndarray:
    """A WebP file's first frame, RGB, resized as TensorFlow's pipeline resizes the others; raises
    what Pillow raises when it cannot decode the file."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return resize_to_square(rgb, image_size).numpy()
