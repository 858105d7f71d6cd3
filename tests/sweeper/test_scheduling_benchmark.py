"""benchmarks/scheduling.py's tail figures: the idle share a scheduler that costs nothing leaves."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "scheduling.py"


@pytest.fixture(scope="module")
def scheduling():
    spec = importlib.util.spec_from_file_location("scheduling_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equal_trials_that_fill_every_slot_leave_nothing_idle(scheduling):
    assert scheduling.list_schedule_idle([5.0] * 8, 4) == 0.0
    assert scheduling.list_schedule_idle([4.0, 1.0, 1.0, 1.0, 1.0], 2) == 0.0


def test_a_long_trial_started_last_is_the_tail(scheduling):
    # 2 slots: 1+1 run side by side, then 4 alone: makespan 5, busy 6, idle 1 - 6/10
    assert scheduling.list_schedule_idle([1.0, 1.0, 4.0], 2) == pytest.approx(0.4)
    # the long one first: it holds one slot while the others share the second: makespan 4
    assert scheduling.list_schedule_idle([4.0, 1.0, 1.0], 2) == pytest.approx(0.25)


def test_tail_figures_follow_the_order_the_trials_started(scheduling):
    recs = [  # listed out of order; by start time: 1, 1, 4
        {"start": 10.0, "end": 14.0},
        {"start": 0.0, "end": 1.0},
        {"start": 0.5, "end": 1.5},
    ]
    figures = scheduling.tail_figures(recs, 2, orders=200)
    assert figures["tail_idle_share"] == pytest.approx(0.4)
    spread = figures["random_order_tail_idle_share"]
    # two thirds of the orders do not put the long trial last (0.25), a third do (0.4)
    assert spread["p10"] == pytest.approx(0.25)
    assert spread["p10"] <= spread["median"] <= spread["p90"] == pytest.approx(0.4)
