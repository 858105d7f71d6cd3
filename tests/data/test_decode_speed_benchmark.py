"""benchmarks/decode_speed.py measures thaw's own decode: every shared photo, and how many of them
the EXIF pass turns."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("THAW_SHARED_DIR", ROOT.parent / "shared"))
PHOTOS = SHARED / "data" / "cats_vs_dogs"


@pytest.mark.slow
@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"needs the shared photos in {PHOTOS}")
def test_a_round_decodes_every_shared_photo_and_finds_them_upright(tmp_path):
    out = tmp_path / "decode.jsonl"
    cmd = [sys.executable, "benchmarks/decode_speed.py", "--size", "32", "--rounds", "1"]
    run = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    round_row, summary = [json.loads(line) for line in out.read_text().splitlines()]
    photos = len(list(PHOTOS.glob("*/*/*.jpg")))
    assert round_row["images"] == summary["images"] == photos
    assert round_row["turned_photos"] == 0  # the shared photos carry no turn: figures unchanged
    assert round_row["header_pass_s"] > 0 and summary["decode_s_best"] == round_row["decode_s"]
