"""Per-lesion and per-case figures: MTV, TLG, SUVmax, SUVmean against the evaluation package's definitions,
the 26-connectivity, centroids in patient coordinates, Dmax, and the CSV and JSON they are written as."""

from __future__ import annotations

import csv
import io
import itertools
import math

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.evaluation.metrics import lesion_stats
from petseg.quantify import LESION_COLUMNS, lesions_csv, quantify, summary_record

SPACING = (2.04, 2.5, 3.0)  # x, y, z (mm)
ORIGIN = (-350.0, 120.0, -800.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # autoPET's PET direction


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mask, PET) (z, y, x): three lesions apart from each other, on a noisy background."""
    rng = np.random.default_rng(seed)
    pet = rng.gamma(2.0, 0.5, size=(16, 20, 18)).astype(np.float32)
    mask = np.zeros(pet.shape, np.uint8)
    mask[2:5, 3:7, 3:6] = 1
    mask[9:12, 12:15, 10:16] = 1
    mask[14, 2, 15] = 1
    pet[mask > 0] += rng.uniform(3.0, 9.0, size=int(mask.sum())).astype(np.float32)
    return mask, pet


def test_mtv_tlg_suvmax_suvmean_match_the_evaluation_definitions() -> None:
    mask, pet = _case()
    report = quantify(_image(mask), _image(pet))
    reference = lesion_stats(mask, pet, SPACING[::-1])  # the evaluation's (18-connected) figures
    assert report.count == reference.count == 3
    np.testing.assert_allclose([x.mtv_ml for x in report.lesions], reference.mtv_ml, rtol=1e-12)
    np.testing.assert_allclose([x.suvmax for x in report.lesions], reference.suvmax, rtol=1e-6)
    np.testing.assert_allclose([x.suvmean for x in report.lesions], reference.suvmean, rtol=1e-6)
    np.testing.assert_allclose(
        [x.tlg for x in report.lesions], reference.mtv_ml * reference.suvmean, rtol=1e-6
    )
    assert report.tmtv_ml == pytest.approx(reference.tmtv_ml, rel=1e-12)
    assert report.total_tlg == pytest.approx(reference.tlg, rel=1e-6)


def test_figures_from_their_definitions() -> None:
    mask, pet = _case(seed=3)
    report = quantify(_image(mask), _image(pet))
    voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000.0
    boxes = [(slice(2, 5), slice(3, 7), slice(3, 6)), (slice(9, 12), slice(12, 15), slice(10, 16))]
    for lesion, box in zip(report.lesions, boxes, strict=False):
        values = pet[box].astype(np.float64)
        assert lesion.voxels == values.size
        assert lesion.mtv_ml == pytest.approx(values.size * voxel_ml)
        assert lesion.suvmax == pytest.approx(values.max())
        assert lesion.suvmean == pytest.approx(values.mean())
        assert lesion.tlg == pytest.approx(values.mean() * values.size * voxel_ml)
        # The centroid: the box's centre in index space, mapped by origin + direction x (index x spacing).
        centre = np.array([(s.start + s.stop - 1) / 2 for s in box][::-1])  # x, y, z
        expected = np.asarray(ORIGIN) + np.reshape(DIRECTION, (3, 3)) @ (centre * np.asarray(SPACING))
        np.testing.assert_allclose(lesion.centroid_mm, expected, atol=1e-9)
    assert report.tmtv_ml == pytest.approx(int(mask.sum()) * voxel_ml)
    assert report.total_tlg == pytest.approx(float(pet[mask > 0].astype(np.float64).sum()) * voxel_ml)
    # Dmax: the largest distance between two centroids.
    pairs = itertools.combinations([x.centroid_mm for x in report.lesions], 2)
    assert report.dmax_mm == pytest.approx(max(math.dist(a, b) for a, b in pairs))


def test_lesions_are_26_connected() -> None:
    """Two voxels that touch only at a corner are one lesion (the evaluation's 18-connectivity splits them);
    the totals do not depend on it."""
    pet = np.full((5, 5, 5), 1.0, np.float32)
    mask = np.zeros(pet.shape, np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1
    pet[1, 1, 1], pet[2, 2, 2] = 4.0, 6.0
    report = quantify(_image(mask), _image(pet))
    assert report.count == 1
    assert report.lesions[0].voxels == 2
    assert report.lesions[0].suvmean == pytest.approx(5.0)
    reference = lesion_stats(mask, pet, SPACING[::-1])
    assert reference.count == 2
    assert report.tmtv_ml == pytest.approx(reference.tmtv_ml)
    assert report.total_tlg == pytest.approx(reference.tlg)
    assert report.dmax_mm is None  # fewer than two lesions


def test_an_empty_mask_has_no_lesions() -> None:
    _, pet = _case()
    report = quantify(_image(np.zeros(pet.shape, np.uint8)), _image(pet))
    assert (report.count, report.tmtv_ml, report.total_tlg, report.dmax_mm) == (0, 0.0, 0.0, None)
    assert lesions_csv(report).splitlines() == [",".join(LESION_COLUMNS)]


def test_a_mask_off_the_pet_grid_is_refused() -> None:
    mask, pet = _case()
    moved = _image(mask)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="grid"):
        quantify(moved, _image(pet))


def test_the_csv_and_the_summary_hold_the_figures() -> None:
    mask, pet = _case(seed=5)
    report = quantify(_image(mask), _image(pet))
    rows = list(csv.DictReader(io.StringIO(lesions_csv(report))))
    assert len(rows) == report.count
    for row, lesion in zip(rows, report.lesions, strict=True):
        assert int(row["lesion"]) == lesion.number
        assert float(row["suvpeak"]) == pytest.approx(lesion.suvpeak, rel=1e-9)
        assert float(row["tlg"]) == pytest.approx(lesion.tlg, rel=1e-9)
        centroid = (float(row["centroid_x_mm"]), float(row["centroid_y_mm"]), float(row["centroid_z_mm"]))
        np.testing.assert_allclose(centroid, lesion.centroid_mm, rtol=1e-9)
    summary = summary_record(report, model="m")
    assert summary["lesion_count"] == 3
    assert summary["tmtv_ml"] == pytest.approx(sum(float(r["mtv_ml"]) for r in rows), rel=1e-9)
    assert summary["total_tlg"] == pytest.approx(sum(float(r["tlg"]) for r in rows), rel=1e-9)
    assert summary["dmax_mm"] == report.dmax_mm
    assert summary["model"] == "m"
