"""SUVpeak as PERCIST defines it: the highest mean SUV within a 1 cm³ sphere centred on any voxel of the
lesion.

A sphere of 1 ml has a radius of (3 / (4 pi))^(1/3) cm = 6.2035 mm. On the PET's own grid, with its
anisotropic spacing, the sphere is the set of voxels whose centres lie within that radius of the centre
voxel's centre; its mean is taken over those of them that lie inside the image (a lesion at the edge of the
field of view is not pulled down by voxels that were never measured). The sphere may reach beyond the
lesion: SUVpeak is meant to be a small, noise-robust region around the hottest part, not a mean within the
contour.

Each lesion is searched in its own box, enlarged by the sphere's half-size (less at the image's edges), so a
whole-body PET costs as much as its lesions, not as its voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

__all__ = ["SPHERE_RADIUS_MM", "SPHERE_VOLUME_ML", "sphere_kernel", "suvpeaks"]

SPHERE_VOLUME_ML = 1.0
SPHERE_RADIUS_MM = (3.0 * SPHERE_VOLUME_ML * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm


def sphere_kernel(spacing: Sequence[float], radius_mm: float = SPHERE_RADIUS_MM) -> np.ndarray:
    """The sphere as a boolean array in the spacing's axis order, odd along every axis, centred: the voxels
    whose centres lie within `radius_mm` of the centre voxel's centre."""
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    if spacing_mm.ndim != 1 or np.any(spacing_mm <= 0):
        raise ValueError(f"spacing must be positive numbers, got {tuple(spacing)}")
    half = np.floor(radius_mm / spacing_mm + 1e-9).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm, strict=True)]
    distance2 = sum(a**2 for a in np.meshgrid(*axes, indexing="ij"))
    return distance2 <= radius_mm**2 * (1 + 1e-12)


def suvpeaks(
    pet: np.ndarray,
    labels: np.ndarray,
    count: int,
    spacing: Sequence[float],
    radius_mm: float = SPHERE_RADIUS_MM,
) -> np.ndarray:
    """SUVpeak of components 1..`count` of `labels` (entry k - 1 for component k), in `pet`'s units.

    `spacing` is in the arrays' axis order (for SimpleITK arrays, (z, y, x): `image.GetSpacing()[::-1]`).
    """
    if pet.shape != labels.shape:
        raise ValueError(f"PET {pet.shape} and labels {labels.shape} differ in shape")
    kernel = sphere_kernel(spacing, radius_mm).astype(np.float64)
    half = np.array(kernel.shape) // 2
    peaks = np.full(count, np.nan)
    for index, box in enumerate(scipy.ndimage.find_objects(labels, max_label=count)):
        if box is None:
            continue
        low = [max(s.start - h, 0) for s, h in zip(box, half, strict=True)]
        high = [min(s.stop + h, n) for s, h, n in zip(box, half, labels.shape, strict=True)]
        region = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        values = np.asarray(pet[region], dtype=np.float64)
        # Zero beyond the box is beyond the image wherever it matters: the box reaches a full half-sphere past
        # the lesion except where the image ends, so every sphere around a lesion voxel lies inside it.
        sums = scipy.ndimage.correlate(values, kernel, mode="constant", cval=0.0)
        counts = scipy.ndimage.correlate(np.ones_like(values), kernel, mode="constant", cval=0.0)
        inside = labels[region] == index + 1
        peaks[index] = float((sums[inside] / counts[inside]).max())
    return peaks
