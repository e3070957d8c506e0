"""Network-grid probability -> uint8 lesion mask (and, on request, the probability) on the exact PET grid."""

from __future__ import annotations

import math

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.preprocess import BackMap, Grid


def mask_image(mask_zyx: np.ndarray, grid: Grid) -> sitk.Image:
    """A (z, y, x) boolean array as a uint8 {0,1} image carrying `grid`'s geometry exactly."""
    image = sitk.GetImageFromArray(mask_zyx.astype(np.uint8, copy=False))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def probability_to_mask(
    probability: np.ndarray, back_map: BackMap, threshold: float = 0.5, interpolation: str = "nearest"
) -> sitk.Image:
    """Resample the lesion probability onto the PET grid, then keep voxels above `threshold`.

    Only the body box is resampled; the rest of the PET grid is background. The result carries the PET's
    size, spacing, origin and direction exactly.
    """
    region = back_map.to_body_box(probability.astype(np.float32, copy=False), interpolation)
    mask = np.zeros(tuple(reversed(back_map.pet_grid.size)), dtype=bool)
    mask[back_map.body_box.slices_zyx] = region > threshold
    return mask_image(mask, back_map.pet_grid)


def probability_on_pet_grid(
    probability: np.ndarray, back_map: BackMap, interpolation: str = "nearest"
) -> np.ndarray:
    """The lesion probability on the whole PET grid, (z, y, x) float32, 0 outside the body box.

    Resampled exactly as `probability_to_mask` resamples it, so thresholding this array gives that mask.
    """
    return back_map.to_pet_grid(probability.astype(np.float32, copy=False), interpolation)


def grow_to_uptake_contour(
    mask_zyx: np.ndarray,
    pet_zyx: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    fraction: float,
    within_mm: float,
) -> np.ndarray:
    """Each predicted lesion extended to the contour at `fraction` of its own SUVmax, near where it was.

    A network trained on partial-volume-blurred lesions may mark only their core; the contour at a fixed
    fraction of SUVmax (about 40 %, as in the usual definition of metabolic tumour volume) recovers the rim.
    A component takes the voxels within `within_mm` of it whose uptake reaches `fraction` of its maximum
    and that connect to it through such voxels, so growth cannot run along physiological uptake into a
    neighbouring organ. Predicted voxels are never removed. (z, y, x) arrays on one grid; returns a new mask.
    """
    if not 0.0 < fraction <= 1.0 or within_mm < 0:
        raise ValueError(f"fraction must be in (0, 1] and within_mm at least 0, got {fraction}, {within_mm}")
    mask = np.asarray(mask_zyx, dtype=bool)
    labels, count = cc3d.connected_components(mask, return_N=True)
    grown = mask.copy()
    if count == 0 or within_mm == 0:
        return grown
    spacing_zyx = tuple(float(v) for v in reversed(spacing_xyz))
    margin = [math.ceil(within_mm / step) for step in spacing_zyx]
    boxes = cc3d.statistics(labels)["bounding_boxes"]
    for label in range(1, count + 1):
        box = tuple(
            slice(max(0, b.start - m), min(size, b.stop + m))
            for b, m, size in zip(boxes[label], margin, mask.shape, strict=True)
        )
        component = labels[box] == label
        uptake = pet_zyx[box]
        near = ndimage.distance_transform_edt(~component, sampling=spacing_zyx) <= within_mm
        candidate = component | (near & (uptake >= fraction * float(uptake[component].max())))
        pieces = cc3d.connected_components(candidate)
        grown[box] |= np.isin(pieces, np.unique(pieces[component]))
    return grown
