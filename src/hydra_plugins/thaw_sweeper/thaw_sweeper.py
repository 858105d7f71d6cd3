"""Hydra plugin entry: `hydra/sweeper=thaw`, an Optuna sweeper with pruning, resume and several
workers.

The logic lives in thaw.sweeper; this module only registers the plugin and its typed config.
"""

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.thaw_sweeper import groups


@dataclass
class ConfirmConf:
    # after the search, the top_k COMPLETE trials and the baseline run again with `seeds` more
    # values of seed_key each; the winner is the best mean (0: off)
    top_k: int = 3
    seeds: int = 2
    seed_key: str = "trainer.seed"
    # the app may keep what the search computed once per seed (thaw: the cached augmented views,
    # trainer.view_seed); false: each confirmation seed draws and computes its own
    reuse_views: bool = True


@dataclass
class ThawSweeperConf:
    _target_: str = "hydra_plugins.thaw_sweeper.thaw_sweeper.ThawSweeper"
    _recursive_: bool = (
        False  # thaw builds sampler and pruner itself (a grid needs the params first)
    )
    # Nothing selected by default: a body `sampler: {_target_: ..., ...}` keeps working; selecting
    # hydra/sweeper/sampler=NAME or hydra/sweeper/pruner=NAME replaces the whole node (groups.py).
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": None}, {"pruner": None}]
    )
    # Optuna objects, built with hydra.utils.instantiate; unset sampler = TPE (as in
    # hydra-optuna-sweeper)
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    pruner: Any = None
    # maximize/minimize, or a list, one per objective. Unset: from thaw-train's trainer.objective
    # (accuracy up, loss/time/size down); minimize for any other app (hydra-optuna-sweeper's
    # default).
    direction: Any = None
    # Any Optuna storage URL; default sqlite:///${hydra.sweep.dir}/study.db. A path ending in .log
    # or a journal:///path URL uses a journal file (many processes on one machine).
    storage: str | None = None
    study_name: str | None = None
    n_trials: int = 20  # total the study should reach, across resumes and workers
    # seconds of search in this worker (Optuna's study.optimize timeout): after it no new trial
    # starts, the trials in flight finish, then the confirmation and the answer as usual. n_trials
    # stays the upper bound; a resumed sweep counts from its own start.
    timeout: float | None = None
    n_jobs: int = 1  # trials in flight at once through the launcher (docs/scheduling.md)
    # continuous: a trial that ends frees its slot for the next at once; batch: n_jobs trials are
    # launched together and the next batch waits for the slowest (hydra-optuna-sweeper's way)
    scheduling: str = "continuous"
    # device ids, one per in-flight trial, given to its job as CUDA_VISIBLE_DEVICES; unset: every
    # visible GPU (none without one); []: leave devices to the jobs. n_jobs > devices is refused.
    devices: Any = None
    # Unset (thaw's rule): stop when more than 25 % of the finished trials failed, judged only once
    # failure_min_trials have finished (one early failure does not end a long sweep). Set (as in
    # hydra-optuna-sweeper configs): HOS's meaning, stop when more than this fraction of n_jobs
    # consecutive finished trials (HOS: of one batch) failed.
    max_failure_rate: float | None = None
    failure_min_trials: int = 5
    heartbeat_interval: int | None = (
        10  # seconds; a dead worker's trial is failed after grace_period
    )
    grace_period: int | None = 60
    max_retry: int = 0  # re-run (with the same params) a trial whose worker died, this many times
    # model.keras of every trial (all), of the best trial only (best: the others' are deleted as the
    # sweep goes, across resumes and workers; the baseline's and the confirmation's candidates' are
    # kept), or of none (trials run with trainer.save_model=false)
    save_models: str = "all"
    params: dict[str, Any] | None = None
    # hydra-optuna-sweeper's deprecated form of params: {name: {type: int|float|categorical, low,
    # high, step, log, choices}}; accepted with a warning
    search_space: dict[str, Any] | None = None
    # dotted path to fn(cfg, trial) called after params are sampled: may suggest more (conditional)
    # parameters, also `+key` ones; a leading dot is relative to the app's module (as in HOS)
    custom_search_space: str | None = None
    # the first trial is the preset's recipe with the base frozen (unfreeze.depth=0), so every sweep
    # measures its winner against not fine-tuning (thaw-train; sweep=depth_lr turns it on)
    baseline: bool = False
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # an existing study run with a different fixed config is refused unless this is true (the study
    # then records what changed)
    allow_config_change: bool = False
    # set by the sweeper on each job it launches, not by users
    trial_number: int | None = None
    confirmation: str | None = None  # "<trial>:<seed>" on a confirmation run


ConfigStore.instance().store(
    group="hydra/sweeper", name="thaw", node=ThawSweeperConf, provider="thaw"
)
groups.register()


class ThawSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from thaw.sweeper.core import SweepRunner

        cfg = {
            k: (
                OmegaConf.to_container(v, resolve=True, enum_to_str=True)
                if isinstance(v, DictConfig) or OmegaConf.is_list(v)
                else v
            )
            for k, v in kwargs.items()
        }
        self.runner = SweepRunner(cfg, known=tuple(f.name for f in fields(ThawSweeperConf)))

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.runner.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.runner.sweep(arguments)
