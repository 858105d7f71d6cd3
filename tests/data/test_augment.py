"""Augmentation as numbered draws: deterministic views, view rotation, cached views equal to the
same draws applied on the fly, cache keys, the budget fallback, the deprecated data.augment
alias."""

import json
import logging

import numpy as np
import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from thaw.data import augment


def _aug(**kw):
    base = {
        "name": "t",
        "flip": "none",
        "rotation": 0.0,
        "zoom": 0.0,
        "translate": 0.0,
        "contrast": 0.0,
    }
    return OmegaConf.create({**base, **kw})


def _images(n=6, size=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_a_draw_is_a_pure_function_of_seed_and_view():
    aug = _aug(flip="horizontal", rotation=0.1, zoom=0.2, translate=0.1, contrast=0.3)
    a = augment.draw(aug, 50, 3, 2).numpy()
    assert a.shape == (50, augment.NUM_PARAMS)
    np.testing.assert_array_equal(a, augment.draw(aug, 50, 3, 2).numpy())
    assert not np.allclose(a, augment.draw(aug, 50, 3, 1).numpy())
    assert not np.allclose(a, augment.draw(aug, 50, 4, 2).numpy())
    assert set(np.unique(a[:, 0])) == {0.0, 1.0} and (a[:, 1] == 0).all()  # horizontal flips only
    assert np.abs(a[:, 2]).max() <= 0.1 * 2 * np.pi and (np.abs(a[:, 3] - 1) <= 0.2).all()


def test_identity_draw_keeps_the_image_and_a_flip_mirrors_it():
    x = _images()
    ident = augment.draw(_aug(), len(x), 0, 0)
    np.testing.assert_allclose(augment.apply(x, ident).numpy(), x.astype(np.float32), atol=1e-3)
    flip = np.zeros((len(x), augment.NUM_PARAMS), np.float32)
    flip[:, 0], flip[:, 3], flip[:, 6] = 1.0, 1.0, 1.0
    np.testing.assert_allclose(
        augment.apply(x, flip).numpy(), x[:, :, ::-1].astype(np.float32), atol=1e-3
    )
    # and a real draw changes pixels but stays in 0..255
    out = augment.apply(x, augment.draw(_aug(rotation=0.1, contrast=0.5), len(x), 0, 1)).numpy()
    assert not np.allclose(out, x) and out.min() >= 0 and out.max() <= 255


def test_every_image_uses_every_view_before_repeating_one():
    n, views = 40, 4
    offsets = augment.view_offsets(n, views, seed=1)
    seen = np.stack([augment.epoch_views(offsets, e, views).numpy() for e in range(2, 2 + views)])
    assert (
        np.sort(seen, axis=0) == np.arange(views)[:, None]
    ).all()  # each column is a permutation
    assert len({tuple(seen[:, i]) for i in range(n)}) > 1  # images do not move in lockstep
    fresh = [augment.epoch_views(offsets, e, 0).numpy() for e in range(3)]
    assert len({int(f[0]) for f in fresh}) == 3 and all((f == f[0]).all() for f in fresh)


def _run(tmp_path, name, *overrides):
    from thaw.train.recipe import train

    out = tmp_path / name
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "backbone.image_size=48",
            "head.dropout=0",
            "trainer.head_epochs=3",
            "trainer.finetune_epochs=2",
            "unfreeze.depth=2",
            "data.num_train=64",
            "data.num_val=32",
            "backbone.batchnorm=inference",
            "augment=standard",
            "trainer.augment_views=3",
            *overrides,
        ]
    )
    train(cfg, out)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_cached_views_train_exactly_like_the_same_draws_on_the_fly(tmp_path, mnv2_weights):
    # pretrained: a random base in inference mode stays at chance whatever it is shown
    weights = f"backbone.weights={mnv2_weights}"
    off = _run(tmp_path, "off", weights, "trainer.cache_features=false")
    on = _run(tmp_path, "on", weights, "trainer.cache_features=true")
    assert not off["feature_cache"] and on["feature_cache"]
    assert (
        on["phases"]["head"]["augment_views"] == 3
        and on["phases"]["finetune"]["augment_views"] == 3
    )
    assert on["phases"]["finetune"]["cache"].startswith("at block_")
    assert {p["trained_on"] for p in on["phases"].values()} == {"cached activations"}
    assert {p["trained_on"] for p in off["phases"].values()} == {"images"}
    assert len(on["history"]) == len(off["history"]) == 5
    for a, b in zip(off["history"], on["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (key, a, b)
    # augmentation really changed the training images: the same run without it trains differently
    plain = _run(tmp_path, "plain", weights, "augment=none", "trainer.cache_features=true")
    assert plain["augment"] is None
    assert any(abs(a["loss"] - b["loss"]) > 1e-4 for a, b in zip(plain["history"], on["history"]))


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_view_cache_keys_cover_augmentation_seed_and_count(tmp_path, mnv2_weights):
    """Folder data and pretrained weights: neither depends on the seed, so only the draws do."""
    from imagefiles import make_folder

    cache = tmp_path / "cache"
    folder = make_folder(tmp_path / "photos", per_class=8)
    common = [
        f"trainer.cache_dir={cache}",
        "trainer.finetune_epochs=0",
        "unfreeze.depth=0",
        "data=folder",
        f"data.path={folder}",
        "data.val_fraction=0.25",
        f"backbone.weights={mnv2_weights}",
    ]
    _run(tmp_path, "a", *common)
    first = set(cache.glob("*.npy"))
    assert len(first) == 2  # pooled views of the training images + plain pooled validation features
    views = [a for a in (np.load(f) for f in first) if a.ndim == 3]
    assert len(views) == 1 and views[0].shape[:2] == (3, 12)
    assert not np.allclose(views[0][0], views[0][1])  # the views differ
    _run(tmp_path, "b", *common)  # the same config: nothing new
    assert set(cache.glob("*.npy")) == first
    seen = set(first)
    for override in ("augment.rotation=0.2", "trainer.seed=7", "trainer.augment_views=2"):
        _run(tmp_path, override, *common, override)
        new = set(cache.glob("*.npy")) - seen
        assert len(new) == 1, override  # new training views; validation (never augmented) reused
        seen |= new


def test_epoch_batches_know_their_epoch_through_keras_fit():
    """fit(steps_per_epoch=...) keeps one iterator across epochs, so batch k of epoch e is built
    for epoch e (the view rotation depends on it), also when fit starts at initial_epoch > 0."""
    import keras
    import tensorflow as tf

    from thaw import data as data_mod

    n, bs = 10, 4
    ds = data_mod.epoch_batches(
        n,
        bs,
        0,
        3,
        4,
        lambda idx, e: (
            tf.fill([tf.shape(idx)[0], 1], tf.cast(e, tf.float32)),
            tf.zeros([tf.shape(idx)[0], 1]),
        ),
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="ones")])
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="mse",
        metrics=[keras.metrics.MeanMetricWrapper(lambda y, p: keras.ops.mean(p), name="epoch")],
    )
    hist = model.fit(
        ds, epochs=7, initial_epoch=3, steps_per_epoch=-(-n // bs), verbose=0, shuffle=False
    )
    assert hist.history["epoch"] == pytest.approx([3.0, 4.0, 5.0, 6.0])


def test_views_over_the_memory_budget_spill_to_disk_and_train_the_same(
    tmp_path, caplog, mnv2_weights
):
    caplog.set_level(logging.INFO)
    common = (
        f"backbone.weights={mnv2_weights}",
        "trainer.augment_views=8",
        "trainer.finetune_epochs=0",
        "unfreeze.depth=0",
        "trainer.cache_features=true",
    )
    # pooled features: 1280 floats x 64 images = 320 KiB a view, 3 views (the phase's epochs): over
    # half of 1 MiB, so they are written to disk as computed and read a batch at a time
    disk = _run(
        tmp_path,
        "disk",
        "trainer.cache_max_mb=1",
        f"trainer.cache_dir={tmp_path / 'cache'}",
        *common,
    )
    assert (
        disk["phases"]["head"]["augment_views"] == 3
        and disk["phases"]["head"]["trained_on"] == "cached activations"
    )
    assert any("go to disk" in r.getMessage() for r in caplog.records)
    spilled = [np.load(p, mmap_mode="r") for p in (tmp_path / "cache").glob("*.npy")]
    assert any(a.shape == (3, 64, 1280) for a in spilled)
    memory = _run(tmp_path, "memory", *common)
    for a, b in zip(disk["history"], memory["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
    h = disk["history"]  # pretrained: it learns, so equal curves mean something
    assert h[-1]["loss"] < 0.8 * h[0]["loss"] and h[-1]["val_accuracy"] > h[0]["val_accuracy"]


def test_no_room_on_disk_trains_on_images_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    m = _run(
        tmp_path,
        "none",
        "trainer.cache_max_mb=0",
        "data.max_disk_mb=0",
        "trainer.finetune_epochs=0",
        "unfreeze.depth=0",
        "trainer.cache_features=true",
    )
    assert "cache" not in m["phases"]["head"] and m["phases"]["head"]["augment_views"] == 3
    assert m["phases"]["head"]["trained_on"] == "images"
    said = [
        r.getMessage()
        for r in caplog.records
        if "training this phase on images instead" in r.getMessage()
    ]
    assert len(said) == 1 and "data.max_disk_mb" in said[0]


def test_deprecated_data_augment_alias_warns_and_augments(caplog):
    cfg = compose_cfg(["data.augment=true"])
    caplog.set_level(logging.WARNING)
    aug = augment.resolve(cfg)
    assert aug is not None and aug.flip == "horizontal" and aug.rotation == 0.1
    assert any("data.augment=true is deprecated" in r.getMessage() for r in caplog.records)
    assert augment.resolve(compose_cfg([])) is None
    assert augment.resolve(compose_cfg(["augment=standard"])).zoom > 0


def test_a_flip_outside_its_choices_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"augment\.flip=diagonal") as info:
        compose_cfg(["augment.flip=diagonal"])
    assert "horizontal_and_vertical]" in str(info.value.__cause__)


@pytest.mark.parametrize(
    "override, key",
    [
        ("augment.rotation=0.9", "augment.rotation"),
        ("trainer.augment_views=-1", "trainer.augment_views"),
        ("trainer.patience=-2", "trainer.patience"),
    ],
)
def test_bad_augmentation_values_name_the_key(override, key):
    from thaw.config.checks import validate
    from thaw.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_cfg([override]))


class NeverPrune:  # what a sweep trial's TrialHandle offers train()
    def report(self, step, value, judge=True):
        return False

    def describe(self, **facts):
        pass


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_a_sweep_trial_stores_other_depths_views_in_the_same_pass(tmp_path):
    """The head phase's pass through the whole base also stores every depth's boundary views that
    fit half the budget: a later trial at another depth computes nothing new."""
    from thaw.train.recipe import train

    cache = tmp_path / "cache"
    common = [
        "experiment=tiny",
        "backbone.image_size=48",
        "data.num_train=64",
        "data.num_val=32",
        "backbone.batchnorm=inference",
        "augment=flip",
        "trainer.augment_views=2",
        "trainer.head_epochs=2",
        "trainer.finetune_epochs=1",
        f"trainer.cache_dir={cache}",
    ]
    train(compose_cfg([*common, "unfreeze.depth=4"]), tmp_path / "t0", reporter=NeverPrune())
    files = set(cache.glob("*.npy"))
    assert len(files) > 4  # pooled + depth 4 + other depths, train views and val each
    m = json.loads((tmp_path / "t0" / "metrics.json").read_text())
    assert (
        m["phases"]["finetune"]["cache"].startswith("at ")
        and m["phases"]["finetune"]["augment_views"] == 2
    )
    train(compose_cfg([*common, "unfreeze.depth=2"]), tmp_path / "t1", reporter=NeverPrune())
    assert set(cache.glob("*.npy")) == files
    # served from the other trial's pass, the run trains as a single run computing its own views
    alone = tmp_path / "alone"
    train(compose_cfg([*common[:-1], "unfreeze.depth=2"]), alone)
    a = json.loads((alone / "metrics.json").read_text())["history"]
    b = json.loads((tmp_path / "t1" / "metrics.json").read_text())["history"]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-3, abs=1e-4)
