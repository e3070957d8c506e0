"""Network-grid probability -> uint8 lesion mask on the exact PET grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from petseg.preprocess import BackMap


def probability_to_mask(
    probability: np.ndarray, back_map: BackMap, threshold: float = 0.5, interpolation: str = "nearest"
) -> sitk.Image:
    """Resample the lesion probability onto the PET grid, then keep voxels above `threshold`.

    Only the body box is resampled; the rest of the PET grid is background. The result carries the PET's
    size, spacing, origin and direction exactly.
    """
    region = back_map.to_body_box(probability.astype(np.float32, copy=False), interpolation)
    mask = np.zeros(tuple(reversed(back_map.pet_grid.size)), dtype=np.uint8)
    mask[back_map.body_box.slices_zyx] = region > threshold
    image = sitk.GetImageFromArray(mask)
    grid = back_map.pet_grid
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image
