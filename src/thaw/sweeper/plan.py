"""What each trial is asked: the search space, params whose range follows a searched choice, and the
user's custom_search_space function.

A param whose expression interpolates a key of a searched choice, e.g. `unfreeze.depth:
int(interval(0, ${backbone.num_blocks}))` with `backbone=choice(mobilenet_v2,mobilenet_v3_small)`,
gets its range from the config composed with the choice the trial drew (13 blocks for one, 19 for
the other), not from the default backbone: otherwise a smaller backbone draws a depth it lacks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from thaw.errors import ConfigError, first_line
from thaw.sweeper import search_space

log = logging.getLogger("thaw.sweeper")

MAX_COMBINATIONS = 256  # choice combinations a dependent param is resolved for up front


@dataclass
class Dependent:
    owners: list[str]  # searched keys the expression depends on, e.g. ["backbone"]
    table: dict[tuple, Any] = field(default_factory=dict)  # owners' values -> distribution


@dataclass
class Plan:
    space: dict[str, Any]  # asked at once (the sampler sees these as the relative search space)
    fixed: dict[str, str]  # key -> override line, the same for every trial
    dependent: dict[str, Dependent] = field(default_factory=dict)
    extender: Callable | None = None
    config: Any = None  # what the extender is called with (the sweep's config)

    def space_for(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every param's distribution for a trial whose searched keys took these values: each
        dependent range is the one its owners' values pick (the baseline's trial is made so)."""
        out = dict(self.space)
        for key, dep in self.dependent.items():
            out[key] = dep.table[tuple(params[o] for o in dep.owners)]
        return out

    def widest_space(self) -> dict[str, Any]:
        """Every param's distribution, a dependent range as the widest of its ranges: where the
        owners' values are not known yet."""
        return {
            **self.space,
            **{k: _widest(list(d.table.values())) for k, d in self.dependent.items()},
        }

    def ask(self, study):
        """A new trial with every param drawn; a failing custom_search_space fails it (exit 2)."""
        trial = study.ask(self.space)
        try:
            for key, dep in self.dependent.items():
                search_space.suggest(
                    trial, key, dep.table[tuple(trial.params[o] for o in dep.owners)]
                )
            if self.extender is not None:
                self.extender(self.config, trial)
            overlap = set(trial.params) & set(self.fixed)
            if overlap:
                raise ValueError(f"suggests {sorted(overlap)}, which the command line fixes")
        except Exception as exc:  # the asked trial is failed, never left RUNNING
            from optuna.trial import TrialState

            study._storage.set_trial_user_attr(
                trial._trial_id, "error", f"search space: {exc}"[:2000]
            )
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            where = (
                "hydra.sweeper.custom_search_space"
                if self.extender is not None
                else "hydra.sweeper.params"
            )
            raise ConfigError(
                f"{where}: drawing trial {trial.number} failed ({type(exc).__name__}: {exc})"
            ) from None
        return trial


def build(cfg: dict[str, Any], config, arguments: list[str], config_loader=None) -> Plan:
    """The plan from the sweeper's (resolved) settings, the raw config and the command-line
    arguments."""
    params = cfg.get("params")
    hos_space = cfg.get("search_space")
    preset: dict[str, Any] = {}
    if hos_space is not None and params is not None:
        log.warning(
            "both hydra.sweeper.params and hydra.sweeper.search_space are set: using params"
        )
    elif hos_space is not None:
        log.warning(
            "hydra.sweeper.search_space is deprecated (as in hydra-optuna-sweeper): write the same "
            "as "
            "hydra.sweeper.params, e.g. x: int(interval(0, 10))"
        )
        preset = search_space.from_hos_search_space(hos_space)
    space, fixed = search_space.parse(params or {}, arguments, preset=preset)
    plan = Plan(space=space, fixed=fixed, config=config)
    if cfg.get("custom_search_space"):
        plan.extender = search_space.load_function(str(cfg["custom_search_space"]))
    if config_loader is not None and config is not None:
        raw = _raw_params(config)
        for key in _command_line_keys(
            arguments
        ):  # the command line's expression wins, as in parse()
            raw.pop(key, None)
        _split_dependent(plan, raw, config, config_loader)
    if not plan.space and not plan.dependent and plan.extender is None:
        raise ConfigError(
            "hydra.sweeper.params: nothing to search (give interval/range/choice "
            "expressions, e.g. lr.base='tag(log, interval(1e-5, 1e-2))')"
        )
    return plan


