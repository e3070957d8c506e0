"""A coronal maximum-intensity projection of the PET with lesion masks drawn on it, as a PNG.

Nuclear-medicine readers look at PET as a MIP first; a glance at one shows whether a mask sits on the
hot lesions or on the bladder. The view is the anterior one of radiology: the reader faces the patient,
head up, so the patient's right is on the viewer's left, and every panel says so with R and L markers.
The panels are composed here pixel by pixel (`preview_panels`, `outline_panel`); matplotlib only frames
them with the title, the markers, the legend and the SUV scale (`annotated_png`), one image pixel to one
figure pixel so that thin outlines stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from petseg.io import write_atomically

TRUTH_RGB = (220, 30, 30)
PREDICTION_RGB = (30, 90, 230)
BOTH_RGB = (150, 40, 170)
SUV_WHITE_TO_BLACK = 10.0  # display window: SUV 0 is white, SUV 10 and above black
MASK_OPACITY = 0.55  # masks are tinted, so the uptake under them stays visible
MIN_HEIGHT_PX = 480  # small (phantom) volumes are enlarged to at least this height


def coronal_mip(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """MIP over the anterior-posterior axis in the anterior view: head up, the patient's right on the
    viewer's left; returns (rows, columns) and their spacing in mm."""
    lps = sitk.DICOMOrient(image, "LPS")  # index axes towards Left, Posterior, Superior
    array = sitk.GetArrayViewFromImage(lps)  # (z: superior, y: posterior, x: towards the left)
    # Rows flipped so the head is up; columns kept: column 0 is the patient's right, on the viewer's left.
    mip = array.max(axis=1)[::-1, :]
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


