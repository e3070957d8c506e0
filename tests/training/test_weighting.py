"""`python -m training analyse-weighting`: per-voxel difficulty against the loss's gradient norm."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from petseg.synthetic import generate
from training.__main__ import main
from training.weighting import DIFFICULTY_BINS, WeightingStats, difficulty_and_weight


class CrossEntropy(torch.nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels[:, 0].long())


def test_cross_entropy_weights_voxels_exactly_by_difficulty():
    # d CE / d logits = (softmax - onehot) / N: its norm over two channels is sqrt(2) |p - t| / N
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 4, 5, 6, generator=generator) * 3
    labels = (torch.rand(1, 1, 4, 5, 6, generator=generator) < 0.3).long()
    difficulty, weight = difficulty_and_weight(logits, labels, CrossEntropy())
    probability = torch.softmax(logits, dim=1)[0, 1].numpy().ravel()
    np.testing.assert_allclose(difficulty, np.abs(probability - labels.numpy().ravel()), atol=1e-6)
    np.testing.assert_allclose(weight, math.sqrt(2) * difficulty, rtol=1e-4, atol=1e-6)
    stats = WeightingStats()
    stats.add(difficulty, weight)
    assert stats.pearson == pytest.approx(1.0, abs=1e-6)


def test_running_pearson_and_curve_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.random(5000)
    y = 2 * x + rng.normal(0, 0.5, x.size)
    stats = WeightingStats()
    stats.add(x[:1234], y[:1234])
    stats.add(x[1234:], y[1234:])
    assert stats.pearson == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9)
    curve = stats.curve()
    assert len(curve) == DIFFICULTY_BINS
    assert sum(b["voxels"] for b in curve) == x.size
    first = x < 1 / DIFFICULTY_BINS
    assert curve[0]["mean_weight"] == pytest.approx(y[first].mean())
    assert math.isnan(WeightingStats().pearson)


def test_analyse_weighting_end_to_end(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "data"
    generate(data, cases=2, seed=31, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    out = tmp_path / "weighting out"
    argv = ["analyse-weighting", "--model", str(tiny_model_dir), "--data", str(data), "--loss", "l1dfl"]
    assert main([*argv, "--out", str(out), "--device", "cpu", "-q"]) == 0
    result = json.loads((out / "weighting.json").read_text())
    assert result["loss"] == "l1dfl"
    assert result["cases"] == 2
    assert -1.0 <= result["pearson"] <= 1.0
    assert result["voxels"] == sum(case["voxels"] for case in result["per_case"])
    assert sum(b["voxels"] for b in result["curve"]) == result["voxels"]
    assert (out / "weighting.png").read_bytes()[:4] == b"\x89PNG"
    assert "Pearson r(difficulty, gradient norm)" in capsys.readouterr().out
    assert main([*argv[:4], str(tmp_path / "nowhere"), *argv[5:], "--out", str(out), "-q"]) == 3
