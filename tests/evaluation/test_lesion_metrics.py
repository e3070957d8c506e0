"""Paper 000's lesion-level metrics: hand-built cases, invariants, and a loop-per-component reference."""

from __future__ import annotations

import itertools
import math

import cc3d
import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from petseg.evaluation.metrics import (
    case_scores,
    dice,
    dmax_mm,
    evaluate_case,
    lesion_dice,
    lesion_stats,
    suvmax_detection,
)

# ------------------------------------------------------------------ reference: one component at a time


def components(mask: np.ndarray) -> list[np.ndarray]:
    labels = cc3d.connected_components(mask.astype(bool), connectivity=18)
    return [labels == k for k in range(1, int(labels.max()) + 1)]


def reference_detection(prediction, truth, pet) -> tuple[int, int, int]:
    """The SUVmax rule written out literally, with a full-volume scan per component."""
    lesions = components(truth)
    peaks = []
    for lesion in lesions:
        inside = np.flatnonzero(lesion)
        peaks.append(inside[int(np.argmax(pet.ravel()[inside]))])
    used = [False] * len(lesions)
    tp = fp = 0
    for component in components(prediction):
        best, best_iou = None, 0.0
        for k, lesion in enumerate(lesions):
            inter = int((component & lesion).sum())
            if inter == 0:
                continue
            iou = inter / int((component | lesion).sum())
            if iou > best_iou:
                best, best_iou = k, iou
        if best is not None and not used[best] and component.ravel()[peaks[best]]:
            used[best] = True
            tp += 1
        else:
            fp += 1
    return tp, fp, len(lesions) - sum(used)


def reference_lesion_dice(prediction, truth) -> float:
    lesions, predicted = components(truth), components(prediction)
    if not lesions:
        return math.nan
    scores = []
    for lesion in lesions:
        matched = [p for p in predicted if (p & lesion).any()]
        if not matched:
            scores.append(0.0)
        for p in matched:
            scores.append(2 * (p & lesion).sum() / (p.sum() + lesion.sum()))
    return float(np.mean(scores))


def reference_per_lesion_dice(prediction, truth) -> list[float]:
    """Each lesion: the mean Dice of the predicted components touching it, 0 when none does."""
    scores = []
    for lesion in components(truth):
        matched = [p for p in components(prediction) if (p & lesion).any()]
        pairs = [2 * (p & lesion).sum() / (p.sum() + lesion.sum()) for p in matched]
        scores.append(float(np.mean(pairs)) if pairs else 0.0)
    return scores


def reference_dmax(mask, spacing) -> float:
    points = np.argwhere(mask) * np.asarray(spacing, dtype=float)
    if len(points) == 0:
        return math.nan
    return (
        max(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(points, 2))
        if len(points) > 1
        else 0.0
    )


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ hand-built cases


def two_lesions() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1:3, 1:3, 1:3] = 1  # lesion A, 8 voxels
    truth[6:8, 6:8, 6:8] = 1  # lesion B, 8 voxels
    pet = np.ones(truth.shape)
    pet[1:3, 1:3, 1:3] = 4.0
    pet[2, 2, 2] = 9.0  # A's SUVmax voxel
    pet[6:8, 6:8, 6:8] = 2.0
    pet[6, 6, 6] = 5.0  # B's SUVmax voxel
    return truth, pet


def test_detection_hand_built():
    truth, pet = two_lesions()
    prediction = np.zeros_like(truth)
    prediction[2:4, 1:3, 1:3] = 1  # half of A, with A's SUVmax voxel: TP
    prediction[7:9, 7:9, 7:9] = 1  # overlaps B but misses B's SUVmax voxel: FP, and B stays FN
    prediction[0, 9, 9] = 1  # touches nothing: FP
    found = suvmax_detection(prediction, truth, pet)
    assert (found.tp, found.fp, found.fn) == (1, 2, 1)
    assert found.f1 == pytest.approx(2 / (2 + 2 + 1))


