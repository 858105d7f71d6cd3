"""A phase's cut through the network: the tensor where its trainable top meets the frozen prefix
(the pooled features, or a block boundary), the models on either side of it, and the store that
reads the cut's activations from the feature cache or computes them in one pass, which also stores
the boundaries of other depths a sweep's later trials start from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from thaw.train.feature_cache import FeatureCache, fingerprint_array, split_key, weights_fingerprint
from thaw.train.frozen_pass import (
    activation_bytes,
    boundary_tensor,
    predict,
    predict_views,
    view_table,
)


class Keys(NamedTuple):
    """A cut's two cache keys."""

    train: str  # training activations: of V augmented views per image, with augmentation
    val: str  # validation activations, always of the plain images


@dataclass(frozen=True)
class Cut:
    """Where one phase's trainable top meets the frozen prefix, built once per phase."""

    tag: str  # "pooled" or "at <layer>": names the cut in logs, metrics.json and cache keys
    feat_model: Any  # image -> activations at the cut, then at each extra's boundary
    fit_model: Any  # activations at the cut -> classifier output: what the phase fits
    extras: tuple[str, ...] = ()  # tags of other depths' boundaries stored in the same pass

    @property
    def row(self) -> tuple[int, ...]:
        """The shape of one image's activations at the cut."""
        return tuple(int(d) for d in self.fit_model.inputs[0].shape[1:])


class Pass(NamedTuple):
    """One split's pass through the frozen prefix, for the cache to read or compute."""

    key: str  # the cut's key for this split
    run: Callable  # run(sinks) -> an array per output of the feature model
    shape: tuple  # of the cut's array
    lead: int = 1  # leading dimensions of `shape` that index rows: 2 for (views, images)


def boundary_tag(tensor) -> str:
    return f"at {tensor._keras_history[0].name}"


def cut_point(base):
    """(tensor, tag) where the trainable layers meet the frozen prefix: the base's output, "pooled",
    when only the head trains; None when the trainable blocks read more than one tensor of it."""
    top = top_layers(base)
    if not top:
        return base.output, "pooled"
    bt = boundary_tensor(base, top)
    return None if bt is None else (bt, boundary_tag(bt))


def top_layers(base) -> set:
    """The layers above the frozen prefix: the trainable ones and every layer that reads only their
    outputs (an unfrozen block's BatchNorm stays frozen, model.unfreeze, yet sits above the cut)."""
    top: set = set()
    for layer in base.layers:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        producers = {t._keras_history[0].name for t in inputs}
        if layer.trainable or (producers and producers <= top):
            top.add(layer.name)
    return top


def pooled_models(clf, extra_tensors=()):
    """(image -> pooled features [+ activations at extra_tensors], pooled features -> output)."""
    import keras

    model = clf.model
    pool_out = model.get_layer("head_pool").output
    fit_model = clf.fits.get(("pooled",), lambda: keras.Model(pool_out, model.output))
    if not extra_tensors:
        return keras.Model(model.input, pool_out), fit_model
    base = clf.base
    prefix = keras.Model(base.input, [base.output] + list(extra_tensors))
    img = keras.Input(tuple(model.input.shape[1:]))
    outs = prefix(model.get_layer("preprocess")(img), training=False)
    return keras.Model(img, [model.get_layer("head_pool")(outs[0])] + list(outs[1:])), fit_model


def boundary_models(clf, image_size: int, bt, extra_tensors):
    """(image -> activations at bt [+ extras], activations at bt -> classifier output)."""
    import keras

    model, base = clf.model, clf.base

    def top_and_head():
        top = keras.Model(bt, base.output)
        head = keras.Model(clf.base_output, model.output)
        inp = keras.Input(tuple(bt.shape[1:]))
        return keras.Model(inp, head(top(inp, training=False)))

    fit_model = clf.fits.get(("at", bt._keras_history[0].name), top_and_head)
    prefix_model = keras.Model(base.input, [bt] + list(extra_tensors))
    img = keras.Input((image_size, image_size, 3))
    feat_model = keras.Model(img, prefix_model(model.get_layer("preprocess")(img), training=False))
    return feat_model, fit_model


