"""Lesions: where they go, how big and hot they are, and their voxels on a grid.

Lesions are placed on the tissue map of the PET grid (so they land in bone marrow, lung or liver that is
really there, or touch the outside of a kidney that is really there) but are themselves analytic shapes, so
the same lesion can be drawn on the PET grid for the label and on a finer CT grid for its CT appearance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petseg.synthetic.anatomy import Anatomy
from petseg.synthetic.grids import DiagonalGrid
from petseg.synthetic.raster import Blob, Window, coordinates, rasterise, window
from petseg.synthetic.tissues import Tissue, allowed

T = Tissue

MIN_VOXELS = 6
VOLUME_RANGE_ML = (0.1, 50.0)
SUVMAX_RANGE = (2.0, 30.0)
MAX_LESIONS = 10
LESION_FREE_PROBABILITY = 0.25

# Where lesions tend to be: lymphoma, melanoma and lung cancer for FDG; prostate cancer for PSMA.
REGION_WEIGHTS = {
    "fdg": {"node": 0.45, "lung": 0.15, "bone": 0.15, "liver": 0.12, "near-organ": 0.13},
    "psma": {"bone": 0.42, "node": 0.33, "prostate": 0.1, "near-organ": 0.07, "liver": 0.04, "lung": 0.04},
}
STATION_WEIGHTS = {
    "fdg": {
        "cervical": 0.18,
        "supraclavicular": 0.08,
        "axillary": 0.17,
        "mediastinal": 0.2,
        "hilar": 0.07,
        "para-aortic": 0.12,
        "iliac": 0.1,
        "inguinal": 0.08,
    },
    "psma": {
        "cervical": 0.03,
        "supraclavicular": 0.05,
        "axillary": 0.05,
        "mediastinal": 0.1,
        "hilar": 0.04,
        "para-aortic": 0.25,
        "iliac": 0.38,
        "inguinal": 0.1,
    },
}
HOT_ORGANS = {
    "kidney": (T.KIDNEY, T.RENAL_PELVIS),
    "bladder": (T.BLADDER,),
    "heart": (T.HEART, T.MYOCARDIUM),
}
# Lesion voxels are never labelled inside these: outside the body, gas, or the hot organs a lesion may touch.
EXCLUDED = (
    T.AIR,
    T.TABLE,
    T.TABLE_CORE,
    T.AIRWAY,
    T.BOWEL_GAS,
    T.STOMACH_GAS,
    T.BRAIN,
    T.HEART,
    T.MYOCARDIUM,
    T.BLOOD,
    T.KIDNEY,
    T.RENAL_PELVIS,
    T.BLADDER,
    T.PAROTID,
    T.SUBMANDIBULAR,
)
_NODE_TISSUE = allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BREAST)
_SURROUNDING_TISSUE = allowed(
    T.FAT, T.MUSCLE, T.BOWEL, T.LIVER, T.LUNG, T.BREAST, T.PROSTATE, T.STOMACH, T.SPLEEN
)


@dataclass
class Lesion:
    region: str
    site: str
    shape: Blob
    suvmax: float
    hu: float | None  # CT number inside; None keeps the underlying tissue's


@dataclass
class Placed:
    """A lesion's voxels on one grid: the window and the mask inside it."""

    lesion: Lesion
    window: Window
    mask: np.ndarray


def count_lesions(rng: np.random.Generator) -> int:
    """1 to 10, mostly few."""
    return int(min(MAX_LESIONS, rng.geometric(0.32)))


def place(lesion: Lesion, grid: DiagonalGrid, tissue: np.ndarray) -> Placed | None:
    """The lesion's voxels on a grid, inside the body and outside the excluded tissues."""
    raster = rasterise(grid, lesion.shape)
    if raster is None:
        return None
    win, mask = raster
    mask = mask & ~_EXCLUDED_TABLE[tissue[win]]
    if not mask.any():
        return None
    return Placed(lesion, win, mask)


_EXCLUDED_TABLE = allowed(*EXCLUDED)


