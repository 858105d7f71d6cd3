"""trainer.strategy=mirrored: one model on every device (two logical CPUs here), in a fresh
process."""

import json

import pytest
from conftest import thaw_train


@pytest.mark.parametrize(
    "cache",
    [pytest.param("false", marks=pytest.mark.slow), pytest.param("true", marks=pytest.mark.slow)],
)
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, cache):
    out = tmp_path / "run"
    res = thaw_train(
        [
            "experiment=tiny",
            "logger=none",
            "backbone.image_size=32",
            "data.num_train=64",
            "data.num_val=32",
            "backbone.batchnorm=inference",
            "trainer.strategy=mirrored",
            "trainer.cpu_devices=2",
            f"trainer.cache_features={cache}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"] == {"name": "mirrored", "replicas": 2}
    assert m["status"] == "complete" and m["feature_cache"] is (cache == "true")
    assert (out / "model.keras").is_file()
