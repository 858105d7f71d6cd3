"""Hydra sweep syntax -> Optuna distributions, for every form the sweeper accepts."""

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from thaw.errors import ConfigError
from thaw.sweeper.search_space import format_value, parse


def one(expr):
    space, fixed = parse({}, [f"k={expr}"])
    assert not fixed
    return space["k"]


def test_interval_is_float_uniform():
    d = one("interval(0.1, 0.5)")
    assert d == FloatDistribution(0.1, 0.5)


def test_tagged_log_interval():
    d = one("tag(log, interval(1e-5, 1e-2))")
    assert d == FloatDistribution(1e-5, 1e-2, log=True)


def test_int_interval_includes_both_ends():
    assert one("int(interval(0, 19))") == IntDistribution(0, 19)


def test_range_excludes_the_end():
    assert one("range(0, 10, 2)") == IntDistribution(0, 8, step=2)
    assert one("range(1, 4)") == IntDistribution(1, 3)
    assert one("range(0.0, 1.0, 0.25)") == FloatDistribution(0.0, 0.75, step=0.25)


def test_choice_and_simple_list():
    assert one("choice(adam, sgd)") == CategoricalDistribution(["adam", "sgd"])
    assert one("1,2,3") == CategoricalDistribution([1, 2, 3])


def test_config_group_choice():
    space, _ = parse({}, ["backbone=choice(mobilenet_v2,efficientnet_b0)"])
    assert space["backbone"] == CategoricalDistribution(["mobilenet_v2", "efficientnet_b0"])


def test_yaml_params_and_command_line_merge():
    space, fixed = parse(
        {"lr.base": "tag(log, interval(1e-5, 1e-2))", "unfreeze.depth": "range(0, 5)"},
        ["unfreeze.depth=3", "head=mlp", "trainer.seed=choice(1,2)"],
    )
    assert set(space) == {
        "lr.base",
        "trainer.seed",
    }  # the fixed command-line depth wins over the YAML sweep
    assert fixed == {"unfreeze.depth": "unfreeze.depth=3", "head": "head=mlp"}


@pytest.mark.parametrize(
    "expr,msg",
    [
        ("interval(1e-2, 1e-5)", "empty interval"),
        ("interval(1, 1)", "empty interval"),
        ("tag(log, interval(0, 1))", "lower bound > 0"),
        ("range(5, 5)", "empty range"),
        ("interval(1, ", "cannot parse"),
        ("choice(a, a)", "repeated"),
    ],
)
def test_malformed_search_spaces_are_refused(expr, msg):
    with pytest.raises(ConfigError, match=msg):
        one(expr)


@pytest.mark.parametrize("value", [3, 0.000123, "mobilenet_v2", True, None, "has space", 1e-5])
def test_sampled_values_round_trip_through_hydra(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={format_value(value)}").value()
    assert parsed == value
