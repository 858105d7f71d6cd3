"""How sure a sweep is: 95 % intervals for a gain over seeds, a test accuracy and a paired test gap.

Small-sample t quantiles are tabled (no SciPy dependency for three numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964
# two-sided 95 % Student t quantiles, t_{0.975, df}, df = 1..30
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else Z95


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std}


def mean_interval(diffs: Sequence[float]) -> dict[str, float | None]:
    """Mean of paired differences with its 95 % t interval (low/high None with fewer than 2)."""
    ms = mean_std(diffs)
    if ms["std"] is None:
        return {"mean": ms["mean"], "low": None, "high": None, "count": len(diffs)}
    half = t95(len(diffs) - 1) * ms["std"] / math.sqrt(len(diffs))
    return {
        "mean": ms["mean"],
        "low": ms["mean"] - half,
        "high": ms["mean"] + half,
        "count": len(diffs),
    }


def wilson(correct: int, n: int) -> dict[str, float]:
    """95 % Wilson score interval of a proportion."""
    if n <= 0:
        return {"low": 0.0, "high": 1.0}
    p, z2 = correct / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return {"low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def paired_gap(a: list[int], b: list[int]) -> dict[str, float]:
    """Accuracy of `a` minus accuracy of `b` on the same images (0/1 per image), with a 95 % normal
    interval on the per-image differences (both models err on many of the same images)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_gap: two equal, non-empty lists of per-image results are needed")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "count": n}