def _command_line_keys(arguments: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.get_key_element() for o in OverridesParser.create().parse_overrides(list(arguments))]


def _raw_params(config) -> dict[str, str]:
    node = OmegaConf.select(config, "hydra.sweeper.params")
    return (
        {}
        if node is None
        else {
            str(k): str(v)
            for k, v in OmegaConf.to_container(node, resolve=False, enum_to_str=True).items()
        }
    )


def _owner(key: str, space: dict[str, Any]) -> str | None:
    """The searched key an interpolated key belongs to: 'backbone.num_blocks' -> 'backbone'."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in space:
            return prefix
    return None


def _split_dependent(plan: Plan, raw: dict[str, str], config, config_loader) -> None:
    from optuna.distributions import CategoricalDistribution

    for key, expr in raw.items():
        if key not in plan.space:
            continue  # fixed on the command line, or not a sweep
        owners = sorted(
            {
                o
                for o in (_owner(k, plan.space) for k in search_space.interpolated_keys(expr))
                if o is not None and o != key
            }
        )
        if not owners:
            continue
        if not all(isinstance(plan.space[o], CategoricalDistribution) for o in owners):
            log.warning(
                "%s: its range interpolates %s, which is searched but not a choice(); the range "
                "stays the default config's",
                key,
                ", ".join(owners),
            )
            continue
        combos = list(itertools.product(*(plan.space[o].choices for o in owners)))
        if len(combos) > MAX_COMBINATIONS:
            log.warning(
                "%s: its range follows %d combinations of %s (more than %d); the range stays the "
                "default config's",
                key,
                len(combos),
                ", ".join(owners),
                MAX_COMBINATIONS,
            )
            continue
        dep = Dependent(owners=owners)
        for combo in combos:
            dep.table[combo] = _resolve(
                key, expr, dict(zip(owners, combo)), plan, config, config_loader
            )
        plan.dependent[key] = dep
        del plan.space[key]
        log.info(
            "%s: range follows %s (%s)",
            key,
            ", ".join(owners),
            "; ".join(f"{'/'.join(map(str, c))}: {_describe(d)}" for c, d in dep.table.items()),
        )


def _resolve(key: str, expr: str, choice: dict[str, Any], plan: Plan, config, config_loader):
    overrides = list(plan.fixed.values()) + [
        f"{k}={search_space.format_value(v)}" for k, v in choice.items()
    ]
    try:
        job = config_loader.load_sweep_config(config, overrides)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(
            f"hydra.sweeper.params.{key}: cannot compose the config with {' '.join(overrides)} "
            f"to resolve {expr!r} ({first})"
        ) from None
    line = expr
    for ref in search_space.interpolated_keys(expr):
        value = OmegaConf.select(job, ref, throw_on_missing=False)
        if value is None:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: {ref} is not set with {' '.join(overrides)}"
            )
        line = line.replace("${" + ref + "}", str(value))
    space, _ = search_space.parse({}, [f"{key}={line}"])
    if key not in space:
        raise ConfigError(
            f"hydra.sweeper.params.{key}: {line!r} is not a sweep with {' '.join(overrides)}"
        )
    return space[key]


def _describe(dist) -> str:
    if hasattr(dist, "low"):
        return f"{dist.low}..{dist.high}"
    return str(list(dist.choices))


def _widest(dists: list[Any]):
    """One distribution holding each of these (the union of choices; the lowest low and the
    highest high of ranges of one kind); the first where they are of different kinds."""
    from optuna.distributions import CategoricalDistribution

    first = dists[0]
    if not all(type(d) is type(first) for d in dists):
        return first
    if isinstance(first, CategoricalDistribution):
        return CategoricalDistribution(list(dict.fromkeys(c for d in dists for c in d.choices)))
    return type(first)(
        min(d.low for d in dists), max(d.high for d in dists), log=first.log, step=first.step
    )