def draw_lesions(
    rng: np.random.Generator,
    count: int,
    anatomy: Anatomy,
    tissue: np.ndarray,
    grid: DiagonalGrid,
    tracer: str,
    scale: float,
    suv: dict[Tissue, float],
    hu: dict[Tissue, float],
    fwhm_mm: float,
) -> list[Placed]:
    """Up to `count` lesions of at least MIN_VOXELS voxels each on the PET grid (fewer if space is short)."""
    placed: list[Placed] = []
    weights = REGION_WEIGHTS[tracer]
    for _ in range(count * 8):
        if len(placed) == count:
            break
        region = str(rng.choice(list(weights), p=np.array(list(weights.values())) / sum(weights.values())))
        found = _centre(rng, region, anatomy, tissue, grid, tracer)
        if found is None:
            continue
        centre, site, outward = found
        shape = _shape(rng, centre, scale, grid)
        if outward is not None:
            # Touch the organ from outside: move the centre out along the exit direction.
            reach = float(np.mean(shape.semi)) * 0.8
            shape.centre = tuple(np.asarray(centre) + outward * reach)
        lesion = Lesion(region, site, shape, 0.0, None)
        result = place(lesion, grid, tissue)
        if result is None or int(result.mask.sum()) < MIN_VOXELS:
            continue
        background = _background(result, tissue, suv)
        lesion.suvmax = _suvmax(rng, background, recovery(int(result.mask.sum()) * grid.voxel_ml, fwhm_mm))
        lesion.hu = _hu(rng, region, tracer, hu)
        placed.append(result)
    return placed


def _shape(rng: np.random.Generator, centre: np.ndarray, scale: float, grid: DiagonalGrid) -> Blob:
    low, high = np.log(VOLUME_RANGE_ML[0]), np.log(VOLUME_RANGE_ML[1])
    # Scaled anatomy (tiny/small phantoms) shrinks lesion volumes by `scale`, not scale^3, and their
    # lengths by scale^(1/3) (the scanner blur shrinks alike, `case.scaled_blur`): at scale^3 a tiny case's
    # largest lesion would be ~1 ml and every lesion a handful of voxels, useless for testing and training.
    volume_ml = float(np.exp(rng.uniform(low, high))) * scale
    volume_ml = max(volume_ml, 1.6 * MIN_VOXELS * grid.voxel_ml)
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    ratios = rng.uniform(0.75, 1.3, 3)
    semi = radius * ratios / np.cbrt(np.prod(ratios))
    harmonics = []
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        harmonics.append(
            (
                direction,
                float(rng.integers(1, 4)),
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0.03, 0.12)),
            )
        )
    return Blob(tuple(float(c) for c in centre), tuple(float(s) for s in semi), harmonics)


def _background(placed: Placed, tissue: np.ndarray, suv: dict[Tissue, float]) -> float:
    """The highest uptake among the tissues the lesion replaces."""
    classes = tissue[placed.window][placed.mask]
    values = np.array([suv.get(Tissue(int(c)), 0.0) for c in np.unique(classes)])
    return float(np.max(values)) if values.size else 0.0


def recovery(volume_ml: float, fwhm_mm: float) -> float:
    """Rough fraction of a lesion's contrast left in its mean after a Gaussian blur: x^3 / (x^3 + 6) with x
    its equivalent-sphere radius over the blur's sigma (0.14 at x = 1, 0.57 at x = 2, 0.82 at x = 3)."""
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    x3 = (radius / (fwhm_mm / 2.355)) ** 3
    return float(x3 / (x3 + 6.0))


def _suvmax(rng: np.random.Generator, background: float, recovery: float) -> float:
    """Log-uniform in 2..30, but clearly above what the lesion replaces even after the scanner blur
    (`recovery`: the fraction of a small lesion's contrast left in its mean after blurring)."""
    low = min(max(SUVMAX_RANGE[0], background + (0.8 * background + 0.6) / recovery), 60.0)
    high = max(SUVMAX_RANGE[1], low * 1.2)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _hu(rng: np.random.Generator, region: str, tracer: str, hu: dict[Tissue, float]) -> float | None:
    if region == "bone":
        sclerotic, lytic = (0.6, 0.1) if tracer == "psma" else (0.25, 0.35)
        draw = rng.random()
        if draw < sclerotic:
            return float(rng.uniform(400, 900))
        if draw < sclerotic + lytic:
            return float(rng.uniform(30, 70))
        return None
    if region == "liver":
        return hu[T.LIVER] - float(rng.uniform(15, 40))
    return float(rng.uniform(30, 50)) + (10.0 if hu[T.BLOOD] > 100 else 0.0)


