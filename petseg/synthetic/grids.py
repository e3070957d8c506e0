"""Image grids with diagonal (±1) directions, and the autoPET PET grid families.

`DiagonalGrid` is petseg's `geometry.Grid` (it matches and resamples like any other) with the helpers the
phantom generator needs. Because every direction is diagonal, a voxel's physical x depends only on its x
index (and so on), so shapes can be rasterised from three 1D coordinate vectors instead of a 3 x N
coordinate array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from petseg.geometry import Grid

# ITK direction of every autoPET header: x and z as stored, y flipped.
AUTOPET_SIGNS = (1, -1, 1)


def direction_matrix(signs: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(float(signs[row]) if row == col else 0.0 for row in range(3) for col in range(3))


@dataclass(frozen=True)
class DiagonalGrid(Grid):
    """Size (x, y, z), spacing and origin in mm, and a diagonal ±1 direction (autoPET's by default)."""

    direction: tuple[float, ...] = direction_matrix(AUTOPET_SIGNS)

    def __post_init__(self) -> None:
        matrix = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.allclose(matrix, np.diag(np.sign(np.diag(matrix))), atol=1e-4) or 0 in np.diag(matrix):
            raise ValueError(f"direction {tuple(matrix.ravel())} is not diagonal ±1")

    @property
    def signs(self) -> tuple[int, int, int]:
        """The sign of each axis' direction (x, y, z)."""
        return tuple(1 if self.direction[4 * axis] > 0 else -1 for axis in range(3))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of an image on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def coords(self, axis: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Physical coordinates (float32) of voxel centres start..stop-1 along one axis (0=x, 1=y, 2=z)."""
        stop = self.size[axis] if stop is None else stop
        index = np.arange(start, stop, dtype=np.float64)
        return (self.origin[axis] + self.signs[axis] * self.spacing[axis] * index).astype(np.float32)

    def index_range(self, axis: int, low: float, high: float) -> tuple[int, int]:
        """Half-open index range of the voxel centres lying in [low, high] mm (possibly empty)."""
        origin, step = self.origin[axis], self.signs[axis] * self.spacing[axis]
        first, last = (low - origin) / step, (high - origin) / step
        first, last = min(first, last), max(first, last)
        start = max(0, math.ceil(first - 1e-6)) if first > -1e12 else 0
        stop = min(self.size[axis], math.floor(last + 1e-6) + 1) if last < 1e12 else self.size[axis]
        return start, max(start, stop)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical min and max of the voxel centres, per axis (x, y, z)."""
        first = np.asarray(self.origin, dtype=float)
        last = first + np.asarray(self.signs) * np.asarray(self.spacing) * (np.asarray(self.size) - 1)
        return np.minimum(first, last), np.maximum(first, last)

    def centre(self) -> np.ndarray:
        low, high = self.bounds()
        return (low + high) / 2.0

    def physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical points (N, 3) of continuous indices (N, 3) in x, y, z order."""
        index = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + np.asarray(self.signs) * np.asarray(self.spacing) * index

    def index(self, point_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (x, y, z) of physical points."""
        point = np.asarray(point_xyz, dtype=float)
        return (point - np.asarray(self.origin)) / (np.asarray(self.signs) * np.asarray(self.spacing))

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Give an image (from GetImageFromArray, which drops geometry) this grid's geometry."""
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in self.direction])
        return image

    def image(self, array: np.ndarray) -> sitk.Image:
        """An image on this grid from a (z, y, x) array."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid shape {self.shape}")
        return self.apply(sitk.GetImageFromArray(array))

    def reference(self, pixel: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid, as a resampling reference."""
        return self.apply(sitk.Image([int(n) for n in self.size], pixel))

    def downsample(self, factors: tuple[int, int, int]) -> DiagonalGrid:
        """Every factor-th voxel, starting at the first (nearest-neighbour subsampling)."""
        size = tuple(math.ceil(n / f) for n, f in zip(self.size, factors, strict=True))
        spacing = tuple(float(s * f) for s, f in zip(self.spacing, factors, strict=True))
        return DiagonalGrid(size, spacing, self.origin, self.direction)  # type: ignore[arg-type]

    def describe(self) -> dict:
        """JSON-serialisable summary."""
        return {
            "size": [int(n) for n in self.size],
            "spacing": [round(float(s), 6) for s in self.spacing],
            "origin": [round(float(o), 4) for o in self.origin],
            "direction": [float(d) for d in self.direction],
        }

    @classmethod
    def of(cls, image: sitk.Image) -> DiagonalGrid:
        """The grid of an image whose direction is diagonal ±1 (autoPET files)."""
        matrix = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        signs = np.where(np.diag(matrix) < 0, -1, 1)
        if not np.allclose(matrix, np.diag(signs), atol=1e-4):
            raise ValueError(f"direction {tuple(matrix.ravel())} is not diagonal ±1")
        return cls(
            size=tuple(int(n) for n in image.GetSize()),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=direction_matrix(tuple(int(s) for s in signs)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class GridFamily:
    """One of the four real autoPET PET grids (spec section 1; spacings as stored in the headers)."""

    name: str
    tracer: str
    in_plane: int
    spacing: tuple[float, float, float]
    # Centre of the field of view in y (mm, LPS) relative to the image centre, as in the real origins.
    fov_centre_y: float
    # (probability, low, high) mixture for the slice count of a full-size case.
    slices: tuple[tuple[float, int, int], ...]

    @property
    def median_slices(self) -> int:
        return {"fdg-400": 326, "psma-200": 415, "psma-256": 263, "psma-168": 195}[self.name]

    def draw_slices(self, rng: np.random.Generator) -> int:
        weights = np.array([w for w, _, _ in self.slices])
        low, high = self.slices[int(rng.choice(len(self.slices), p=weights / weights.sum()))][1:]
        return int(rng.integers(low, high + 1))


FAMILIES: dict[str, GridFamily] = {
    family.name: family
    for family in (
        GridFamily(
            "fdg-400",
            "fdg",
            400,
            (2.03642011, 2.03642011, 3.0),
            -193.0,
            ((0.35, 284, 284), (0.35, 326, 326), (0.15, 200, 400), (0.15, 500, 661)),
        ),
        GridFamily(
            "psma-200", "psma", 200, (4.0728302, 4.0728302, 2.0), -177.0, ((0.95, 344, 450), (0.05, 900, 963))
        ),
        GridFamily(
            "psma-256", "psma", 256, (2.734375, 2.734375, 3.26999998), 0.0, ((0.7, 263, 263), (0.3, 227, 371))
        ),
        GridFamily(
            "psma-168",
            "psma",
            168,
            (4.0728302, 4.0728302, 5.0),
            -175.0,
            ((0.4, 165, 165), (0.4, 195, 195), (0.2, 135, 315)),
        ),
    )
}

TINY_SIZE = (64, 64, 96)
SMALL_IN_PLANE = 160
SMALL_Z_FRACTION = 0.4


def pet_size(
    family: GridFamily, size: str, rng: np.random.Generator, z_slices: int | None
) -> tuple[int, int, int]:
    """Voxel counts (x, y, z) of a PET grid of the given family and phantom size."""
    if size == "tiny":
        n, nz = TINY_SIZE[0], TINY_SIZE[2]
    elif size == "small":
        n, nz = SMALL_IN_PLANE, max(24, round(SMALL_Z_FRACTION * family.draw_slices(rng)))
    else:
        n, nz = family.in_plane, family.draw_slices(rng)
    if z_slices is not None:
        nz = z_slices
    return (n, n, nz)


def anatomy_scale(family: GridFamily, size: str, grid_size: tuple[int, int, int]) -> float:
    """How much to shrink the body so that it fits a reduced grid as a real body fits the real one."""
    if size == "full":
        return 1.0
    in_plane = grid_size[0] / family.in_plane
    along_z = grid_size[2] / family.median_slices
    return float(min(1.0, in_plane, along_z))
