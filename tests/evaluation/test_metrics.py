"""autoPET metrics against a literal, loop-per-component re-implementation of the official script."""

import math

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from petseg.evaluation.metrics import case_scores


def official(prediction: np.ndarray, truth: np.ndarray, voxel_ml: float):
    """As the autoPET III evaluation computes them: one full-volume np.isin per component."""

    def untouched(mask, other):
        labels = cc3d.connected_components(mask, connectivity=18)
        total = 0
        for index in range(1, labels.max() + 1):
            component = np.isin(labels, index)
            if (component * other).sum() == 0:
                total += component.sum()
        return total

    if truth.sum() == 0:
        return math.nan, untouched(prediction, truth) * voxel_ml, math.nan
    dice = 2 * (prediction * truth).sum() / (prediction.sum() + truth.sum())
    return dice, untouched(prediction, truth) * voxel_ml, untouched(truth, prediction) * voxel_ml


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_hand_built_case():
    truth = np.zeros((10, 10, 10), np.uint8)
    prediction = np.zeros_like(truth)
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels, hit
    truth[6:8, 6:8, 6:8] = 1  # 8 voxels, missed
    prediction[2:4, 1:3, 1:3] = 1  # 8 voxels, 4 overlapping the first lesion
    prediction[0, 9, 9] = 1  # 1 voxel touching nothing
    scores = case_scores(prediction, truth, voxel_ml=0.5)
    assert scores.dice == pytest.approx(2 * 4 / (9 + 16))
    assert scores.fpv_ml == pytest.approx(0.5)
    assert scores.fnv_ml == pytest.approx(4.0)


def test_nan_rules_for_lesion_free_ground_truth():
    empty = np.zeros((5, 5, 5), bool)
    predicted = empty.copy()
    predicted[2, 2, 2] = True
    scores = case_scores(predicted, empty, voxel_ml=2.0)
    assert scores.lesion_free
    assert math.isnan(scores.dice)
    assert math.isnan(scores.fnv_ml)
    assert scores.fpv_ml == 2.0
    assert case_scores(empty, empty, 1.0).fpv_ml == 0.0


def test_18_connectivity_joins_edges_but_not_corners():
    truth = np.zeros((4, 4, 4), bool)
    truth[0, 0, 0] = True
    prediction = np.zeros_like(truth)
    prediction[0, 0, 0] = True
    prediction[1, 1, 0] = True  # edge neighbour: same component, touches the truth
    prediction[2, 2, 1] = True  # corner neighbour of (1,1,0): its own component, touches nothing
    assert case_scores(prediction, truth, 1.0).fpv_ml == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_agree_with_the_official_loop(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((24, 20, 16)) > 0.93
    prediction = rng.random((24, 20, 16)) > (0.9 if seed % 2 else 0.97)
    if seed == 5:
        truth[:] = False
    got = case_scores(prediction, truth, voxel_ml=0.0124)
    want = official(prediction.astype(np.uint8), truth.astype(np.uint8), 0.0124)
    assert same(got.dice, want[0])
    assert same(got.fpv_ml, want[1])
    assert same(got.fnv_ml, want[2])


def test_real_autopet_masks_agree_with_the_official_loop(shared_data):
    folder = shared_data / "autopet3-psma-sample"
    truth_image = sitk.ReadImage(str(folder / "gt.nii.gz"))
    truth = sitk.GetArrayFromImage(truth_image).astype(np.uint8)
    voxel_ml = float(np.prod(truth_image.GetSpacing())) / 1000.0
    for name in ("pred-nnunet-baseline.nii.gz", "pred-datacentric-baseline.nii.gz"):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))).astype(np.uint8)
        got = case_scores(prediction, truth, voxel_ml)
        want = official(prediction, truth, voxel_ml)
        assert same(got.dice, want[0])
        assert same(got.fpv_ml, want[1])
        assert same(got.fnv_ml, want[2])
    # The data README states these Dice values for the two baselines.
    nnunet = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pred-nnunet-baseline.nii.gz")))
    assert case_scores(nnunet, truth, voxel_ml).dice == pytest.approx(0.6967, abs=5e-5)
