"""Comparing prediction sets: the autoPET challenge ranking and paired one-sided Wilcoxon tests.

Both take the per-case rows of `petseg.evaluation.evaluate` (keys case, dice, fpv_ml, fnv_ml) for every
set, keyed by the set's name; the sets must cover the same cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

# Dice is better high, the volumes are better low: the alternative hypothesis "the reference is better".
BETTER_HIGH = {"dice": True, "fpv_ml": False, "fnv_ml": False}
WEIGHTS = {"dice": 0.5, "fpv_ml": 0.25, "fnv_ml": 0.25}

Rows = Sequence[Mapping[str, Any]]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def subset_key(case: str, meta: Mapping[str, Mapping[str, str]] | None) -> str:
    """The case's tracer x centre subset, "tracer/centre"; "all" without meta."""
    if meta is None:
        return "all"
    return f"{meta[case]['tracer']}/{meta[case]['centre']}"


def challenge_ranking(sets: Mapping[str, Rows], meta: Mapping[str, Mapping[str, str]] | None = None) -> dict:
    """The autoPET aggregation: metric means per tracer x centre subset (one subset "all" without `meta`),
    ranks of the sets per subset and metric (ties share the average rank; a set with no value ranks last),
    subset score 0.5 rank(Dice) + 0.25 rank(FPV) + 0.25 rank(FNV), overall score the mean over subsets,
    and the final rank by that score (lower is better)."""
    names = list(sets)

    keys = sorted({subset_key(row["case"], meta) for rows in sets.values() for row in rows})
    subsets: dict[str, dict[str, dict[str, float]]] = {}
    for key in keys:
        means = {
            name: {
                m: _mean([r[m] for r in sets[name] if subset_key(r["case"], meta) == key]) for m in WEIGHTS
            }
            for name in names
        }
        score = dict.fromkeys(names, 0.0)
        for metric, weight in WEIGHTS.items():
            values = np.array([means[n][metric] for n in names], dtype=np.float64)
            worst = np.inf if not BETTER_HIGH[metric] else -np.inf
            values = np.where(np.isnan(values), worst, values)
            ranks = stats.rankdata(-values if BETTER_HIGH[metric] else values, method="average")
            for name, rank in zip(names, ranks, strict=True):
                means[name][f"rank_{metric}"] = float(rank)
                score[name] += weight * float(rank)
        for name in names:
            means[name]["score"] = score[name]
        subsets[key] = means
    overall = {name: float(np.mean([subsets[k][name]["score"] for k in keys])) for name in names}
    final = stats.rankdata([overall[n] for n in names], method="min")
    return {
        "subsets": subsets,
        "overall_score": overall,
        "rank": {name: int(r) for name, r in zip(names, final, strict=True)},
    }


def wilcoxon_tests(
    reference: str, sets: Mapping[str, Rows], metrics: Sequence[str] = tuple(WEIGHTS)
) -> list[dict]:
    """One-sided paired Wilcoxon signed-rank tests: is `reference` better than each other set, per metric?

    Pairs are the cases where both values are finite (Dice and FNV skip lesion-free cases). p-values are
    Bonferroni-corrected for all the tests made here (sets x metrics), capped at 1.
    """
    others = [name for name in sets if name != reference]
    by_case = {name: {row["case"]: row for row in rows} for name, rows in sets.items()}
    results = []
    for other in others:
        for metric in metrics:
            pairs = [
                (by_case[reference][c][metric], by_case[other][c][metric])
                for c in by_case[reference]
                if c in by_case[other]
            ]
            pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            a = np.array([p[0] for p in pairs], dtype=np.float64)
            b = np.array([p[1] for p in pairs], dtype=np.float64)
            alternative = "greater" if BETTER_HIGH[metric] else "less"
            if a.size == 0 or np.all(a == b):
                statistic, p = math.nan, 1.0  # nothing to test: no pairs, or no difference at all
            else:
                test = stats.wilcoxon(a, b, alternative=alternative)
                statistic, p = float(test.statistic), float(test.pvalue)
            results.append(
                {
                    "reference": reference,
                    "other": other,
                    "metric": metric,
                    "alternative": f"{reference} {'>' if BETTER_HIGH[metric] else '<'} {other}",
                    "pairs": int(a.size),
                    "statistic": statistic,
                    "p": p,
                }
            )
    for result in results:
        result["p_bonferroni"] = min(1.0, result["p"] * len(results))
    return results