def test_detection_counts_only_the_component_holding_the_suvmax_voxel():
    truth, pet = two_lesions()
    prediction = np.zeros_like(truth)
    prediction[1, 1, 1] = 1  # inside A, but not A's SUVmax voxel: FP
    prediction[2, 2, 2] = 1  # A's SUVmax voxel; only a corner joins it to (1, 1, 1): a separate component
    found = suvmax_detection(prediction, truth, pet)
    assert (found.tp, found.fp, found.fn) == (1, 1, 1)


def test_detection_matches_a_bridging_prediction_to_its_best_iou_lesion():
    truth, pet = two_lesions()
    prediction = np.zeros_like(truth)
    prediction[6:8, 6:8, 6:8] = 1  # all of B
    # A thin 18-connected bridge from A's SUVmax voxel to B: one component of 16 voxels holding both peaks.
    for z, y, x in [(2, 2, 2), (3, 3, 2), (4, 4, 2), (5, 5, 2), (6, 6, 2), (6, 6, 3), (6, 6, 4), (6, 6, 5)]:
        prediction[z, y, x] = 1
    found = suvmax_detection(prediction, truth, pet)
    # IoU with B (8 / 16) beats IoU with A (1 / 23): B is the TP, A stays undetected.
    assert (found.tp, found.fp, found.fn) == (1, 0, 1)


def test_detection_nan_and_zero_rules():
    empty = np.zeros((5, 5, 5), np.uint8)
    pet = np.ones(empty.shape)
    nothing = suvmax_detection(empty, empty, pet)
    assert (nothing.tp, nothing.fp, nothing.fn) == (0, 0, 0)
    assert math.isnan(nothing.f1)
    prediction = empty.copy()
    prediction[2, 2, 2] = 1
    false_alarm = suvmax_detection(prediction, empty, pet)
    assert (false_alarm.tp, false_alarm.fp, false_alarm.fn) == (0, 1, 0)
    assert false_alarm.f1 == 0.0
    truth = prediction.copy()
    missed = suvmax_detection(empty, truth, pet)
    assert (missed.tp, missed.fp, missed.fn) == (0, 0, 1)


def test_lesion_dice_hand_built():
    truth, _ = two_lesions()
    prediction = np.zeros_like(truth)
    prediction[2:4, 1:3, 1:3] = 1  # A: 4 of 8 shared -> 2 * 4 / 16 = 0.5; B unmatched -> 0
    assert lesion_dice(prediction, truth) == pytest.approx(0.25)
    prediction[6:8, 6:8, 6:8] = 1  # B exact -> 1
    assert lesion_dice(prediction, truth) == pytest.approx(0.75)
    prediction[6:8, 6:8, 6:8] = 0
    prediction[6, 6, 6] = 1  # B touched by two components (corners are not 18-connected): 2*1/(8+1)
    prediction[7:9, 7, 7] = 1  # and 2*1/(8+2), its second voxel outside B
    assert lesion_dice(prediction, truth) == pytest.approx((0.5 + 2 / 9 + 2 / 10) / 3)
    per_lesion = evaluate_case(prediction, truth, (1, 1, 1)).per_lesion_dice
    np.testing.assert_allclose(per_lesion, [0.5, (2 / 9 + 2 / 10) / 2])
    assert math.isnan(lesion_dice(prediction, np.zeros_like(truth)))
    assert lesion_dice(np.zeros_like(truth), truth) == 0.0


