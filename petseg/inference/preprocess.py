"""PET/CT -> the network's input grid, and the way back.

`preprocess` is the only place where a case is prepared for a network: inference calls it now and
training calls it on every training case, so the two can never disagree. It

1. puts the CT on the PET grid when the grids differ (linear, `ct_fill_hu` outside the CT's field of view),
2. finds the body box (CT above `body_threshold_hu`, plus a margin) on the PET grid,
3. resamples that box once, linearly, onto a grid with RAS orientation and `spacing_mm` spacing
   (orientation and spacing in one interpolation, not two),
4. clips CT to `ct_window_hu` and scales it to [0, 1]; PET stays in SUV.

The returned `BackMap` takes a probability map on that grid back onto the original PET grid.
Arrays on the network grid are indexed (x, y, z) like MONAI/nibabel; SimpleITK arrays are (z, y, x).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import RAS_DIRECTION, BackMap, Box, Grid
from petseg.model.settings import PreprocessSettings

log = logging.getLogger(__name__)

# The largest autoPET scan (400 x 400 x 661 voxels of 2.04 x 2.04 x 3 mm) fills 408 x 408 x 992 voxels of
# 2 mm even without its body box: 165 M. A network grid far beyond that comes from a wrong header (a
# spacing in metres, say), not from a body, and would only end in the allocator.
MAX_NETWORK_VOXELS = 300_000_000
MAX_NETWORK_SIDE = 2048


@dataclass
class PreprocessedCase:
    """Network input (2, X, Y, Z) float32 [CT, PET], optional label (1, X, Y, Z) uint8, and the way back;
    for training with organ supervision also the organ label map (1, X, Y, Z) uint8, its values kept."""

    image: np.ndarray
    label: np.ndarray | None
    back_map: BackMap
    organs: np.ndarray | None = None


def ct_on_pet_grid(ct: sitk.Image, pet: sitk.Image, fill_hu: float) -> sitk.Image:
    """The CT on the PET's grid: unchanged when it already is, else linearly resampled."""
    pet_grid = Grid.of(pet)
    if Grid.of(ct).matches(pet_grid):
        return ct
    log.info("CT grid differs from the PET grid: resampling CT onto the PET grid")
    return pet_grid.resample(ct, sitk.sitkLinear, fill_hu, sitk.sitkFloat32)


def body_box(ct: sitk.Image, threshold_hu: float, margin_mm: float) -> Box:
    """The box around all voxels denser than air (the patient and table), plus a margin.

    Air is most of a whole-body field of view; cropping it away before the sliding window is the
    single largest saving in inference time.
    """
    array = sitk.GetArrayViewFromImage(ct)  # (z, y, x)
    size_xyz = ct.GetSize()
    starts, sizes = [], []
    for axis_xyz in range(3):
        axis_zyx = 2 - axis_xyz
        other = tuple(a for a in range(3) if a != axis_zyx)
        present = np.flatnonzero((array > threshold_hu).any(axis=other))
        if present.size == 0:
            log.warning("no voxel above %s HU in the CT: using the whole field of view", threshold_hu)
            return Box(start=(0, 0, 0), size=tuple(size_xyz))
        margin = math.ceil(margin_mm / ct.GetSpacing()[axis_xyz])
        low = max(0, int(present[0]) - margin)
        high = min(size_xyz[axis_xyz], int(present[-1]) + 1 + margin)
        starts.append(low)
        sizes.append(high - low)
    return Box(start=tuple(starts), size=tuple(sizes))


def network_grid(pet_grid: Grid, box: Box, spacing_mm: tuple[float, float, float]) -> Grid:
    """A RAS grid of `spacing_mm` voxels covering the physical extent of `box`, centred on it."""
    box_grid = box.subgrid(pet_grid)
    direction = np.asarray(box_grid.direction).reshape(3, 3)
    corners_index = (
        np.array([[c[0], c[1], c[2]] for c in np.ndindex(2, 2, 2)], dtype=float) * np.asarray(box.size) - 0.5
    )
    corners = np.asarray(box_grid.origin) + (direction @ (corners_index * np.asarray(box_grid.spacing)).T).T
    ras = np.asarray(RAS_DIRECTION).reshape(3, 3)
    in_ras = corners @ ras  # coordinates along the RAS axes (ras is its own inverse transpose)
    low, high = in_ras.min(axis=0), in_ras.max(axis=0)
    spacing = np.asarray(spacing_mm, dtype=float)
    size = np.maximum(1, np.ceil((high - low) / spacing - 1e-6)).astype(int)
    slack = size * spacing - (high - low)
    first_centre = low - slack / 2 + spacing / 2
    origin = ras @ first_centre
    return Grid(
        size=tuple(int(s) for s in size),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=RAS_DIRECTION,
    )


