"""Hydra's sweep syntax -> Optuna distributions.

interval(a,b) float uniform, tag(log, interval(a,b)) log-uniform, int(interval(a,b)) integers,
range(a,b[,step]) a grid with the end excluded, choice(...) / a,b,c categorical (config groups too).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from thaw.errors import ConfigError


def _distribution(override):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    tags = set(getattr(value, "tags", set()) or set())
    log = "log" in tags
    if isinstance(value, ChoiceSweep):
        choices = list(override.sweep_iterator())
        if not choices:
            raise ConfigError(f"hydra.sweeper.params.{key}: empty choice()")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"hydra.sweeper.params.{key}: repeated values in {override.input_line}")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{key}: empty range in {override.input_line}")
        if value.step is not None and value.step < 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: range() with a negative step is not supported")
        if all(isinstance(v, int) for v in values):
            step = int(value.step or 1)
            if len(values) == 1:
                return IntDistribution(values[0], values[0])
            return IntDistribution(values[0], values[-1], step=step, log=log and step == 1)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        if lo is None or hi is None or not lo < hi:
            raise ConfigError(f"hydra.sweeper.params.{key}: empty interval in {override.input_line} "
                              "(the lower bound must be below the upper)")
        if log and lo <= 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: a log interval needs a lower bound > 0")
        if isinstance(lo, int) and isinstance(hi, int):
            return IntDistribution(lo, hi, log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    raise ConfigError(f"hydra.sweeper.params.{key}: {override.input_line} is not a sweep "
                      "(use interval, range, choice or a,b,c)")


def parse(params: Dict[str, object], arguments: List[str]) -> Tuple[Dict[str, object], Dict[str, str]]:
    """(search space {key: distribution}, fixed overrides {key: 'key=value'}); the command line wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space: Dict[str, object] = {}
    fixed: Dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"hydra.sweeper.params: cannot parse {line!r} ({first})") from None
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = _distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.input_line
            space.pop(key, None)
    return space, fixed


def format_value(value) -> str:
    """A sampled value as a Hydra override value that parses back to the same thing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if all(c.isalnum() or c in "_-./" for c in text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
