"""From tissue maps to images: PET (uptake, Poisson-like noise, scanner blur) and CT (HU, texture, noise).

Noise is added before the blur, as in a reconstructed PET, so it is spatially correlated like the real thing;
its strength is set so that, after the blur, a region of SUV 1 has the requested coefficient of variation on
any grid. Large volumes are processed in z slabs to keep at most a few full-size float copies alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from petseg.synthetic.grids import DiagonalGrid
from petseg.synthetic.lesions import Placed, profile
from petseg.synthetic.tissues import Tissue, table

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
CT_MIN, CT_MAX = -1024, 3071
_SLAB_VOXELS = 1 << 23


def _slabs(depth: int, per_slice: int) -> Iterator[slice]:
    step = max(1, _SLAB_VOXELS // max(1, per_slice))
    for start in range(0, depth, step):
        yield slice(start, min(depth, start + step))


def _noise_gain(sigma_voxels: np.ndarray) -> float:
    """Standard deviation of unit-variance white noise after a Gaussian blur (sigma per axis, in voxels)."""
    gain = 1.0
    for sigma in sigma_voxels:
        if sigma < 0.05:
            continue
        taps = np.arange(-int(np.ceil(5 * sigma)), int(np.ceil(5 * sigma)) + 1)
        weights = np.exp(-(taps**2) / (2.0 * sigma**2))
        weights /= weights.sum()
        gain *= float(np.sum(weights**2))
    return float(np.sqrt(gain))


def _smooth_field(
    rng: np.random.Generator, coords: np.ndarray, amplitude: float, wavelength: float
) -> np.ndarray:
    """exp of a sum of two random sinusoids: slow multiplicative variation along one axis."""
    log_field = np.zeros_like(coords, dtype=np.float64)
    for _ in range(2):
        length = wavelength * rng.uniform(0.5, 1.5)
        log_field += (
            rng.uniform(0.3, 1.0)
            * amplitude
            * np.sin(2 * np.pi * coords / length + rng.uniform(0, 2 * np.pi))
        )
    return np.exp(log_field).astype(np.float32)


@dataclass(frozen=True)
class PetSettings:
    noise_cov: float  # coefficient of variation at SUV 1 after the blur
    fwhm_mm: float
    scale: float  # anatomy scale, for the size of the uptake variations


def pet_image(
    tissue: np.ndarray,
    grid: DiagonalGrid,
    suv: dict[Tissue, float],
    lesions: list[Placed],
    rng: np.random.Generator,
    settings: PetSettings,
) -> sitk.Image:
    """PET in SUV (float32) on the grid of `tissue`."""
    activity = table(suv)[tissue]
    for axis, view in (
        (0, (None, None, slice(None))),
        (1, (None, slice(None), None)),
        (2, (slice(None), None, None)),
    ):
        field = _smooth_field(rng, grid.coords(axis), 0.06, 250.0 * settings.scale)
        activity *= field[view]
    for placed in lesions:
        target = activity[placed.window]
        uptake = profile(placed, grid)
        target[placed.mask] = np.maximum(target[placed.mask], uptake[placed.mask])
    sigma_mm = settings.fwhm_mm * FWHM_TO_SIGMA
    gain = _noise_gain(sigma_mm / np.asarray(grid.spacing))
    strength = np.float32(settings.noise_cov / gain)
    per_slice = grid.size[0] * grid.size[1]
    for slab in _slabs(grid.shape[0], per_slice):
        part = activity[slab]
        noise = rng.standard_normal(part.shape, dtype=np.float32)
        noise *= np.sqrt(np.maximum(part, 0.0))
        noise *= strength
        part += noise
    image = grid.image(activity)
    del activity
    image = sitk.SmoothingRecursiveGaussian(image, [float(sigma_mm)] * 3)
    return grid.apply(sitk.Maximum(image, 0.0))


def _soften(values: np.ndarray) -> None:
    """In place, a [1, 6, 1] / 8 blur along each axis (about half a voxel's sigma): cheap partial volume."""
    for axis in range(3):
        moved = np.moveaxis(values, axis, 0)
        count = moved.shape[0]
        if count < 2:
            continue
        previous = moved[0].copy()
        for start in range(0, count, 64):
            stop = min(count, start + 64)
            block = moved[start:stop]
            last = block[-1].copy()
            following = moved[stop] if stop < count else last
            mixed = np.concatenate((previous[None], block[:-1])) + np.concatenate(
                (block[1:], following[None])
            )
            mixed *= np.float32(0.125)
            block *= np.float32(0.75)
            block += mixed
            previous = last


@dataclass(frozen=True)
class CtSettings:
    noise_hu: float
    fov_centre: tuple[float, float]  # x, y (mm) of the reconstruction circle
    fov_radius: float  # mm; outside it the CT holds -1024
    lung_axis_y: float  # y (mm) of the middle of the lungs: dependent (posterior) lung is denser
    scale: float
    smooth: bool = True


def ct_image(
    tissue: np.ndarray,
    grid: DiagonalGrid,
    hu: dict[Tissue, float],
    lesions: list[Placed],
    rng: np.random.Generator,
    settings: CtSettings,
) -> sitk.Image:
    """CT in HU (int16) on the grid of `tissue`."""
    values = np.empty(grid.shape, dtype=np.float32)
    lut = table(hu, default=-1000.0)
    x = grid.coords(0)[None, None, :]
    y = grid.coords(1)[None, :, None]
    lung_gradient = np.clip((y - settings.lung_axis_y) / (90.0 * settings.scale), -1.0, 1.0) * np.float32(
        45.0
    )
    for slab in _slabs(grid.shape[0], grid.size[0] * grid.size[1]):
        classes = tissue[slab]
        part = lut[classes]
        lung = classes == Tissue.LUNG
        if lung.any():
            np.add(part, np.broadcast_to(lung_gradient, part.shape), out=part, where=lung)
        values[slab] = part
    for placed in lesions:
        if placed.lesion.hu is not None:
            target = values[placed.window]
            target[placed.mask] = placed.lesion.hu
    if settings.smooth:
        # A CT resampled onto a coarse grid has soft (partial-volume) edges; a native CT does not need this.
        _soften(values)
    out = np.empty(grid.shape, dtype=np.int16)
    cx, cy = settings.fov_centre
    outside = ((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2) > np.float32(settings.fov_radius**2)
    noise_hu = np.float32(settings.noise_hu)
    for slab in _slabs(grid.shape[0], grid.size[0] * grid.size[1]):
        part = rng.standard_normal(values[slab].shape, dtype=np.float32)
        part *= noise_hu
        part += values[slab]
        np.rint(part, out=part)
        np.clip(part, CT_MIN, CT_MAX, out=part)
        part[np.broadcast_to(outside, part.shape)] = CT_MIN
        out[slab] = part
    del values
    return grid.image(out)
