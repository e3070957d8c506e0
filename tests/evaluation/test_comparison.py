"""Challenge ranking, Wilcoxon tests and the stratified evaluation, on hand-made per-case rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from petseg.evaluation.comparison import challenge_ranking, wilcoxon_tests
from petseg.evaluation.stratified import stratify

NAN = math.nan


def rows(values: list[tuple[str, float, float, float]]) -> list[dict]:
    return [{"case": c, "dice": d, "fpv_ml": f, "fnv_ml": n} for c, d, f, n in values]


def test_challenge_ranking_by_hand():
    meta = {"a": {"tracer": "fdg", "centre": "x"}, "b": {"tracer": "psma", "centre": "y"}}
    sets = {
        # Set one: best Dice on both subsets, worst FPV on fdg.
        "one": rows([("a", 0.9, 5.0, 1.0), ("b", 0.8, 0.0, 2.0)]),
        "two": rows([("a", 0.7, 1.0, 1.0), ("b", 0.6, 1.0, 1.0)]),
        "three": rows([("a", 0.5, 2.0, 3.0), ("b", NAN, 2.0, NAN)]),  # no Dice on psma: ranks last there
    }
    ranking = challenge_ranking(sets, meta)
    fdg, psma = ranking["subsets"]["fdg/x"], ranking["subsets"]["psma/y"]
    # fdg: Dice ranks 1, 2, 3; FPV (5, 1, 2) -> 3, 1, 2; FNV (1, 1, 3) -> 1.5, 1.5, 3.
    assert [fdg[n]["score"] for n in sets] == pytest.approx(
        [0.5 * 1 + 0.25 * 3 + 0.25 * 1.5, 0.5 * 2 + 0.25 * 1 + 0.25 * 1.5, 0.5 * 3 + 0.25 * 2 + 0.25 * 3]
    )
    # psma: Dice (0.8, 0.6, none) -> 1, 2, 3; FPV (0, 1, 2) -> 1, 2, 3; FNV (2, 1, none) -> 2, 1, 3.
    assert [psma[n]["score"] for n in sets] == pytest.approx(
        [0.5 + 0.25 + 0.5, 1.0 + 0.5 + 0.25, 1.5 + 0.75 + 0.75]
    )
    overall = ranking["overall_score"]
    assert overall["one"] == pytest.approx((1.625 + 1.25) / 2)
    assert ranking["rank"] == {"one": 1, "two": 2, "three": 3}
    assert set(challenge_ranking(sets)["subsets"]) == {"all"}  # without meta, one subset


def test_wilcoxon_equals_scipy_with_bonferroni():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.9, 12)
    reference = rows(
        [(f"c{i}", d, f, n) for i, (d, f, n) in enumerate(zip(base, base * 2, base, strict=True))]
    )
    worse = rows(
        [
            (
                r["case"],
                r["dice"] - rng.uniform(0.0, 0.2),
                r["fpv_ml"] + rng.uniform(-0.1, 0.5),
                NAN if i == 0 else 1.0,
            )
            for i, r in enumerate(reference)
        ]
    )
    same = [dict(r) for r in reference]
    tests = wilcoxon_tests("ref", {"ref": reference, "worse": worse, "same": same})
    assert len(tests) == 6
    dice = next(t for t in tests if t["other"] == "worse" and t["metric"] == "dice")
    want = stats.wilcoxon([r["dice"] for r in reference], [r["dice"] for r in worse], alternative="greater")
    assert dice["p"] == pytest.approx(want.pvalue)
    assert dice["p_bonferroni"] == pytest.approx(min(1.0, want.pvalue * 6))
    assert dice["alternative"] == "ref > worse"
    fpv = next(t for t in tests if t["other"] == "worse" and t["metric"] == "fpv_ml")
    want = stats.wilcoxon([r["fpv_ml"] for r in reference], [r["fpv_ml"] for r in worse], alternative="less")
    assert fpv["p"] == pytest.approx(want.pvalue)
    fnv = next(t for t in tests if t["other"] == "worse" and t["metric"] == "fnv_ml")
    assert fnv["pairs"] == 11  # the NaN case is left out of the pairs
    identical = [t for t in tests if t["other"] == "same"]
    assert all(t["p"] == 1.0 for t in identical)


def test_stratified_by_hand():
    table = [
        {"case": "a", "dice": 0.2, "lesion_count": 1, "tmtv_ml": 1.0, "dmax_mm": 0.0},
        {"case": "b", "dice": 0.4, "lesion_count": 3, "tmtv_ml": 10.0, "dmax_mm": 100.0},
        {"case": "c", "dice": 0.6, "lesion_count": 2, "tmtv_ml": 20.0, "dmax_mm": 200.0},
        {"case": "d", "dice": 0.8, "lesion_count": 5, "tmtv_ml": 40.0, "dmax_mm": 400.0},
        {"case": "f", "dice": 0.9, "lesion_count": 2, "tmtv_ml": 30.0, "dmax_mm": 300.0},
        {"case": "e", "dice": NAN, "lesion_count": 0, "tmtv_ml": 0.0, "dmax_mm": NAN},  # lesion-free
    ]
    lesions = [
        {"case": "a", "mtv_ml": 1.0, "dice": 0.1},
        {"case": "b", "mtv_ml": 2.0, "dice": 0.2},
        {"case": "b", "mtv_ml": 8.0, "dice": 0.8},
        {"case": "c", "mtv_ml": 20.0, "dice": 0.9},
    ]
    result = stratify(table, lesions)
    assert set(result) == {"all", "single", "multiple"}
    assert (result["single"]["cases"], result["single"]["median_dice"]) == (1, 0.2)
    assert (result["multiple"]["cases"], result["multiple"]["median_dice"]) == (4, pytest.approx(0.7))
    everything = result["all"]
    assert everything["cases"] == 5
    thresholds = everything["tmtv_thresholds"]
    assert len(thresholds) == 10
    assert thresholds[0] == {"tmtv_ml_at_least": 0.0, "count": 5, "median_dice": pytest.approx(0.6)}
    assert thresholds[-1]["tmtv_ml_at_least"] == pytest.approx(np.percentile([1, 10, 20, 30, 40], 85))
    assert (thresholds[-1]["count"], thresholds[-1]["median_dice"]) == (1, 0.8)
    # lesion level: MTVs 1, 2, 8, 20 -> P85 = 14.6; lesions of at least 14.6 ml: only c's (Dice 0.9)
    mtv = everything["mtv_thresholds"]
    assert everything["lesions"] == 4
    assert mtv[0] == {"mtv_ml_at_least": 0.0, "count": 4, "median_dice": pytest.approx(0.5)}
    assert mtv[-1]["mtv_ml_at_least"] == pytest.approx(np.percentile([1, 2, 8, 20], 85))
    assert (mtv[-1]["count"], mtv[-1]["median_dice"]) == (1, 0.9)
    assert result["single"]["lesions"] == 1
    assert result["single"]["mtv_thresholds"][0]["median_dice"] == pytest.approx(0.1)
    assert result["multiple"]["lesions"] == 3
    # Dmax quartiles only among multiple-lesion cases: 100, 200, 300, 400 mm
    assert "dmax_quartiles" not in everything
    quartiles = result["multiple"]["dmax_quartiles"]
    assert [q["cases"] for q in quartiles] == [1, 1, 1, 1]
    assert [q["median_dice"] for q in quartiles] == pytest.approx([0.4, 0.6, 0.9, 0.8])
    assert quartiles[0]["dmax_cm"] == [10.0, pytest.approx(17.5)]
    assert quartiles[-1]["dmax_cm"][1] == pytest.approx(40.0)
    without_pet = stratify([{k: r[k] for k in ("case", "dice", "lesion_count")} for r in table])
    assert without_pet["all"] == {"cases": 5, "median_dice": pytest.approx(0.6)}
