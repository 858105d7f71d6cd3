"""Weights & Biases: one run per training run / sweep trial, grouped by study. Never prompts, never
hangs.

Tracking is best effort: if W&B cannot start or fails mid-run, training goes on with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _argv_redacted():
    """W&B records the command line (sys.argv) with each run: it sees the storage URL's password as
    ***. Around wandb.init and run.finish, where W&B reads it."""
    from thaw.runtime.secrets import redact

    saved = list(sys.argv)
    sys.argv[:] = [redact(a) for a in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if _has_credentials() else "offline"


class Tracker:
    """No-op tracker (logger=none)."""

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        pass

    def log_phase(self, phase: str, info: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any], state: str, model_path: Path | None = None) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, run):
        self.run = run
        self.failed = False

    def _safe(self, fn, *args, **kwargs):
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # W&B trouble never stops training
            self.failed = True
            log.warning("W&B logging failed, training goes on without it: %s", exc)

    def log_epoch(self, row, step):
        numeric = {
            k: v
            for k, v in row.items()
            if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))
        }
        numeric["phase"] = row.get("phase")
        self._safe(self.run.log, numeric, step=step)

    def log_phase(self, phase, info):
        self._safe(
            self.run.summary.update,
            {f"{phase}/{k}": v for k, v in info.items() if isinstance(v, (int, float, str))},
        )

    def finish(self, summary, state, model_path=None):
        def _finish():
            self.run.summary.update({**summary, "state": state})
            if model_path is not None and Path(model_path).is_file():
                import wandb

                art = wandb.Artifact(f"model-{self.run.id}", type="model")
                art.add_file(str(model_path))
                self.run.log_artifact(art)

        self._safe(_finish)
        try:
            with _argv_redacted():
                self.run.finish(exit_code=0 if state in ("COMPLETE", "PRUNED") else 1)
        except Exception as exc:
            log.warning("W&B finish failed: %s", exc)


def start(cfg, output_dir: Path, trial=None) -> Tracker:
    """A tracker for this run: W&B when logger=wandb, else a no-op."""
    lcfg = cfg.logger
    if lcfg.name != "wandb":
        return Tracker()
    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]  # an empty value makes wandb.Settings fail validation
    mode = resolve_mode(lcfg.mode)
    if mode == "disabled":
        return Tracker()
    try:
        import wandb
    except ImportError:
        log.warning("logger=wandb but wandb is not installed (pip install wandb); not tracking")
        return Tracker()
    config, group, name, job_type = _run_identity(cfg, trial)
    wandb_dir = Path(lcfg.dir) if lcfg.dir else Path(output_dir)
    try:
        wandb_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("W&B directory %s cannot be created (%s); not tracking", wandb_dir, exc)
        return Tracker()

    def init(m):
        with _argv_redacted():
            return wandb.init(
                project=lcfg.project,
                entity=lcfg.entity,
                group=group,
                job_type=job_type,
                name=name,
                tags=list(lcfg.tags or []),
                config=config,
                dir=str(wandb_dir),
                mode=m,
                reinit="finish_previous",
                settings=_settings(wandb, lcfg.init_timeout),
            )

    started = _init_or_offline(init, mode)
    if started is None:
        return Tracker()
    run, mode = started
    if mode == "offline":
        log.info(
            "W&B offline run in %s; upload later with: wandb sync %s", run.dir, Path(run.dir).parent
        )
    return WandbTracker(run)


def _settings(wandb, init_timeout):
    """Quiet settings: no prompts, no console capture, no system stats."""
    return wandb.Settings(
        init_timeout=float(init_timeout),
        silent=True,
        console="off",
        x_disable_stats=True,
    )


def _run_identity(cfg, trial) -> tuple[dict, str, str | None, str]:
    """(config, group, name, job_type) of the W&B run: a sweep's trials and confirmation runs are
    named after their trial and grouped by study."""
    from omegaconf import OmegaConf

    lcfg = cfg.logger
    config = OmegaConf.to_container(cfg, resolve=True)
    group, name, job_type = lcfg.group or cfg.name, None, "train"
    if trial is not None and hasattr(
        trial, "seed"
    ):  # a confirmation run (thaw.sweeper.trial.ConfirmationRun)
        group = lcfg.group or trial.study_name
        name, job_type = f"trial-{trial.number}-seed-{trial.seed}", "confirmation"
        config["confirmation"] = {"trial": trial.number, "seed": trial.seed}
    elif trial is not None:
        group = lcfg.group or trial.study.study_name
        name, job_type = f"trial-{trial.number}", "trial"
        config["trial"] = {"number": trial.number, "params": dict(trial.trial.params)}
    return config, group, name, job_type


def _init_or_offline(init, mode: str):
    """(run, mode) from init(mode); an online run that cannot start is tried once offline. None
    when W&B cannot start at all."""
    try:
        return init(mode), mode
    except Exception as exc:
        if mode != "online":
            log.warning(
                "W&B could not start (%s); training goes on without tracking", str(exc)[:200]
            )
            return None
        log.warning(
            "W&B online failed (%s); falling back to offline", str(exc).splitlines()[0][:200]
        )
        try:
            return init("offline"), "offline"
        except Exception as exc2:
            log.warning(
                "W&B could not start (%s); training goes on without tracking", str(exc2)[:200]
            )
            return None


def log_sweep_summary(logger_cfg, study, sweep_dir: Path) -> None:
    """One more W&B run (job_type sweep-summary): a table of all trials and the report's plots."""
    if logger_cfg is None or logger_cfg.get("name") != "wandb":
        return
    mode = resolve_mode(logger_cfg.get("mode", "auto"))
    if mode == "disabled":
        return
    try:
        import wandb

        with _argv_redacted():
            run = wandb.init(
                project=logger_cfg.get("project", "thaw"),
                entity=logger_cfg.get("entity"),
                group=logger_cfg.get("group") or study.study_name,
                job_type="sweep-summary",
                name=f"{study.study_name}-summary",
                dir=str(sweep_dir),
                mode=mode,
                reinit="finish_previous",
                settings=_settings(wandb, logger_cfg.get("init_timeout", 30)),
            )
    except Exception as exc:
        log.warning("W&B sweep summary not logged: %s", str(exc).splitlines()[0][:200])
        return
    try:
        table = _trials_table(wandb, study)
        images = {
            f"plots/{p.stem}": wandb.Image(str(p))
            for p in sorted((sweep_dir / "report_png").glob("*.png"))
        }
        run.log({"trials": table, **images})
        _summarise_best(run, study)
    except Exception as exc:
        log.warning("W&B sweep summary incomplete: %s", exc)
    finally:
        try:
            with _argv_redacted():
                run.finish()
        except Exception:
            pass


def _trials_table(wandb, study):
    """Every trial: number, state, value, its parameters and run directory."""
    params = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    table = wandb.Table(columns=["number", "state", "value", *params, "run_dir"])
    for t in study.get_trials(deepcopy=False):
        value = t.values[0] if t.values and len(t.values) == 1 else None
        table.add_data(
            t.number,
            t.state.name,
            value,
            *[t.params.get(p) for p in params],
            t.user_attrs.get("run_dir", ""),
        )
    return table


def _summarise_best(run, study) -> None:
    """The best trial (and the verdict, when confirmed) on the run's summary; a study without a
    finished trial has none."""
    try:
        run.summary.update(
            {
                "best_value": study.best_value,
                "best_params": study.best_params,
                "best_trial": study.best_trial.number,
            }
        )
        if study.user_attrs.get("verdict"):  # the confirmed winner against the baseline, in words
            run.summary.update(
                {"verdict": study.user_attrs["verdict"], "about": study.user_attrs.get("about")}
            )
    except (ValueError, RuntimeError):
        pass
