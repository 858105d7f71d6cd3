"""The sweep's answer in one sentence: the winner against the frozen base, and how sure.

Read by people (the log, the report), so it names params as a sentence would and says what is not
known (no baseline, one seed) instead of leaving it out.
"""

from __future__ import annotations

from typing import Any

from thaw.sweeper import confirm


def verdict(study, directions: list[str], best, res: dict[str, Any]) -> str:
    """The winner against the frozen base, and how sure; then the test split, when measured."""
    points = str(best.user_attrs.get("objective_name", "")).endswith("accuracy")
    what = ", ".join(
        f"{_label(k)} {v:.3g}" if isinstance(v, float) else f"{_label(k)} {v}"
        for k, v in best.params.items()
    )
    gain, base = res.get("gain_vs_baseline"), res.get("baseline")
    if gain is None or base is None:
        text = _unconfirmed(study, best, res, what)
    else:
        text = _confirmed(best, gain, base, what, points, directions[0] == "maximize")
    named = gain["trial"] if gain is not None and base is not None else best.number
    text += _kept_a_head_epoch(study, named) + _test_text(res["best_trial"])
    pending = res.get("confirmation_pending")
    return f"so far, with {pending} confirmation run(s) to go: {text}" if pending else text


def _kept_a_head_epoch(study, number: int) -> str:
    """A fine-tuned trial whose kept weights are from a head epoch says nothing of its depth."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or number == confirm.baseline_number(study):
        return ""
    if trial.user_attrs.get("kept_phase") != "head" or trial.params.get("unfreeze.depth") == 0:
        return ""
    return (
        f" (in its search run, trial {number} kept the weights of a head epoch: no fine-tuning "
        "epoch at its depth beat its trained head on the frozen base)"
    )


def _label(key: str) -> str:
    """'unfreeze.depth' -> 'depth', 'lr.base' -> 'lr': a searched key as a sentence names it."""
    parts = key.split(".")
    return parts[0] if parts[-1] in ("base", "name") else parts[-1]


def _unconfirmed(study, best, res: dict[str, Any], what: str) -> str:
    """No paired gain to the baseline: the best trial, its mean if confirmed, and why no more."""
    text = f"trial {best.number} ({what}) is the best, value {best.value:.4g}"
    if "confirmed" in res:
        mean, seeds = res["best_trial"].get("mean", best.value), len(res.get("seeds", []))
        text += f", mean {mean:.4g} over {_seeds(seeds)}"
    base_number = confirm.baseline_number(study)
    base_trial = next(
        (
            t
            for t in study.get_trials(deepcopy=False)
            if t.number == base_number and t.value is not None
        ),
        None,
    )
    if base_trial is None:
        return text + " (no baseline to compare with)"
    why = "" if res.get("confirmation_pending") else " (hydra.sweeper.confirm.top_k=0)"
    if best.number == base_trial.number:
        text += f" and is the frozen base; not confirmed over seeds{why}"
    else:
        text += (
            f"; the frozen base (trial {base_trial.number}) scored {base_trial.value:.4g}, "
            f"one seed each: not confirmed{why}"
        )
    return text


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _confirmed(best, gain, base, what: str, points: bool, maximize: bool) -> str:
    """The best tuned trial's paired gain over the frozen base, with its 95 % interval."""
    fmt = (lambda v: f"{100 * v:.1f} points") if points else (lambda v: f"{v:.4g}")
    rng = (lambda v: f"{100 * v:.1f}") if points else (lambda v: f"{v:.4g}")
    n = gain["count"]
    interval = (
        f", 95 % interval {rng(gain['low'])} to {rng(gain['high'])}"
        if gain["low"] is not None
        else " (one seed: no interval)"
    )
    tuned = gain["trial"]
    sign = 1 if maximize else -1
    if best.number == base["number"]:
        return (
            f"the frozen base (trial {best.number}) has the best mean; the best fine-tuned "
            f"trial {tuned} differs by {fmt(gain['mean'])}{interval}, over {_seeds(n)}"
        )
    if gain["low"] is not None and sign * gain["low"] > 0:
        by = fmt(sign * gain["mean"])
        return f"{what} (trial {tuned}) beats the frozen base by {by}{interval}, over {_seeds(n)}"
    return (
        f"{what} (trial {tuned}) is not distinguishable from the frozen base: "
        f"{fmt(sign * gain['mean'])}{interval}, over {_seeds(n)}"
    )


def _test_text(t: dict[str, Any]) -> str:
    """The chosen trial on the held-out test split, and its gap to the frozen base's there."""
    if "test_accuracy" not in t:
        return ""
    iv = t["test_interval"]
    text = (
        f". Test split ({t['num_test']} images): {100 * t['test_accuracy']:.1f} % "
        f"(95 % interval {100 * iv['low']:.1f} to {100 * iv['high']:.1f})"
    )
    if "test_gain_vs_baseline" in t:
        g = t["test_gain_vs_baseline"]
        text += (
            f", frozen base {100 * t['baseline_test_accuracy']:.1f} %: gap "
            f"{100 * g['mean']:+.1f} points "
            f"(95 % interval {100 * g['low']:.1f} to {100 * g['high']:.1f})"
        )
    return text
