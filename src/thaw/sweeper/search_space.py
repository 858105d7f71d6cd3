"""Hydra's sweep syntax -> Optuna distributions.

interval(a,b) float uniform, tag(log, interval(a,b)) log-uniform, int(interval(a,b)) integers,
range(a,b[,step]) a grid with the end excluded, choice(...) / a,b,c categorical (config groups too).
"""

from __future__ import annotations

from thaw.errors import ConfigError, first_line


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
            raise ConfigError(
                f"hydra.sweeper.params.{key}: repeated values in {override.input_line}"
            )
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{key}: empty range in {override.input_line}")
        if value.step is not None and value.step < 0:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: range() with a negative step is not supported"
            )
        if all(isinstance(v, int) for v in values):
            step = int(value.step or 1)
            if len(values) == 1:
                return IntDistribution(values[0], values[0])
            return IntDistribution(values[0], values[-1], step=step, log=log and step == 1)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        if lo is None or hi is None or not lo < hi:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: empty interval in {override.input_line} "
                "(the lower bound must be below the upper)"
            )
        if log and lo <= 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: a log interval needs a lower bound > 0")
        if isinstance(lo, int) and isinstance(hi, int):
            return IntDistribution(lo, hi, log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    raise ConfigError(
        f"hydra.sweeper.params.{key}: {override.input_line} is not a sweep "
        "(use interval, range, choice or a,b,c)"
    )


def parse(
    params: dict[str, object], arguments: list[str], preset: dict[str, object] = None
) -> tuple[dict[str, object], dict[str, str]]:
    """(search space {key: distribution}, fixed overrides {key: 'key=value'}); the command line
    wins. `preset`: distributions given directly (hydra-optuna-sweeper's search_space), overridden
    by both."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    space: dict[str, object] = dict(preset or {})
    fixed: dict[str, str] = {}
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


def from_hos_search_space(search_space: dict[str, dict]) -> dict[str, object]:
    """hydra-optuna-sweeper's deprecated `search_space` ({name: {type, low, high, step, log,
    choices}})."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, object] = {}
    for name, spec in (search_space or {}).items():
        kind = str(spec.get("type", "")).split(".")[-1]
        low, high, step, log = (
            spec.get("low"),
            spec.get("high"),
            spec.get("step"),
            bool(spec.get("log", False)),
        )
        try:
            if kind == "categorical":
                out[name] = CategoricalDistribution(list(spec["choices"]))
            elif kind == "int":
                out[name] = IntDistribution(int(low), int(high), log=log, step=int(step or 1))
            elif kind == "float":
                out[name] = FloatDistribution(
                    float(low), float(high), log=log, step=None if step is None else float(step)
                )
            else:
                raise ValueError(
                    f"type must be int, float or categorical, got {spec.get('type')!r}"
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"hydra.sweeper.search_space.{name}: {exc}") from None
    return out


def grid(space: dict[str, object]) -> dict[str, list]:
    """The values GridSampler walks: choices, or every step of a range; continuous params are
    refused."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, list] = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            out[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            out[name] = [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{name}: the grid sampler needs discrete values "
                "(choice(...) or range(...)), not a continuous interval"
            )
    return out


def suggest(trial, name: str, dist) -> object:
    """Suggest `name` from a distribution through the public Trial API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def load_function(path: str, key: str = "hydra.sweeper.custom_search_space"):
    """A dotted path to a function; a leading dot means the running app's own module (`.module.fn`
    or `.fn`), as hydra-optuna-sweeper's examples write it."""
    import sys

    from hydra.utils import get_method

    try:
        if path.startswith("."):
            from pathlib import Path

            main = sys.modules.get("__main__")
            module, _, name = path[1:].rpartition(".")
            stem = Path(getattr(main, "__file__", "") or "").stem
            if main is not None and module in ("", stem) and hasattr(main, name):
                return getattr(main, name)
            return get_method(path.lstrip("."))
        return get_method(path)
    except Exception as exc:
        raise ConfigError(f"{key}: cannot load {path!r} ({first_line(exc)})") from None


def interpolated_keys(expression: object) -> list[str]:
    """The config keys an unresolved param expression interpolates: '${backbone.num_blocks}' ->
    [...]."""
    import re

    return re.findall(r"\$\{([A-Za-z_][\w.]*)\}", str(expression))
