"""What the study is about: a trial's fixed config, the study's identity, and the baseline trial.

The question is composed once, before anything is written: searched keys the config ignores are
refused, and an existing study that asked another question is refused (unless
allow_config_change), so two different sweeps never mix in one study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw.sweeper import confirm, identity
from thaw.sweeper.storage import make_storage

log = logging.getLogger("thaw.sweeper")


@dataclass
class Question:
    job_cfg: Any = None  # a trial's fixed config; None when it did not compose
    identity_keys: dict[str, str] = field(default_factory=dict)
    baseline_params: dict[str, Any] | None = None
    identity_diff: list[str] | None = None  # what changed, on an allowed config change


def compose(cfg: dict[str, Any], config, hydra_context, app, plan, fixed_lines) -> Question:
    """Compose a trial's fixed config once: searched keys it ignores are refused, a pruner that
    never hears a value is warned about, and the study's identity (and the `{config_hash}` in its
    name) is computed, all before anything is written."""
    loader = getattr(hydra_context, "config_loader", None)
    searched = list(plan.space) + list(plan.dependent)
    q = Question(job_cfg=_job_cfg(loader, config, fixed_lines))
    if q.job_cfg is None:
        return q
    app.refuse_ignored(q.job_cfg, searched)
    warning = app.pruning_warning(q.job_cfg) if cfg.get("pruner") else None
    if warning:
        log.warning("%s", warning)
    config_keys = app.config_keys(q.job_cfg, searched)
    q.identity_keys = {
        **config_keys,
        **app.content_keys(q.job_cfg),
        identity.SEARCH_SPACE: space_text(plan),  # another range asks another question
    }
    _expand_study_name(cfg, config, config_keys)
    q.baseline_params = baseline_params(cfg, app, q.job_cfg, plan)
    return q


def _job_cfg(loader, config, fixed_lines):
    if loader is None:
        return None
    try:
        return loader.load_sweep_config(config, list(fixed_lines))
    except Exception as exc:  # the trials will fail with Hydra's own message
        log.debug("could not compose the fixed config: %s", exc)
        return None


def _expand_study_name(cfg: dict[str, Any], config, config_keys: dict[str, str]) -> None:
    name = str(cfg.get("study_name") or "thaw")
    expanded = identity.expand_name(name, config_keys)
    if expanded != name:
        from omegaconf import open_dict, read_write

        cfg["study_name"] = expanded
        with read_write(config), open_dict(config):
            config.hydra.sweeper.study_name = expanded  # hydra.sweep.dir follows it


def is_grid(node) -> bool:
    return isinstance(node, dict) and str(node.get("_target_", "")).endswith("GridSampler")


def baseline_params(cfg: dict[str, Any], app, job_cfg, plan) -> dict[str, Any] | None:
    if not cfg.get("baseline"):
        return None
    if is_grid(cfg.get("sampler")):
        log.warning(
            "hydra.sweeper.baseline: not enqueued with the grid sampler (the grid decides every "
            "trial; include unfreeze.depth=0 in it to measure the frozen base)"
        )
        return None
    if not plan.dependent:
        return app.baseline(job_cfg, plan.space)
    # a range that follows another searched key (depth follows backbone): the baseline's own value
    # of that key picks the range its own value is checked against
    return app.baseline(job_cfg, plan.space_for(app.baseline(job_cfg, plan.widest_space())))


def refuse_other(q: Question, cfg: dict[str, Any], url: str, study_name: str, sampler, pruner):
    """An existing study run with another fixed config is refused (one line, nothing
    written)."""
    import optuna

    from thaw.sweeper.storage import journal_path

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else journal_path(url)
    if (path is not None and not Path(path).exists()) or not q.identity_keys:
        return
    attrs = identity.sqlite_study_attrs(path, study_name) if url.startswith("sqlite:///") else None
    if attrs is None:
        try:
            attrs = optuna.load_study(
                study_name=study_name, storage=make_storage(url), sampler=sampler, pruner=pruner
            ).user_attrs
        except KeyError:
            return
    q.identity_diff = identity.check(
        attrs, q.identity_keys, study_name, bool(cfg.get("allow_config_change"))
    )


def record(q: Question, study, plan, app):
    """The question on the study; returns the baseline trial this worker created RUNNING (not yet
    launched), or None."""
    if q.identity_keys:
        identity.record(study, q.identity_keys, q.identity_diff)
        if q.identity_diff:
            log.warning(
                "hydra.sweeper.allow_config_change=true: study %r continues with a changed config "
                "(%s); recorded on the study",
                study.study_name,
                "; ".join(q.identity_diff[:5]),
            )
    if q.job_cfg is not None:
        study.set_user_attr("about", app.about(q.job_cfg, space_text(plan)))
    if q.baseline_params and not study.get_trials(deepcopy=False):
        return _create_baseline(study, q.baseline_params, plan)
    return None


def _create_baseline(study, params: dict[str, Any], plan):
    trial = running_trial(study, params, plan.space_for(params), {"baseline": True})
    # workers starting at once may each create one: the lowest number is the baseline, for all
    first = min(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline"))
    if first != trial.number:
        study._storage.set_trial_user_attr(trial._trial_id, "baseline", False)
        log.info(
            "another worker created the baseline (trial %d); trial %d runs as a search trial",
            first,
            trial.number,
        )
        return trial
    study.set_user_attr(confirm.BASELINE_ATTR, trial.number)
    log.info(
        "trial 0 is the baseline: %s (the frozen base, the preset's recipe)",
        " ".join(f"{k}={v}" for k, v in params.items()),
    )
    return trial


def running_trial(study, params: dict[str, Any], space: dict[str, Any], user_attrs: dict[str, Any]):
    """A trial with fixed params, created RUNNING for this worker. Optuna's enqueue_trial leaves it
    WAITING, and on SQLite two workers asking at once can both pop the same waiting trial."""
    import datetime

    import optuna
    from optuna.trial import FrozenTrial, TrialState

    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=dict(params),
        distributions={k: space[k] for k in params},
        user_attrs=dict(user_attrs),
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)


def space_text(plan) -> str:
    def describe(d) -> str:
        if hasattr(d, "low"):
            return f"{d.low:g}..{d.high:g}{' (log)' if getattr(d, 'log', False) else ''}"
        return "/".join(map(str, d.choices))

    return ", ".join([f"{k} {describe(d)}" for k, d in plan.space.items()] + list(plan.dependent))
