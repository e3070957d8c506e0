"""The L1DFL paper's lesion-level metrics: SUVmax-rule detection, lesion-wise Dice, lesion statistics, Dmax.

Components use 18-connectivity, as the autoPET case metrics do. Each mask is labelled once. Per-component
quantities come from bincounts over the labels, and the overlap of two labellings from one pass over the
voxels they share, never from a full-volume scan per component. Spacings are in the arrays' axis order
(for SimpleITK arrays, which are (z, y, x), that is `image.GetSpacing()[::-1]`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
from scipy.spatial import ConvexHull, QhullError

from petseg.evaluation.metrics.case import CaseScores, scores_from
from petseg.evaluation.metrics.components import Components, shared


@dataclass(frozen=True)
class Detection:
    """Lesion detection counts of one case (SUVmax rule)."""

    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); NaN for a case with neither lesions nor predictions."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else math.nan


@dataclass(frozen=True)
class LesionStats:
    """Per-lesion MTV (ml), SUVmax and SUVmean (one entry per component, in label order), and Dmax (mm)."""

    mtv_ml: np.ndarray
    suvmax: np.ndarray
    suvmean: np.ndarray
    dmax_mm: float

    @property
    def count(self) -> int:
        return int(self.mtv_ml.size)

    @property
    def tmtv_ml(self) -> float:
        return float(self.mtv_ml.sum())

    @property
    def tlg(self) -> float:
        """Total lesion glycolysis: sum over lesions of MTV x SUVmean (ml x SUV)."""
        return float((self.mtv_ml * self.suvmean).sum())


def peak_voxels(labels: np.ndarray, count: int, pet: np.ndarray) -> np.ndarray:
    """Flat index of each component's highest PET voxel, entry k for component k (-1 for none).

    On ties, the first such voxel in C order, as `np.argmax` would pick.
    """
    peaks = np.full(count + 1, -1, dtype=np.int64)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return peaks
    component = flat[where]
    values = np.asarray(pet).ravel()[where]
    order = np.lexsort((-values, component))  # by component, then value descending; stable keeps C order
    first = np.flatnonzero(np.r_[True, component[order][1:] != component[order][:-1]])
    peaks[component[order][first]] = where[order[first]]
    return peaks


def _check(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays of different shapes: {sorted(shapes)}")


def _detection(predicted: Components, lesions: Components, shared: np.ndarray, pet: np.ndarray) -> Detection:
    """The SUVmax rule; `shared` is `overlaps(predicted, lesions)` without row and column 0."""
    peaks = peak_voxels(lesions.labels, lesions.count, pet)[1:]
    component_at_peak = predicted.labels.ravel()[peaks] if lesions.count else np.zeros(0, np.int64)
    lesion_sizes = lesions.sizes[1:].astype(np.float64)
    used = np.zeros(lesions.count, dtype=bool)
    tp = fp = 0
    for index in range(predicted.count):
        row = shared[index].astype(np.float64)
        if lesions.count == 0 or not row.any():
            fp += 1
            continue
        iou = row / (predicted.sizes[index + 1] + lesion_sizes - row)
        lesion = int(np.argmax(iou))
        if not used[lesion] and component_at_peak[lesion] == index + 1:
            used[lesion] = True
            tp += 1
        else:
            fp += 1
    return Detection(tp=tp, fp=fp, fn=int(lesions.count - used.sum()))


def _pair_dice(
    predicted: Components, lesions: Components, shared: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every (prediction, lesion) pair sharing a voxel, and each pair's lesion index (0-based)."""
    p, g = np.nonzero(shared)
    return 2.0 * shared[p, g] / (lesions.sizes[g + 1] + predicted.sizes[p + 1]), g


def _lesion_dice(predicted: Components, lesions: Components, shared: np.ndarray) -> float:
    if lesions.count == 0:
        return math.nan
    pair_scores, _ = _pair_dice(predicted, lesions, shared)
    unmatched = int((~shared.any(axis=0)).sum())
    return float(pair_scores.sum() / (pair_scores.size + unmatched))


def _per_lesion_dice(predicted: Components, lesions: Components, shared: np.ndarray) -> np.ndarray:
    """One Dice per ground-truth lesion: the mean over its matched pairs, 0 when nothing touches it.

    This is what the MTV-threshold analysis takes the median of; a lesion split into several predicted
    components counts once, with the mean of its pairs, as it does in the case's lesion-wise Dice.
    """
    pair_scores, g = _pair_dice(predicted, lesions, shared)
    totals = np.bincount(g, weights=pair_scores, minlength=lesions.count)
    pairs = np.bincount(g, minlength=lesions.count)
    return np.divide(totals, pairs, out=np.zeros(lesions.count), where=pairs > 0)


