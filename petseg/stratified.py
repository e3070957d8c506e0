"""Paper 000's stratified evaluation of one prediction set, from the per-case rows of `petseg.evaluate`.

- single- against multiple-lesion cases;
- Dice of the cases whose TMTV reaches a threshold, for thresholds from 0 to the 85th percentile of TMTV;
- Dice per Dmax quartile (the paper's quartiles were 0-9, 9-11, 11-14 and 14-60 cm; here they are the data's).

Only cases with lesions have a Dice; TMTV and Dmax need the lesion-level columns (`petseg evaluate --pet`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TMTV_STEPS = 10


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def stratify(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    with_lesions = [r for r in rows if math.isfinite(r["dice"])]
    single = [r["dice"] for r in with_lesions if r["lesion_count"] == 1]
    multiple = [r["dice"] for r in with_lesions if r["lesion_count"] > 1]
    result: dict[str, Any] = {
        "lesions": {
            "single": {"cases": len(single), "median_dice": _median(single)},
            "multiple": {"cases": len(multiple), "median_dice": _median(multiple)},
        }
    }
    if not with_lesions or "tmtv_ml" not in with_lesions[0]:
        return result
    tmtv = np.array([r["tmtv_ml"] for r in with_lesions], dtype=np.float64)
    dice = np.array([r["dice"] for r in with_lesions], dtype=np.float64)
    thresholds = np.linspace(0.0, float(np.percentile(tmtv, 85)), TMTV_STEPS)
    result["tmtv_thresholds"] = [
        {
            "tmtv_ml_at_least": float(t),
            "cases": int((tmtv >= t).sum()),
            "median_dice": _median(dice[tmtv >= t]),
        }
        for t in thresholds
    ]
    dmax = np.array([r["dmax_mm"] for r in with_lesions], dtype=np.float64)
    edges = np.percentile(dmax, [0, 25, 50, 75, 100])
    quartile = np.clip(np.searchsorted(edges[1:-1], dmax, side="right"), 0, 3)
    result["dmax_quartiles"] = [
        {
            "dmax_cm": [float(edges[q]) / 10, float(edges[q + 1]) / 10],
            "cases": int((quartile == q).sum()),
            "median_dice": _median(dice[quartile == q]),
        }
        for q in range(4)
    ]
    return result
