"""Confirm the winner: after the search, the top trials and the baseline run again with other seeds.

With small data the best validation score is partly luck (the winner's curse). Re-running the top
`confirm.top_k` trials and the baseline with `confirm.seeds` more seeds, and choosing the best mean,
says how sure the sweep is. The runs are recorded on the study (user attribute `confirmation`),
never told to Optuna, so the sampler never learns from them; a resumed sweep continues where its
confirmation stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thaw.sweeper import confidence
from thaw.sweeper.search_space import format_value

log = logging.getLogger("thaw.sweeper")

# {"runs": {"<trial>": {"<seed>": value}}, "errors": {"<trial>:<seed>": why}, "seconds": wall}
ATTR = "confirmation"
BASELINE_ATTR = "baseline_trial"


@dataclass
class Settings:
    top_k: int = 3
    seeds: int = 2
    seed_key: str = "trainer.seed"
    reuse_views: bool = True

    @classmethod
    def parse(cls, node) -> Settings:
        from thaw.errors import ConfigError

        node = dict(node or {})
        out = cls(
            int(node.get("top_k", 3)),
            int(node.get("seeds", 2)),
            str(node.get("seed_key", "trainer.seed")),
            bool(node.get("reuse_views", True)),
        )
        if out.top_k < 0 or out.seeds < 0:
            raise ConfigError(
                f"hydra.sweeper.confirm: top_k and seeds must be >= 0, got {out.top_k}, {out.seeds}"
            )
        return out

    @property
    def on(self) -> bool:
        return self.top_k > 0 and self.seeds > 0


def baseline_number(study) -> int | None:
    n = study.user_attrs.get(BASELINE_ATTR)
    return None if n is None else int(n)


def _complete(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def top_trials(study, k: int, maximize: bool) -> list[Any]:
    """The k best COMPLETE trials that are not the baseline, best first."""
    base = baseline_number(study)
    ranked = sorted(
        (t for t in _complete(study) if t.number != base),
        key=lambda t: (-t.value if maximize else t.value, t.number),
    )
    return ranked[:k]


class Confirmation:
    """The confirmation stage of one sweep: which runs, their launch lines, their record, the
    verdict."""

    def __init__(self, settings: Settings, study, maximize: bool, base_seed: int, order=None):
        self.s, self.study, self.maximize, self.base_seed = settings, study, maximize, base_seed
        self.order = (
            order  # the app's sort key for a trial's params (runs sharing a seed, cheapest order)
        )

    @property
    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(1, self.s.seeds + 1)]

    def candidates(self) -> list[Any]:
        trials = top_trials(self.study, self.s.top_k, self.maximize)
        base = baseline_number(self.study)
        if base is not None:
            trials.append(self.study.get_trials(deepcopy=False)[base])
        return trials

    def recorded(self) -> dict[str, Any]:
        rec = self.study.user_attrs.get(ATTR) or {}
        return {
            "runs": dict(rec.get("runs") or {}),
            "errors": dict(rec.get("errors") or {}),
            "seconds": float(rec.get("seconds") or 0.0),
        }

    def pending(self) -> list[tuple[Any, int]]:
        """(trial, seed) runs still to do; a baseline that did not complete also runs its own
        seed."""
        from optuna.trial import TrialState

        rec = self.recorded()
        out = []
        for t in self.candidates():
            seeds = self.seeds if t.state == TrialState.COMPLETE else [self.base_seed] + self.seeds
            done = rec["runs"].get(str(t.number), {})
            out += [
                (t, s)
                for s in seeds
                if str(s) not in done and f"{t.number}:{s}" not in rec["errors"]
            ]
        return sorted(
            out, key=lambda ts: (ts[1], self.order(ts[0].params) if self.order else 0, ts[0].number)
        )

    def overrides(self, trial, seed: int) -> list[str]:
        return [f"{k}={format_value(v)}" for k, v in trial.params.items()] + [
            f"{self.s.seed_key}={seed}",
            f"hydra.sweeper.confirmation={trial.number}:{seed}",
            f"hydra.sweep.subdir=confirm/trial_{trial.number}_seed_{seed}",
        ]

    def store(
        self, results: list[tuple[Any, int, float | None, str | None]], seconds: float = 0.0
    ) -> None:
        """Add finished runs (trial, seed, value or None, error or None) and the wall seconds they
        took to the study's record."""
        rec = self.recorded()
        rec["seconds"] += seconds
        for trial, seed, value, error in results:
            if value is not None:
                rec["runs"].setdefault(str(trial.number), {})[str(seed)] = value
            else:
                rec["errors"][f"{trial.number}:{seed}"] = (error or "no value")[:500]
        self.study.set_user_attr(ATTR, rec)

    # ------------------------------------------------------------------ the verdict
    def values(self, trial) -> dict[int, float]:
        """Every value this trial has, by seed: its own (base seed) and its confirmation runs'."""
        from optuna.trial import TrialState

        out = {
            int(s): float(v)
            for s, v in (self.recorded()["runs"].get(str(trial.number)) or {}).items()
        }
        if trial.state == TrialState.COMPLETE:
            out[self.base_seed] = float(trial.value)
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any] | None:
        """baseline, confirmed (values per seed, mean, std), winner (best mean),
        gain_vs_baseline."""
        base = baseline_number(self.study)
        rows = []
        for t in self.candidates():
            vals = self.values(t)
            if not vals:
                continue
            ms = confidence.mean_std(list(vals.values()))
            rows.append(
                {
                    "number": t.number,
                    "params": dict(t.params),
                    "values": vals,
                    "mean": ms["mean"],
                    "std": ms["std"],
                    "baseline": t.number == base,
                }
            )
        if not rows:
            return None
        sign = 1 if self.maximize else -1
        winner = max(rows, key=lambda r: (sign * r["mean"], -r["number"]))
        out: dict[str, Any] = {
            "confirmed": rows,
            "winner": winner["number"],
            "seeds": [self.base_seed] + self.seeds,
        }
        base_row = next((r for r in rows if r["baseline"]), None)
        if base_row is not None:
            out["baseline"] = {
                "number": base_row["number"],
                "values": base_row["values"],
                "mean": base_row["mean"],
            }
            gain = _gain(rows, winner, base_row, sign)
            if gain is not None:
                out["gain_vs_baseline"] = gain
        return out


def _gain(rows: list[dict[str, Any]], winner, base_row, sign: int) -> dict[str, Any] | None:
    """The best tuned trial's paired gain over the baseline, on the seeds both ran."""
    tuned = [r for r in rows if not r["baseline"]]
    if not tuned:
        return None
    best_tuned = (
        winner
        if not winner["baseline"]
        else max(tuned, key=lambda r: (sign * r["mean"], -r["number"]))
    )
    common = sorted(set(best_tuned["values"]) & set(base_row["values"]))
    diffs = [best_tuned["values"][s] - base_row["values"][s] for s in common]
    if not diffs:
        return None
    return {"trial": best_tuned["number"], **confidence.mean_interval(diffs)}
