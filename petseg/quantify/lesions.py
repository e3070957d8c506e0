"""The lesions of a mask, measured on its PET: one `Lesion` per 26-connected component, and the case's totals.

Definitions (docs/dicom.md has them with their sources):

- a lesion is a 26-connected component of the mask (voxels touching by a face, an edge or a corner);
- MTV (ml): its voxel count x the voxel volume;
- SUVmax, SUVmean: the highest and the mean SUV of its voxels;
- SUVpeak: the highest mean SUV of a 1 ml sphere centred on any of its voxels (PERCIST; `suvpeak`);
- TLG: SUVmean x MTV (ml x SUV);
- centroid: the mean position of its voxel centres, in patient coordinates (LPS, mm) from the image's origin,
  spacing and direction;
- TMTV and total TLG: the sums over the lesions; Dmax (mm): the largest distance between the centroids of two
  lesions, None with fewer than two.

The evaluation (`petseg.evaluation.metrics`) labels with 18-connectivity, autoPET's choice for scoring; a
lesion here is what a reader would delineate as one, corner contacts included. TMTV and total TLG do not
depend on the connectivity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import cc3d
import numpy as np
import SimpleITK as sitk

from petseg.quantify.suvpeak import suvpeaks

__all__ = ["CONNECTIVITY", "Lesion", "LesionReport", "quantify"]

CONNECTIVITY = 26
_GRID_TOLERANCE = 1e-4  # mm (origin) and relative (spacing, direction): header rounding


@dataclass(frozen=True)
class Lesion:
    """One lesion's figures; `number` is its label, in the order of its first voxel (slice by slice)."""

    number: int
    voxels: int
    mtv_ml: float
    suvmax: float
    suvpeak: float
    suvmean: float
    centroid_mm: tuple[float, float, float]  # LPS

    @property
    def tlg(self) -> float:
        """Total lesion glycolysis: SUVmean x MTV (ml x SUV)."""
        return self.suvmean * self.mtv_ml


@dataclass(frozen=True)
class LesionReport:
    """The lesions of one case and its totals."""

    lesions: tuple[Lesion, ...]
    voxel_ml: float

    @property
    def count(self) -> int:
        return len(self.lesions)

    @property
    def tmtv_ml(self) -> float:
        """Total metabolic tumour volume: the sum of the lesions' MTV."""
        return float(sum(lesion.mtv_ml for lesion in self.lesions))

    @property
    def total_tlg(self) -> float:
        """The sum of the lesions' TLG."""
        return float(sum(lesion.tlg for lesion in self.lesions))

    @property
    def dmax_mm(self) -> float | None:
        """The largest distance between the centroids of two lesions; None with fewer than two."""
        if self.count < 2:
            return None
        return max(math.dist(a.centroid_mm, b.centroid_mm) for a, b in combinations(self.lesions, 2))


def _check_grid(mask: sitk.Image, pet: sitk.Image) -> None:
    same = (
        mask.GetSize() == pet.GetSize()
        and np.allclose(mask.GetSpacing(), pet.GetSpacing(), rtol=_GRID_TOLERANCE, atol=0)
        and np.allclose(mask.GetOrigin(), pet.GetOrigin(), rtol=0, atol=_GRID_TOLERANCE)
        and np.allclose(mask.GetDirection(), pet.GetDirection(), rtol=0, atol=_GRID_TOLERANCE)
    )
    if not same:
        raise ValueError("the mask is not on the PET's grid: lesion figures need both on one grid")


def quantify(mask: sitk.Image, pet: sitk.Image) -> LesionReport:
    """The lesions of `mask` (non-zero voxels) measured on `pet` (SUV), which must share its grid."""
    _check_grid(mask, pet)
    voxels = np.ascontiguousarray(sitk.GetArrayViewFromImage(mask) != 0)
    values = sitk.GetArrayViewFromImage(pet).astype(np.float64)
    labels, count = cc3d.connected_components(voxels, connectivity=CONNECTIVITY, return_N=True)
    count = int(count)
    spacing_xyz = np.asarray(pet.GetSpacing(), dtype=np.float64)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    if count == 0:
        return LesionReport((), voxel_ml)
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)[1:]
    sums = np.bincount(flat, weights=values.ravel(), minlength=count + 1)[1:]
    where = np.flatnonzero(flat)
    maxima = np.full(count + 1, -np.inf)
    np.maximum.at(maxima, flat[where], values.ravel()[where])
    indices = np.unravel_index(where, labels.shape)  # (z, y, x) of every lesion voxel
    centres = [np.bincount(flat[where], weights=axis, minlength=count + 1)[1:] / sizes for axis in indices]
    peaks = suvpeaks(values, labels, count, spacing_xyz[::-1])
    lesions = []
    for k in range(count):
        index_xyz = (float(centres[2][k]), float(centres[1][k]), float(centres[0][k]))
        lesions.append(
            Lesion(
                number=k + 1,
                voxels=int(sizes[k]),
                mtv_ml=float(sizes[k]) * voxel_ml,
                suvmax=float(maxima[k + 1]),
                suvpeak=float(peaks[k]),
                suvmean=float(sums[k] / sizes[k]),
                centroid_mm=tuple(pet.TransformContinuousIndexToPhysicalPoint(index_xyz)),
            )
        )
    return LesionReport(tuple(lesions), voxel_ml)
