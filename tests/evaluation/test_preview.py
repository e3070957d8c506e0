import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.evaluation.preview import (
    BOTH_RGB,
    MASK_OPACITY,
    MIN_HEIGHT_PX,
    PREDICTION_RGB,
    TRUTH_RGB,
    coronal_mip,
    outline_panel,
    preview_panels,
    preview_title,
    write_preview,
)
from petseg.synthetic import make_case

SHARED_GRIDS = Path(__file__).resolve().parents[3] / "shared" / "data" / "autopet3-grids.csv"


def tint(colour) -> np.ndarray:
    """The exact pixel a mask colour gives over white (SUV 0)."""
    return ((1 - MASK_OPACITY) * 255.0 + MASK_OPACITY * np.asarray(colour, dtype=float)).astype(np.uint8)


def count(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == tint(colour), axis=-1).sum())


def test_preview_colours_truth_prediction_and_overlap():
    phantom = make_case(seed=4, index=0, tracer="fdg", size="tiny", grid="fdg-400", lesion_free=False)
    blank = phantom.pet * 0.0  # white background: every mask pixel has one exact colour
    truth = phantom.label
    nothing = truth * 0

    (_, left), (_, right) = preview_panels(blank, nothing, truth)
    assert left.shape[0] >= MIN_HEIGHT_PX
    lesion_pixels = count(left, TRUTH_RGB)
    assert lesion_pixels > 0
    assert count(right, TRUTH_RGB) == lesion_pixels  # every lesion missed: red on the right too
    assert count(left, PREDICTION_RGB) + count(right, PREDICTION_RGB) == 0

    (_, left), (_, right) = preview_panels(blank, truth, truth)
    assert count(right, BOTH_RGB) == lesion_pixels  # perfect: all purple
    assert count(right, TRUTH_RGB) == 0
    assert count(right, PREDICTION_RGB) == 0

    (_, left), (_, right) = preview_panels(blank, truth, nothing)
    assert count(left, TRUTH_RGB) == 0  # a negative case
    assert count(right, PREDICTION_RGB) == lesion_pixels  # every predicted voxel a false positive: blue


def test_preview_without_truth_has_one_panel(tmp_path):
    phantom = make_case(seed=4, index=0, tracer="psma", size="tiny", grid="psma-168", lesion_free=False)
    assert [c for c, _ in preview_panels(phantom.pet, phantom.label, None)] == ["prediction"]
    one = write_preview(phantom.pet, phantom.label, None, tmp_path / "one.png", title="case · PSMA · m")
    two = write_preview(phantom.pet, phantom.label, phantom.label, tmp_path / "two.png")
    width_one = sitk.ReadImage(str(one)).GetSize()[0]
    width_two = sitk.ReadImage(str(two)).GetSize()[0]
    assert width_two > 1.5 * width_one
    assert not list(tmp_path.glob(".*"))  # written atomically: no staging file left


def test_preview_title_names_case_tracer_and_model():
    assert preview_title("fdg_1", "petseg-demo", "fdg") == "fdg_1 · FDG · petseg-demo"
    assert preview_title("case 7", "m") == "case 7 · m"


# ------------------------------------------------------- laterality: the anterior view, R on the left


def _directions() -> dict[str, tuple[float, ...]]:
    """Every direction of the autoPET headers (from the shared header table where present), and the other
    axis-aligned ones a scanner or a converter may write."""
    found = {"autoPET (1, -1, 1)": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)}
    if SHARED_GRIDS.is_file():
        with SHARED_GRIDS.open() as handle:
            for row in csv.DictReader(handle):
                matrix = tuple(float(row[f"dir_{r}{c}"]) for r in range(3) for c in range(3))
                found.setdefault(f"autoPET {matrix}", matrix)
    found["identity (LPS)"] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    found["RAS"] = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    found["x flipped"] = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    found["feet first"] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    found["x and y swapped"] = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return found


def _hot_voxel_image(direction: tuple[float, ...], side: str, head: bool) -> sitk.Image:
    """A 40 x 30 x 50 grid with one hot voxel near the patient's `side` ("right": the most negative
    physical x in ITK's LPS frame) and near the head (`head`) or the feet."""
    image = sitk.Image([40, 30, 50], sitk.sitkFloat32)
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetDirection(direction)
    image.SetOrigin((0.0, 0.0, 0.0))
    corners = [
        image.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 39) for j in (0, 29) for k in (0, 49)
    ]
    low, high = np.min(corners, axis=0), np.max(corners, axis=0)
    centre = (low + high) / 2
    point = centre.copy()
    point[0] = low[0] + 6.0 if side == "right" else high[0] - 6.0  # LPS: x grows towards the left
    point[2] = high[2] - 9.0 if head else low[2] + 9.0  # z grows towards the head
    index = image.TransformPhysicalPointToIndex(tuple(point))
    image[index] = 20.0
    return image


@pytest.mark.parametrize("name", list(_directions()))
@pytest.mark.parametrize("side", ["right", "left"])
def test_the_patients_right_is_on_the_viewers_left_head_up(name, side):
    direction = _directions()[name]
    for head in (True, False):
        mip, _ = coronal_mip(_hot_voxel_image(direction, side, head))
        row, column = np.unravel_index(np.argmax(mip), mip.shape)
        on_viewers_left = column < mip.shape[1] / 2
        assert on_viewers_left == (side == "right"), (name, side, column, mip.shape)
        assert (row < mip.shape[0] / 2) == head, (name, head, row, mip.shape)


def test_the_written_preview_and_the_report_panel_keep_the_side(tmp_path):
    """The whole picture, not only the projection: the hot voxel of the patient's right is drawn on the
    viewer's left of the panel in the PNG, and in the report's outline panel."""
    image = _hot_voxel_image(_directions()["autoPET (1, -1, 1)"], "right", head=True)
    mask = sitk.Cast(image > 10, sitk.sitkUInt8)
    (_, panel), (_, compared) = preview_panels(image, mask, mask)
    for rgb in (panel, compared):
        _, xs = np.nonzero(np.any(rgb != 255, axis=-1))
        assert xs.mean() < rgb.shape[1] / 2
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(write_preview(image, mask, None, tmp_path / "p.png"))))
    coloured = np.abs(png[..., 2].astype(int) - png[..., 0].astype(int)) > 100  # the blue prediction tint
    _, xs = np.nonzero(coloured)
    assert xs.size > 0
    # The one panel spans from the left margin to the scale; the mark sits in its left half.
    assert xs.mean() < png.shape[1] * 0.45
    outline = outline_panel(image, sitk.GetArrayFromImage(mask).astype(bool), np.zeros((50, 30, 40), bool))
    _, xs = np.nonzero(np.any(outline != outline[0, -1], axis=-1))
    assert xs.mean() < outline.shape[1] / 2