def _to_network_array(image: sitk.Image) -> np.ndarray:
    """SimpleITK (z, y, x) -> (x, y, z), as a view: `image` must outlive the returned array."""
    return sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)


def check_network_grid(grid: Grid, extent_mm: np.ndarray, source: str) -> None:
    """Refuse a network grid no body needs, before anything of its size is allocated."""
    voxels = math.prod(grid.size)
    if voxels > MAX_NETWORK_VOXELS or max(grid.size) > MAX_NETWORK_SIDE:
        raise InputError(
            f"{source}: the body box spans {' x '.join(f'{e:.0f}' for e in extent_mm)} mm, a network grid "
            f"of {' x '.join(map(str, grid.size))} voxels ({voxels / 1e6:.0f} M) at "
            f"{' x '.join(f'{s:g}' for s in grid.spacing)} mm, more than any body needs (at most "
            f"{MAX_NETWORK_SIDE} a side and {MAX_NETWORK_VOXELS / 1e6:.0f} M in all); check the voxel spacing"
        )


def preprocess(
    ct: sitk.Image,
    pet: sitk.Image,
    settings: PreprocessSettings,
    label: sitk.Image | None = None,
    source: str = "PET",
    organs: sitk.Image | None = None,
) -> PreprocessedCase:
    """Prepare one case for the network (see the module docstring for the steps).

    `source` names the PET in the error raised for a grid no body needs (its file, where known). `label`
    (lesions, made binary) and `organs` (an organ label map, values kept) must lie on the PET grid; both go
    onto the network grid by nearest neighbour, so they stay aligned with the image voxel for voxel.
    """
    pet = sitk.Cast(pet, sitk.sitkFloat32) if pet.GetPixelID() != sitk.sitkFloat32 else pet
    pet_grid = Grid.of(pet)
    if label is not None and not Grid.of(label).matches(pet_grid):
        raise InputError("label is not on the PET grid (size, spacing, origin or direction differ)")
    if organs is not None and not Grid.of(organs).matches(pet_grid):
        raise InputError("organ map is not on the PET grid (size, spacing, origin or direction differ)")
    ct = ct_on_pet_grid(ct, pet, settings.ct_fill_hu)
    box = body_box(ct, settings.body_threshold_hu, settings.body_margin_mm)
    grid = network_grid(pet_grid, box, settings.spacing_mm)
    check_network_grid(grid, np.asarray(box.size) * np.asarray(pet_grid.spacing), source)

    image = np.empty((2, *grid.size), dtype=np.float32)
    ct_net = grid.resample(ct, sitk.sitkLinear, settings.ct_fill_hu, sitk.sitkFloat32)
    del ct
    low, high = settings.ct_window_hu
    np.clip(_to_network_array(ct_net), low, high, out=image[0])
    del ct_net
    image[0] -= low
    image[0] /= high - low
    pet_net = grid.resample(pet, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    image[1] = _to_network_array(pet_net)  # a view: pet_net must stay alive until copied
    del pet_net

    label_net = None
    if label is not None:
        resampled = grid.resample(label, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        label_net = (_to_network_array(resampled) > 0).astype(np.uint8)[None]
    organs_net = None
    if organs is not None:
        resampled = grid.resample(organs, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        organs_net = np.ascontiguousarray(_to_network_array(resampled))[None]
    return PreprocessedCase(
        image=image,
        label=label_net,
        back_map=BackMap(network_grid=grid, pet_grid=pet_grid, body_box=box),
        organs=organs_net,
    )