def preview_panels(
    pet: sitk.Image, prediction: sitk.Image, truth: sitk.Image | None
) -> list[tuple[str, np.ndarray]]:
    """The preview's panels, (caption, RGB uint8) each, at least `MIN_HEIGHT_PX` tall: the prediction
    alone, or with `truth` the ground truth and the two compared."""
    pet_mip, spacing = coronal_mip(pet)
    pet_mip = _square_pixels(pet_mip, spacing, nearest=False)
    predicted = _square_pixels(coronal_mip(prediction)[0], spacing, nearest=True) > 0
    if truth is None:
        panels = [("prediction", _panel(pet_mip, {PREDICTION_RGB: predicted}))]
    else:
        true = _square_pixels(coronal_mip(truth)[0], spacing, nearest=True) > 0
        overlay = {
            PREDICTION_RGB: predicted & ~true,
            BOTH_RGB: predicted & true,
            TRUTH_RGB: true & ~predicted,
        }
        panels = [
            ("ground truth", _panel(pet_mip, {TRUTH_RGB: true})),
            ("prediction", _panel(pet_mip, overlay)),
        ]
    factor = -(-MIN_HEIGHT_PX // pet_mip.shape[0])  # ceil: whole pixels keep masks crisp
    if factor > 1:
        panels = [(c, np.repeat(np.repeat(p, factor, axis=0), factor, axis=1)) for c, p in panels]
    return panels


def preview_title(case: str, model: str, tracer: str | None = None) -> str:
    """ "<case> · FDG · <model>": what a reader needs to know the picture is the right one."""
    return " · ".join(part for part in (case, tracer.upper() if tracer else "", model) if part)


PREVIEW_LEGEND = (("ground truth", TRUTH_RGB), ("prediction", PREDICTION_RGB), ("both", BOTH_RGB))


def write_preview(
    pet: sitk.Image, prediction: sitk.Image, truth: sitk.Image | None, path: Path, title: str = ""
) -> Path:
    """PNG of the PET MIP with the prediction; with `truth`, the ground truth beside it.

    Colours: ground truth red, prediction blue, both purple. `title` names the case (and, where known, the
    tracer and the model).
    """
    panels = preview_panels(pet, prediction, truth)
    legend = PREVIEW_LEGEND if truth is not None else PREVIEW_LEGEND[1:2]
    png = annotated_png(panels, title, legend)
    return write_atomically(Path(path), lambda partial: partial.write_bytes(png))


# Figure geometry in pixels (at 100 dpi): room for the title, the markers, the legend and the SUV scale.
_DPI = 100
_TOP_PX, _BOTTOM_PX, _SIDE_PX, _GAP_PX, _SCALE_PX = 64, 56, 28, 24, 96


def annotated_png(
    panels: list[tuple[str, np.ndarray]], title: str, legend: tuple[tuple[str, tuple[int, int, int]], ...]
) -> bytes:
    """The panels side by side, each with its caption and R/L markers, under `title`, above a legend of
    `legend`'s colours, beside a grey scale of SUV 0 to `SUV_WHITE_TO_BLACK`; PNG bytes."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    from petseg.evaluation.plots import figure_png, pyplot

    plt = pyplot()
    height = max(panel.shape[0] for _, panel in panels)
    widths = [panel.shape[1] for _, panel in panels]
    width_px = _SIDE_PX + sum(widths) + _GAP_PX * (len(panels) - 1) + _SCALE_PX
    height_px = _TOP_PX + height + _BOTTOM_PX
    figure = plt.figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    left = _SIDE_PX
    for caption, panel in panels:
        axes = figure.add_axes(
            (left / width_px, _BOTTOM_PX / height_px, panel.shape[1] / width_px, panel.shape[0] / height_px)
        )
        axes.imshow(panel, interpolation="nearest", aspect="equal")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(caption, fontsize=10)
        marker = {"fontsize": 12, "fontweight": "bold", "va": "top", "transform": axes.transAxes}
        marker["bbox"] = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}
        axes.text(0.02, 0.98, "R", ha="left", **marker)  # the patient's right, on the viewer's left
        axes.text(0.98, 0.98, "L", ha="right", **marker)
        left += panel.shape[1] + _GAP_PX
    scale = figure.add_axes(
        ((left - _GAP_PX + 24) / width_px, _BOTTOM_PX / height_px, 14 / width_px, height / height_px)
    )
    mappable = plt.cm.ScalarMappable(norm=Normalize(0.0, SUV_WHITE_TO_BLACK), cmap="gray_r")
    bar = figure.colorbar(mappable, cax=scale)
    bar.set_label("SUV (MIP)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    if title:
        figure.suptitle(title, fontsize=11, y=1 - 8 / height_px, va="top")
    handles = [Patch(facecolor=np.asarray(rgb) / 255.0, label=label) for label, rgb in legend]
    if handles:
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            frameon=False,
            fontsize=9,
            bbox_to_anchor=(0.5, 0.0),
        )
    return figure_png(figure, tight=False)


# Outline colours of the evaluation report: found and missed lesions, matched and false-positive predictions.
FOUND_RGB = (0, 150, 60)
MISSED_RGB = (255, 140, 0)
MATCHED_RGB = (30, 90, 230)
FALSE_POSITIVE_RGB = (220, 30, 30)
OUTLINE_PX = 3  # outlines drawn on the enlarged projection stay visible at the report's panel height
OUTLINE_LEGEND = (
    ("lesion found", FOUND_RGB),
    ("lesion missed", MISSED_RGB),
    ("prediction on a lesion", MATCHED_RGB),
    ("false positive", FALSE_POSITIVE_RGB),
)


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
    pet_mip, spacing = coronal_mip(pet)
    pet_mip = _square_pixels(pet_mip, spacing, nearest=False)
    factor = max(1, -(-MIN_HEIGHT_PX // pet_mip.shape[0]))
    gray = 255.0 * (1.0 - np.clip(pet_mip / SUV_WHITE_TO_BLACK, 0.0, 1.0))
    rgb = np.repeat(np.repeat(np.repeat(gray[..., None], 3, axis=2), factor, axis=0), factor, axis=1)
    for colour, mask in categories.items():
        if not mask.any():
            continue
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(pet)
        projection = _square_pixels(coronal_mip(image)[0], spacing, nearest=True) > 0
        projection = np.repeat(np.repeat(projection, factor, axis=0), factor, axis=1)
        rgb[_outline(projection)] = colour
    return rgb.astype(np.uint8)
