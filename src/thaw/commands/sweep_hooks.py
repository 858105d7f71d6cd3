"""thaw-train's side of a sweep: what the generic sweeper (thaw.sweeper) asks the app it runs.

The sweeper knows nothing of data, weights or test splits; the task of `commands.train.hydra_app`
hands it this object as its `sweep_app` (thaw.sweeper.hooks.AppHooks). No TensorFlow here except
in `evaluate`, after the search.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

from thaw.errors import ConfigError
from thaw.sweeper.hooks import AppHooks

# Keys that change where or how fast a run goes, never what it learns: a study is the same question
# with any of them changed (resumed elsewhere, with the cache off, without W&B, ...).
RUN_LOCAL = (
    "name",
    "logger",
    "trainer.resume",
    "trainer.checkpoint",
    "trainer.cache_dir",
    "trainer.cache_max_mb",
    "trainer.cache_features",
    "trainer.reuse_compiled",
    "trainer.kept_fit_models",
    "trainer.fused_optimizer",
    "trainer.save_model",
    "trainer.export_h5",
    "data.max_memory_mb",
    "data.max_disk_mb",
)
PATH_KEYS = (
    "data.path",
    "backbone.weights",
    "data.tfds_data_dir",
    "trainer.cache_dir",
    "logger.dir",
)
SEED_KEY = "trainer.seed"
# what a sweep trial measures; the test split is held out for the chosen trial
TRIAL_OBJECTIVES = (
    "val_accuracy",
    "val_loss",
    "train_accuracy",
    "train_loss",
    "wall_seconds",
    "trainable_params",
)


def absolute(cfg) -> None:
    """Paths in a composed config made absolute against the current directory (in place)."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and value != "imagenet":
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)), merge=False)


def resolved(cfg):
    """A run's config with interpolations resolved and paths absolute: reads the same anywhere."""
    from thaw.sweeper.identity import without_hydra

    out = OmegaConf.create(
        OmegaConf.to_container(
            without_hydra(cfg) if "hydra" in cfg else cfg, resolve=True, enum_to_str=True
        )
    )
    absolute(out)
    return out


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def folder_content(root: str) -> str:
    """'<files> files, <digest>': every file's relative path and size (a cheap content key; mtimes
    are left out, so a copied folder is the same data)."""
    entries = []
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            try:
                entries.append(f"{os.path.relpath(full, root)}\t{os.path.getsize(full)}")
            except OSError:
                continue
    entries.sort()
    return (
        f"{len(entries)} files, {hashlib.sha256(chr(10).join(entries).encode()).hexdigest()[:16]}"
    )


def identity_free(job_cfg):
    from thaw.sweeper.identity import without_hydra

    return without_hydra(job_cfg)


