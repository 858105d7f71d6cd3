"""The photo folders users bring: Roboflow's train/valid/test, Kaggle's train/test, WebP files,
and files thaw does not read, each read or refused with one line that says what to do."""

import logging

import numpy as np
import pytest
from imagefiles import write_image
from omegaconf import OmegaConf
from PIL import Image

from thaw.config.schema import DataConfig
from thaw.data import load
from thaw.data.scan import scan_folder
from thaw.errors import DataError


def cfg(path, **kw):
    return OmegaConf.merge(
        OmegaConf.structured(DataConfig(name="folder")), {"path": str(path), **kw}
    )


def folder(root, splits, per_class=4):
    for split in splits:
        for c, color in (("ants", (200, 30, 30)), ("bees", (30, 30, 200))):
            for i in range(per_class):
                write_image(root / split / c / f"{c}.{split or 'all'}.{i}.jpg", color)
    return root


def test_a_roboflow_export_reads_valid_as_validation_and_says_test_is_not_read(tmp_path, caplog):
    root = folder(tmp_path / "export", ["train", "valid", "test"])
    with caplog.at_level(logging.WARNING, logger="thaw.data"):
        scan = scan_folder(cfg(root))
    assert scan.class_names == ["ants", "bees"]
    assert all("/valid/" in f for f in scan.val.files) and len(scan.val.files) == 8
    assert all("/train/" in f for f in scan.train.files) and len(scan.train.files) == 8
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{root / 'test'} is not read" in m and "data.test_fraction" in m for m in said)


@pytest.mark.parametrize("present, missing", [("train", "validation"), ("val", "train")])
def test_half_a_split_layout_is_refused_naming_the_missing_folder(tmp_path, present, missing):
    root = folder(tmp_path / "kaggle", [present, "test"])
    with pytest.raises(DataError) as err:
        scan_folder(cfg(root))
    msg = str(err.value)
    assert "\n" not in msg and f"{present}/ with class folders but no {missing} folder" in msg
    assert f"set data.path to {root / present}" in msg


def test_a_class_named_train_with_photos_in_it_is_still_a_class(tmp_path):
    """Only a train/ of class folders is a split; a class folder of photos called train is not."""
    root = tmp_path / "odd"
    for c in ("train", "other"):
        for i in range(4):
            write_image(root / c / f"{c}{i}.jpg", (90, 90, 90))
    assert scan_folder(cfg(root, val_fraction=0.25)).class_names == ["other", "train"]


def _gradient(shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:24, 0:24]
    return np.stack([x * 9 + shift, y * 9, (x + y) * 4], -1).astype(np.uint8)


def test_webp_photos_are_read_opaque_transparent_animated_or_turned(tmp_path):
    """TensorFlow's WebP decoder refuses transparency and animation; thaw decodes every WebP."""
    root = folder(tmp_path / "web", [""])
    opaque, clear, first, second = _gradient(), _gradient(20), _gradient(40), _gradient(60)
    Image.fromarray(opaque).save(root / "ants" / "opaque.webp", lossless=True)
    alpha = np.full((24, 24, 1), 90, np.uint8)
    Image.fromarray(np.concatenate([clear, alpha], -1), "RGBA").save(
        root / "ants" / "transparent.webp", lossless=True
    )
    frames = [Image.fromarray(first), Image.fromarray(second)]
    frames[0].save(
        root / "bees" / "animated.webp",
        save_all=True,
        append_images=frames[1:],
        lossless=True,
        duration=100,
    )
    turned = Image.fromarray(np.rot90(opaque, 1).copy())
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(root / "bees" / "phone.webp", lossless=True, exif=exif)
    scan = scan_folder(cfg(root, val_fraction=0.25))
    assert len(scan.train.files) + len(scan.val.files) == 12
    data = load(cfg(root, val_fraction=0.25), 24, 0)
    images = np.concatenate([data.train.images, data.val.images])
    # lossless, decoded at their own size: the same pixels, alpha dropped, the first frame
    for want in (opaque, clear, first):
        assert any(np.array_equal(img, want) for img in images)
    assert sum(np.array_equal(img, opaque) for img in images) == 2  # the turned copy too


def test_a_broken_webp_is_named_in_one_line(tmp_path):
    root = folder(tmp_path / "web", [""])
    cut = root / "ants" / "cut.webp"
    Image.fromarray(_gradient()).save(cut, lossless=True)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    with pytest.raises(DataError) as err:
        load(cfg(root, val_fraction=0.25), 24, 0)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_files_thaw_does_not_read_are_counted_in_one_warning(tmp_path, caplog):
    root = folder(tmp_path / "mixed", [""])
    (root / "ants" / "IMG_0001.HEIC").write_bytes(b"\x00" * 16)
    (root / "ants" / "IMG_0002.heic").write_bytes(b"\x00" * 16)
    (root / "bees" / "notes.txt").write_text("x")
    write_image(root / "bees" / "more" / "deeper.jpg", (30, 30, 200))
    with caplog.at_level(logging.WARNING, logger="thaw.data"):
        scan_folder(cfg(root, val_fraction=0.25))
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(said) == 1
    assert "4 entries" in said[0] and ".heic: 2" in said[0] and "sub-folder: 1" in said[0]
    assert ".txt: 1" in said[0]


def _refusal(root, **kw) -> str:
    with pytest.raises(DataError) as err:
        scan_folder(cfg(root, **kw))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_an_unzipped_archives_own_folder_is_named_as_the_folder_to_point_at(tmp_path):
    """flower_photos.tgz unzips to flower_photos/{daisy,...}: data.path one level too high."""
    inner = folder(tmp_path / "downloads" / "flower_photos", [""])
    (inner / "LICENSE.txt").write_text("CC-BY")
    msg = _refusal(tmp_path / "downloads")
    assert msg.startswith(f"{inner}: class folder has no images")
    assert "it holds sub-folder: 2, .txt: 1" in msg
    assert msg.endswith(f"if its sub-folders are the classes, set data.path to {inner}")
    # inside train/ the same wrapper is not a data.path: that would leave validation/ out
    split = tmp_path / "split"
    folder(split / "train" / "flower_photos", [""])
    folder(split / "validation", [""])
    msg = _refusal(split)
    assert "train/flower_photos: class folder has no images" in msg and "data.path" not in msg


def test_empty_class_folders_say_what_they_hold_instead(tmp_path):
    """Photos one level deeper (by year), or only in a format thaw does not read (iPhone HEIC)."""
    by_year = tmp_path / "by_year"
    for c in ("ants", "bees"):
        for year in ("2019", "2020"):
            write_image(by_year / c / year / f"{c}.{year}.jpg", (90, 90, 90))
    msg = _refusal(by_year)
    assert "ants: class folder has no images" in msg and "it holds sub-folder: 2" in msg
    assert msg.endswith("images in sub-folders are not read: put each class's images in its folder")
    for c in ("ants", "bees"):
        (tmp_path / "iphone" / c).mkdir(parents=True)
        (tmp_path / "iphone" / c / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    assert _refusal(tmp_path / "iphone").endswith(
        "ants: class folder has no images (.jpg, .jpeg, .png, .bmp, .gif, .webp); it holds .heic: 1"
    )


def test_a_class_folder_left_empty_by_skipped_bad_files_says_so(tmp_path):
    root = folder(tmp_path / "photos", [""])
    for f in (root / "bees").iterdir():
        f.write_bytes(b"not a photo")
    msg = _refusal(root, on_bad_image="skip")
    assert "bees: class folder has no images" in msg and "left after 4 bad image file(s)" in msg
