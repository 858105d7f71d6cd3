"""What each phase fits: the full model on images, or its trainable top on cached activations of
the frozen prefix (the same layer objects, so the full model learns)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NamedTuple

from thaw import data as data_mod
from thaw.errors import DataError
from thaw.train.feature_cache import fingerprint_array, open_cache, split_key, weights_fingerprint
from thaw.train.frozen_pass import (
    activation_bytes,
    activation_shape,
    boundary_tensor,
    predict,
    predict_views,
    stored_where,
)

log = logging.getLogger("thaw.train.features")


class PhaseData(NamedTuple):
    model: Any  # the model to fit: the full classifier, or its trainable top on activations
    train: Any  # tf.data pipelines
    val: Any
    source: str  # "images" or "features"
    cache_tag: str | None = None  # "pooled" or "at <layer>" when source == "features"
    cache_seconds: float = 0.0
    steps_per_epoch: int | None = None  # set when `train` spans all the phase's epochs
    views: int = 0  # augmented views per training image (0: none, or fresh draws every epoch)
    cache_misses: int = 0  # activations this phase computed (0: all read from the cache)


class PhaseInputs:
    """Inputs for each phase: the full model on images, or its trainable top on cached activations
    of the frozen prefix (the same layer objects, so the full model learns)."""

    def __init__(self, cfg, clf, ds, sweep: bool, aug=None):
        self.cfg, self.clf, self.ds, self.sweep, self.aug = cfg, clf, ds, sweep, aug
        self.bs = int(cfg.data.batch_size)
        self.seed = int(cfg.trainer.seed)
        # the augmentation draws' seed: trainer.seed unless trainer.view_seed holds them (a sweep's
        # confirmation runs keep the search's cached views; their own seed reassigns views to
        # epochs)
        vs = cfg.trainer.get("view_seed")
        self.view_seed = self.seed if vs is None else int(vs)
        # an image is trained on one view per epoch: no run needs more views than its longest phase
        longest = max(int(cfg.trainer.head_epochs), int(cfg.trainer.finetune_epochs))
        self.views = min(int(cfg.trainer.augment_views), longest) if aug is not None else 0
        self.cache = open_cache(cfg, aug, 0 if ds.streamed_from else ds.nbytes)
        if self.cache is None and cfg.trainer.cache_features not in (False, "false"):
            # nothing can be cached (e.g. a random-init base whose BatchNorm trains): draw afresh
            # every epoch. With cache_features=false the same V draws are used on images, which
            # is what makes the cached and uncached paths comparable exactly.
            self.views = 0
        self.val_images = data_mod.to_tf(ds.val, self.bs, shuffle=False, seed=self.seed)
        self._fingerprints: dict[str, str] = {}
        self._warned = False

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def for_phase(self, phase) -> PhaseData:
        if phase.epochs == 0:  # recorded, never compiled nor fit
            return PhaseData(self.clf.model, None, None, "images")
        if self.cache is None:
            return self._images(phase)
        base = self.clf.base
        trainable = {l.name for l in base.layers if l.trainable}
        if not trainable:  # only the head trains: pooled features
            cut, tag = base.output, "pooled"
        else:
            cut = boundary_tensor(base, trainable)
            if cut is None:
                log.info(
                    "feature cache: no single boundary tensor for these blocks; training on images"
                )
                return self._images(phase)
            tag = f"at {cut._keras_history[0].name}"
        # A sweep trial: the pass that computes this phase's activations also stores the boundaries
        # of other depths within half the cache budget, so later trials at those depths start at
        # once.
        extras = self._more_boundaries(cut, tag, len(phase.blocks)) if self.sweep else []
        if tag == "pooled":
            feat_model, fit_model = self._pooled_models([t for t, _ in extras])
        else:
            feat_model, fit_model = self._boundary_models(cut, [t for t, _ in extras])
        try:
            if self.aug is not None:
                return self._from_cached_views(feat_model, fit_model, tag, phase, extras)
            return self._from_cache(feat_model, fit_model, tag, extras, phase)
        except DataError as exc:  # no room on disk for the activations: this phase trains on images
            self._say_once(f"{exc}; training this phase on images instead")
            return self._images(phase)

    # -- the models on either side of the cut
    def _whole_model(self):
        """The classifier as a fit model of its own for this trainable set (a wrapper sharing its
        layers):
        the head phase and each depth keep their compiled step for later trials
        (thaw.model.compiled)."""
        from thaw.model.compiled import wrapper

        trainable = tuple(l.name for l in self.clf.base.layers if l.trainable)
        return self.clf.fits.get(("images", trainable), lambda: wrapper(self.clf.model))

    def _images(self, phase) -> PhaseData:
        if self.aug is not None:
            return self._augmented_images(phase)
        # epoch e's order is drawn from (seed, e): the same as the cached path, and as a resumed
        # run's
        train = data_mod.train_epochs(
            self.ds.train, self.bs, self.seed, phase.start, phase.remaining
        )
        return PhaseData(
            self._whole_model(),
            train,
            self.val_images,
            "images",
            steps_per_epoch=math.ceil(len(self.ds.train) / self.bs),
        )

    def _augmented_images(self, phase, views: int | None = None) -> PhaseData:
        """Images augmented as they are fed: view (epoch + offset) % V of each image, or a fresh
        draw every epoch with trainer.augment_views=0. The same draws as the cached views."""
        import tensorflow as tf

        from thaw.data import augment

        views = self.views if views is None else views
        n, aug, seed, draws = len(self.ds.train), self.aug, self.seed, self.view_seed
        take, labels = data_mod.rows(self.ds.train.images), tf.constant(self.ds.train.labels)
        offsets = augment.view_offsets(n, views, seed)
        table = tf.stack([augment.draw(aug, n, draws, v) for v in range(views)]) if views else None

        def batch(idx, epoch):
            view = tf.gather(augment.epoch_views(offsets, epoch, views), idx)
            if table is not None:
                params = tf.gather_nd(table, tf.stack([view, idx], axis=1))
            else:
                params = tf.gather(augment.draw(aug, n, draws, view[0]), idx)
            return augment.apply(take(idx), params), tf.gather(labels, idx)

        train = data_mod.epoch_batches(n, self.bs, seed, phase.start, phase.remaining, batch)
        return PhaseData(
            self._whole_model(),
            train,
            self.val_images,
            "images",
            steps_per_epoch=math.ceil(n / self.bs),
            views=views,
        )

    def _pooled_models(self, extra_tensors=()):
        """(image -> pooled features [+ activations at extra_tensors], pooled features ->
        output)."""
        import keras

        model = self.clf.model
        pool_out = model.get_layer("head_pool").output
        fit_model = self.clf.fits.get(("pooled",), lambda: keras.Model(pool_out, model.output))
        if not extra_tensors:
            return keras.Model(model.input, pool_out), fit_model
        base = self.clf.base
        prefix = keras.Model(base.input, [base.output] + list(extra_tensors))
        img = keras.Input(tuple(model.input.shape[1:]))
        outs = prefix(model.get_layer("preprocess")(img), training=False)
        return keras.Model(img, [model.get_layer("head_pool")(outs[0])] + list(outs[1:])), fit_model

    def _boundary_models(self, bt, extra_tensors):
        """(image -> activations at bt [+ extras], activations at bt -> classifier output)."""
        import keras

        model, base = self.clf.model, self.clf.base

        def top_and_head():
            top = keras.Model(bt, base.output)
            head = keras.Model(self.clf.base_output, model.output)
            inp = keras.Input(tuple(bt.shape[1:]))
            return keras.Model(inp, head(top(inp, training=False)))

        fit_model = self.clf.fits.get(("at", bt._keras_history[0].name), top_and_head)
        prefix_model = keras.Model(base.input, [bt] + list(extra_tensors))
        size = int(self.cfg.backbone.image_size)
        img = keras.Input((size, size, 3))
        feat_model = keras.Model(
            img, prefix_model(model.get_layer("preprocess")(img), training=False)
        )
        return feat_model, fit_model

    # -- the cache
    def _keys(self, tag: str):
        cfg = self.cfg
        wfp = weights_fingerprint(cfg.backbone, self.seed)
        precision = "" if cfg.trainer.precision == "float32" else f"|{cfg.trainer.precision}"
        size = int(cfg.backbone.image_size)
        prefix = f"{self.clf.spec.name}|{cfg.backbone.alpha}|{size}|{wfp}{precision}|{tag}"
        for name, split in (("train", self.ds.train), ("val", self.ds.val)):
            if name not in self._fingerprints:  # hashing the images once per run, not per key
                self._fingerprints[name] = fingerprint_array(split.images)
        return tuple(split_key(prefix, n, self._fingerprints[n]) for n in ("train", "val"))

    def _from_cache(self, feat_model, fit_model, tag: str, extras, phase) -> PhaseData:
        t0 = time.perf_counter()
        cache, ds, batch = self.cache, self.ds, max(self.bs, 64)
        k_train, k_val = self._keys(tag)
        if extras:  # one pass: this cut (kept in memory or spilled) and the extras (within budget)
            cache.misses += 1
            outs_train = predict(
                feat_model,
                ds.train.images,
                batch,
                [cache.sink(k_train, activation_shape(fit_model.inputs[0], len(ds.train)))],
            )
            outs_val = predict(
                feat_model,
                ds.val.images,
                batch,
                [cache.sink(k_val, activation_shape(fit_model.inputs[0], len(ds.val)))],
            )
            for t, a_tr, a_va in zip([tag] + [t for _, t in extras], outs_train, outs_val):
                k_tr, k_va = self._keys(t)
                cache.put(k_tr, a_tr)
                cache.put(k_va, a_va)
            x_train, x_val = outs_train[0], outs_val[0]
        else:
            x_train, x_val = (
                cache.get_or_compute(
                    k,
                    lambda sink, x=split.images: predict(feat_model, x, batch, [sink])[0],
                    activation_shape(fit_model.inputs[0], len(split)),
                )
                for k, split in ((k_train, ds.train), (k_val, ds.val))
            )
        secs = time.perf_counter() - t0
        log.info(
            "feature cache (%s): %d+%d activations of shape %s ready in %.1fs (hits %d, misses "
            "%d%s%s)",
            tag,
            len(x_train),
            len(x_val),
            x_train.shape[1:],
            secs,
            cache.hits,
            cache.misses,
            f"; {len(extras)} shallower boundaries stored too" if extras else "",
            stored_where(x_train),
        )
        tr = data_mod.train_epochs(
            data_mod.Split(x_train, ds.train.labels),
            self.bs,
            self.seed,
            phase.start,
            phase.remaining,
        )
        va = data_mod.to_tf(
            data_mod.Split(x_val, ds.val.labels), self.bs, shuffle=False, seed=self.seed
        )
        return PhaseData(
            fit_model,
            tr,
            va,
            "features",
            tag,
            secs,
            steps_per_epoch=math.ceil(len(x_train) / self.bs),
        )

    def _from_cached_views(self, feat_model, fit_model, tag: str, phase, extras) -> PhaseData:
        """Training activations of V augmented views per image, computed once through the frozen
        prefix (in memory, or on disk when over the budget); validation activations of the plain
        images."""
        import tensorflow as tf

        from thaw.data import augment

        t0, misses = time.perf_counter(), self.cache.misses
        ds, cache, n, views = self.ds, self.cache, len(self.ds.train), self.views
        x_views, x_val = self._views_and_val(feat_model, fit_model, tag, views, extras)
        secs = time.perf_counter() - t0
        log.info(
            "feature cache (%s): %d views x %d training + %d validation activations of shape %s "
            "ready in %.1fs (hits %d, misses %d%s%s)",
            tag,
            views,
            n,
            len(x_val),
            x_val.shape[1:],
            secs,
            cache.hits,
            cache.misses,
            f"; {len(extras)} other depths stored too" if extras else "",
            stored_where(x_views),
        )
        labels = tf.constant(ds.train.labels)
        flat = x_views.reshape((views * n,) + tuple(x_views.shape[2:]))
        take = data_mod.rows(flat)
        offsets = augment.view_offsets(n, views, self.seed)

        def batch_fn(idx, epoch):
            view = tf.cast(tf.gather(augment.epoch_views(offsets, epoch, views), idx), tf.int64)
            return take(view * n + tf.cast(idx, tf.int64)), tf.gather(labels, idx)

        train = data_mod.epoch_batches(
            n, self.bs, self.seed, phase.start, phase.remaining, batch_fn
        )
        val = data_mod.to_tf(
            data_mod.Split(x_val, ds.val.labels), self.bs, shuffle=False, seed=self.seed
        )
        return PhaseData(
            fit_model,
            train,
            val,
            "features",
            tag,
            secs,
            math.ceil(n / self.bs),
            views,
            cache.misses - misses,
        )

    def _views_and_val(self, feat_model, fit_model, tag: str, views: int, extras):
        """(V, n, ...) training views and (n_val, ...) validation activations of `tag`, from the
        cache
        or computed in one pass per view (that also stores the extras' views)."""
        import tensorflow as tf

        from thaw.data import augment

        ds, cache, batch, n = self.ds, self.cache, max(self.bs, 64), len(self.ds.train)
        row = tuple(int(d) for d in fit_model.inputs[0].shape[1:])
        k_views, k_val = self._view_key(tag, views), self._keys(tag)[1]

        def train_views(sinks):
            table = tf.stack([augment.draw(self.aug, n, self.view_seed, v) for v in range(views)])
            return predict_views(feat_model, ds.train.images, table, batch, sinks)

        def val_pass(sinks):
            return predict(feat_model, ds.val.images, batch, sinks)

        if not extras:
            x_views = cache.get_or_compute(
                k_views, lambda sink: train_views([sink])[0], (views, n) + row, lead=2
            )
            x_val = cache.get_or_compute(
                k_val, lambda sink: val_pass([sink])[0], (len(ds.val),) + row
            )
            return x_views, x_val
        cache.misses += 1
        outs_train = train_views([cache.sink(k_views, (views, n) + row, lead=2)])
        outs_val = val_pass([cache.sink(k_val, (len(ds.val),) + row)])
        for t, a_tr, a_va in zip([tag] + [t for _, t in extras], outs_train, outs_val):
            cache.put(self._view_key(t, views), a_tr)
            cache.put(self._keys(t)[1], a_va)
        return outs_train[0], outs_val[0]

    def _say_once(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    def _more_boundaries(self, cut, tag: str, depth: int):
        """(tensor, tag) of the boundaries of other depths to store in the same pass: every depth
        below the base's block count after the head phase, fewer than `depth` blocks after a
        fine-tuning cut; smallest first, not yet cached, within half of the cache budget."""
        from thaw.model import unfreeze

        base, spec = self.clf.base, self.clf.spec
        if self._cached(tag):
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
            t = f"at {bt._keras_history[0].name}"
            need = activation_bytes(bt, rows)
            if need > budget or self._cached(t):
                continue
            budget -= need
            out.append((bt, t))
        return out

    def _cached(self, tag: str) -> bool:
        k_train, k_val = self._keys(tag)
        if self.aug is not None:
            k_train = self._view_key(tag, self.views)
        return k_train in self.cache and k_val in self.cache

    def _view_key(self, tag: str, views: int) -> str:
        from thaw.data import augment

        return self._keys(
            f"{tag}|{augment.signature(self.aug)}|seed={self.view_seed}|views={views}"
        )[0]
