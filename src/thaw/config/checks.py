"""Value checks the schema cannot make (ranges, cross-field rules, files), run before TensorFlow
loads: a wrong value fails in about a second with one line naming the key; and which keys a
composed config ignores (a setting that changes nothing is warned about or refused)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from thaw.config.keys import added_keys, not_a_setting
from thaw.config.schema import OBJECTIVES
from thaw.errors import ConfigError


def _finite_positive(value: Any, key: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{key}: must be a finite number > 0, got {value!r}")
    return v


def _validate_augment(a) -> None:
    for key, top in (("rotation", 0.5), ("zoom", 0.9), ("translate", 0.5), ("contrast", 1.0)):
        value = float(a[key])
        if not (math.isfinite(value) and 0 <= value <= top):
            raise ConfigError(f"augment.{key}: must be in [0, {top}], got {a[key]}")


def validate(cfg: DictConfig, scan_data: bool = True, data_state=None) -> None:
    """Check values the schema cannot: ranges, cross-field rules, files. Raises
    ConfigError/DataError. `scan_data=False` leaves the data folder's scan to later (a sweep checks
    its study first); with `data_state` (a Workspace's thaw.data.state.DataState) the run that
    follows reuses the scan."""
    from thaw.model.backbones import get_spec

    added = added_keys(cfg)
    if added:
        raise not_a_setting(added[0])
    spec = get_spec(cfg.backbone.name)
    _validate_backbone(cfg.backbone, spec)
    _validate_head(cfg.head)
    _validate_lr(cfg.lr)
    _validate_unfreeze(cfg.unfreeze, cfg.backbone.name, spec)
    _validate_trainer(cfg)
    _validate_data(cfg.data, scan_data, data_state)


def _validate_backbone(b, spec) -> None:
    if b.num_blocks != spec.num_blocks:
        raise ConfigError(
            f"backbone.num_blocks: {b.name} has {spec.num_blocks} blocks, not "
            f"{b.num_blocks} (it is fixed by the architecture)"
        )
    if b.image_size < spec.min_size:
        raise ConfigError(
            f"backbone.image_size: {b.image_size} is below {b.name}'s minimum of {spec.min_size} px"
        )
    if b.image_size > 1024:
        raise ConfigError(f"backbone.image_size: {b.image_size} is too large (max 1024)")
    if b.batchnorm_momentum is not None and not 0.0 <= b.batchnorm_momentum < 1.0:
        raise ConfigError(
            f"backbone.batchnorm_momentum: must be in [0, 1) or null, got {b.batchnorm_momentum}"
        )
    _finite_positive(b.alpha, "backbone.alpha")
    if (
        b.weights == "imagenet"
        and spec.imagenet_alphas is not None
        and b.alpha not in spec.imagenet_alphas
    ):
        raise ConfigError(
            f"backbone.alpha: ImageNet weights for {b.name} exist only for alpha in "
            f"{list(spec.imagenet_alphas)}, got {b.alpha}"
        )
    if b.weights not in (None, "imagenet"):
        if not os.path.isfile(b.weights):
            what = "a directory, not a file" if os.path.isdir(b.weights) else "no such file"
            raise ConfigError(
                f"backbone.weights: {what}: {b.weights} "
                "(use imagenet, null, or a path to a Keras weights file)"
            )


def _validate_head(head) -> None:
    if not 0 <= head.dropout < 1:
        raise ConfigError(f"head.dropout: must be in [0, 1), got {head.dropout}")
    if head.name == "mlp" and head.hidden_units < 1:
        raise ConfigError(
            f"head.hidden_units: must be >= 1 for the mlp head, got {head.hidden_units}"
        )


def _validate_lr(lr) -> None:
    _finite_positive(lr.base, "lr.base")
    _finite_positive(lr.finetune_factor, "lr.finetune_factor")
    if not 0 <= lr.final_fraction <= 1:
        raise ConfigError(f"lr.final_fraction: must be in [0, 1], got {lr.final_fraction}")


def _validate_unfreeze(u, backbone_name: str, spec) -> None:
    if u.name == "top_blocks":
        if u.depth < 0:
            raise ConfigError(f"unfreeze.depth: must be >= 0, got {u.depth}")
        if u.depth > spec.num_blocks:
            raise ConfigError(
                f"unfreeze.depth: {u.depth} is more than {backbone_name}'s {spec.num_blocks} "
                f"blocks (use 0..{spec.num_blocks}, or unfreeze=all)"
            )


def _validate_trainer(cfg) -> None:
    """The trainer's settings and those it reads (augmentation, rates, objective), in this order:
    the first wrong value is the one reported."""
    _validate_schedule(cfg)
    _validate_augment(cfg.augment)
    _validate_runtime(cfg.trainer)
    _validate_optimizer(cfg)
    _validate_objectives(cfg.trainer)


def _validate_schedule(cfg) -> None:
    """Epochs, the feature cache, augmented views and early stopping."""
    t = cfg.trainer
    if t.head_epochs < 0 or t.finetune_epochs < 0:
        raise ConfigError("trainer.head_epochs/finetune_epochs: must be >= 0")
    if t.head_epochs + t.finetune_epochs == 0:
        raise ConfigError("trainer.head_epochs: at least one epoch must be trained")
    if t.cache_features not in ("auto", True, False, "true", "false"):
        raise ConfigError(
            f"trainer.cache_features: expected auto, true or false, got {t.cache_features!r}"
        )
    if t.cache_max_mb < 0:
        raise ConfigError(f"trainer.cache_max_mb: must be >= 0, got {t.cache_max_mb}")
    cache_dir = Path(str(t.cache_dir)).expanduser() if t.cache_dir else None
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError(
            f"trainer.cache_dir: {t.cache_dir} is a file; expected a directory (one that "
            "is not there yet is made)"
        )
    if t.augment_views < 0:
        raise ConfigError(f"trainer.augment_views: must be >= 0, got {t.augment_views}")
    if t.patience < 0:
        raise ConfigError(
            f"trainer.patience: must be >= 0 (0 = never stop early), got {t.patience}"
        )
    if cfg.data.train_on_val and (t.restore_best or t.patience):
        raise ConfigError(
            "data.train_on_val: validation images are trained on, so they cannot choose the "
            "epoch; set trainer.restore_best=false trainer.patience=0 (thaw-retrain --train-on-val "
            "does)"
        )


def _validate_runtime(t) -> None:
    """Compilation, devices and label smoothing (precision, strategy and resume are typed)."""
    if t.jit_compile not in ("auto", True, False):
        raise ConfigError(
            f"trainer.jit_compile: expected auto, true or false, got {t.jit_compile!r}"
        )
    if t.get("kept_fit_models", 1) < 1:
        raise ConfigError(
            f"trainer.kept_fit_models: must be >= 1 (the newest fit model is always kept), "
            f"got {t.kept_fit_models}"
        )
    if t.cpu_devices is not None and t.cpu_devices < 1:
        raise ConfigError(f"trainer.cpu_devices: must be >= 1, got {t.cpu_devices}")
    if not (math.isfinite(float(t.label_smoothing)) and 0.0 <= float(t.label_smoothing) < 1.0):
        raise ConfigError(f"trainer.label_smoothing: must be in [0, 1), got {t.label_smoothing}")


def _validate_optimizer(cfg) -> None:
    """Layer-wise rate decay and weight decay."""
    decay = cfg.lr.get("layer_decay", 1.0)
    if not (math.isfinite(float(decay)) and 0.0 < float(decay) <= 1.0):
        raise ConfigError(
            f"lr.layer_decay: must be in (0, 1] (each block below trains at this times the "
            f"rate of the block above; 1: one rate), got {decay}"
        )
    wd = cfg.get("optimizer", {}).get("weight_decay", 0.0)
    if not (math.isfinite(float(wd)) and 0.0 <= float(wd) < 1.0):
        raise ConfigError(
            f"optimizer.weight_decay: must be in [0, 1) (decoupled, per step at the learning "
            f"rate), got {wd}"
        )


def _validate_objectives(t) -> None:
    """One objective or a list of them, each a known metric."""
    objectives = (
        t.objective
        if OmegaConf.is_list(t.objective) or isinstance(t.objective, list)
        else [t.objective]
    )
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise ConfigError(
                f"trainer.objective: unknown metric {obj!r}; choose from {', '.join(OBJECTIVES)}"
            )


def _validate_data(d, scan: bool = True, data_state=None) -> None:
    if d.batch_size < 1:
        raise ConfigError(f"data.batch_size: must be >= 1, got {d.batch_size}")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    if not 0 <= d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction: must be in [0, 1), got {d.test_fraction}")
    for key in ("max_memory_mb", "max_disk_mb"):
        if d.get(key) is not None and d.get(key) < 0:
            raise ConfigError(f"data.{key}: must be >= 0 (MB), got {d.get(key)}")
    if d.max_per_class is not None and d.max_per_class < 1:
        raise ConfigError(f"data.max_per_class: must be >= 1, got {d.max_per_class}")
    if d.name == "synthetic":
        n = d.num_classes or 2
        if not 2 <= n <= 4:
            raise ConfigError(f"data.num_classes: synthetic data has 2 to 4 classes, got {n}")
        if d.num_train < n or d.num_val < n:
            raise ConfigError("data.num_train/num_val: need at least one image per class")
    if d.name == "folder" and scan:
        from thaw.data.scan import scan_folder

        scan_folder(d, data_state)  # raises DataError on a missing/empty/one-class folder


_LOGGER_KEYS = ("project", "entity", "mode", "group", "tags", "log_model", "dir", "init_timeout")
_TFDS_KEYS = ("tfds_name", "tfds_data_dir", "tfds_train_split", "tfds_val_split", "tfds_test_split")


def _augment_active(cfg) -> bool:
    """Imported when asked: thaw.data.augment is not needed for any other check."""
    from thaw.data.augment import active

    return active(cfg.get("augment"))


def _pretrained_batchnorm(cfg) -> bool:
    """BatchNorm runs in inference mode: asked for, or auto with pretrained weights."""
    b = cfg.backbone
    return b.batchnorm == "inference" or (b.batchnorm == "auto" and bool(b.weights))


# (condition, keys, why: a text or a function of the config), checked in this order; a key a
# later row names again keeps its place and takes that row's reason
_INERT = (
    (
        lambda c: c.unfreeze.name != "top_blocks",
        ("unfreeze.depth",),
        lambda c: (
            f"unfreeze={c.unfreeze.name} trains "
            f"{'every' if c.unfreeze.name == 'all' else 'no'} block of the "
            "base; the depth counts blocks only with unfreeze=top_blocks"
        ),
    ),
    (
        lambda c: c.unfreeze.name == "none",
        ("lr.layer_decay",),
        "unfreeze=none trains no block of the base: there are no blocks to give rates",
    ),
    (
        lambda c: int(c.trainer.finetune_epochs) == 0,
        ("unfreeze.depth", "lr.finetune_factor", "lr.layer_decay"),
        "trainer.finetune_epochs=0: there is no fine-tuning phase",
    ),
    (
        lambda c: c.head.name != "mlp",
        ("head.hidden_units", "head.activation"),
        lambda c: f"head={c.head.name} has no hidden layer (head=mlp has)",
    ),
    (
        lambda c: c.lr.name == "constant",
        ("lr.final_fraction",),
        "lr=constant keeps the rate; the final fraction applies to lr=cosine",
    ),
    (
        lambda c: c.data.name != "folder",
        ("data.path", "data.val_fraction", "data.on_bad_image"),
        lambda c: f"data={c.data.name} does not read a folder (data=folder does)",
    ),
    (
        lambda c: c.data.name == "folder" and bool(c.data.path) and _has_own_split(c.data.path),
        ("data.val_fraction",),
        lambda c: (
            f"{c.data.path} has its own validation folder; data.val_fraction splits a folder "
            "of class folders"
        ),
    ),
    (
        lambda c: not c.trainer.save_model,
        ("trainer.export_h5",),
        "trainer.save_model=false: no model is saved, in either format",
    ),
    (
        lambda c: c.data.name != "synthetic",
        ("data.num_train", "data.num_val", "data.num_test"),
        lambda c: f"data={c.data.name} is not generated (the counts apply to data=synthetic)",
    ),
    (
        lambda c: c.data.name != "cats_vs_dogs",
        tuple(f"data.{key}" for key in _TFDS_KEYS),
        lambda c: f"data={c.data.name} does not read TensorFlow Datasets (data=cats_vs_dogs does)",
    ),
    (
        lambda c: not _augment_active(c) and not c.data.get("augment"),
        ("trainer.augment_views", "trainer.view_seed"),
        "no augmentation is on (augment=none): there are no views to draw",
    ),
    (
        _pretrained_batchnorm,
        ("backbone.batchnorm_momentum",),
        "the pretrained base runs BatchNorm in inference mode, so its "
        "moving averages never update (backbone.batchnorm=train would)",
    ),
    (
        lambda c: c.logger.name == "none",
        tuple(f"logger.{key}" for key in _LOGGER_KEYS),
        "logger=none: nothing is tracked",
    ),
)


def _has_own_split(path) -> bool:
    from thaw.data.scan import has_own_split

    return has_own_split(path)


# thaw's sweeper settings that a multirun's `hydra` node makes inert: (condition, keys, why)
_SWEEPER_INERT = (
    (
        lambda h: (
            "BasicLauncher" in str(h.launcher.get("_target_", ""))
            and int(h.sweeper.get("n_jobs") or 1) > 1
            and h.sweeper.get("scheduling") != "batch"  # batch: n_jobs trials asked per batch
        ),
        ("hydra.sweeper.n_jobs",),
        "Hydra's basic launcher runs one trial at a time (hydra/launcher=joblib, ray or "
        "submitit run n_jobs at once)",
    ),
    (
        lambda h: int(OmegaConf.select(h, "sweeper.confirm.top_k", default=1) or 0) == 0,
        ("hydra.sweeper.confirm.seeds",),
        "hydra.sweeper.confirm.top_k=0: there are no confirmation runs",
    ),
    (
        lambda h: "heartbeat_interval" in h.sweeper and not h.sweeper.heartbeat_interval,
        ("hydra.sweeper.grace_period",),
        "hydra.sweeper.heartbeat_interval is null: without heartbeats no trial goes stale",
    ),
)


def inert_sweeper_keys(hydra) -> dict:
    """{key: why} for the sweeper settings a multirun's `hydra` node ignores."""
    return {key: why for condition, keys, why in _SWEEPER_INERT if condition(hydra) for key in keys}


def inert_keys(cfg) -> dict:
    """{key: why} for settings this composed config ignores: given on the command line they would
    change nothing, so a single run warns and a sweep refuses to search them."""
    out = {}
    for condition, keys, why in _INERT:
        if condition(cfg):
            text = why if isinstance(why, str) else why(cfg)
            for key in keys:
                out[key] = text
    return out


def ignored(cfg, keys) -> dict:
    """{key: why} for those of `keys` (dotted; a group's own key like `head.hidden_units`) that
    `cfg` ignores."""
    inert = inert_keys(cfg)
    return {k: inert[k] for k in keys if k in inert}
