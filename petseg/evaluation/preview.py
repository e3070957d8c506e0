"""A coronal maximum-intensity projection of the PET with lesion masks drawn on it, as a PNG.

Nuclear-medicine readers look at PET as a MIP first; a glance at one shows whether a mask sits on the
hot lesions or on the bladder. Written with SimpleITK's PNG writer, so no plotting library is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from petseg.io import write_image

TRUTH_RGB = (220, 30, 30)
PREDICTION_RGB = (30, 90, 230)
BOTH_RGB = (150, 40, 170)
SUV_WHITE_TO_BLACK = 10.0  # display window: SUV 0 is white, SUV 10 and above black
MASK_OPACITY = 0.55  # masks are tinted, so the uptake under them stays visible
MIN_HEIGHT_PX = 480  # small (phantom) volumes are enlarged to at least this height


def _coronal_mip(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """MIP over the anterior-posterior axis, head up; returns (rows, columns) and their spacing."""
    lps = sitk.DICOMOrient(image, "LPS")  # index axes towards Left, Posterior, Superior
    array = sitk.GetArrayViewFromImage(lps)  # (z: superior, y: posterior, x: left)
    mip = array.max(axis=1)[::-1, ::-1]  # head up, patient's right on the viewer's left
    spacing = lps.GetSpacing()
    return np.ascontiguousarray(mip, dtype=np.float32), (spacing[2], spacing[0])


def _square_pixels(panel: np.ndarray, spacing: tuple[float, float], nearest: bool) -> np.ndarray:
    """Resample a 2D panel so that one pixel is as tall as it is wide."""
    image = sitk.GetImageFromArray(panel)
    image.SetSpacing((spacing[1], spacing[0]))  # (columns, rows)
    pixel = min(spacing)
    size = [round(panel.shape[1] * spacing[1] / pixel), round(panel.shape[0] * spacing[0] / pixel)]
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    square = sitk.Resample(image, size, sitk.Transform(), interpolator, (0.0, 0.0), (pixel, pixel))
    return sitk.GetArrayFromImage(square)


def _panel(pet_mip: np.ndarray, masks: dict[tuple[int, int, int], np.ndarray]) -> np.ndarray:
    gray = 255.0 * (1.0 - np.clip(pet_mip / SUV_WHITE_TO_BLACK, 0.0, 1.0))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for colour, mask in masks.items():
        rgb[mask] = (1.0 - MASK_OPACITY) * rgb[mask] + MASK_OPACITY * np.asarray(colour, dtype=float)
    return rgb.astype(np.uint8)


def write_preview(pet: sitk.Image, prediction: sitk.Image, truth: sitk.Image | None, path: Path) -> Path:
    """PNG with the PET MIP and the prediction; with `truth`, a second panel shows the ground truth.

    Colours: ground truth red, prediction blue, both purple.
    """
    pet_mip, spacing = _coronal_mip(pet)
    pet_mip = _square_pixels(pet_mip, spacing, nearest=False)
    predicted = _square_pixels(_coronal_mip(prediction)[0], spacing, nearest=True) > 0
    panels = []
    if truth is not None:
        true = _square_pixels(_coronal_mip(truth)[0], spacing, nearest=True) > 0
        panels.append(_panel(pet_mip, {TRUTH_RGB: true}))
        overlay = {
            PREDICTION_RGB: predicted & ~true,
            BOTH_RGB: predicted & true,
            TRUTH_RGB: true & ~predicted,
        }
        panels.append(_panel(pet_mip, overlay))
    else:
        panels.append(_panel(pet_mip, {PREDICTION_RGB: predicted}))
    gap = np.full((pet_mip.shape[0], 8, 3), 255, dtype=np.uint8)
    joined = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    factor = -(-MIN_HEIGHT_PX // joined.shape[0])  # ceil: whole pixels keep masks crisp
    if factor > 1:
        joined = np.repeat(np.repeat(joined, factor, axis=0), factor, axis=1)
    return write_image(sitk.GetImageFromArray(joined, isVector=True), Path(path), compress=False)


# Outline colours of the evaluation report: found and missed lesions, matched and false-positive predictions.
FOUND_RGB = (0, 150, 60)
MISSED_RGB = (255, 140, 0)
MATCHED_RGB = (30, 90, 230)
FALSE_POSITIVE_RGB = (220, 30, 30)
OUTLINE_PX = 2


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~scipy.ndimage.binary_erosion(mask, iterations=OUTLINE_PX)


def outline_panel(pet: sitk.Image, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Coronal PET MIP (RGB uint8) with outlines: lesions found (green) and missed (orange), predicted
    components touching a lesion (blue) and false positives touching none (red).

    `truth` and `prediction` are (z, y, x) boolean arrays on the PET's grid. Components are 18-connected,
    as in the metrics; outlines are drawn on the projections after enlarging, so they stay thin.
    """
    from petseg.evaluation.metrics.components import Components, shared

    lesions, predicted = Components.of(truth), Components.of(prediction)
    overlap = shared(predicted, lesions)
    found = np.concatenate([[False], overlap.any(axis=0)])
    matched = np.concatenate([[False], overlap.any(axis=1)])
    categories = {
        MATCHED_RGB: matched[predicted.labels],
        FOUND_RGB: found[lesions.labels],
        MISSED_RGB: (lesions.labels > 0) & ~found[lesions.labels],
        FALSE_POSITIVE_RGB: (predicted.labels > 0) & ~matched[predicted.labels],
    }
    pet_mip, spacing = _coronal_mip(pet)
    pet_mip = _square_pixels(pet_mip, spacing, nearest=False)
    factor = max(1, -(-MIN_HEIGHT_PX // pet_mip.shape[0]))
    gray = 255.0 * (1.0 - np.clip(pet_mip / SUV_WHITE_TO_BLACK, 0.0, 1.0))
    rgb = np.repeat(np.repeat(np.repeat(gray[..., None], 3, axis=2), factor, axis=0), factor, axis=1)
    for colour, mask in categories.items():
        if not mask.any():
            continue
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(pet)
        projection = _square_pixels(_coronal_mip(image)[0], spacing, nearest=True) > 0
        projection = np.repeat(np.repeat(projection, factor, axis=0), factor, axis=1)
        rgb[_outline(projection)] = colour
    return rgb.astype(np.uint8)
