"""Open the study: sampler, pruner and storage from the config; the study created or resumed.

A resumed study must be the same question (see question.py) with the same directions; a seeded
sampler is re-seeded and a grid's lost points are asked again, so resuming never repeats or skips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thaw.errors import ConfigError, first_line
from thaw.runtime.secrets import redact
from thaw.sweeper import question, search_space
from thaw.sweeper.failures import counted
from thaw.sweeper.question import is_grid
from thaw.sweeper.storage import make_storage

log = logging.getLogger("thaw.sweeper")


@dataclass
class OpenStudy:
    study: Any
    storage: Any
    url: str
    sweep_dir: Path
    n_trials: int  # a grid caps the setting
    baseline_trial: Any = None  # created RUNNING by this worker, not yet launched


def instantiate(cfg: dict[str, Any], key: str, default, node=None):
    """hydra.sweeper.<key> (or `node`) built; a missing value or a failing target is one line."""
    from hydra.utils import instantiate as build

    node = cfg.get(key) if node is None else node
    if node is None:
        return default
    if not isinstance(node, dict):  # Hydra already instantiated it (recursive plugin instantiation)
        return node
    missing = [k for k, v in node.items() if v == "???"]
    if missing:
        raise ConfigError(
            f"hydra.sweeper.{key}.{missing[0]}: {node.get('_target_')} needs a value "
            f"(e.g. hydra.sweeper.{key}.{missing[0]}=2)"
        )
    try:
        return build(node)
    except Exception as exc:
        raise ConfigError(
            f"hydra.sweeper.{key}: cannot build {node.get('_target_')} ({_why_not_built(exc)})"
        ) from None


def build_pruner(cfg: dict[str, Any]):
    """hydra.sweeper.pruner built (None without one); a swapped `_target_` leaves out the keys
    only StepMedianPruner takes, with a warning."""
    from thaw.sweeper.pruners import swapped_pruner_node

    return instantiate(cfg, "pruner", None, swapped_pruner_node(cfg.get("pruner"), warn=True))


def _why_not_built(exc: Exception) -> str:
    """The cause Hydra's InstantiationException wraps ('Error in call to target ...' alone names
    no problem): the constructor's own error, or a target that does not exist."""
    if str(exc).startswith("Error locating target"):
        return "no such class or function"
    cause = exc.__cause__ or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:200] if cause is not exc else text[:200]


def sampler_node(cfg: dict[str, Any], plan, n_trials: int):
    """The sampler's settings; GridSampler without a search_space walks the params' values, and the
    sweep then stops at the grid's size."""
    node = cfg.get("sampler")
    if is_grid(node) and node.get("search_space") is None:
        if plan.dependent or plan.extender:
            raise ConfigError(
                "hydra/sweeper/sampler=grid: needs a fixed grid (no custom_search_space and "
                "no param whose range follows another)"
            )
        values = search_space.grid(plan.space)
        size = 1
        for v in values.values():
            size *= len(v)
        if size < n_trials:
            log.info("grid sampler: %d points, so n_trials %d -> %d", size, n_trials, size)
            n_trials = size
        node = {**node, "search_space": values}
    return node, n_trials


def open_study(
    cfg: dict[str, Any], config, app, q: question.Question, plan, directions, n_trials: int
) -> OpenStudy:
    """The study created or resumed (same directions) and its question recorded; n_trials is
    capped by a grid."""
    import optuna

    node, n_trials = sampler_node(cfg, plan, n_trials)
    sampler = instantiate(cfg, "sampler", None, node) or optuna.samplers.TPESampler()
    pruner = build_pruner(cfg) or optuna.pruners.NopPruner()
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    url = cfg.get("storage") or f"sqlite:///{sweep_dir / 'study.db'}"
    study_name = cfg.get("study_name") or "thaw"
    question.refuse_other(q, cfg, url, study_name, sampler, pruner)
    if q.job_cfg is not None:
        app.validate(q.job_cfg)  # the data folder is scanned only once the study is the right one
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(
        url,
        cfg.get("heartbeat_interval"),
        cfg.get("grace_period"),
        int(cfg.get("max_retry") or 0),
    )
    study = _create_study(study_name, storage, sampler, pruner, directions, url)
    reseed_on_resume(study, node)  # before the baseline is enqueued: a new study is not resumed
    study.sampler.before_trial = DrawApart(study.sampler, len(study.get_trials(deepcopy=False)))
    baseline = question.record(q, study, plan, app)
    if is_grid(node):
        requeue_lost_grid_points(study)
    return OpenStudy(study, storage, url, sweep_dir, n_trials, baseline)


def _create_study(study_name: str, storage, sampler, pruner, directions, url: str):
    import optuna

    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=directions,
            load_if_exists=True,
        )
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(
            f"hydra.sweeper.storage: cannot open study {study_name!r} at {redact(url)} ({first})"
        ) from None
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise ConfigError(
            f"hydra.sweeper.direction: study {study_name!r} was created with {existing}, "
            f"not {directions}"
        )
    return study


def reseed_on_resume(study, node) -> None:
    """A seeded sampler restarted on an existing study would replay the same random draws and
    repeat earlier configurations: offset its seed by the number of trials already there."""
    from hydra.utils import instantiate as build

    n = len(study.get_trials(deepcopy=False))
    if not n or not isinstance(node, dict) or node.get("seed") is None:
        return
    if is_grid(node):
        # its seed orders the grid, and the grid ids of the finished trials must keep meaning
        return
    try:
        study.sampler = build({**node, "seed": int(node["seed"]) + n})
        log.info(
            "resuming: sampler seed %d offset by the %d existing trial%s",
            int(node["seed"]),
            n,
            "" if n == 1 else "s",
        )
    except Exception as exc:
        log.warning("could not re-seed the sampler on resume: %s", exc)


class DrawApart:
    """Workers started together on one study hold samplers seeded alike, and would draw the same
    trials while their histories match. The sampler's before_trial hook sees each new trial's
    number: when other workers' trials came between two of this worker's, the sampler is
    re-seeded (Optuna's reseed_rng), so the workers' draws part. A worker alone never re-seeds and
    keeps its seeded sequence."""

    def __init__(self, sampler, next_number: int):
        self.sampler, self.next_number = sampler, next_number
        self.before_trial = sampler.before_trial  # the sampler's own hook, called after

    def __call__(self, study, trial) -> None:
        if trial.number > self.next_number:  # a smaller number is an existing trial re-opened
            try:
                self.sampler.reseed_rng()
                log.info(
                    "trial %d: %d trial(s) of other workers came first; sampler re-seeded so "
                    "the workers draw apart",
                    trial.number,
                    trial.number - self.next_number,
                )
            except NotImplementedError:
                pass
        self.next_number = max(self.next_number, trial.number + 1)
        self.before_trial(study, trial)


def requeue_lost_grid_points(study) -> None:
    """A grid point whose trial died (stale, interrupted: not counted) is asked again; GridSampler
    alone would count it visited and the sweep would end short of the grid."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = {
        repr(sorted(t.params.items()))
        for t in trials
        if counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)
    }
    for t in trials:
        key = repr(sorted(t.params.items()))
        if t.state == TrialState.FAIL and not counted(t) and t.params and key not in live:
            study.enqueue_trial(dict(t.params))
            live.add(key)
            log.info("grid point %s of dead trial %d asked again", dict(t.params), t.number)
