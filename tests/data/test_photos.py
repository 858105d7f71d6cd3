"""Photos are decoded upright: a JPEG's EXIF orientation (how phone cameras store portrait photos)
is applied in training, prediction and evaluation alike, as Pillow shows the photo."""

import numpy as np
from imagefiles import make_folder
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from thaw.config.schema import DataConfig
from thaw.data import load
from thaw.data.decode import decode_files
from thaw.data.photos import exif_orientation
from thaw.model.inference import decode_images

SIDE = 48


def _picture(height: int = SIDE, width: int = SIDE) -> np.ndarray:
    """A smooth picture no turn or mirror maps onto itself (a red block near the top left)."""
    y, x = np.mgrid[0:height, 0:width]
    pic = np.stack([x * 5, y * 5, (x + y) * 2], -1).astype(np.uint8)
    pic[4:16, 4:28] = [250, 20, 20]
    return pic


def _jpeg(path, pixels: np.ndarray, orientation: int | None):
    im = Image.fromarray(pixels)
    exif = im.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif)
    return str(path)


def _as_pillow_shows(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.int32)


def test_every_exif_orientation_decodes_as_pillow_shows_the_photo(tmp_path):
    files = [_jpeg(tmp_path / f"o{o}.jpg", _picture(), o) for o in range(1, 9)]
    shown = [_as_pillow_shows(f) for f in files]
    images, ok = decode_files(files, SIDE, "error", [])
    assert ok.all()
    for o, img in enumerate(images, start=1):
        diffs = [np.abs(img.astype(np.int32) - s).mean() for s in shown]
        # two JPEG decoders differ by a level or so; a wrong turn differs by tens
        assert diffs[o - 1] < 3, (o, diffs)
        assert int(np.argmin(diffs)) == o - 1, (o, diffs)


def test_a_portrait_phone_photo_trains_and_predicts_upright(tmp_path):
    """A phone stores a portrait photo's pixels turned 90 degrees, with orientation 6; training
    (a folder) and thaw-predict both decode it as its upright copy, squashed to a square as that
    copy is (a phone photo is not square: the turn comes after the resize)."""
    upright = _picture(height=64, width=40)
    sideways = np.rot90(upright, 1).copy()  # what the sensor stored; orientation 6 turns it back
    phone = _jpeg(tmp_path / "phone.jpg", sideways, 6)
    copy = _jpeg(tmp_path / "upright.jpg", upright, None)
    assert (exif_orientation(phone), exif_orientation(copy)) == (6, 1)

    predicted, good, problems = decode_images([phone, copy], SIDE)
    assert good == [phone, copy] and not problems
    assert np.abs(predicted[0].astype(int) - predicted[1].astype(int)).mean() < 3

    # two folders alike but for how the photo is stored: the same training images
    loaded = []
    for name, pixels, orientation in (("phone", sideways, 6), ("camera", upright, None)):
        root = make_folder(tmp_path / name, per_class=4)
        _jpeg(root / "cats" / "portrait.jpg", pixels, orientation)
        cfg = OmegaConf.merge(
            OmegaConf.structured(DataConfig(name="folder")),
            {"path": str(root), "val_fraction": 0.25},
        )
        loaded.append(load(cfg, SIDE, 0))
    phone_data, camera_data = loaded
    assert len(phone_data.train) + len(phone_data.val) == 9
    for split in ("train", "val"):
        a, b = getattr(phone_data, split), getattr(camera_data, split)
        np.testing.assert_array_equal(a.labels, b.labels)
        per_image = np.abs(a.images.astype(int) - b.images.astype(int)).mean(axis=(1, 2, 3))
        assert per_image.max() < 3, per_image


def test_photos_are_turned_upright_when_a_bad_file_is_skipped(tmp_path):
    """The file-by-file decode (after a bad file) turns the photos the same way."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    phone = _jpeg(tmp_path / "phone.jpg", np.rot90(_picture(), 1).copy(), 6)  # square: Pillow
    skipped: list[str] = []
    images, ok = decode_files([str(bad), phone], SIDE, "skip", skipped)
    assert ok.tolist() == [False, True] and skipped == [str(bad)]
    assert np.abs(images[0].astype(int) - _as_pillow_shows(phone)).mean() < 3
