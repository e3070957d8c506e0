import numpy as np
import SimpleITK as sitk

from petseg.evaluation.preview import (
    BOTH_RGB,
    MASK_OPACITY,
    MIN_HEIGHT_PX,
    PREDICTION_RGB,
    TRUTH_RGB,
    write_preview,
)
from petseg.synthetic import make_case


def tint(colour) -> np.ndarray:
    """The exact pixel a mask colour gives over white (SUV 0)."""
    return ((1 - MASK_OPACITY) * 255.0 + MASK_OPACITY * np.asarray(colour, dtype=float)).astype(np.uint8)


def count(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == tint(colour), axis=-1).sum())


def panels(path):
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    half = rgb.shape[1] // 2
    return rgb, rgb[:, :half], rgb[:, half:]


def test_preview_colours_truth_prediction_and_overlap(tmp_path):
    phantom = make_case(seed=4, index=0, tracer="fdg", size="tiny", grid="fdg-400", lesion_free=False)
    blank = phantom.pet * 0.0  # white background: every mask pixel has one exact colour
    truth = phantom.label
    nothing = truth * 0

    rgb, left, right = panels(write_preview(blank, nothing, truth, tmp_path / "missed.png"))
    assert rgb.shape[0] >= MIN_HEIGHT_PX
    lesion_pixels = count(left, TRUTH_RGB)
    assert lesion_pixels > 0
    assert count(right, TRUTH_RGB) == lesion_pixels  # every lesion missed: red on the right too
    assert count(rgb, PREDICTION_RGB) == 0

    _, left, right = panels(write_preview(blank, truth, truth, tmp_path / "perfect.png"))
    assert count(right, BOTH_RGB) == lesion_pixels  # perfect: all purple
    assert count(right, TRUTH_RGB) == 0
    assert count(right, PREDICTION_RGB) == 0

    _, left, right = panels(write_preview(blank, truth, nothing, tmp_path / "false.png"))
    assert count(left, TRUTH_RGB) == 0  # a negative case
    assert count(right, PREDICTION_RGB) == lesion_pixels  # every predicted voxel a false positive: blue


def test_preview_without_truth_has_one_panel(tmp_path):
    phantom = make_case(seed=4, index=0, tracer="psma", size="tiny", grid="psma-168", lesion_free=False)
    one = write_preview(phantom.pet, phantom.label, None, tmp_path / "one.png")
    two = write_preview(phantom.pet, phantom.label, phantom.label, tmp_path / "two.png")
    width_one = sitk.ReadImage(str(one)).GetSize()[0]
    width_two = sitk.ReadImage(str(two)).GetSize()[0]
    assert width_two > 1.9 * width_one
