"""Write small real image files (JPEG/PNG via TensorFlow's encoders) for data tests."""

from pathlib import Path

import numpy as np


def write_image(path: Path, color, size=24, fmt="jpeg"):
    import tensorflow as tf

    img = np.zeros((size, size, 3), np.uint8)
    img[:] = color
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255 - np.asarray(color, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tf.io.encode_jpeg(img).numpy() if fmt == "jpeg" else tf.io.encode_png(img).numpy()
    path.write_bytes(data)
    return path


def make_folder(root: Path, classes=("cats", "dogs"), per_class=6, layout="flat", fmt="jpeg"):
    colors = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]
    ext = "jpg" if fmt == "jpeg" else "png"
    splits = ["train", "validation"] if layout == "split" else [""]
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(
                    root / split / name / f"{name}.{split or 'all'}.{i}.{ext}", colors[c], fmt=fmt
                )
    return root
