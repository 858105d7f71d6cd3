"""What each phase fits: the full model on images, or its trainable top on cached activations of
the frozen prefix (the same layer objects, so the full model learns)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NamedTuple

from thaw import data as data_mod
from thaw.errors import DataError
from thaw.train.cuts import Cut, CutStore
from thaw.train.feature_cache import open_cache
from thaw.train.frozen_pass import stored_where, view_table

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


def epoch_view(n: int, views: int, seed: int):
    """(image indices, epoch) -> the view each image trains on in that epoch: (epoch + offset) % V
    with a per-image offset drawn from `seed`, so no image repeats a view before using all V."""
    import tensorflow as tf

    from thaw.data import augment

    offsets = augment.view_offsets(n, views, seed)
    return lambda idx, epoch: tf.gather(augment.epoch_views(offsets, epoch, views), idx)


class PhaseInputs:
    """Inputs for each phase: the full model on images, or its trainable top on cached activations
    of the frozen prefix (the same layer objects, so the full model learns)."""

    def __init__(self, cfg, clf, ds, sweep: bool, workspace, aug=None):
        self.cfg, self.clf, self.ds, self.sweep, self.aug = cfg, clf, ds, sweep, aug
        self.data_state = workspace.data  # one tf.constant per array for every pipeline
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
        self.cache = open_cache(cfg, workspace, aug, 0 if ds.streamed_from else ds.nbytes)
        if self.cache is None and cfg.trainer.cache_features not in (False, "false"):
            # nothing can be cached (e.g. a random-init base whose BatchNorm trains): draw afresh
            # every epoch. With cache_features=false the same V draws are used on images, which
            # is what makes the cached and uncached paths comparable exactly.
            self.views = 0
        self.store = (
            None
            if self.cache is None
            else CutStore(cfg, clf, ds, self.cache, aug, self.view_seed, self.views, workspace)
        )
        self.val_images = data_mod.to_tf(ds.val, self.bs, False, self.seed, self.data_state)
        self._warned = False

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def for_phase(self, phase) -> PhaseData:
        if phase.epochs == 0:  # recorded, never compiled nor fit
            return PhaseData(self.clf.model, None, None, "images")
        if self.store is None:
            return self._images(phase)
        cut = self.store.cut(len(phase.blocks), self.sweep)
        if cut is None:
            log.info(
                "feature cache: no single boundary tensor for these blocks; training on images"
            )
            return self._images(phase)
        try:
            return self._features(cut, phase)
        except DataError as exc:  # no room on disk for the activations: this phase trains on images
            self._say_once(f"{exc}; training this phase on images instead")
            return self._images(phase)

    # -- the full model on images
    def _whole_model(self):
        """The classifier as a fit model of its own for this trainable set (a wrapper sharing its
        layers): the head phase and each depth keep their compiled step for later trials
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
            self.ds.train, self.bs, self.seed, phase.start, phase.remaining, self.data_state
        )
        return PhaseData(
            self._whole_model(),
            train,
            self.val_images,
            "images",
            steps_per_epoch=math.ceil(len(self.ds.train) / self.bs),
        )

    def _augmented_images(self, phase) -> PhaseData:
        """Images augmented as they are fed: view (epoch + offset) % V of each image, or a fresh
        draw every epoch with trainer.augment_views=0. The same draws as the cached views."""
        import tensorflow as tf

        from thaw.data import augment

        views, n, aug, draws = self.views, len(self.ds.train), self.aug, self.view_seed
        take = data_mod.rows(self.ds.train.images, self.data_state)
        labels = tf.constant(self.ds.train.labels)
        view_of = epoch_view(n, views, self.seed)
        table = view_table(aug, n, draws, views) if views else None

        def batch(idx, epoch):
            view = view_of(idx, epoch)
            if table is not None:
                params = tf.gather_nd(table, tf.stack([view, idx], axis=1))
            else:
                params = tf.gather(augment.draw(aug, n, draws, view[0]), idx)
            return augment.apply(take(idx), params), tf.gather(labels, idx)

        train = data_mod.epoch_batches(n, self.bs, self.seed, phase.start, phase.remaining, batch)
        return PhaseData(
            self._whole_model(),
            train,
            self.val_images,
            "images",
            steps_per_epoch=math.ceil(n / self.bs),
            views=views,
        )

    # -- the trainable top on the cut's activations
    def _features(self, cut: Cut, phase) -> PhaseData:
        """The cut's fit model on its activations: of the plain training images, or of V augmented
        views per image (each epoch feeds one of them); validation on the plain images."""
        t0, misses = time.perf_counter(), self.cache.misses
        x_train, x_val = self.store.activations(cut)
        secs = time.perf_counter() - t0
        self._log_ready(cut, x_train, x_val, secs)
        ds = self.ds
        if self.aug is None:
            train = data_mod.train_epochs(
                data_mod.Split(x_train, ds.train.labels),
                self.bs,
                self.seed,
                phase.start,
                phase.remaining,
                self.data_state,
            )
        else:
            train = self._view_batches(x_train, phase)
        val = data_mod.to_tf(
            data_mod.Split(x_val, ds.val.labels), self.bs, False, self.seed, self.data_state
        )
        return PhaseData(
            cut.fit_model,
            train,
            val,
            "features",
            cut.tag,
            secs,
            math.ceil(len(ds.train) / self.bs),
            self.views,
            self.cache.misses - misses,
        )

    def _view_batches(self, x_views, phase):
        """Training batches of (V, n, ...) cached view activations: image i in epoch e is fed view
        (e + offset_i) % V, as on images."""
        import tensorflow as tf

        n, views = len(self.ds.train), self.views
        labels = tf.constant(self.ds.train.labels)
        take = data_mod.rows(
            x_views.reshape((views * n,) + tuple(x_views.shape[2:])), self.data_state
        )
        view_of = epoch_view(n, views, self.seed)

        def batch(idx, epoch):
            return take(view_of(idx, epoch) * n + tf.cast(idx, tf.int64)), tf.gather(labels, idx)

        return data_mod.epoch_batches(n, self.bs, self.seed, phase.start, phase.remaining, batch)

    def _log_ready(self, cut: Cut, x_train, x_val, secs: float) -> None:
        cache, extras = self.cache, len(cut.extras)
        if self.aug is None:
            log.info(
                "feature cache (%s): %d+%d activations of shape %s ready in %.1fs (hits %d, misses "
                "%d%s%s)",
                cut.tag,
                len(x_train),
                len(x_val),
                x_train.shape[1:],
                secs,
                cache.hits,
                cache.misses,
                f"; {extras} shallower boundaries stored too" if extras else "",
                stored_where(x_train),
            )
            return
        log.info(
            "feature cache (%s): %d views x %d training + %d validation activations of shape %s "
            "ready in %.1fs (hits %d, misses %d%s%s)",
            cut.tag,
            self.views,
            len(self.ds.train),
            len(x_val),
            x_val.shape[1:],
            secs,
            cache.hits,
            cache.misses,
            f"; {extras} other depths stored too" if extras else "",
            stored_where(x_train),
        )

    def _say_once(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True
