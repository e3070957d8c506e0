"""autoPET case metrics: Dice, false-positive volume and false-negative volume.

Definitions of the autoPET III evaluation: components with 18-connectivity, volumes in ml from the ground
truth's voxel size; Dice and FNV are NaN for a lesion-free ground truth (those cases are scored by FPV only),
FPV is 0 for an empty prediction. The official script scans the whole volume once per component; here each
mask is labelled once and the components are tallied from one overlap table (`components`), which gives
the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petseg.evaluation.metrics.components import CONNECTIVITY, Components, shared

__all__ = ["CONNECTIVITY", "CaseScores", "case_scores", "dice", "mask_agreement", "scores_from"]


@dataclass(frozen=True)
class CaseScores:
    dice: float
    fpv_ml: float
    fnv_ml: float

    @property
    def lesion_free(self) -> bool:
        return bool(np.isnan(self.dice))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P and G| / (|P| + |G|); NaN when the ground truth is empty."""
    truth_voxels = int(np.count_nonzero(truth))
    if truth_voxels == 0:
        return float("nan")
    overlap = int(np.count_nonzero(prediction & truth))
    return 2.0 * overlap / (int(np.count_nonzero(prediction)) + truth_voxels)


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks compared as equals (two runs, two tools): 1 when both are empty, where the
    challenge's `dice` against a ground truth has no value."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def scores_from(predicted: Components, truth: Components, overlap: np.ndarray, voxel_ml: float) -> CaseScores:
    """Dice, FPV and FNV from the two labellings and their overlap table (`components.shared`)."""
    fpv = float(predicted.sizes[1:][~overlap.any(axis=1)].sum()) * voxel_ml
    if truth.voxels == 0:
        return CaseScores(dice=float("nan"), fpv_ml=fpv, fnv_ml=float("nan"))
    return CaseScores(
        dice=2.0 * int(overlap.sum()) / (predicted.voxels + truth.voxels),
        fpv_ml=fpv,
        fnv_ml=float(truth.sizes[1:][~overlap.any(axis=0)].sum()) * voxel_ml,
    )


def case_scores(prediction: np.ndarray, truth: np.ndarray, voxel_ml: float) -> CaseScores:
    """Dice, FPV and FNV of one case (boolean or {0,1} arrays of one shape)."""
    if np.shape(prediction) != np.shape(truth):
        raise ValueError(f"prediction shape {np.shape(prediction)} != ground-truth shape {np.shape(truth)}")
    predicted, lesions = Components.of(prediction), Components.of(truth)
    return scores_from(predicted, lesions, shared(predicted, lesions), voxel_ml)