class ThawTrainSweep(AppHooks):
    prog = "thaw-train"
    run_local = RUN_LOCAL
    seed_key = SEED_KEY

    def default_directions(self, config) -> list[str]:
        """Each objective its own way: accuracy up; loss, time and size down."""
        from thaw.train.record import objective_names

        return [
            "maximize" if n.endswith("accuracy") else "minimize" for n in objective_names(config)
        ]

    def check_objectives(self, config) -> None:
        """An objective no trial measures would fail every trial: refused before the first."""
        from thaw.train.record import objective_names

        for name in objective_names(config):
            if name not in TRIAL_OBJECTIVES:
                raise ConfigError(
                    f"trainer.objective: {name} is not measured by sweep trials (the test split is "
                    "held out: the sweep evaluates only its best trial on it, once); sweep on one "
                    f"of {', '.join(TRIAL_OBJECTIVES)}"
                )

    def no_model_overrides(self) -> list[str]:
        return ["trainer.save_model=false"]

    def on_results(self, config, study, sweep_dir, storage_url: str) -> None:
        """report.html + PNGs in the sweep dir, and the W&B sweep-summary run (best effort)."""
        import logging

        log = logging.getLogger("thaw.sweeper")
        try:
            from thaw.report.html import build_report

            local = storage_url.endswith(f"{sweep_dir}/study.db")
            build_report(  # it logs "report: <path>"
                str(sweep_dir) if local else storage_url, study.study_name, out_dir=sweep_dir
            )
        except Exception as exc:
            log.warning("sweep report not written: %s", exc)
        try:
            from thaw.runtime.sweep_summary import log_sweep_summary

            log_sweep_summary(config.get("logger"), study, sweep_dir, storage_url)
        except Exception as exc:
            log.warning("W&B sweep summary not logged: %s", exc)

    def config_keys(self, job_cfg, searched: Iterable[str]) -> dict[str, str]:
        """The fixed config, paths absolute (the same data from another directory is the same
        study)."""
        from thaw.sweeper import identity

        cfg = OmegaConf.create(
            OmegaConf.to_container(identity.without_hydra(job_cfg), resolve=True, enum_to_str=True)
        )
        absolute(cfg)
        return identity.fixed_keys(cfg, searched, self.run_local)

    def content_keys(self, job_cfg) -> dict[str, str]:
        """What the config's paths hold: the data folder by content, the weights file by its
        hash."""
        out = {}
        d, w = job_cfg.data, job_cfg.backbone.weights
        if d.name == "folder" and d.path and os.path.isdir(os.path.expanduser(str(d.path))):
            out["data.content"] = folder_content(os.path.expanduser(str(d.path)))
        if w not in (None, "imagenet") and os.path.isfile(os.path.expanduser(str(w))):
            out["backbone.weights_sha256"] = _file_sha256(os.path.expanduser(str(w)))
        return out

    def validate(self, job_cfg) -> None:
        """The fixed config's full check (the data folder scanned), after the study identity
        check."""
        from thaw.config.checks import validate

        validate(identity_free(job_cfg))

    def refuse_ignored(self, job_cfg, searched: Iterable[str]) -> None:
        """A searched key this config ignores would make every trial the same model: refused."""
        from thaw.config.checks import ignored

        for key, why in ignored(job_cfg, list(searched)).items():
            raise ConfigError(f"hydra.sweeper.params.{key}: searching it changes nothing: {why}")

    def pruning_warning(self, job_cfg) -> str | None:
        from thaw.train.record import objective_names

        names = objective_names(job_cfg)
        if len(names) == 1 and names[0] not in ("val_accuracy", "val_loss"):
            return (
                f"pruning is off: trainer.objective={names[0]} is measured once at the end, not "
                "per epoch "
                "(only val_accuracy and val_loss are reported per epoch)"
            )
        return None

    def baseline(self, job_cfg, space: dict[str, Any]) -> dict[str, Any]:
        """The frozen-base trial: depth 0, every other searched key at the composed config's
        value."""
        if "unfreeze.depth" not in space:
            raise ConfigError(
                "hydra.sweeper.baseline=true: the baseline is unfreeze.depth=0, so unfreeze.depth "
                "must be searched (or set hydra.sweeper.baseline=false)"
            )
        params = {}
        for key, dist in space.items():
            value = 0 if key == "unfreeze.depth" else _preset_value(job_cfg, key)
            if value is None or not _contains(dist, value):
                raise ConfigError(
                    f"hydra.sweeper.baseline=true: {key}={value} (the preset's value) is outside "
                    "the searched range; widen it or set hydra.sweeper.baseline=false"
                )
            params[key] = value
        return params

    def confirmation_overrides(
        self, job_cfg, base_seed: int, reuse_views: bool = True
    ) -> list[str]:
        """A confirmation run's model is never served (the winner's own trial is): not saved. With
        augmentation it keeps the search's augmented views (trainer.view_seed): they are in the
        feature cache, and computing a new seed's views costs a pass over every training image per
        view; the run's own seed still draws the head, orders the data and assigns views to
        epochs."""
        from thaw.data.augment import resolve

        out = ["trainer.save_model=false"]
        if (
            reuse_views
            and resolve(job_cfg) is not None
            and job_cfg.trainer.get("view_seed") is None
        ):
            out.append(f"trainer.view_seed={int(base_seed)}")
        return out

    def confirmation_order(self, params: dict[str, Any]):
        """Within a seed, the deepest trial first: its pass through the frozen layers computes the
        new seed's augmented views once and stores every shallower boundary for the runs after
        it."""
        return -int(params.get("unfreeze.depth", 0))

    def about(self, job_cfg, space_text: str) -> dict[str, Any]:
        """What the sweep is about, for the report header and the W&B summary."""
        b, d = job_cfg.backbone, job_cfg.data
        out: dict[str, Any] = {
            "backbone": f"{b.name} alpha {b.alpha}",
            "weights": _weights_text(b.weights),
            "image_size": int(b.image_size),
            "search_space": space_text,
            "data": d.name,
        }
        for key in ("sampler", "pruner"):  # as configured: the report's header names them
            try:
                node = OmegaConf.select(job_cfg, f"hydra.sweeper.{key}", default=None)
                if node is not None:
                    out[key] = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
            except Exception:  # an unresolvable value: the header leaves it out
                pass
        if d.name == "folder" and d.path:
            out["data"] = os.path.abspath(os.path.expanduser(str(d.path)))
            try:
                from thaw.data.scan import scan_folder

                scan = scan_folder(d)
                out["images"] = {
                    "train": len(scan.train.files),
                    "validation": len(scan.val.files),
                    "test": len(scan.test.files) if scan.test is not None else 0,
                    "classes": len(scan.class_names),
                }
            except Exception:  # the trials will say what is wrong with the folder
                pass
        return out

    def evaluate(self, run_dir: str) -> dict[str, Any] | None:
        """The held-out test split on a trial's model.keras, with per-image correctness (paired
        comparisons), or None without a test split or a model."""
        from thaw.commands.evaluate import evaluate_test

        return evaluate_test(run_dir, per_image=True)


def _preset_value(job_cfg, key: str):
    """The composed config's value of a searched key; for a config group (augment=choice(...)), the
    option it composed."""
    value = OmegaConf.select(job_cfg, key, default=None)
    if OmegaConf.is_config(value):
        choices = OmegaConf.select(job_cfg, "hydra.runtime.choices", default=None) or {}
        value = choices.get(key) or value.get("name")
    return value


def _contains(dist, value) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError, AttributeError):
        return False


def _weights_text(weights) -> str:
    """imagenet, None, or a weights file's absolute path (the report is read from anywhere)."""
    text = str(weights)
    if text in ("imagenet", "None", "null") or not os.path.exists(os.path.expanduser(text)):
        return text
    return os.path.abspath(os.path.expanduser(text))
