"""Phantoms built around real organ label maps (TotalSegmentator-style, one NIfTI per case on its PET grid).

The map gives the PET grid and the organs; the analytic body frame is fitted to the organs' positions (height
scale and centre from landmarks such as brain, lungs, liver and bladder) to draw the body outline, fat, bones
and table around them, and lesions are placed around the real organs as in analytic cases.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.errors import InputError
from petseg.io import image_stem
from petseg.io.splits import patient_id as patient_of
from petseg.model.organs import ORGAN_NAMES
from petseg.synthetic import ids
from petseg.synthetic.anatomy import SUPPLIABLE, build_anatomy, render
from petseg.synthetic.case import IDS, PATIENT, STUDY, Scene, assemble_scene, draw_study, rng_for
from petseg.synthetic.frame import Frame
from petseg.synthetic.grids import FAMILIES, DiagonalGrid
from petseg.synthetic.raster import Box, Ellipsoid
from petseg.synthetic.tissues import ORGAN_TISSUES, Tissue, allowed
from petseg.synthetic.variation import draw_habitus

T = Tissue
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Label values of the autoPET III organ maps (`petseg.model.organs`), and the tissue each is painted as.
LABELS = {value: (ORGAN_NAMES[value], tissues[0]) for value, tissues in ORGAN_TISSUES.items()}
# Where each labelled organ's centroid lies in the reference body frame (u, v, w).
REFERENCE = {
    "brain": (0.0, -5.0, 75.0),
    "glands": (0.0, -15.0, 175.0),
    "lungs": (0.0, 15.0, 380.0),
    "heart": (25.0, -25.0, 425.0),
    "liver": (-55.0, -25.0, 490.0),
    "spleen": (105.0, 25.0, 480.0),
    "stomach": (50.0, -40.0, 495.0),
    "kidneys": (0.0, 40.0, 555.0),
    "bladder": (0.0, -25.0, 765.0),
    "prostate": (0.0, -10.0, 812.0),
}
# Landmarks reliable for the fit: large, and rarely cut by the field of view when present.
HEIGHT_LANDMARKS = ("brain", "lungs", "heart", "liver", "kidneys", "bladder")
MIDLINE = ("brain", "lungs", "kidneys", "bladder", "prostate")
DOWNSAMPLE_MM = {"tiny": 8.0, "small": 4.0}
WALL_MM = 9.0  # myocardium thickness, and depth of the renal cortex
BODY_MARGIN_MM = 10.0


def find_maps(folder: Path) -> list[Path]:
    """The NIfTI files of an organ-map folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: organ-map folder not found")
    maps = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    if not maps:
        raise InputError(f"{folder}: no NIfTI organ label maps (.nii.gz, .nii) in the folder")
    return maps


# Which maps of a folder a run takes: every one, or one side of the fixed split below.
MAP_SETS = ("all", "train", "held-out")
HELD_OUT_BUCKETS = 4  # one map in about four is held out for evaluation


def is_held_out(path: Path) -> bool:
    """Whether a map belongs to the held-out side of the split, decided by its file name alone.

    A hash of the name, not its rank in a sorted folder: adding or removing other maps never moves a map
    from one side to the other, so a model trained on the "train" side is never scored on one of its own
    training maps.
    """
    digest = hashlib.sha256(image_stem(path).encode()).digest()
    return int.from_bytes(digest[:4], "big") % HELD_OUT_BUCKETS == 0


def select_maps(maps: list[Path], which: str) -> list[Path]:
    """The maps of one side of the split ("train" or "held-out"), or all of them ("all")."""
    if which not in MAP_SETS:
        raise ValueError(f"organ map set must be one of {', '.join(MAP_SETS)}, got {which!r}")
    if which == "all":
        return list(maps)
    return [path for path in maps if is_held_out(path) == (which == "held-out")]


def tracer_of(path: Path, tracer: str) -> str:
    """The requested tracer, or for "mixed" the one named by the file's prefix."""
    if tracer != "mixed":
        return tracer
    name = path.name.lower()
    for candidate in ("fdg", "psma"):
        if name.startswith(candidate + "_"):
            return candidate
    raise InputError(
        f"{path}: cannot tell the tracer from the file name (expected fdg_... or psma_...); pass fdg or psma"
    )