class CutStore:
    """A run's cuts in the feature cache: their keys, and one method that reads or computes a cut's
    training and validation activations, the same for plain images and augmented views."""

    def __init__(
        self, cfg, clf, ds, cache: FeatureCache, aug, view_seed: int, views: int, workspace
    ):
        self.cfg, self.clf, self.ds, self.cache, self.aug = cfg, clf, ds, cache, aug
        self.workspace = workspace
        self.seed, self.view_seed, self.views = int(cfg.trainer.seed), view_seed, views
        self.batch = max(int(cfg.data.batch_size), 64)
        self._fingerprints: dict[str, str] = {}

    def cut(self, depth: int, sweep: bool) -> Cut | None:
        """The cut of a phase training `depth` blocks, or None (no single boundary tensor). A sweep
        trial's pass also stores the boundaries of other depths within half the cache budget, so
        later trials at those depths start at once."""
        point = cut_point(self.clf.base)
        if point is None:
            return None
        tensor, tag = point
        extras = self._other_boundaries(tensor, tag, depth) if sweep else []
        tensors = [t for t, _ in extras]
        if tag == "pooled":
            feat_model, fit_model = pooled_models(self.clf, tensors)
        else:
            size = int(self.cfg.backbone.image_size)
            feat_model, fit_model = boundary_models(self.clf, size, tensor, tensors)
        return Cut(tag, feat_model, fit_model, tuple(t for _, t in extras))

    def activations(self, cut: Cut):
        """(training, validation) activations at the cut, from the cache or computed. With extras,
        each split is one pass that writes the cut's array as it goes (in memory, or spilled to
        disk) and stores the extras' arrays too."""
        cache = self.cache
        passes = self._passes(cut)
        if not cut.extras:
            return tuple(
                cache.get_or_compute(p.key, lambda sink, p=p: p.run([sink])[0], p.shape, p.lead)
                for p in passes
            )
        cache.misses += 1
        train, val = (p.run([cache.sink(p.key, p.shape, p.lead)]) for p in passes)
        for tag, a_train, a_val in zip((cut.tag,) + cut.extras, train, val):
            keys = self.keys(tag)
            cache.put(keys.train, a_train)
            cache.put(keys.val, a_val)
        return train[0], val[0]

    def _passes(self, cut: Cut) -> tuple[Pass, Pass]:
        """The training pass, over the images or V augmented views of each ((V, n, ...) arrays),
        and the validation pass, over the plain images."""
        keys, feat, batch, n = self.keys(cut.tag), cut.feat_model, self.batch, len(self.ds.train)
        train_x, val_x, ws = self.ds.train.images, self.ds.val.images, self.workspace

        def val_pass(sinks):
            return predict(feat, val_x, batch, ws, sinks)

        def images_pass(sinks):
            return predict(feat, train_x, batch, ws, sinks)

        def views_pass(sinks):
            table = view_table(self.aug, n, self.view_seed, self.views)
            return predict_views(feat, train_x, table, batch, ws, sinks)

        val = Pass(keys.val, val_pass, (len(self.ds.val),) + cut.row)
        if self.aug is None:
            return Pass(keys.train, images_pass, (n,) + cut.row), val
        return Pass(keys.train, views_pass, (self.views, n) + cut.row, lead=2), val

    def keys(self, tag: str) -> Keys:
        """The cut's keys. With augmentation the training key names the views (augmentation, their
        seed and count); the validation key is the plain images' either way."""
        plain = self._split_keys(tag)
        if self.aug is None:
            return plain
        from thaw.data import augment

        views = f"{tag}|{augment.signature(self.aug)}|seed={self.view_seed}|views={self.views}"
        return Keys(self._split_keys(views).train, plain.val)

    def _split_keys(self, tag: str) -> Keys:
        """Keys by backbone, weights, size, precision, tag and the images of each split."""
        cfg = self.cfg
        wfp = weights_fingerprint(cfg.backbone, self.seed)
        precision = "" if cfg.trainer.precision == "float32" else f"|{cfg.trainer.precision}"
        size = int(cfg.backbone.image_size)
        prefix = f"{self.clf.spec.name}|{cfg.backbone.alpha}|{size}|{wfp}{precision}|{tag}"
        for name, split in (("train", self.ds.train), ("val", self.ds.val)):
            if name not in self._fingerprints:  # hashing the images once per run, not per key
                self._fingerprints[name] = fingerprint_array(split.images)
        return Keys(*(split_key(prefix, n, self._fingerprints[n]) for n in ("train", "val")))

    def cached(self, tag: str) -> bool:
        keys = self.keys(tag)
        return keys.train in self.cache and keys.val in self.cache

    def _other_boundaries(self, cut, tag: str, depth: int) -> list:
        """(tensor, tag) of the boundaries of other depths to store in the same pass: every depth
        below the base's block count after the head phase, fewer than `depth` blocks after a
        fine-tuning cut; smallest first, not yet cached, within half of the cache budget."""
        from thaw.model import unfreeze

        base, spec = self.clf.base, self.clf.spec
        if self.cached(tag):
            return []  # no pass will run
        rows = len(self.ds.train) * max(1, self.views) + len(self.ds.val)
        cached = self.clf.model.get_layer("head_pool").output if tag == "pooled" else cut
        budget = self.cache.max_bytes // 2 - activation_bytes(cached, rows)
        seen = {id(cut), id(base.input)}
        out = []
        for d in range(1, spec.num_blocks if tag == "pooled" else depth):
            bt = boundary_tensor(base, unfreeze.top_block_layers(base, spec, d))
            if bt is None or id(bt) in seen:
                continue
            seen.add(id(bt))
            t = boundary_tag(bt)
            need = activation_bytes(bt, rows)
            if need > budget or self.cached(t):
                continue
            budget -= need
            out.append((bt, t))
        return out
