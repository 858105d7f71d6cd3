"""Crash-safe writes keep what they replace intact until the new file is whole, and keep its
permissions."""

import os

from thaw.runtime.outputs import write_text_atomic


def test_a_replaced_file_keeps_its_permissions_and_a_new_one_is_readable(tmp_path):
    private = tmp_path / "predictions.csv"
    private.write_text("old")
    os.chmod(private, 0o600)
    write_text_atomic(private, "new")
    assert private.read_text() == "new" and (private.stat().st_mode & 0o777) == 0o600
    fresh = tmp_path / "report.html"
    write_text_atomic(fresh, "page")
    assert (fresh.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "report.html"]
