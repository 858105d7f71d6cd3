"""Schedules that fit the data: the objective and model.keras come from the best validation epoch
(trainer.restore_best), and trainer.patience stops a phase that stopped improving."""

import json

import numpy as np
import pytest
from conftest import compose_cfg


def test_best_weights_keep_the_best_epoch_and_put_it_back():
    import keras

    from thaw.train.callbacks import BestWeights

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    best = BestWeights("val_accuracy", keep_weights=True)
    w0 = [w.copy() for w in model.get_weights()]
    best.offer(0, 0.9, model)
    model.set_weights([w + 1 for w in w0])
    best.offer(1, 0.5, model)  # worse: not kept
    best.offer(2, 0.9, model)  # equal: the earlier epoch stays
    assert best.step == 0 and best.value == 0.9
    assert best.restore(model, last_step=2) == 0
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)
    assert best.restore(model, last_step=0) is None  # the best is the last epoch: nothing to do
    loss = BestWeights("val_loss", keep_weights=False)
    loss.offer(0, 0.7, model)
    loss.offer(1, 0.4, model)
    assert loss.step == 1 and loss.weights is None


def _run(tmp_path, name, *overrides):
    from thaw.train.recipe import train

    out = tmp_path / name
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.image_size=32",
            "data.num_train=64",
            "data.num_val=32",
            "data.num_test=32",
            *overrides,
        ]
    )
    result = train(cfg, out)
    return result, json.loads((out / "metrics.json").read_text()), out


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_patience_stops_a_phase_that_stopped_improving(tmp_path):
    # a random base in inference mode learns next to nothing: validation accuracy stalls at once
    _, m, _ = _run(
        tmp_path,
        "p",
        "backbone.batchnorm=inference",
        "trainer.head_epochs=12",
        "trainer.finetune_epochs=12",
        "trainer.patience=2",
    )
    for phase in ("head", "finetune"):
        rows = [r["val_accuracy"] for r in m["history"] if r["phase"] == phase]
        assert len(rows) < 12 and "stopped_early" in m["phases"][phase], (phase, rows)
        best_at = int(np.argmax(rows))  # first best epoch of the phase
        assert (
            len(rows) == best_at + 1 + 2
        )  # stopped exactly `patience` epochs after the phase's best
        assert max(rows[best_at + 1 :]) <= rows[best_at]
    # epochs are numbered as planned: fine-tuning starts at epoch 13 however early the head stopped
    assert [r["epoch"] for r in m["history"] if r["phase"] == "finetune"][0] == 13
    best = max(range(len(m["history"])), key=lambda i: m["history"][i]["val_accuracy"])
    assert m["objective_epoch"] == m["history"][best]["epoch"]


def test_patience_does_not_claim_an_early_stop_on_the_last_epoch(tmp_path):
    # a learning rate far below float32's resolution of the weights (and BatchNorm in inference
    # mode): the model never changes, so epoch 1 is the best and epochs 2 and 3 reach patience=2
    # exactly at the phase's last epoch, every time
    _, m, _ = _run(
        tmp_path,
        "q",
        "backbone.batchnorm=inference",
        "lr.base=1e-30",
        "trainer.head_epochs=3",
        "trainer.finetune_epochs=0",
        "trainer.patience=2",
    )
    rows = [r["val_accuracy"] for r in m["history"]]
    assert len(rows) == 3 and rows[1:] == rows[:1] * 2, rows  # no improvement after epoch 1
    assert "stopped_early" not in m["phases"]["head"], m["phases"]["head"]


@pytest.mark.slow  # ~70 s; BestWeights is unit-tested in the default run
def test_restore_best_saves_the_best_epoch_and_reports_it(tmp_path, mnv2_weights):
    """A fine-tuning phase at a destructive learning rate: the head phase's best epoch wins, and
    model.keras holds it (evaluated afresh on the validation split: the same accuracy). Every layer
    at 3e-2 with Adam wrecks the pretrained base (measured: validation 1.0 after the head, 0.5 after
    fine-tuning), so there is always a better epoch to restore; trainer.deterministic=true repeats
    it."""
    import keras

    from thaw import data as data_mod

    result, m, out = _run(
        tmp_path,
        "r",
        f"backbone.weights={mnv2_weights}",
        "backbone.image_size=96",
        "data.num_train=128",
        "data.num_val=64",
        "trainer.head_epochs=3",
        "trainer.finetune_epochs=2",
        "lr.base=1e-2",
        "lr.finetune_factor=3",
        "unfreeze=all",
        "head.dropout=0",
        "trainer.deterministic=true",
    )
    vals = [r["val_accuracy"] for r in m["history"]]
    best = int(np.argmax(vals))
    assert m["objective_epoch"] == m["history"][best]["epoch"] and m["objective_from"].startswith(
        "best epoch"
    )
    assert result.objective == m["val_accuracy"] == vals[best]
    assert m["last_val_accuracy"] == vals[-1]
    assert m["history"][best]["phase"] == "head" and vals[-1] <= vals[best] - 0.2, (
        vals
    )  # something to restore
    assert m["phases"]["finetune"]["restored_epoch"] == m["history"][best]["epoch"]
    cfg = compose_cfg(
        ["experiment=tiny", "backbone.image_size=96", "data.num_train=128", "data.num_val=64"]
    )
    ds = data_mod.load(cfg.data, 96, 42)
    model = keras.saving.load_model(out / "model.keras", compile=False)
    model.compile(
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
    )
    res = model.evaluate(data_mod.to_tf(ds.val, 32, False, 0), verbose=0, return_dict=True)
    assert res["accuracy"] == pytest.approx(vals[best], abs=1e-6)
    assert res["accuracy"] != pytest.approx(vals[-1], abs=1e-6)


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_restore_best_off_keeps_the_last_epoch(tmp_path):
    _, m, _ = _run(tmp_path, "last", "trainer.restore_best=false", "trainer.head_epochs=2")
    assert m["objective_epoch"] == len(m["history"]) and m["objective_from"] == "last epoch"
    assert m["val_accuracy"] == m["history"][-1]["val_accuracy"]
    assert all("restored_epoch" not in p for p in m["phases"].values())