def test_lesion_stats_hand_built():
    truth, pet = two_lesions()
    spacing = (2.0, 4.0, 4.0)  # z, y, x: 32 microlitre voxels
    stats = lesion_stats(truth, pet, spacing)
    assert stats.count == 2
    np.testing.assert_allclose(stats.mtv_ml, [8 * 0.032, 8 * 0.032])
    np.testing.assert_allclose(stats.suvmax, [9.0, 5.0])
    np.testing.assert_allclose(stats.suvmean, [(7 * 4 + 9) / 8, (7 * 2 + 5) / 8])
    assert stats.tmtv_ml == pytest.approx(16 * 0.032)
    assert stats.tlg == pytest.approx(0.256 * (37 / 8) + 0.256 * (19 / 8))
    # Farthest voxel centres: (1, 1, 1) and (7, 7, 7) -> 6 steps on every axis.
    assert stats.dmax_mm == pytest.approx(math.sqrt((6 * 2) ** 2 + (6 * 4) ** 2 + (6 * 4) ** 2))


def test_dmax_single_voxel_line_plane_and_empty():
    mask = np.zeros((6, 7, 8), bool)
    assert math.isnan(dmax_mm(mask, (1, 1, 1)))
    mask[3, 3, 3] = True
    assert dmax_mm(mask, (2.0, 3.0, 5.0)) == 0.0
    line = np.zeros((6, 7, 8), bool)
    line[1, 2, 0:8] = True  # collinear: no 3-D hull
    assert dmax_mm(line, (1.0, 1.0, 2.5)) == pytest.approx(7 * 2.5)
    plane = np.zeros((6, 7, 8), bool)
    plane[2, 1:6, 2:7] = True  # coplanar
    assert dmax_mm(plane, (1.0, 2.0, 3.0)) == pytest.approx(math.hypot(4 * 2.0, 4 * 3.0))
    with pytest.raises(ValueError, match="spacing"):
        dmax_mm(plane, (1.0, 1.0))


def test_lesion_stats_of_an_empty_mask():
    stats = lesion_stats(np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4)), (1, 1, 1))
    assert stats.count == 0
    assert stats.tmtv_ml == 0.0
    assert stats.tlg == 0.0
    assert math.isnan(stats.dmax_mm)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="different shapes"):
        suvmax_detection(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), np.zeros((3, 3, 3)))


# ------------------------------------------------------------------ invariants

