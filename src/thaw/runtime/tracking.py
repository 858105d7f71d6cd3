"""Weights & Biases: one run per training run / sweep trial, grouped by study. Never prompts, never
hangs.

W&B runs match the study one to one: a trial's run id is derived from its study and number
(`run_id`), so a job killed and run again (thaw resumes it from its checkpoint, a requeued SLURM job
continues it) continues the same W&B run (`resume="allow"`) instead of starting a second one. A
retried trial (hydra.sweeper.max_retry) is a new Optuna trial, so it gets its own run, linked to
the dead trial's: config `trial.retry_of` (number and W&B run id) and the tag `retry`. W&B cannot
resume an offline run, so offline the new attempt replays the epochs its checkpoint holds and the
dead attempt's offline folder is set aside as `superseded-offline-run-*` (out of `wandb sync`'s
way): one folder to sync, one run, the whole history. The run's summary `objective` is the value
the study recorded for the trial (a pruned trial's last reported value); its tags say the trial,
the study and the final state.

Tracking is best effort: if W&B cannot start or fails mid-run, training goes on with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from thaw.errors import first_line

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
    """An API key W&B finds without asking: WANDB_API_KEY, an identity token file, or a netrc
    entry for the W&B host (WANDB_BASE_URL, else `wandb login --host`'s, else api.wandb.ai)."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return _wandb_host() in hosts


def _wandb_host() -> str:
    """The W&B server's host name, as W&B's netrc entries name it."""
    import configparser
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        config_dir = os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb"
        settings = configparser.ConfigParser()
        try:
            settings.read(Path(config_dir) / "settings")
            url = settings.get("default", "base_url", fallback=None)
        except configparser.Error:
            url = None
    return urlparse(url or "https://api.wandb.ai").hostname or "api.wandb.ai"


def resolve_mode(mode: str) -> str:
    """online, offline or disabled. Online needs an API key W&B finds without asking: without one
    W&B waits at its login prompt on a terminal, so such a run logs offline, with a warning."""
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        if env not in ("online", "offline", "disabled"):
            return "online" if _has_credentials() else "offline"
        mode = env
    if mode == "online" and not _has_credentials():
        log.warning(
            "W&B online: no API key found for %s (WANDB_API_KEY, or `wandb login`); this run "
            "logs offline, and `wandb sync` uploads it later",
            _wandb_host(),
        )
        return "offline"
    return mode


class Tracker:
    """No-op tracker (logger=none)."""

    def log_epoch(self, row: dict[str, Any], step: int) -> None:
        pass

    def log_phase(self, phase: str, info: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any], state: str, model_path: Path | None = None) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, run, output_dir: Path | None = None, trial=None):
        self.run = run
        self.failed = False
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.trial = trial
        # steps before this one are the W&B run's already (online resume) or replayed here
        self.logged = int(getattr(run, "starting_step", 0) or 0)

    def _safe(self, fn, *args, **kwargs):
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # W&B trouble never stops training
            self.failed = True
            log.warning("W&B logging failed, training goes on without it: %s", exc)

    def log_epoch(self, row, step):
        self._catch_up(step)
        self._safe(self.run.log, _numeric(row), step=step)
        self.logged = max(self.logged, step + 1)

    def log_phase(self, phase, info):
        self._safe(
            self.run.summary.update,
            {f"{phase}/{k}": v for k, v in info.items() if isinstance(v, (int, float, str))},
        )

    def _catch_up(self, upto: int | None) -> None:
        """A resumed run: the epochs (and phases) an earlier attempt recorded in metrics.json and
        this W&B run lacks, logged at their steps before the first new one (or at finish)."""
        if self.output_dir is None or (upto is not None and upto <= self.logged):
            return
        try:
            record = json.loads((self.output_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            return
        history = record.get("history") or []
        end = len(history) if upto is None else min(upto, len(history))
        for step in range(self.logged, end):
            self._safe(self.run.log, _numeric(history[step]), step=step)
        if end > self.logged:
            for phase, info in (record.get("phases") or {}).items():
                self.log_phase(phase, info)
            self._safe(self.run.summary.update, {"resumed": True})
        self.logged = max(self.logged, end)

    def finish(self, summary, state, model_path=None):
        def _finish():
            self._catch_up(None)
            final = {**summary, "state": state}
            value = _study_value(self.trial, state, summary.get("objective"))
            if value is not None or "objective" in final:
                final["objective"] = value
            self.run.summary.update(final)
            self.run.tags = tuple(t for t in self.run.tags if t not in STATES) + (state.lower(),)
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


STATES = ("complete", "pruned", "fail", "running")


def _numeric(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: v
        for k, v in row.items()
        if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))
    }
    out["phase"] = row.get("phase")
    return out


