"""Voxel calibration of a lesion probability (the L1DFL paper, section 2.5), accumulated case by case.

For each voxel with lesion probability p, the two-class prediction has entropy -(p ln p + (1-p) ln(1-p))
(nats, at most ln 2) and confidence max(p, 1-p); it is correct when (p > threshold) equals the ground truth.
The calibration gap is the mean confidence of correct voxels minus that of incorrect ones: larger means the
model knows better when it is wrong. Every voxel of every case counts, as in the paper. Counts and
histograms are summed, never voxel arrays kept, so a whole-body evaluation needs one case in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 50
ENTROPY_EDGES = np.linspace(0.0, math.log(2.0), BINS + 1)
CONFIDENCE_EDGES = np.linspace(0.5, 1.0, BINS + 1)
GROUPS = ("correct", "incorrect")


def entropy_and_confidence(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel entropy (nats) and confidence of a two-class prediction with lesion probability p."""
    p = np.clip(probability.astype(np.float64, copy=False), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))
    return entropy, np.maximum(p, q)


@dataclass
class Calibration:
    """Voxel counts, sums and histograms of entropy and confidence, for correct and incorrect voxels."""

    voxels: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    entropy_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    confidence_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    entropy_histogram: np.ndarray = field(default_factory=lambda: np.zeros((2, BINS), np.int64))
    confidence_histogram: np.ndarray = field(default_factory=lambda: np.zeros((2, BINS), np.int64))

    def add(self, probability: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> Calibration:
        """Count one case's voxels (`probability` and `truth` of the same shape)."""
        if probability.shape != truth.shape:
            raise ValueError(f"probability {probability.shape} and truth {truth.shape} differ in shape")
        entropy, confidence = entropy_and_confidence(probability)
        wrong = (probability > threshold) != truth.astype(bool)
        for group, members in enumerate((~wrong, wrong)):
            e, c = entropy[members], confidence[members]
            self.voxels[group] += e.size
            self.entropy_sum[group] += float(e.sum())
            self.confidence_sum[group] += float(c.sum())
            self.entropy_histogram[group] += np.histogram(e, ENTROPY_EDGES)[0]
            self.confidence_histogram[group] += np.histogram(c, CONFIDENCE_EDGES)[0]
        return self

    def merge(self, other: Calibration) -> Calibration:
        """Add another accumulation (of other cases) into this one."""
        for name in ("voxels", "entropy_sum", "confidence_sum", "entropy_histogram", "confidence_histogram"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def _mean(self, sums: np.ndarray, group: int) -> float:
        return float(sums[group] / self.voxels[group]) if self.voxels[group] else math.nan

    @property
    def gap(self) -> float:
        """Mean confidence of correct voxels minus that of incorrect voxels (NaN if a group is empty)."""
        return self._mean(self.confidence_sum, 0) - self._mean(self.confidence_sum, 1)

    def summary(self) -> dict[str, Any]:
        """The paper's table row (means per group, gap) and the histograms, JSON-ready."""
        result: dict[str, Any] = {}
        for group, name in enumerate(GROUPS):
            result[f"voxels_{name}"] = int(self.voxels[group])
            result[f"entropy_{name}"] = self._mean(self.entropy_sum, group)
            result[f"confidence_{name}"] = self._mean(self.confidence_sum, group)
        result["calibration_gap"] = self.gap
        result["histograms"] = {
            "entropy_edges": ENTROPY_EDGES.tolist(),
            "confidence_edges": CONFIDENCE_EDGES.tolist(),
            **{f"entropy_{n}": self.entropy_histogram[g].tolist() for g, n in enumerate(GROUPS)},
            **{f"confidence_{n}": self.confidence_histogram[g].tolist() for g, n in enumerate(GROUPS)},
        }
        return result
