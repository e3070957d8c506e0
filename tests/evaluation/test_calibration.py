"""Voxel calibration: entropy, confidence and the calibration gap, by hand and through `petseg evaluate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_evaluate import evaluate_argv, image, make_cases

from petseg.app.cli import main
from petseg.evaluation.calibration import Calibration, entropy_and_confidence
from petseg.io.probability import write_probability


def binary_entropy(p: float) -> float:
    return -sum(x * math.log(x) for x in (p, 1 - p) if x > 0)


def test_hand_built_voxels():
    probability = np.array([0.9, 0.2, 0.6, 0.0])
    truth = np.array([1, 0, 0, 1])
    summary = Calibration().add(probability, truth).summary()
    # correct: 0.9 (lesion), 0.2 (background); incorrect: 0.6 (false positive), 0.0 (missed lesion)
    assert (summary["voxels_correct"], summary["voxels_incorrect"]) == (2, 2)
    assert summary["confidence_correct"] == pytest.approx((0.9 + 0.8) / 2)
    assert summary["confidence_incorrect"] == pytest.approx((0.6 + 1.0) / 2)
    assert summary["calibration_gap"] == pytest.approx(0.85 - 0.8)
    assert summary["entropy_correct"] == pytest.approx((binary_entropy(0.9) + binary_entropy(0.2)) / 2)
    assert summary["entropy_incorrect"] == pytest.approx(binary_entropy(0.6) / 2)
    histograms = summary["histograms"]
    assert sum(histograms["entropy_incorrect"]) == 2
    assert histograms["confidence_incorrect"][-1] == 1  # confidence 1.0 lands in the closed last bin
    assert math.isnan(Calibration().add(np.array([0.1]), np.array([0])).gap)  # no incorrect voxel


def test_entropy_is_largest_at_one_half():
    entropy, confidence = entropy_and_confidence(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(entropy, [0.0, math.log(2), 0.0])
    np.testing.assert_allclose(confidence, [1.0, 0.5, 1.0])


probabilities = arrays(np.float64, st.integers(1, 40), elements=st.floats(0.0, 1.0))


@settings(max_examples=50, deadline=None)
@given(first=probabilities, second=probabilities, seed=st.integers(0, 2**16))
def test_merging_cases_equals_counting_them_together(first, second, seed):
    rng = np.random.default_rng(seed)
    truth_a, truth_b = rng.random(first.size) < 0.3, rng.random(second.size) < 0.3
    merged = Calibration().add(first, truth_a).merge(Calibration().add(second, truth_b))
    together = Calibration().add(np.concatenate([first, second]), np.concatenate([truth_a, truth_b]))
    a, b = merged.summary(), together.summary()
    assert a["histograms"] == b["histograms"]
    for key in ("voxels_correct", "voxels_incorrect", "confidence_correct", "entropy_incorrect"):
        assert a[key] == pytest.approx(b[key], nan_ok=True)
    assert a["voxels_correct"] + a["voxels_incorrect"] == first.size + second.size
    assert sum(a["histograms"]["confidence_correct"]) == a["voxels_correct"]


def write_probabilities(root, cases, shift=None):
    """Probabilities that threshold to each case's prediction, written as predict does."""
    folder = root / "probabilities"
    rng = np.random.default_rng(1)
    for name, (_, prediction, _) in cases.items():
        values = np.where(prediction > 0, rng.uniform(0.6, 1.0, prediction.shape), rng.uniform(0, 0.4))
        values = values.astype(np.float32)
        write_probability(values, image(prediction, **(shift or {})), folder / f"{name}_probability.npz")
    return folder


def test_evaluate_reports_calibration_and_draws_it(tmp_path, capsys):
    cases = make_cases(tmp_path)
    folder = write_probabilities(tmp_path, cases)
    out = tmp_path / "out"
    assert main([*evaluate_argv(tmp_path, out), "--probabilities", str(folder)]) == 0
    calibration = json.loads((out / "summary.json").read_text())["calibration"]
    voxels = sum(truth.size for truth, _, _ in cases.values())
    assert calibration["voxels_correct"] + calibration["voxels_incorrect"] == voxels
    errors = sum(int((truth != prediction).sum()) for truth, prediction, _ in cases.values())
    assert calibration["voxels_incorrect"] == errors
    assert calibration["confidence_correct"] > 0.6
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibration:" in capsys.readouterr().out


def test_probabilities_missing_or_off_grid_are_errors(tmp_path, capsys):
    cases = make_cases(tmp_path)
    folder = write_probabilities(tmp_path, cases, shift={"origin": (5.0, 0.0, 0.0)})
    argv = [*evaluate_argv(tmp_path, tmp_path / "out"), "--probabilities", str(folder)]
    assert main(argv) == 3
    assert "not on the grid of" in capsys.readouterr().err
    (folder / "case_c_probability.npz").unlink()
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "case_c_probability.npz: no probability file for case 'case_c'" in err
    assert not (tmp_path / "out" / "summary.json").exists()