@dataclass
class OrganStats:
    """Centroid and bounds (physical mm) of one label, and whether it touches either end of the FOV."""

    centre: np.ndarray
    low: np.ndarray
    high: np.ndarray
    voxels: int
    cut: bool


def read_map(path: Path) -> tuple[sitk.Image, DiagonalGrid]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(
            f"{path}: cannot read organ label map: {' '.join(str(error).split())[:200]}"
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: organ label map must be a 3D scalar image")
    try:
        grid = DiagonalGrid.of(image)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    return sitk.Cast(image, sitk.sitkUInt8), grid


def organ_stats(labels: np.ndarray, grid: DiagonalGrid) -> dict[str, OrganStats]:
    """Per organ: centroid and bounding box, computed inside each label's own bounding box."""
    stats = {}
    for value, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None or value not in LABELS:
            continue
        inside = labels[where] == value
        count = int(inside.sum())
        index = [np.nonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
        centroid = [float(np.mean(np.nonzero(inside)[axis])) + where[axis].start for axis in range(3)]
        first = [where[axis].start + index[axis][0] for axis in range(3)]
        last = [where[axis].start + index[axis][-1] for axis in range(3)]
        corners = grid.physical(np.array([first[::-1], last[::-1]], dtype=float))
        cut = first[0] == 0 or last[0] == labels.shape[0] - 1
        stats[LABELS[value][0]] = OrganStats(
            grid.physical(np.array(centroid[::-1])), corners.min(axis=0), corners.max(axis=0), count, cut
        )
    return stats


def fit_frame(stats: dict[str, OrganStats], grid: DiagonalGrid, width_factor: float) -> Frame:
    """Height scale and vertex from the organs' heights; centre from midline organs."""
    usable = [name for name in HEIGHT_LANDMARKS if name in stats and not stats[name].cut]
    top = grid.bounds()[1][2]
    if len(usable) >= 2:
        w = np.array([REFERENCE[name][2] for name in usable])
        z = np.array([stats[name].centre[2] for name in usable])
        slope = np.polyfit(w, z, 1)[0]
        height = float(np.clip(-slope, 0.8, 1.2))
        vertex = float(np.mean(z + height * w))
    elif usable or stats:
        name = usable[0] if usable else next(iter(stats))
        height = 1.0
        vertex = float(stats[name].centre[2] + REFERENCE[name][2])
    else:
        height, vertex = 1.0, float(top + 20.0)
    width = height * width_factor
    centre = grid.centre()
    xs = [stats[name].centre[0] for name in MIDLINE if name in stats]
    ys = [stats[name].centre[1] - width * REFERENCE[name][1] for name in stats]
    return Frame(
        centre_x=float(np.median(xs)) if xs else float(centre[0]),
        centre_y=float(np.median(ys)) if ys else float(centre[1]),
        vertex_z=vertex,
        width=width,
        height=height,
    )


def downsample_factors(grid: DiagonalGrid, size: str) -> tuple[int, int, int]:
    if size not in DOWNSAMPLE_MM:
        return (1, 1, 1)
    target = DOWNSAMPLE_MM[size]
    xy = max(1, round(target / grid.spacing[0]))
    return (xy, xy, max(1, round(target / grid.spacing[2])))


def grid_name(grid: DiagonalGrid, tracer: str) -> str:
    """The autoPET grid family the map's grid belongs to, or "other"."""
    for family in FAMILIES.values():
        if (
            family.tracer == tracer
            and grid.size[0] == family.in_plane
            and np.allclose(grid.spacing, family.spacing, atol=1e-3)
        ):
            return family.name
    return "other"


def organ_scene(
    path: Path, seed: int, index: int, tracer: str, size: str, lesion_free: bool | None = None
) -> Scene:
    """A scene whose organs and PET grid come from one label map (`lesion_free` None: drawn)."""
    image, full_grid = read_map(path)
    tracer = tracer_of(path, tracer)
    factors = downsample_factors(full_grid, size)
    labels = sitk.GetArrayFromImage(image)[:: factors[2], :: factors[1], :: factors[0]]
    labels = np.ascontiguousarray(labels)
    pet_grid = full_grid.downsample(factors)
    labels[labels > max(LABELS)] = 0
    stats = organ_stats(labels, pet_grid)

    case_id = image_stem(path)
    patient = patient_of(case_id)
    study = rng_for(seed, index, STUDY)
    choices = draw_study(study, tracer, None, lesion_free)
    sex = "male" if "prostate" in stats or tracer == "psma" else "female"
    habitus = draw_habitus(np.random.default_rng([seed, ids.patient_key(patient), PATIENT]), sex)
    frame = fit_frame(stats, pet_grid, habitus.width)
    brain = None
    if "brain" in stats:
        brain_stats = stats["brain"]
        centre = (brain_stats.low + brain_stats.high) / 2
        semi = (brain_stats.high - brain_stats.low) / 2 + np.asarray(pet_grid.spacing) / 2
        if brain_stats.cut:
            semi[2] = max(semi[2], 0.8 * semi[0])
            centre[2] = brain_stats.low[2] + semi[2]
        brain = Ellipsoid(centre, semi)
    anatomy = build_anatomy(frame, habitus, choices.setup, frozenset(SUPPLIABLE), brain)
    anatomy.landmarks = {name: organ.centre for name, organ in stats.items()}
    for name in ("liver", "lungs", "heart", "kidneys", "bladder", "prostate"):
        if name in stats:
            anatomy.regions[name] = Box(stats[name].low, stats[name].high)

    def tissue_on(grid: DiagonalGrid) -> np.ndarray:
        if grid == pet_grid:
            organ_labels = labels
        else:
            resampled = sitk.Resample(image, grid.reference(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            organ_labels = sitk.GetArrayFromImage(resampled)
        return overlay(render(anatomy, grid), organ_labels, grid)

    identity = rng_for(seed, index, IDS)
    ids.new_patient_id(identity, tracer)  # keeps the id stream aligned with analytic cases
    scene = assemble_scene(
        seed,
        index,
        size,
        tracer,
        grid_name(full_grid, tracer),
        pet_grid,
        anatomy,
        tissue_on,
        1.0,
        choices,
        identity,
        habitus,
        patient,
        case_id=case_id,
    )
    scene.extra["organ_map"] = {
        "file": path.name,
        "downsample": list(factors),
        "fit": {"height": round(frame.height, 4), "vertex_z_mm": round(frame.vertex_z, 2)},
        "organs": sorted(stats),
    }
    return scene


def overlay(tissue: np.ndarray, organ_labels: np.ndarray, grid: DiagonalGrid) -> np.ndarray:
    """Paint real organs over the analytic body, grow the body to hold them, and give the heart a wall and
    the kidneys a collecting system."""
    lut = np.zeros(256, dtype=np.uint8)
    for value, (_, tissue_class) in LABELS.items():
        lut[value] = int(tissue_class)
    organs = organ_labels > 0
    if not organs.any():
        return tissue
    spacing = np.asarray(grid.spacing)[::-1]
    size = tuple(2 * max(1, round(BODY_MARGIN_MM / s)) + 1 for s in spacing)
    grown = ndimage.maximum_filter(organs.view(np.uint8), size=size).astype(bool)
    tissue[grown & allowed(T.AIR, T.TABLE, T.TABLE_CORE)[tissue]] = T.MUSCLE
    tissue[organs] = lut[organ_labels[organs]]
    for value, inner, outer in ((7, T.HEART, T.MYOCARDIUM), (2, T.RENAL_PELVIS, T.KIDNEY)):
        where = ndimage.find_objects((organ_labels == value).view(np.uint8))
        if not where or where[0] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in where[0])
        organ = organ_labels[box] == value
        depth = ndimage.distance_transform_edt(organ, sampling=spacing)
        part = tissue[box]
        part[organ & (depth <= WALL_MM)] = outer
        part[organ & (depth > WALL_MM)] = inner
    return tissue
