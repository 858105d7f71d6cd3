"""thaw.data.seen: images matched by their bytes, each counted once."""

from imagefiles import write_image
from omegaconf import OmegaConf

from thaw.config.schema import DataConfig
from thaw.data.seen import ContentIndex, seen_in_splits


def folder_cfg(path, **kw):
    return OmegaConf.merge(
        OmegaConf.structured(DataConfig(name="folder")), {"path": str(path), **kw}
    )


def test_a_renamed_copy_matches_and_a_same_size_file_does_not(tmp_path):
    known = tmp_path / "known.jpg"
    known.write_bytes(b"A" * 100)
    copy, other, missing = tmp_path / "IMG_1.jpg", tmp_path / "known2.jpg", tmp_path / "gone.jpg"
    copy.write_bytes(b"A" * 100)
    other.write_bytes(b"B" * 100)  # the same size, other bytes
    index = ContentIndex({"train": [str(known)], "validation": [str(missing)]})
    assert index.split_of(str(copy)) == "train"
    assert index.split_of(str(other)) is None and index.split_of(str(missing)) is None


def test_each_image_counts_once_in_its_first_split(tmp_path):
    """A photo in both train/ and validation/ (a duplicate in the data set) is a training image;
    with train_on_val every validation image is one, and no count exceeds the images given."""
    for split, colours in (("train", (10, 20)), ("validation", (20, 30))):
        for c in ("ants", "bees"):
            for i, shade in enumerate(colours):
                write_image(tmp_path / "d" / split / c / f"{c}{i}.jpg", (shade, shade, 200))
    given = sorted(str(p) for p in (tmp_path / "d" / "validation").rglob("*.jpg"))
    seen = seen_in_splits(folder_cfg(tmp_path / "d"), given)
    assert seen == {"train": 2, "validation": 2}  # shade 20 is in both: counted as training
    retrained = seen_in_splits(folder_cfg(tmp_path / "d", train_on_val=True), given)
    assert retrained == {"train": 4, "validation": 0}


def test_only_a_folder_that_is_still_there_is_compared(tmp_path):
    assert seen_in_splits(OmegaConf.create({"name": "synthetic"}), []) is None
    assert seen_in_splits(folder_cfg(tmp_path / "gone"), []) is None


def test_an_older_partial_run_config_is_not_compared_and_does_not_fail(tmp_path):
    import numpy as np

    from thaw.commands.evaluate import seen_by_run

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # a run from before resolved_config.yaml, keys missing
    (run / ".hydra" / "config.yaml").write_text(f"data:\n  name: folder\n  path: {tmp_path}\n")
    assert seen_by_run(run, [], np.zeros(0, bool)) == {"seen_by_run": None, "accuracy_on_new": None}


def test_the_warning_says_when_the_other_images_are_the_test_split():
    from thaw.commands.evaluate import seen_warning

    r = {
        "num_images": 153,
        "seen_by_run": {"train": 0, "validation": 76, "test": 77},
        "accuracy_on_new": {"accuracy": 0.9091, "num_images": 77},
    }
    line = seen_warning(r)
    assert line.startswith("of these 153 images, 76 are validation images")
    assert "on the other 77 (its held-out test split: test_accuracy in metrics.json)" in line
    r["seen_by_run"]["test"], r["accuracy_on_new"]["num_images"] = 10, 77
    assert "on the other 77 (10 of them its held-out test split)" in seen_warning(r)
    r["accuracy_on_new"]["num_images"] = 0
    assert seen_warning(r).endswith("evaluate on images the run never read for an honest figure")
