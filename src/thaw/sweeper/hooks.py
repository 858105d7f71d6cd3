"""What the sweeper asks of the app it runs, with the answers any Hydra app gets.

The sweeper serves any Hydra app: it knows nothing of data, models or reports. An app that wants
more (thaw-train: its baseline, its test split, its report) sets `task_function.sweep_app` to a
subclass of `AppHooks`; every hook here has a default that suits an app that does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AppHooks:
    prog = "thaw sweeper"  # how error lines start
    # config keys that never change what a run learns (left out of the study identity)
    run_local: tuple = ()

    def default_directions(self, config) -> list[str]:
        """The directions when hydra.sweeper.direction is unset: hydra-optuna-sweeper's default."""
        return ["minimize"]

    def check_objectives(self, config) -> None:
        """Refuse, before the first trial, an objective no trial would measure."""

    def config_keys(self, job_cfg, searched: Iterable[str]) -> dict[str, str]:
        """The fixed config as the study identity sees it."""
        from thaw.sweeper import identity

        return identity.fixed_keys(job_cfg, searched, self.run_local)

    def content_keys(self, job_cfg) -> dict[str, str]:
        """What the config's paths hold (a folder by content, a file by hash), for the study
        identity."""
        return {}

    def validate(self, job_cfg) -> None:
        """The fixed config's full check, once the study is known to be the right one."""

    def refuse_ignored(self, job_cfg, searched: Iterable[str]) -> None:
        """Refuse a searched key the config ignores."""

    def pruning_warning(self, job_cfg) -> str | None:
        return None

    def baseline(self, job_cfg, space: dict[str, Any]) -> dict[str, Any]:
        from thaw.errors import ConfigError

        raise ConfigError(
            "hydra.sweeper.baseline=true: this app names no baseline (thaw-train's is depth 0)"
        )

    def about(self, job_cfg, space_text: str) -> dict[str, Any]:
        """What the sweep is about, recorded on the study."""
        return {"search_space": space_text}

    def no_model_overrides(self) -> list[str]:
        """Overrides that keep a trial from saving its model (hydra.sweeper.save_models=none)."""
        return []

    def confirmation_overrides(
        self, job_cfg, base_seed: int, reuse_views: bool = True
    ) -> list[str]:
        return []

    def confirmation_order(self, params: dict[str, Any]):
        """Sort key of a trial's params among the confirmation runs of one seed."""
        return 0

    def evaluate(self, run_dir: str) -> dict[str, Any] | None:
        """The held-out test split on the chosen trial's saved model, or None (no test split
        here)."""
        return None

    def on_results(self, config, study, sweep_dir, storage_url: str) -> None:
        """After the results are written (a report, a tracking summary): best effort."""
