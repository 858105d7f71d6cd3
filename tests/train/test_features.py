"""The frozen-prefix activation cache gives the same training as the uncached path, and is
reused."""

import json

import numpy as np
import pytest
from conftest import compose_cfg

from thaw.train import feature_cache
from thaw.train.workspace import Workspace


def _cache(max_bytes, data_cfg=None):
    """A FeatureCache over a fresh Workspace's activation store and limits."""
    ws = Workspace()
    store = ws.activations
    return store, feature_cache.FeatureCache(
        max_bytes, None, store, ws.data.limits, data_cfg=data_cfg
    )


def _run(tmp_path, name, *overrides, reporter=None, workspace=None):
    from omegaconf import OmegaConf

    from thaw.train.recipe import train

    out = tmp_path / name
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.image_size=48",
            "head.dropout=0",
            "trainer.head_epochs=2",
            "trainer.finetune_epochs=2",
            "unfreeze.depth=2",
            "data.num_train=64",
            "data.num_val=32",
            *overrides,
        ]
    )
    train(cfg, out, reporter=reporter, workspace=workspace)
    (out / ".hydra").mkdir()
    OmegaConf.save(
        cfg, out / ".hydra" / "config.yaml"
    )  # as Hydra would, for thaw.commands.evaluate
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("weights", ["random", pytest.param("pretrained", marks=pytest.mark.slow)])
def test_cached_training_matches_uncached(tmp_path, weights, request):
    if weights == "pretrained":
        w = request.getfixturevalue("mnv2_weights")
        common = [f"backbone.weights={w}"]
    else:  # a random base in inference mode is also a fixed function of the image
        common = ["backbone.batchnorm=inference"]
    off = _run(tmp_path, "off", *common, "trainer.cache_features=false", "data.num_test=16")
    on = _run(tmp_path, "on", *common, "trainer.cache_features=true", "data.num_test=16")
    # the full model (not the sub-model that trained) is evaluated on the test split, with fresh
    # metric state: the same figure as reloading model.keras and evaluating it
    # (thaw.commands.evaluate)
    from thaw.commands.evaluate import evaluate_test

    assert on["test_accuracy"] == pytest.approx(off["test_accuracy"], abs=1e-6)
    assert on["test_accuracy"] == pytest.approx(
        evaluate_test(tmp_path / "on")["test_accuracy"], abs=1e-6
    )
    assert (on["test_accuracy"] * 16) == pytest.approx(round(on["test_accuracy"] * 16), abs=1e-4)
    assert not off["feature_cache"] and on["feature_cache"]
    assert on["phases"]["head"]["cache"] == "pooled"
    assert on["phases"]["finetune"]["cache"].startswith("at block_")
    for a, b in zip(off["history"], on["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (key, a, b)
    assert (
        on["phases"]["finetune"]["trainable_params"]
        == off["phases"]["finetune"]["trainable_params"]
    )


@pytest.mark.slow  # ~60 s; the refusal with cache_features=true runs by default
def test_auto_falls_back_with_fresh_augmentation_or_training_batchnorm(tmp_path):
    # augmentation drawn afresh every epoch (augment_views=0) cannot be cached; views can
    # (test_augment.py)
    m = _run(
        tmp_path, "aug", "augment=flip", "trainer.augment_views=0", "backbone.batchnorm=inference"
    )
    assert m["feature_cache"] is False
    m = _run(tmp_path, "bn", "backbone.weights=null")  # random init: BatchNorm trains
    assert m["feature_cache"] is False


def test_cache_true_with_fresh_augmentation_is_refused(tmp_path):
    from thaw.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.cache_features=true.*augment_views=0"):
        _run(
            tmp_path,
            "x",
            "augment=flip",
            "trainer.augment_views=0",
            "backbone.batchnorm=inference",
            "trainer.cache_features=true",
        )


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_cache_is_reused_across_runs_and_processes(tmp_path):
    cache_dir = tmp_path / "cache"
    common = ["backbone.batchnorm=inference", f"trainer.cache_dir={cache_dir}"]
    ws = Workspace()
    _run(tmp_path, "a", *common, workspace=ws)
    files = sorted(cache_dir.glob("*.npy"))
    assert len(files) == 4  # pooled + boundary, train/val each: a single run stores no other depth
    # in-process reuse: served from the Workspace's memory, no file is rewritten
    mtimes = [f.stat().st_mtime_ns for f in files]
    _run(tmp_path, "b", *common, workspace=ws)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # another process (a fresh Workspace): memory is empty, the disk cache serves it
    m = _run(tmp_path, "c", *common, "unfreeze.depth=3")
    assert len(list(cache_dir.glob("*.npy"))) == 6  # a new boundary for depth 3, pooled reused
    assert m["feature_cache"]


class NeverPrune:
    """What a sweep trial's TrialHandle offers train(): report(step, value) -> prune?, and
    describe(**facts) for what the sweep report reads."""

    def __init__(self):
        self.steps = []
        self.facts = {}

    def report(self, step, value, judge=True):
        self.steps.append(step)
        return False

    def describe(self, **facts):
        self.facts.update(facts)


# ~75 s; so is its views variant in test_augment.py: `-m slow` (and .ci/run) runs both
@pytest.mark.slow
def test_sweep_trial_stores_shallower_boundaries_for_later_trials(tmp_path):
    cache_dir = tmp_path / "cache"
    common = ["backbone.batchnorm=inference", f"trainer.cache_dir={cache_dir}"]
    deep, ws = NeverPrune(), Workspace()
    _run(tmp_path, "deep", *common, "unfreeze.depth=4", reporter=deep, workspace=ws)
    assert deep.steps == [0, 1, 2, 3]
    files = set(cache_dir.glob("*.npy"))
    assert len(files) > 4  # pooled + depth 4's boundary + shallower ones, train and val each
    # later trials at shallower depths are served from that one pass: nothing new is computed
    _run(tmp_path, "d2", *common, "unfreeze.depth=2", reporter=NeverPrune(), workspace=ws)
    assert set(cache_dir.glob("*.npy")) == files
    # and train exactly as without any cache
    fresh = _run(
        tmp_path,
        "fresh",
        "backbone.batchnorm=inference",
        "trainer.cache_features=false",
        "unfreeze.depth=2",
    )
    served = json.loads((tmp_path / "d2" / "metrics.json").read_text())
    for a, b in zip(fresh["history"], served["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (key, a, b)


def test_memory_cache_is_bounded():
    store, cache = _cache(3000)
    for i in range(5):
        cache.get_or_compute(f"k{i}", lambda: np.zeros(250, np.float32))  # 1000 bytes each
    assert store.memory_bytes() <= 3000
    assert store.memory_keys() == ["k2", "k3", "k4"]


def test_an_entry_leaving_memory_is_kept_on_disk_while_the_disk_bound_has_room():
    """A sweep's confirmation re-runs its best trials after other depths filled the memory bound:
    their activations come back from disk, not from another pass through the frozen layers."""
    from omegaconf import OmegaConf

    from thaw.config.schema import DataConfig
    from thaw.data.diskarray import DiskArray

    # a fresh Workspace has written nothing: 2 MB of room
    store, cache = _cache(3000, OmegaConf.structured(DataConfig(max_disk_mb=2)))
    for i in range(5):
        cache.get_or_compute(f"k{i}", lambda i=i: np.full(250, i, np.float32))  # 1000 bytes each
    assert store.memory_keys() == ["k2", "k3", "k4"] and "k0" in cache
    assert cache.limits.disk.written == 2000  # k0 and k1, counted against the bound
    computed = []
    back = cache.get_or_compute("k0", lambda: computed.append(1))
    assert not computed and isinstance(back, DiskArray) and (np.asarray(back[:]) == 0).all()
    # a disk bound with no room: dropped, as without a data config
    store, cache = _cache(3000, OmegaConf.structured(DataConfig(max_disk_mb=0)))
    for i in range(5):
        cache.get_or_compute(f"k{i}", lambda: np.zeros(250, np.float32))
    assert "k0" not in cache and store.memory_keys() == ["k2", "k3", "k4"]


def test_an_entry_over_half_the_budget_is_used_but_does_not_evict_the_rest():
    store, cache = _cache(4000)
    for i in range(3):
        cache.get_or_compute(f"small{i}", lambda: np.zeros(250, np.float32))  # 1000 bytes each
    big = cache.get_or_compute("big", lambda: np.ones(750, np.float32))  # 3000 bytes: over half
    assert big.shape == (750,) and (big == 1).all()
    assert store.memory_keys() == ["small0", "small1", "small2"]
