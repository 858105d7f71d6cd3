"""Folder scanning and splitting (pure Python), decoding, synthetic data."""

import numpy as np
import pytest
from imagefiles import make_folder, write_image
from omegaconf import OmegaConf

from thaw.config.schema import DataConfig
from thaw.data import DataState, load, load_synthetic, scan_folder
from thaw.errors import DataError


def cfg(**kw):
    base = OmegaConf.structured(DataConfig(name="folder"))
    return OmegaConf.merge(base, kw)


def test_train_validation_layout(tmp_path):
    make_folder(tmp_path, layout="split", per_class=3)
    scan = scan_folder(cfg(path=str(tmp_path)))
    assert scan.class_names == ["cats", "dogs"]
    assert len(scan.train.files) == 6 and len(scan.val.files) == 6
    assert all("/train/" in f for f in scan.train.files)
    assert all("/validation/" in f for f in scan.val.files)


def test_val_fraction_split_is_deterministic_and_disjoint(tmp_path):
    make_folder(tmp_path, per_class=10)
    a = scan_folder(cfg(path=str(tmp_path), val_fraction=0.3))
    b = scan_folder(cfg(path=str(tmp_path), val_fraction=0.3))
    assert a.train.files == b.train.files and a.val.files == b.val.files
    assert not set(a.train.files) & set(a.val.files)
    assert len(a.val.files) == 6 and len(a.train.files) == 14


def test_test_split_is_held_out_of_validation(tmp_path):
    make_folder(tmp_path, layout="split", per_class=8)
    scan = scan_folder(cfg(path=str(tmp_path), test_fraction=0.5))
    assert len(scan.test.files) == 8 and len(scan.val.files) == 8
    assert not set(scan.test.files) & set(scan.val.files)
    assert not set(scan.test.files) & set(scan.train.files)


@pytest.mark.parametrize("problem", ["one_class", "empty_class", "different_classes", "no_classes"])
def test_bad_folders_are_refused(tmp_path, problem):
    if problem == "one_class":
        make_folder(tmp_path, classes=("cats",))
        match = "only one class"
    elif problem == "empty_class":
        make_folder(tmp_path)
        (tmp_path / "birds").mkdir()
        match = "birds: class folder has no images"
    elif problem == "different_classes":
        make_folder(tmp_path, layout="split")
        (tmp_path / "validation" / "dogs").rename(tmp_path / "validation" / "wolves")
        match = "different classes"
    else:
        (tmp_path / "readme.txt").write_text("hi")
        match = "no class sub-folders"
    with pytest.raises(DataError, match=match):
        scan_folder(cfg(path=str(tmp_path)))


def test_text_file_named_jpg_is_refused_or_skipped(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "cats" / "fake.jpg"
    bad.write_text("this is not an image")
    with pytest.raises(DataError, match="fake.jpg: not a JPEG"):
        scan_folder(cfg(path=str(tmp_path)))
    scan = scan_folder(cfg(path=str(tmp_path), on_bad_image="skip"))
    assert str(bad) in scan.skipped
    assert str(bad) not in scan.train.files + scan.val.files


def test_truncated_jpeg_is_named_at_decode(tmp_path):
    make_folder(tmp_path, per_class=5)
    good = write_image(tmp_path / "dogs" / "big.jpg", (10, 20, 30), size=128)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])  # header intact, body cut
    with pytest.raises(DataError, match="big.jpg: cannot decode"):
        load(cfg(path=str(tmp_path), val_fraction=0.5), 32, 0)
    ds = load(cfg(path=str(tmp_path), val_fraction=0.5, on_bad_image="skip"), 32, 0)
    assert str(good) in ds.skipped
    assert len(ds.train) + len(ds.val) == 10


def test_decoded_images_are_resized_uint8_with_labels(tmp_path):
    make_folder(tmp_path, per_class=4, fmt="png")
    ds = load(cfg(path=str(tmp_path), val_fraction=0.25), 40, 0)
    assert ds.train.images.shape == (6, 40, 40, 3) and ds.train.images.dtype == np.uint8
    assert sorted(set(ds.train.labels.tolist())) == [0, 1]
    # class colour survives decoding: cats are red-dominant, dogs blue-dominant at the border
    for img, lab in zip(ds.train.images, ds.train.labels):
        r, b = int(img[0, 0, 0]), int(img[0, 0, 2])
        assert (r > b) == (lab == 0)


