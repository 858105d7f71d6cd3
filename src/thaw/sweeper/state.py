"""What a sweep knows: its settings, parsed and checked once, and the study it opened.

Every stage after the study opens (the loop, the confirmation, the answer) reads `SweepState`, so
each takes the one object instead of the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from thaw.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """hydra.sweeper's numbers and names, refused before anything is written when wrong."""

    n_trials: int
    n_jobs: int
    max_failure_rate: float | None
    failure_min_trials: int
    directions: list[str]
    save_models: str
    heartbeat_interval: Any
    devices: list[str] = field(default_factory=list)  # one per in-flight trial (sweeper.devices)
    scheduling: str = "continuous"  # or "batch": hydra-optuna-sweeper's barrier (sweeper.schedule)
    timeout: float | None = None  # seconds of search in this worker, then no new trial starts

    @classmethod
    def parse(cls, c: dict[str, Any], app, config) -> Settings:
        """The settings, then the app's objectives, then save_models (in that order, so the first
        mistake is the one reported)."""
        n_trials = c.get("n_trials")
        if n_trials is None or int(n_trials) < 1:
            raise ConfigError(f"hydra.sweeper.n_trials: must be >= 1, got {n_trials}")
        n_jobs = int(c.get("n_jobs") or 1)
        if n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs: must be >= 1, got {n_jobs}")
        rate = c.get("max_failure_rate")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate: must be in [0, 1] (or unset), got {rate}"
            )
        if int(c.get("failure_min_trials") or 0) < 1:
            raise ConfigError(
                f"hydra.sweeper.failure_min_trials: must be >= 1, got {c.get('failure_min_trials')}"
            )
        scheduling = str(c.get("scheduling") or "continuous")
        if scheduling not in ("continuous", "batch"):
            raise ConfigError(
                f"hydra.sweeper.scheduling: expected continuous or batch, got {scheduling!r}"
            )
        timeout = c.get("timeout")
        if timeout is not None and not float(timeout) > 0:
            raise ConfigError(
                f"hydra.sweeper.timeout: must be > 0 seconds (or unset), got {timeout}"
            )
        from thaw.sweeper import devices

        device_list = devices.parse(c.get("devices"))
        directions = _directions(c, app, config)
        app.check_objectives(config)
        return cls(
            n_trials=int(n_trials),
            n_jobs=n_jobs,
            max_failure_rate=None if rate is None else float(rate),
            failure_min_trials=int(c.get("failure_min_trials") or 5),
            directions=directions,
            save_models=save_models(c),
            heartbeat_interval=c.get("heartbeat_interval"),
            devices=device_list,
            scheduling=scheduling,
            timeout=None if timeout is None else float(timeout),
        )


def _directions(c: dict[str, Any], app, config) -> list[str]:
    direction = c.get("direction")
    if direction is None:
        direction = app.default_directions(config)
    directions = (
        list(direction)
        if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction)
        else [direction]
    )
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction: expected maximize or minimize, got {d!r}")
    return [str(d) for d in directions]


def save_models(c: dict[str, Any]) -> str:
    """Which trials keep their model: all, the best (and what confirmation needs), or none."""
    mode = str(c.get("save_models") or "all")
    if mode not in ("all", "best", "none"):
        raise ConfigError(f"hydra.sweeper.save_models: expected all, best or none, got {mode!r}")
    return mode


@dataclass
class SweepState:
    """The opened study and what the stages after it need; `cfg` is hydra.sweeper, resolved."""

    cfg: dict[str, Any]
    config: Any  # the sweep's Hydra config
    app: Any  # the AppHooks of the app swept
    settings: Settings
    study: Any
    storage: Any
    url: str
    sweep_dir: Path
    n_trials: int  # the total the study should reach (a grid caps the setting)
    job_cfg: Any = None  # a trial's fixed config; None when it did not compose
    launcher: Any = None
    fixed_lines: list[str] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)  # warnings said once per sweep

    @property
    def directions(self) -> list[str]:
        return self.settings.directions
