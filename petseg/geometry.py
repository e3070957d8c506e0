"""The geometry of images without their voxels: grids, boxes on them, and the map from the network grid
back onto the PET grid.

Preprocessing builds the network grid and the back-map, and postprocessing uses the back-map to bring the
probability home; both depend on this module, and it on nothing of petseg's, so neither stage reaches into
the other. Arrays on the network grid are indexed (x, y, z) like MONAI; SimpleITK arrays are (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# RAS in the LPS physical frame of ITK: index axes increase towards Right, Anterior, Superior.
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """The geometry of an image without its voxels."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
        )

    def matches(self, other: Grid, tolerance_mm: float = 1e-3) -> bool:
        """Same voxels in the same place (small float noise in headers allowed)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(self.origin, other.origin, rtol=0.0, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, rtol=0.0, atol=1e-5)
        )

    def resample(
        self,
        image: sitk.Image,
        interpolator: int = sitk.sitkLinear,
        fill: float = 0.0,
        pixel_type: int | None = None,
    ) -> sitk.Image:
        """`image` resampled onto this grid (physical space is preserved)."""
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize(list(self.size))
        resampler.SetOutputSpacing(self.spacing)
        resampler.SetOutputOrigin(self.origin)
        resampler.SetOutputDirection(self.direction)
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(float(fill))
        resampler.SetOutputPixelType(image.GetPixelID() if pixel_type is None else pixel_type)
        return resampler.Execute(image)


@dataclass(frozen=True)
class Box:
    """A box of voxels on a grid: start and size in (x, y, z) index order."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def slices_zyx(self) -> tuple[slice, slice, slice]:
        """The box as a slice of a SimpleITK (z, y, x) array."""
        return tuple(
            slice(start, start + size)
            for start, size in zip(reversed(self.start), reversed(self.size), strict=True)
        )

    def subgrid(self, grid: Grid) -> Grid:
        """The grid of just this box's voxels."""
        reference = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        reference.SetSpacing(grid.spacing)
        reference.SetOrigin(grid.origin)
        reference.SetDirection(grid.direction)
        origin = reference.TransformIndexToPhysicalPoint([int(s) for s in self.start])
        return Grid(size=self.size, spacing=grid.spacing, origin=tuple(origin), direction=grid.direction)


INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear}


@dataclass(frozen=True)
class BackMap:
    """Maps arrays on the network grid back onto the original PET grid."""

    network_grid: Grid
    pet_grid: Grid
    body_box: Box

    def to_body_box(self, array: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
        """`array` (x, y, z on the network grid) resampled onto the PET grid's body box, as (z, y, x).

        Outside the body box the model sees only air, so callers fill the rest of the PET grid with 0.
        """
        if tuple(array.shape) != self.network_grid.size:
            raise ValueError(f"array shape {array.shape} != network grid size {self.network_grid.size}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing(self.network_grid.spacing)
        image.SetOrigin(self.network_grid.origin)
        image.SetDirection(self.network_grid.direction)
        region = self.body_box.subgrid(self.pet_grid).resample(image, INTERPOLATORS[interpolation], 0.0)
        return sitk.GetArrayFromImage(region)

    def to_pet_grid(self, array: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
        """`array` on the whole PET grid, as (z, y, x), zero outside the body box."""
        region = self.to_body_box(array, interpolation)
        full = np.zeros(tuple(reversed(self.pet_grid.size)), dtype=region.dtype)
        full[self.body_box.slices_zyx] = region
        return full