def test_synthetic_is_balanced_and_reproducible():
    c = OmegaConf.structured(DataConfig(name="synthetic", num_classes=3, num_train=30, num_val=12))
    a = load_synthetic(c, 32, 7)
    b = load_synthetic(c, 32, 7)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert np.bincount(a.train.labels).tolist() == [10, 10, 10]
    assert a.class_names == ["circle", "square", "triangle"]
    assert not np.array_equal(a.train.images[:12], a.val.images)


def test_real_folder_layout_scans(cats_dogs):
    scan = scan_folder(cfg(path=str(cats_dogs), test_fraction=0.5))
    assert scan.class_names == ["cats", "dogs"]
    assert len(scan.train.files) == 2000
    assert len(scan.val.files) == 1000 and len(scan.test.files) == 1000


def test_decoded_cache_is_read_by_later_loads_and_follows_the_files(tmp_path, caplog):
    """trainer.cache_dir: a later process (here: the in-process cache cleared) reads the decoded
    splits from disk, identical to decoding; a changed file means decoding again."""
    import logging
    import os

    root, cache = tmp_path / "photos", tmp_path / "cache"
    make_folder(root, per_class=4, fmt="png")
    c = cfg(path=str(root), val_fraction=0.25)
    first = load(c, 32, 0, str(cache))
    with caplog.at_level(logging.INFO, logger="thaw.data"):
        second = load(c, 32, 0, str(cache))
    assert any("read the decoded splits" in r.getMessage() for r in caplog.records)
    assert (
        isinstance(second.train.images, np.ndarray) and second.streamed_from is None
    )  # fits: in memory
    for a, b in ((first.train, second.train), (first.val, second.val)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert second.class_names == first.class_names
    # one file rewritten (new size/mtime): another entry, decoded afresh
    victim = sorted(root.rglob("*.png"))[0]
    write_image(victim, (0, 255, 0), size=30, fmt="png")
    os.utime(victim, ns=(1, 1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="thaw.data"):
        load(c, 32, 0, str(cache))
    assert not any("read the decoded splits" in r.getMessage() for r in caplog.records)
    assert len(list((cache / "decoded").iterdir())) == 2


def test_a_decoded_cache_cut_short_is_decoded_again_and_rewritten(tmp_path, caplog):
    """A power loss can leave a renamed-in cache file empty (never flushed): the next run decodes
    again, says so, and writes the cache anew, instead of failing on every later run."""
    import logging

    root, cache = tmp_path / "photos", tmp_path / "cache"
    make_folder(root, per_class=4, fmt="png")
    c = cfg(path=str(root), val_fraction=0.25)
    first = load(c, 32, 0, str(cache))
    [entry] = list((cache / "decoded").iterdir())
    (entry / "train_images.npy").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="thaw.data"):
        again = load(c, 32, 0, str(cache))
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    assert np.array_equal(again.train.images, first.train.images)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="thaw.data"):
        third = load(c, 32, 0, str(cache))
    assert any("read the decoded splits" in r.getMessage() for r in caplog.records)
    assert np.array_equal(third.train.images, first.train.images)


def test_a_folder_is_decoded_once_whatever_the_seed(tmp_path):
    """Only synthetic data depends on trainer.seed: a sweep over seeds reuses the decoded folder."""
    from thaw.config.schema import DataConfig

    make_folder(tmp_path, per_class=4, fmt="png")
    state = DataState()  # what a Workspace keeps: the decoded set, reused by the next run
    c = cfg(path=str(tmp_path), val_fraction=0.25)
    assert load(c, 32, 1, state=state) is load(c, 32, 2, state=state)
    assert load(c, 32, 1) is not load(c, 32, 1)  # fresh states share nothing
    synth = OmegaConf.merge(
        OmegaConf.structured(DataConfig(name="synthetic")), dict(num_train=8, num_val=4)
    )
    a, b = load(synth, 32, 1, state=state), load(synth, 32, 2, state=state)
    assert a is not b and not np.array_equal(a.train.images, b.train.images)
