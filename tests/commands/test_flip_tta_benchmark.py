"""benchmarks/flip_tta.py measures the split and model thaw's own test figure uses."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_RUN, thaw_train

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "flip_tta.py"


def test_the_plain_figure_is_the_runs_test_accuracy(tmp_path):
    run_dir = tmp_path / "run"
    # a saved model with a 16-image test split
    overrides = [*TINY_RUN, "trainer.save_model=true", "data.num_test=16"]
    res = thaw_train([*overrides, f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    recorded = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]

    out = subprocess.run(
        [sys.executable, str(BENCH), str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
    assert line["num_test"] == 16
    assert line["plain"] == recorded
    for key in ("mirrored", "flip_tta"):
        assert 0.0 <= line[key] <= 1.0 and line[key] * 16 == round(line[key] * 16)


def test_a_directory_without_a_model_is_named(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert f"no model.keras in: {tmp_path}" in out.stderr
