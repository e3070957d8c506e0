"""The L1DFL paper's stratified evaluation of one prediction set, from the rows of cases.csv and lesions.csv.

Three scenarios: all cases with lesions, single-lesion cases and multiple-lesion cases. In each:
- patient level: median Dice of the cases whose TMTV reaches a threshold, for thresholds from 0 to the 85th
  percentile of the scenario's TMTV;
- lesion level: median lesion Dice of the lesions whose MTV reaches a threshold, thresholds from 0 to the
  85th percentile of the scenario's lesion MTVs;
- multiple-lesion cases only: median Dice per Dmax quartile (the paper's quartiles were 0-9, 9-11, 11-14
  and 14-60 cm; here they are the data's).

Only cases with lesions have a Dice; TMTV, MTV and Dmax need the lesion-level columns (`petseg evaluate
--pet`), without which only the scenario sizes and median Dice are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLD_STEPS = 10
SCENARIOS: dict[str, Callable[[int], bool]] = {
    "all": lambda count: count >= 1,
    "single": lambda count: count == 1,
    "multiple": lambda count: count > 1,
}


def _median(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def volume_thresholds(volumes: np.ndarray, dice: np.ndarray, key: str) -> list[dict[str, Any]]:
    """Median Dice of the items whose volume reaches each of 10 thresholds from 0 to the 85th percentile."""
    if volumes.size == 0:
        return []
    thresholds = np.linspace(0.0, float(np.percentile(volumes, 85)), THRESHOLD_STEPS)
    return [
        {key: float(t), "count": int((volumes >= t).sum()), "median_dice": _median(dice[volumes >= t])}
        for t in thresholds
    ]


def dmax_quartiles(dmax_mm: np.ndarray, dice: np.ndarray) -> list[dict[str, Any]]:
    """Median Dice per quartile of Dmax (cm edges of the data's quartiles)."""
    if dmax_mm.size == 0:
        return []
    edges = np.percentile(dmax_mm, [0, 25, 50, 75, 100])
    quartile = np.clip(np.searchsorted(edges[1:-1], dmax_mm, side="right"), 0, 3)
    return [
        {
            "dmax_cm": [float(edges[q]) / 10, float(edges[q + 1]) / 10],
            "cases": int((quartile == q).sum()),
            "median_dice": _median(dice[quartile == q]),
        }
        for q in range(4)
    ]


def stratify(
    rows: Sequence[Mapping[str, Any]], lesions: Sequence[Mapping[str, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """scenario -> cases, median Dice and (with the PET columns) its threshold and quartile analyses."""
    with_lesions = [r for r in rows if math.isfinite(r["dice"])]
    with_pet = bool(with_lesions) and "tmtv_ml" in with_lesions[0]
    result: dict[str, dict[str, Any]] = {}
    for scenario, belongs in SCENARIOS.items():
        members = [r for r in with_lesions if belongs(r["lesion_count"])]
        dice = np.array([r["dice"] for r in members], dtype=np.float64)
        entry: dict[str, Any] = {"cases": len(members), "median_dice": _median(dice)}
        if with_pet:
            tmtv = np.array([r["tmtv_ml"] for r in members], dtype=np.float64)
            entry["tmtv_thresholds"] = volume_thresholds(tmtv, dice, "tmtv_ml_at_least")
            names = {r["case"] for r in members}
            own = [lesion for lesion in lesions if lesion["case"] in names]
            entry["lesions"] = len(own)
            entry["mtv_thresholds"] = volume_thresholds(
                np.array([lesion["mtv_ml"] for lesion in own], dtype=np.float64),
                np.array([lesion["dice"] for lesion in own], dtype=np.float64),
                "mtv_ml_at_least",
            )
            if scenario == "multiple":
                dmax = np.array([r["dmax_mm"] for r in members], dtype=np.float64)
                entry["dmax_quartiles"] = dmax_quartiles(dmax, dice)
        result[scenario] = entry
    return result
