"""thaw.data.seen: images matched by their bytes, not their names."""

from omegaconf import OmegaConf

from thaw.data.seen import same_content, seen_in_splits


def test_a_renamed_copy_matches_and_a_same_size_image_does_not(tmp_path):
    known = tmp_path / "known.jpg"
    known.write_bytes(b"A" * 100)
    copy, other, missing = tmp_path / "IMG_1.jpg", tmp_path / "known2.jpg", tmp_path / "gone.jpg"
    copy.write_bytes(b"A" * 100)
    other.write_bytes(b"B" * 100)  # the same size, other bytes
    digests: dict = {}
    files = [str(copy), str(other), str(missing)]
    assert same_content(files, [str(known)], digests) == 1
    assert same_content([str(known)], [str(missing)], digests) == 0


def test_only_a_folder_that_is_still_there_is_compared(tmp_path):
    assert seen_in_splits(OmegaConf.create({"name": "synthetic"}), []) is None
    gone = OmegaConf.structured(
        {"name": "folder", "path": str(tmp_path / "gone"), "num_classes": None}
    )
    assert seen_in_splits(gone, []) is None