def suvmax_detection(prediction: np.ndarray, truth: np.ndarray, pet: np.ndarray) -> Detection:
    """TP, FP and FN by the L1DFL paper's SUVmax rule.

    Each predicted component (in label order) is matched to the ground-truth lesion it overlaps with the
    highest IoU (the lowest label on ties). It is a TP if it contains that lesion's SUVmax voxel and the
    lesion has not been used by an earlier component; otherwise, and when it touches no lesion, an FP.
    FN = lesions never detected.
    """
    _check(prediction, truth, pet)
    predicted, lesions = Components.of(prediction), Components.of(truth)
    return _detection(predicted, lesions, shared(predicted, lesions), pet)


def lesion_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """The L1DFL paper's lesion-wise Dice of one case; NaN when the ground truth has no lesion.

    Ground-truth and predicted components sharing any voxel are matched; each matched pair scores
    2|g and p| / (|g| + |p|), each ground-truth lesion without a match scores 0; the case's value is the mean
    of all those scores.
    """
    _check(prediction, truth)
    predicted, lesions = Components.of(prediction), Components.of(truth)
    return _lesion_dice(predicted, lesions, shared(predicted, lesions))


def dmax_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest distance (mm) between the centres of two voxels of `mask`: 0 for one voxel, NaN when empty.

    The farthest pair lies on the convex hull, whose vertices are surface voxels, so the pairwise distances
    are taken among the hull's vertices only (a few hundred at most), never among all n voxels.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {mask.ndim}-D mask")
    where = np.argwhere(mask)
    if where.shape[0] == 0:
        return math.nan
    low = where.min(axis=0)
    box = tuple(slice(a, b + 1) for a, b in zip(low, where.max(axis=0), strict=True))
    inside = mask[box]  # erosion treats outside the array as background, so cropping changes nothing
    surface = inside & ~scipy.ndimage.binary_erosion(inside)
    points = (np.argwhere(surface) + low).astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    if points.shape[0] > mask.ndim + 1:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # all points in one plane or on one line: keep the surface points
            points = _extremes_of_flat_set(points)
    return _largest_pairwise_distance(points)


def _extremes_of_flat_set(points: np.ndarray) -> np.ndarray:
    """Hull vertices of a planar or collinear point set, found in its own lower-dimensional frame."""
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-9 * max(singular[0], 1.0)).sum())
    if rank <= 1:
        along = centred @ axes[0]
        return points[[int(np.argmin(along)), int(np.argmax(along))]]
    flat = centred @ axes[:rank].T
    try:
        return points[ConvexHull(flat).vertices]
    except QhullError:
        return points


def _largest_pairwise_distance(points: np.ndarray) -> float:
    best = 0.0
    for start in range(0, points.shape[0], 512):  # blocks keep memory at 512 x n
        block = points[start : start + 512]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(squared.max()))
    return math.sqrt(best)


def _lesion_stats(lesions: Components, pet: np.ndarray, spacing: Sequence[float]) -> LesionStats:
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    flat = lesions.labels.ravel()
    values = np.asarray(pet).ravel()
    sums = np.bincount(flat, weights=values, minlength=lesions.count + 1)[1:]
    peaks = peak_voxels(lesions.labels, lesions.count, pet)[1:]
    sizes = lesions.sizes[1:]
    return LesionStats(
        mtv_ml=sizes * voxel_ml,
        suvmax=values[peaks].astype(np.float64) if lesions.count else np.zeros(0),
        suvmean=sums / np.maximum(sizes, 1),
        dmax_mm=dmax_mm(lesions.labels > 0, spacing) if lesions.count else math.nan,
    )


def lesion_stats(mask: np.ndarray, pet: np.ndarray, spacing: Sequence[float]) -> LesionStats:
    """MTV, SUVmax and SUVmean of each component of `mask`, and the case's Dmax (mm)."""
    _check(mask, pet)
    return _lesion_stats(Components.of(mask), pet, spacing)


@dataclass(frozen=True)
class CaseEvaluation:
    """Everything the evaluation reports for one case; `lesions` (of the ground truth) needs a PET."""

    scores: CaseScores
    lesion_count: int
    detection: Detection | None
    lesion_dice: float
    lesions: LesionStats | None
    per_lesion_dice: np.ndarray  # one entry per ground-truth lesion, in label order


def evaluate_case(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], pet: np.ndarray | None = None
) -> CaseEvaluation:
    """autoPET case metrics and the L1DFL paper's lesion metrics from ONE labelling of each mask.

    Dice, FPV and FNV are `petseg.evaluation.metrics.case_scores` on the same labellings; the SUVmax detection
    and the lesion statistics need `pet`.
    """
    _check(prediction, truth, *([pet] if pet is not None else []))
    predicted, lesions = Components.of(prediction), Components.of(truth)
    overlap = shared(predicted, lesions)
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    return CaseEvaluation(
        scores=scores_from(predicted, lesions, overlap, voxel_ml),
        lesion_count=lesions.count,
        detection=_detection(predicted, lesions, overlap, pet) if pet is not None else None,
        lesion_dice=_lesion_dice(predicted, lesions, overlap),
        lesions=_lesion_stats(lesions, pet, spacing) if pet is not None else None,
        per_lesion_dice=_per_lesion_dice(predicted, lesions, overlap),
    )
