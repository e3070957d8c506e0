"""Network-grid probability -> uint8 lesion mask (and, on request, the probability) on the exact PET grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

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