def _study_value(trial, state: str, told):
    """The objective as the study records it: the trial's value once told (a pruned trial's is
    its last reported value), else the value about to be told (a COMPLETE run, told after W&B
    finishes); None for a failed trial or without a study."""
    frozen = None
    try:
        if trial is not None and hasattr(trial, "storage"):
            frozen = trial.storage.get_trial(trial._trial_id)
    except Exception as exc:  # the storage gone: the run's own value
        log.debug("trial value not read: %s", exc)
    if frozen is not None and frozen.state.is_finished():
        values = frozen.values
        return None if not values else (values[0] if len(values) == 1 else list(values))
    if state != "COMPLETE" or told is None:
        return None
    finite = all(math.isfinite(float(v)) for v in (told if isinstance(told, list) else [told]))
    return told if finite else None  # a non-finite objective fails the trial


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
    ident = _run_identity(cfg, trial, Path(output_dir))
    wandb_dir = Path(lcfg.dir) if lcfg.dir else Path(output_dir)
    try:
        wandb_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("W&B directory %s cannot be created (%s); not tracking", wandb_dir, exc)
        return Tracker()

    tags = [*(lcfg.tags or []), *ident.pop("tags")]

    def init(m):
        with _argv_redacted():
            return wandb.init(
                project=lcfg.project,
                entity=lcfg.entity,
                dir=str(wandb_dir),
                mode=m,
                resume="allow",
                reinit="finish_previous",
                settings=_settings(wandb, lcfg.init_timeout),
                tags=tags,
                **ident,
            )

    started = _init_or_offline(init, mode)
    if started is None:
        return Tracker()
    run, mode = started
    if mode == "offline":
        supersede_offline(wandb_dir / "wandb", run)
        log.info(
            "W&B offline run in %s; upload later with: wandb sync %s", run.dir, Path(run.dir).parent
        )
    return WandbTracker(run, output_dir, trial)


def supersede_offline(folder: Path, run) -> list[Path]:
    """Earlier offline attempts of this run (same id, left by a killed process) renamed
    `superseded-offline-run-*`: W&B cannot resume offline, and `wandb sync` of two folders with one
    id keeps only one; this run replays their epochs, so it alone is the run."""
    current = Path(run.dir).parent.resolve()
    moved = []
    for old in sorted(folder.glob("offline-run-*")):
        if old.resolve() == current or not list(old.glob(f"run-{run.id}.wandb")):
            continue
        target = old.with_name("superseded-" + old.name)
        try:
            old.rename(target)
            moved.append(target)
            log.info("W&B: earlier attempt %s superseded by this run (%s)", old.name, run.id)
        except OSError as exc:
            log.warning("W&B: could not set aside the earlier attempt %s: %s", old, exc)
    return moved


def _settings(wandb, init_timeout):
    """Quiet settings: no prompts, no console capture, no system stats."""
    return wandb.Settings(
        init_timeout=float(init_timeout),
        silent=True,
        console="off",
        x_disable_stats=True,
    )


def run_id(key: str, suffix: str) -> str:
    """A W&B run id (letters, digits, - and _; at most 64) that `key` always gives, readable."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")[:36]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-{suffix}"[:64]


def storage_url() -> str | None:
    """The study's storage URL (password redacted) from the sweep's Hydra config, when known."""
    from thaw.runtime.secrets import redact

    try:
        from hydra.core.hydra_config import HydraConfig

        url = HydraConfig.get().sweeper.get("storage")
    except Exception:  # not a Hydra job, or no sweeper settings
        url = None
    return redact(str(url)) if url else None


def _run_identity(cfg, trial, output_dir: Path) -> dict[str, Any]:
    """wandb.init's id, name, group, job_type, tags and config: a sweep's trials and confirmation
    runs are named and identified after their study and trial and grouped by study."""
    from omegaconf import OmegaConf

    lcfg = cfg.logger
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["run_dir"] = str(output_dir)
    out = {"group": lcfg.group or cfg.name, "name": None, "job_type": "train", "tags": []}
    out["id"] = run_id(
        str(cfg.name), "run-" + hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:10]
    )
    if trial is not None and hasattr(trial, "seed"):  # a confirmation run (ConfirmationRun)
        study = trial.study_name
        name = f"trial-{trial.number}-seed-{trial.seed}"
        out.update(group=lcfg.group or study, name=name, job_type="confirmation")
        out.update(id=run_id(study, name), tags=[f"trial-{trial.number}", "confirmation", study])
        config["confirmation"] = {"trial": trial.number, "seed": trial.seed}
    elif trial is not None:
        study, name = trial.study.study_name, f"trial-{trial.number}"
        params = dict(trial.trial.params)
        out.update(group=lcfg.group or study, name=name, job_type="trial")
        out.update(id=run_id(study, f"t{trial.number}"), tags=[name, study[:64]])
        config["trial"] = {"number": trial.number, "params": params}
        config.update(params)  # searched keys at the top level, as typed: unfreeze.depth, lr.base
        retry = _retry_of(trial)
        if retry is not None:
            config["trial"]["retry_of"] = {"number": retry, "run_id": run_id(study, f"t{retry}")}
            out["tags"].append("retry")
    if trial is not None:
        config["study"] = {"name": study, "storage": storage_url()}
    out["config"] = config
    return out


def _retry_of(trial) -> int | None:
    """The dead trial this one retries (Optuna's retry callback records it), or None."""
    try:
        history = trial.storage.get_trial(trial._trial_id).system_attrs.get("retry_history")
    except Exception:
        return None
    return int(history[-1]) if history else None


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
        from thaw.runtime.secrets import redact

        server = redact(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        log.warning(
            "W&B online failed (%s: %s); falling back to offline",
            server,
            first_line(exc),
        )
        try:
            import wandb

            wandb.teardown()  # the failed run keeps its id taken in W&B's service otherwise
        except Exception as exc2:
            log.debug("wandb.teardown: %s", exc2)
        try:
            return init("offline"), "offline"
        except Exception as exc2:
            log.warning(
                "W&B could not start (%s); training goes on without tracking", str(exc2)[:200]
            )
            return None
