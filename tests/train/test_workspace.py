"""The reuse contract: a run in a used Workspace computes what the same run computes in a fresh
process, and the Workspace is where everything a process keeps between runs lives."""

import json

import pytest
from conftest import compose_cfg, thaw_train
from imagefiles import make_folder

from thaw.train.workspace import Workspace, of_this_process


def _overrides(folder):
    # folder data (scanned, decoded), a base in inference mode (cached activations of augmented
    # views), Adam with a kept compiled step: every store of the Workspace has something to keep
    return [
        "experiment=tiny",
        "backbone.image_size=32",
        "backbone.batchnorm=inference",
        "data=folder",
        f"data.path={folder}",
        "data.batch_size=8",
        "augment=flip",
        "trainer.augment_views=2",
        "trainer.cache_features=true",
        "trainer.head_epochs=2",
        "trainer.finetune_epochs=2",
        "trainer.deterministic=true",
        "trainer.save_model=false",
        "unfreeze.depth=2",
        "logger=none",
    ]


def _history(out):
    return json.loads((out / "metrics.json").read_text())


def test_a_run_in_a_used_workspace_computes_what_it_computes_in_a_fresh_process(tmp_path):
    from thaw.train.recipe import train

    folder = make_folder(tmp_path / "photos", per_class=12)
    run, later = _overrides(folder), ["lr.base=0.003"]
    ws = Workspace()
    train(compose_cfg(run), tmp_path / "first", workspace=ws)
    ws.end_run(keep_compiled=True)
    decoded = ws.data.decoded[1]
    train(compose_cfg(run + later), tmp_path / "second", workspace=ws)
    ws.end_run(keep_compiled=True)
    # every store kept something, and the second run used it
    assert ws.data.scan is not None and ws.data.decoded[1] is decoded  # scanned and decoded once
    assert ws.models.bases and ws.models.classifiers
    assert len(ws.models.compiled) >= 2  # head and fine-tuning steps
    assert ws.activations.memory_keys() and ws.devices.tf_seed == 42
    used = _history(tmp_path / "second")
    assert [p["compiled"] for p in used["phases"].values()] == ["reused", "reused"]
    assert [p["views_computed"] for p in used["phases"].values()] == [False, False]
    # the same run in a fresh process
    res = thaw_train([*run, *later, f"hydra.run.dir={tmp_path / 'fresh'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    fresh = _history(tmp_path / "fresh")
    assert [p["compiled"] for p in fresh["phases"].values()] == ["new", "new"]
    assert [p["views_computed"] for p in fresh["phases"].values()] == [True, True]
    assert len(used["history"]) == len(fresh["history"]) == 4
    for a, b in zip(used["history"], fresh["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["epoch"], key)


def test_a_fresh_workspace_keeps_nothing_and_a_worker_process_has_one():
    import pickle

    ws = Workspace()
    assert ws.data.scan is None and ws.data.decoded is None
    assert not ws.models.bases and not ws.models.classifiers and not len(ws.models.compiled)
    assert not ws.activations.memory_keys() and ws.devices.tf_seed is None
    # a launcher pickles the task with its Workspace: a worker unpickles to its process's one
    # Workspace, the same for every job it runs, never a copy of the parent's
    ws.devices.tf_seed = 7
    first, second = pickle.loads(pickle.dumps(ws)), pickle.loads(pickle.dumps(ws))
    assert first is second is of_this_process() and first is not ws
    assert first.devices.tf_seed is None
