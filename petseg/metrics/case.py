"""autoPET case metrics: Dice, false-positive volume and false-negative volume.

Definitions of the autoPET III evaluation: components with 18-connectivity, volumes in ml from the ground
truth's voxel size; Dice and FNV are NaN for a lesion-free ground truth (those cases are scored by FPV only),
FPV is 0 for an empty prediction. The official script scans the whole volume once per component; here each
mask is labelled once and components are tallied with bincount, which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

CONNECTIVITY = 18


@dataclass(frozen=True)
class CaseScores:
    dice: float
    fpv_ml: float
    fnv_ml: float

    @property
    def lesion_free(self) -> bool:
        return bool(np.isnan(self.dice))


def _untouched_volume(mask: np.ndarray, other: np.ndarray) -> int:
    """Voxels of `mask`'s components that share no voxel with `other`."""
    labels = cc3d.connected_components(mask, connectivity=CONNECTIVITY)
    sizes = np.bincount(labels.ravel())
    touched = np.bincount(labels[other], minlength=sizes.size) > 0
    return int(sizes[1:][~touched[1:]].sum())


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P and G| / (|P| + |G|); NaN when the ground truth is empty."""
    truth_voxels = int(np.count_nonzero(truth))
    if truth_voxels == 0:
        return float("nan")
    overlap = int(np.count_nonzero(prediction & truth))
    return 2.0 * overlap / (int(np.count_nonzero(prediction)) + truth_voxels)


def case_scores(prediction: np.ndarray, truth: np.ndarray, voxel_ml: float) -> CaseScores:
    """Dice, FPV and FNV of one case (boolean or {0,1} arrays of one shape)."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != ground-truth shape {truth.shape}")
    prediction = np.asarray(prediction).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    fpv = _untouched_volume(prediction, truth) * voxel_ml if prediction.any() else 0.0
    if not truth.any():
        return CaseScores(dice=float("nan"), fpv_ml=fpv, fnv_ml=float("nan"))
    return CaseScores(
        dice=dice(prediction, truth), fpv_ml=fpv, fnv_ml=_untouched_volume(truth, prediction) * voxel_ml
    )