small_masks = arrays(np.bool_, (6, 6, 6), elements=st.booleans())
pet_values = arrays(np.float64, (6, 6, 6), elements=st.floats(0.0, 30.0, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(prediction=small_masks, truth=small_masks, pet=pet_values)
def test_detection_counts_add_up_and_match_the_reference(prediction, truth, pet):
    found = suvmax_detection(prediction, truth, pet)
    assert found.tp + found.fn == len(components(truth))
    assert found.tp + found.fp == len(components(prediction))
    assert (found.tp, found.fp, found.fn) == reference_detection(prediction, truth, pet)


@settings(max_examples=60, deadline=None)
@given(prediction=small_masks, truth=small_masks)
def test_lesion_dice_matches_the_reference_and_case_metrics_invariants(prediction, truth):
    assert same(lesion_dice(prediction, truth), reference_lesion_dice(prediction, truth))
    if prediction.any() and truth.any():
        assert dice(prediction, truth) == pytest.approx(dice(truth, prediction))  # Dice is symmetric
    subset = prediction & truth
    assert case_scores(subset, truth, 0.1).fpv_ml == 0.0  # a prediction inside the truth has no FPV


@settings(max_examples=60, deadline=None)
@given(prediction=small_masks, truth=small_masks, pet=pet_values)
def test_one_labelling_evaluation_equals_the_separate_functions(prediction, truth, pet):
    spacing = (3.0, 2.0, 2.0)
    voxel_ml = 12.0 / 1000.0
    together = evaluate_case(prediction, truth, spacing, pet)
    separate = case_scores(prediction, truth, voxel_ml)
    for got, want in zip(
        (together.scores.dice, together.scores.fpv_ml, together.scores.fnv_ml),
        (separate.dice, separate.fpv_ml, separate.fnv_ml),
        strict=True,
    ):
        assert same(got, want)
    assert together.detection == suvmax_detection(prediction, truth, pet)
    assert same(together.lesion_dice, lesion_dice(prediction, truth))
    np.testing.assert_allclose(together.per_lesion_dice, reference_per_lesion_dice(prediction, truth))
    stats = lesion_stats(truth, pet, spacing)
    np.testing.assert_array_equal(together.lesions.mtv_ml, stats.mtv_ml)
    np.testing.assert_array_equal(together.lesions.suvmean, stats.suvmean)
    assert same(together.lesions.dmax_mm, stats.dmax_mm)
    without_pet = evaluate_case(prediction, truth, spacing)
    assert without_pet.detection is None
    assert without_pet.lesions is None


@settings(max_examples=60, deadline=None)
@given(
    mask=small_masks,
    spacing=st.tuples(*[st.floats(0.5, 5.0, allow_nan=False)] * 3),
)
def test_dmax_equals_all_pairs(mask, spacing):
    assert same(dmax_mm(mask, spacing), reference_dmax(mask, spacing))


# ------------------------------------------------------------------ real autoPET masks


@pytest.mark.slow
def test_real_autopet_masks_against_the_reference(shared_data):
    folder = shared_data / "autopet3-psma-sample"
    truth_image = sitk.ReadImage(str(folder / "gt.nii.gz"))
    spacing = truth_image.GetSpacing()[::-1]
    full_truth = sitk.GetArrayFromImage(truth_image).astype(bool)
    # No PET ships with these masks: random uptake stands in for it.
    rng = np.random.default_rng(7)
    for name in ("pred-nnunet-baseline.nii.gz", "pred-datacentric-baseline.nii.gz"):
        full_prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))).astype(bool)
        # Crop to the foreground's box: no component crosses it, and the reference loop gets fast.
        where = np.argwhere(full_truth | full_prediction)
        box = tuple(slice(lo, hi + 1) for lo, hi in zip(where.min(0), where.max(0), strict=True))
        truth, prediction = full_truth[box], full_prediction[box]
        pet = rng.gamma(2.0, 2.0, truth.shape)
        found = suvmax_detection(prediction, truth, pet)
        assert (found.tp, found.fp, found.fn) == reference_detection(prediction, truth, pet)
        assert found.tp + found.fn == 112  # the README's component count of this ground truth
        assert lesion_dice(prediction, truth) == pytest.approx(
            reference_lesion_dice(prediction, truth), rel=1e-12
        )
        stats = lesion_stats(truth, pet, spacing)
        assert stats.count == 112
        for k, lesion in enumerate(components(truth)[:20]):
            assert stats.suvmax[k] == pet[lesion].max()
            assert stats.suvmean[k] == pytest.approx(pet[lesion].mean(), rel=1e-12)
            assert stats.mtv_ml[k] == pytest.approx(lesion.sum() * float(np.prod(spacing)) / 1000, rel=1e-12)
        surface = truth & ~scipy.ndimage.binary_erosion(truth)
        assert stats.dmax_mm == pytest.approx(reference_dmax_blocks(surface, spacing), rel=1e-12)


def reference_dmax_blocks(mask, spacing) -> float:
    """All pairs of the given voxels, in blocks (the surface of a real mask: a few thousand voxels)."""
    points = np.argwhere(mask) * np.asarray(spacing, dtype=float)
    best = 0.0
    for start in range(0, len(points), 256):
        block = points[start : start + 256]
        best = max(best, float(((block[:, None] - points[None]) ** 2).sum(-1).max()))
    return math.sqrt(best)


def test_metrics_benchmark_runs_and_agrees(monkeypatch, capsys):
    import bench.metrics
    from bench.__main__ import main

    monkeypatch.setattr(bench.metrics, "SHAPE_ZYX", (60, 100, 100))
    assert main(["metrics", "--lesions", "8", "--false-positives", "3", "--min-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "identical" in out
    assert "speed-up" in out
