"""`python -m bench window` on a small window: every variant runs and computes the same probabilities.

Speed is not asserted (it depends on the machine); the numbers that the benchmark's speed-ups stand on are:
the channels-last variant is the same computation, bf16 moves probabilities by little, and the variants that
reduced precision is meant to cover are there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(**options: object) -> dict:
    sys.path.insert(0, str(REPO))
    try:
        from bench.window import measure
    finally:
        sys.path.remove(str(REPO))
    defaults = {"arch": "resunet-tiny", "window": 32, "repeats": 2, "device": "cpu", "no_compile": True}
    return measure(argparse.Namespace(seed=0, **{**defaults, **options}))


def test_every_variant_runs_and_agrees_with_fp32(monkeypatch):
    import petseg.inference.predict

    monkeypatch.setattr(petseg.inference.predict, "cpu_has_native_bf16", lambda: True)
    report = _run()
    rows = report["variants"]
    assert list(rows) == ["fp32", "fp32-cl", "bf16-cl"]
    assert report["reduced_precision"] == "bfloat16"
    assert rows["fp32"]["speedup"] == pytest.approx(1.0)
    assert rows["fp32"]["max_probability_difference"] == 0.0
    assert rows["fp32-cl"]["max_probability_difference"] < 1e-4
    assert 0.0 < rows["bf16-cl"]["max_probability_difference"] < 0.05  # bf16 really ran, and agrees
    for row in rows.values():
        assert 0.0 < row["fastest_s"] <= row["median_s"]


def test_without_native_bf16_only_fp32_variants_run(monkeypatch):
    import petseg.inference.predict

    monkeypatch.setattr(petseg.inference.predict, "cpu_has_native_bf16", lambda: False)
    report = _run(repeats=1)
    assert list(report["variants"]) == ["fp32", "fp32-cl"]
    assert report["reduced_precision"] is None
