"""optimizer.weight_decay and trainer.label_smoothing: off by default exactly as before, on when
set, on the image path and the cached-activation path, recorded, checked."""

import json
import math
from pathlib import Path

import pytest
from conftest import TINY_RUN, thaw_multirun, thaw_train

CACHED = [
    "backbone.batchnorm=inference"
]  # a random base in inference mode: the frozen prefix is cached


def run(tmp_path, name, *extra):
    res = thaw_train([*TINY_RUN, f"hydra.run.dir={tmp_path / name}", *extra], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text())


def losses(metrics):
    return [(r["loss"], r["val_loss"], r["val_accuracy"]) for r in metrics["history"]]


BEFORE = Path(__file__).parent / "fixtures" / "smoke_before_issue_34.json"


def _machine() -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    return {**versions, "cpu": cpu}


@pytest.mark.slow  # default-run budget (a 45 s run); `-m slow` runs it
def test_the_defaults_train_exactly_the_run_recorded_before_the_keys(tmp_path):
    """The keys at their defaults train bit for bit what the code before them trained: the
    deterministic smoke run's every epoch, recorded then (its fixture says where)."""
    before = json.loads(BEFORE.read_text())
    if _machine() != before["recorded_on"]:
        pytest.skip(
            f"recorded on {before['recorded_on']}, this machine has {_machine()}: "
            "bit-identical figures need the same libraries and CPU (the test below still runs)"
        )
    res = thaw_train(
        ["experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [{k: row[k] for k in before["history"][0]} for row in metrics["history"]] == before[
        "history"
    ]


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_zero_settings_are_exactly_the_defaults(tmp_path):
    """Wherever the recording above does not apply: the keys set to zero (and 1.0) train what the
    defaults train, in this environment."""
    from thaw.model.optimizers import compiled_name

    plain = run(tmp_path, "plain")
    zeros = run(
        tmp_path,
        "zeros",
        "optimizer.weight_decay=0",
        "trainer.label_smoothing=0",
        "lr.layer_decay=1.0",
    )
    assert losses(plain) == losses(zeros)
    for m in (plain, zeros):
        assert m["regularization"] == {"weight_decay": 0.0, "label_smoothing": 0.0}
        assert m["lr"]["layer_decay"] == 1.0
    # the kept compiled steps are keyed as before
    assert compiled_name("adam", True, 0.0) == "adam+fused"


# images: -m slow (each further run on images traces the whole base again, ~4x the cached path)
@pytest.mark.parametrize("path", [pytest.param("images", marks=pytest.mark.slow), "cached"])
def test_weight_decay_and_label_smoothing_change_training(tmp_path, path):
    extra = CACHED if path == "cached" else []
    runs = thaw_multirun(
        [
            *TINY_RUN,
            *extra,
            "lr.base=0.01",
            "trainer.label_smoothing=0,0.4",
            "optimizer.weight_decay=0,0.5",
        ],
        tmp_path / "sw",
        tmp_path,
    )
    base, smooth, decay, both = (
        runs[(f"optimizer.weight_decay={wd}", f"trainer.label_smoothing={ls}")]
        for ls, wd in ((0, 0), (0.4, 0), (0, 0.5), (0.4, 0.5))
    )
    if path == "cached":
        assert base["feature_cache"], "the cached path was not taken"
    assert base["regularization"] == {"weight_decay": 0.0, "label_smoothing": 0.0}
    assert both["regularization"] == {"weight_decay": 0.5, "label_smoothing": 0.4}
    assert smooth["regularization"]["label_smoothing"] == 0.4
    assert decay["regularization"]["weight_decay"] == 0.5
    loss = lambda m: [r["loss"] for r in m["history"]]  # noqa: E731
    # smoothed targets: the training loss the model reports is the smoothed one, so it differs
    assert loss(smooth) != loss(base)
    # decay pulls the weights toward zero: the same data and rate train differently, with or
    # without smoothing
    assert loss(decay) != loss(base) and loss(both) != loss(smooth)


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_label_smoothing_with_several_classes(tmp_path):
    three = ["data.num_classes=3"]
    base = run(tmp_path, "base", *three)
    smooth = run(tmp_path, "smooth", "trainer.label_smoothing=0.3", *three)
    assert [r["loss"] for r in smooth["history"]] != [r["loss"] for r in base["history"]]
    assert all(math.isfinite(r["loss"]) for r in smooth["history"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.label_smoothing=1.5", "trainer.label_smoothing"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    ],
)
def test_bad_values_are_refused_in_one_line(tmp_path, override, key):
    res = thaw_train([*TINY_RUN, override], tmp_path)
    assert res.returncode == 2 and key in res.stderr and "Traceback" not in res.stderr, res.stderr