def _centre(
    rng: np.random.Generator,
    region: str,
    anatomy: Anatomy,
    tissue: np.ndarray,
    grid: DiagonalGrid,
    tracer: str,
) -> tuple[np.ndarray, str, np.ndarray | None] | None:
    """A lesion centre in the region (physical), its site, and for a lesion next to an organ the way out."""
    if region == "node":
        stations = STATION_WEIGHTS[tracer]
        name = str(rng.choice(list(stations), p=np.array(list(stations.values())) / sum(stations.values())))
        centre, spread = anatomy.stations[name]
        side = 1.0 if rng.random() < 0.5 else -1.0
        f = anatomy.frame
        for _ in range(6):
            u, v, w = centre + rng.normal(size=3) * spread
            point = f.point(side * u, v, w)
            if _tissue_at(tissue, grid, point, _NODE_TISSUE):
                return point, f"{name}-{'left' if side > 0 else 'right'}", None
        return None
    if region == "near-organ":
        organ = str(rng.choice(list(HOT_ORGANS)))
        classes = allowed(*HOT_ORGANS[organ])
        start = _probe(rng, tissue, grid, anatomy.regions.get(_REGION_OF[organ]), classes)
        if start is None:
            return None
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        step = 0.5 * min(grid.spacing)
        point = start
        for _ in range(int(400 / step)):
            point = point + direction * step
            if not _tissue_at(tissue, grid, point, classes):
                break
        if not _tissue_at(tissue, grid, point, _SURROUNDING_TISSUE):
            return None
        return point, organ, direction
    classes = {
        "bone": allowed(T.MARROW),
        "lung": allowed(T.LUNG),
        "liver": allowed(T.LIVER),
        "prostate": allowed(T.PROSTATE),
    }[region]
    point = _probe(rng, tissue, grid, anatomy.regions.get(_REGION_OF.get(region, region)), classes)
    return None if point is None else (point, region, None)


_REGION_OF = {"kidney": "kidneys", "heart": "heart", "bladder": "bladder", "bone": "", "lung": "lungs"}


def _tissue_at(tissue: np.ndarray, grid: DiagonalGrid, point: np.ndarray, classes: np.ndarray) -> bool:
    index = np.rint(grid.index(point)).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(grid.size)):
        return False
    return bool(classes[tissue[index[2], index[1], index[0]]])


def _probe(
    rng: np.random.Generator, tissue: np.ndarray, grid: DiagonalGrid, region, classes: np.ndarray
) -> np.ndarray | None:
    """A random point (physical) in a voxel of the given classes, within the region's bounds if known."""
    win = window(grid, region) if region is not None else None
    if win is None:
        win = (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    lows = np.array([s.start for s in win])
    highs = np.array([s.stop for s in win])
    picks = lows + (rng.random((4000, 3)) * (highs - lows)).astype(int)
    hits = picks[classes[tissue[picks[:, 0], picks[:, 1], picks[:, 2]]]]
    if len(hits) == 0:
        inside = np.argwhere(classes[tissue[win]])
        if len(inside) == 0:
            return None
        hits = inside + lows
    z, y, x = hits[int(rng.integers(len(hits)))]
    jitter = rng.uniform(-0.5, 0.5, 3)
    return grid.physical(np.array([x, y, z], dtype=float) + jitter)


def profile(placed: Placed, grid: DiagonalGrid) -> np.ndarray:
    """Lesion uptake inside its mask: SUVmax at the centre, a little lower towards the edge."""
    radial = placed.lesion.shape.radial(*coordinates(grid, placed.window))
    radial = np.broadcast_to(radial, placed.mask.shape)
    return (placed.lesion.suvmax * (1.0 - 0.35 * np.clip(radial, 0.0, 1.0) ** 2)).astype(np.float32)


def describe(placed: Placed, grid: DiagonalGrid) -> dict:
    lesion = placed.lesion
    voxels = int(placed.mask.sum())
    return {
        "region": lesion.region,
        "site": lesion.site,
        "centre_mm": [round(float(c), 2) for c in lesion.shape.centre],
        "volume_ml": round(voxels * grid.voxel_ml, 4),
        "voxels": voxels,
        "suvmax": round(lesion.suvmax, 3),
        "ct_hu": None if lesion.hu is None else round(lesion.hu, 1),
    }
