"""The last inference stage: network-grid probability -> uint8 lesion mask (and, on request, the
probability) on the exact PET grid."""

from __future__ import annotations

import logging
import math

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.geometry import Grid
from petseg.inference.preprocess import PreprocessedCase
from petseg.model.card import ModelCard
from petseg.model.components import ALL_TRACERS

log = logging.getLogger(__name__)


def mask_image(mask_zyx: np.ndarray, grid: Grid) -> sitk.Image:
    """A (z, y, x) boolean array as a uint8 {0,1} image carrying `grid`'s geometry exactly."""
    image = sitk.GetImageFromArray(mask_zyx.astype(np.uint8, copy=False))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def postprocess(
    probability: np.ndarray,
    case: PreprocessedCase,
    card: ModelCard,
    tracer: str | None,
    uptake_zyx: np.ndarray | None = None,
    keep_probability: bool = False,
) -> tuple[sitk.Image, np.ndarray | None]:
    """Every step from the ensemble's network-grid probability to the uint8 mask on the exact PET grid.

    1. the card's component filter, on the network grid (it reads `case.image`, which is then freed);
    2. the back-map of the body box onto the PET grid (`ensemble.back_interpolation`), 0 elsewhere;
    3. the threshold (`ensemble.threshold`);
    4. growth of each lesion to its uptake contour (`ensemble.grow_to_suvmax_fraction`; needs `uptake_zyx`,
       the PET on its own grid);
    5. the SUV floor (`ensemble.suv_floor`, for `tracer`; needs `uptake_zyx` too).

    One path whether or not the probability is kept: with `keep_probability` the back-mapped probability
    (z, y, x, float32, before growth) is returned too, and thresholding it gives the mask before growth.
    """
    settings = card.ensemble
    if card.component_filter is not None:
        probability, kept, removed = card.component_filter.apply(
            probability, case.image, card.preprocessing, settings.threshold, tracer
        )
        log.info("component filter: kept %d predicted lesion(s), removed %d", kept, removed)
    case.image = None  # the network input is not needed any more: freed before the back-map
    back_map = case.back_map
    region = back_map.to_body_box(probability.astype(np.float32, copy=False), settings.back_interpolation)
    shape_zyx = tuple(reversed(back_map.pet_grid.size))
    mask = np.zeros(shape_zyx, dtype=bool)
    mask[back_map.body_box.slices_zyx] = region > settings.threshold
    on_pet = None
    if keep_probability:
        on_pet = np.zeros(shape_zyx, dtype=np.float32)
        on_pet[back_map.body_box.slices_zyx] = region
    del region
    if settings.grow_to_suvmax_fraction is not None:
        if uptake_zyx is None:
            raise ValueError("the card grows lesions to their uptake contour: postprocess needs the PET")
        mask = grow_to_uptake_contour(
            mask,
            uptake_zyx,
            back_map.pet_grid.spacing,
            settings.grow_to_suvmax_fraction,
            settings.grow_within_mm,
        )
    if settings.suv_floor is not None:
        if uptake_zyx is None:
            raise ValueError("the card sets an SUV floor: postprocess needs the PET")
        floor = suv_floor_for(settings.suv_floor, tracer)
        below = mask & (uptake_zyx < floor)
        log.info("SUV floor %.2f: removed %d predicted voxel(s)", floor, int(below.sum()))
        mask &= ~below
    return mask_image(mask, back_map.pet_grid), on_pet


def suv_floor_for(floors: dict[str, float], tracer: str | None) -> float:
    """The floor of `tracer`'s cases; "all" serves every tracer. A card with floors per tracer whose case
    has no tracer named (one ensemble for every tracer, no `--tracer`) takes the lowest: a floor too low
    keeps a false positive, one too high removes a lesion."""
    if tracer is not None and tracer in floors:
        return floors[tracer]
    if ALL_TRACERS in floors:
        return floors[ALL_TRACERS]
    return min(floors.values())


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
