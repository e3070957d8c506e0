"""One synthetic PET/CT case: `make_case` and the simulation steps it shares with organ-map cases.

Every random choice comes from a generator seeded with (seed, case index, purpose), so case i is the same
whether 3 or 30 cases are generated, and overriding one choice (say, `lesion_free`) leaves the others alone.
A patient's body comes from a generator seeded with the patient id, so two studies of one patient share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from petseg.synthetic import ids
from petseg.synthetic.anatomy import Anatomy, build_anatomy, render
from petseg.synthetic.frame import Frame
from petseg.synthetic.grids import FAMILIES, DiagonalGrid, anatomy_scale, pet_size
from petseg.synthetic.imaging import CtSettings, PetSettings, ct_image, pet_image
from petseg.synthetic.lesions import (
    LESION_FREE_PROBABILITY,
    Placed,
    count_lesions,
    describe,
    draw_lesions,
    place,
)
from petseg.synthetic.tissues import Tissue, draw_hu, draw_suv, organ_labels
from petseg.synthetic.variation import Habitus, Setup, draw_habitus, draw_setup

TRACERS = ("fdg", "psma", "mixed")
SIZES = ("tiny", "small", "full")
GRIDS = tuple(FAMILIES)
PSMA_GRID_WEIGHTS = {"psma-200": 251, "psma-256": 230, "psma-168": 116}
CT_OWN_GRID_PROBABILITY = 0.4
CONTRAST_PROBABILITY = {"fdg": 0.6, "psma": 0.3}
MAX_SLICES = 2000

# Purposes of the per-case generators.
IDS, STUDY, PATIENT, LESIONS, PET_NOISE, CT_NOISE, CT_GRID = range(7)

LANDMARK_TISSUE = {
    "brain": Tissue.BRAIN,
    "lung_left": Tissue.LUNG,
    "lung_right": Tissue.LUNG,
    "lungs": Tissue.LUNG,
    "heart": Tissue.HEART,
    "liver": Tissue.LIVER,
    "spleen": Tissue.SPLEEN,
    "kidney_left": Tissue.KIDNEY,
    "kidney_right": Tissue.KIDNEY,
    "kidneys": Tissue.KIDNEY,
    "bladder": Tissue.BLADDER,
    "stomach": Tissue.STOMACH,
    "prostate": Tissue.PROSTATE,
    "parotid_left": Tissue.PAROTID,
    "parotid_right": Tissue.PAROTID,
    "glands": Tissue.PAROTID,
}


@dataclass
class Phantom:
    """One case as the segmentation pipeline sees it, plus the ground truth behind it (`info`)."""

    case_id: str
    patient_id: str
    tracer: str  # "fdg" or "psma"
    ct: sitk.Image  # int16 HU; on the PET grid, or on its own finer grid
    pet: sitk.Image  # float32 SUV
    label: sitk.Image  # uint8 {0,1} lesion mask on the PET grid
    info: dict  # JSON-serialisable description (grids, anatomy scale, organs, lesions)
    organs: sitk.Image | None = None  # uint8 organ label map on the PET grid (`petseg.model.organs` values)

    @property
    def source(self) -> str:
        """The organ map's file name for a phantom built around one, else "analytic"."""
        return self.info.get("organ_map", {}).get("file", "analytic")


def rng_for(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, purpose])


@dataclass
class Scene:
    """A case before imaging: grids, tissue map on the PET grid, and what to draw from."""

    case_id: str
    patient_id: str
    tracer: str
    seed: int
    index: int
    size: str
    grid_name: str
    pet_grid: DiagonalGrid
    anatomy: Anatomy
    tissue: np.ndarray
    tissue_on: Callable[[DiagonalGrid], np.ndarray]  # the tissue map on another grid (the CT's own)
    scale: float
    suv: dict[Tissue, float]
    hu: dict[Tissue, float]
    ct_own_grid: bool
    lesion_free: bool
    pet: PetSettings
    ct_noise_hu: float
    ct_uuid: str
    pet_uuid: str
    landmarks: dict[str, np.ndarray]
    extra: dict = field(default_factory=dict)


def check_common(seed: int, index: int, size: str) -> None:
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


def make_case(
    seed: int,
    index: int = 0,
    tracer: str = "fdg",
    size: str = "tiny",
    grid: str | None = None,
    ct_own_grid: bool | None = None,
    lesion_free: bool | None = None,
    z_slices: int | None = None,
    patient_id: str | None = None,
) -> Phantom:
    """One analytic phantom; `None` arguments are drawn from the case's own generators."""
    check_common(seed, index, size)
    if tracer not in ("fdg", "psma"):
        raise ValueError(f"tracer must be 'fdg' or 'psma' for one case, got {tracer!r}")
    if grid is not None and grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if grid is not None and FAMILIES[grid].tracer != tracer:
        raise ValueError(f"grid {grid} is a {FAMILIES[grid].tracer} grid, not a {tracer} one")
    if z_slices is not None and (
        isinstance(z_slices, bool)
        or not isinstance(z_slices, (int, np.integer))
        or not 8 <= z_slices <= MAX_SLICES
    ):
        raise ValueError(f"z_slices must be an integer between 8 and {MAX_SLICES}, got {z_slices!r}")
    if patient_id is not None:
        ids.check_patient_id(patient_id, tracer)
    return simulate(
        _analytic_scene(seed, index, tracer, size, grid, ct_own_grid, lesion_free, z_slices, patient_id)
    )


def _analytic_scene(
    seed: int,
    index: int,
    tracer: str,
    size: str,
    grid_name: str | None,
    ct_own_grid: bool | None,
    lesion_free: bool | None,
    z_slices: int | None,
    patient_id: str | None,
) -> Scene:
    study = rng_for(seed, index, STUDY)
    names = list(PSMA_GRID_WEIGHTS)
    weights = np.array(list(PSMA_GRID_WEIGHTS.values()), dtype=float)
    drawn_grid = names[int(study.choice(len(names), p=weights / weights.sum()))]
    grid_name = grid_name or ("fdg-400" if tracer == "fdg" else drawn_grid)
    family = FAMILIES[grid_name]
    n, _, nz = pet_size(family, size, study, z_slices)
    scale = anatomy_scale(family, size, (n, n, nz))
    sx, sy, sz = family.spacing
    fov_y = (family.fov_centre_y + study.uniform(-15, 15)) * scale
    top = study.uniform(-700.0, 400.0) * scale
    origin = (
        round(-(n - 1) * sx / 2 + study.uniform(-0.5, 0.5), 4),
        round((n - 1) * sy / 2 + fov_y, 4),
        round(2 * (top - (nz - 1) * sz)) / 2,
    )
    pet_grid = DiagonalGrid((n, n, nz), (sx, sy, sz), origin)
    choices = draw_study(study, tracer, ct_own_grid, lesion_free)

    identity = rng_for(seed, index, IDS)
    drawn_patient = ids.new_patient_id(identity, tracer)
    patient = patient_id if patient_id is not None else drawn_patient
    habitus = draw_habitus(
        np.random.default_rng([seed, ids.patient_key(patient), PATIENT]), "male" if tracer == "psma" else None
    )
    centre = pet_grid.centre()
    width, height = scale * habitus.width, scale * habitus.height
    top_z = pet_grid.bounds()[1][2]
    below_vertex = study.random() < 0.1
    margin = study.uniform(90.0, 130.0) if below_vertex else -study.uniform(5.0, 40.0)
    frame = Frame(
        centre_x=float(centre[0] + study.normal(0.0, 8.0) * scale),
        centre_y=float(centre[1] + study.uniform(-5.0, 25.0) * scale),
        vertex_z=float(top_z + margin * height),
        width=width,
        height=height,
    )
    anatomy = build_anatomy(frame, habitus, choices.setup)
    return assemble_scene(
        seed,
        index,
        size,
        tracer,
        grid_name,
        pet_grid,
        anatomy,
        lambda grid: render(anatomy, grid),
        scale,
        choices,
        identity,
        habitus,
        patient,
    )


def scaled_blur(scale: float) -> float:
    """Factor on the scanner's FWHM for an anatomy shrunk by `scale`.

    Reduced phantoms shrink lesion volumes by `scale` (`lesions._shape`), so lesion lengths by scale^(1/3);
    shrinking the blur alike keeps every lesion's partial-volume loss what it would be in a full-size scan.
    With the blur left at full size a tiny phantom's lesions (a dozen voxels) were smeared beyond what any
    threshold could recover: a 50%-of-SUVmax contour scored a mean Dice of 0.67 against their labels.
    """
    return float(np.cbrt(min(1.0, scale)))


@dataclass(frozen=True)
class Study:
    """Per-study choices: patient setup, uptakes, CT numbers, flags and scanner settings."""

    setup: Setup
    suv: dict[Tissue, float]
    hu: dict[Tissue, float]
    ct_own_grid: bool
    lesion_free: bool
    pet: PetSettings
    ct_noise_hu: float


def draw_study(
    rng: np.random.Generator, tracer: str, ct_own_grid: bool | None, lesion_free: bool | None
) -> Study:
    """Everything is drawn unconditionally, so that overriding one choice leaves the others unchanged."""
    own, free = rng.random(), rng.random()
    setup = draw_setup(rng, CONTRAST_PROBABILITY[tracer])
    suv = draw_suv(tracer, rng)
    hu = draw_hu(setup.contrast, np.random.default_rng(rng.integers(2**63)))
    return Study(
        setup=setup,
        suv=suv,
        hu=hu,
        ct_own_grid=bool(own < CT_OWN_GRID_PROBABILITY) if ct_own_grid is None else bool(ct_own_grid),
        lesion_free=bool(free < LESION_FREE_PROBABILITY) if lesion_free is None else bool(lesion_free),
        pet=PetSettings(
            noise_cov=float(rng.uniform(0.1, 0.2)), fwhm_mm=float(rng.uniform(5.5, 7.0)), scale=1.0
        ),
        ct_noise_hu=float(rng.uniform(10.0, 20.0)),
    )


def assemble_scene(
    seed: int,
    index: int,
    size: str,
    tracer: str,
    grid_name: str,
    pet_grid: DiagonalGrid,
    anatomy: Anatomy,
    tissue_on: Callable[[DiagonalGrid], np.ndarray],
    scale: float,
    study: Study,
    identity: np.random.Generator,
    habitus: Habitus,
    patient: str,
    case_id: str | None = None,
) -> Scene:
    """A scene from its parts; the case id and file uuids come from the `identity` generator."""
    drawn_id = ids.case_id(identity, patient, tracer, study.setup.contrast)
    ct_uuid, pet_uuid = ids.file_uuid(identity), ids.file_uuid(identity)
    return Scene(
        case_id=case_id or drawn_id,
        patient_id=patient,
        tracer=tracer,
        seed=seed,
        index=index,
        size=size,
        grid_name=grid_name,
        pet_grid=pet_grid,
        anatomy=anatomy,
        tissue=tissue_on(pet_grid),
        tissue_on=tissue_on,
        scale=scale,
        suv=study.suv,
        hu=study.hu,
        ct_own_grid=study.ct_own_grid,
        lesion_free=study.lesion_free,
        pet=PetSettings(study.pet.noise_cov, study.pet.fwhm_mm * scaled_blur(scale), scale),
        ct_noise_hu=study.ct_noise_hu,
        ct_uuid=ct_uuid,
        pet_uuid=pet_uuid,
        landmarks=dict(anatomy.landmarks),
        extra={
            "body": {
                "sex": habitus.sex,
                "height_factor": round(habitus.height, 4),
                "width_factor": round(habitus.width, 4),
                "fat_mm": round(habitus.fat_mm, 2),
                "arms": study.setup.arms,
                "contrast": study.setup.contrast,
                "vertex_z_mm": round(anatomy.frame.vertex_z, 2),
            }
        },
    )


def simulate(scene: Scene) -> Phantom:
    """Lesions, PET, label and CT for a scene."""
    pet_grid, tissue = scene.pet_grid, scene.tissue
    lesion_rng = rng_for(scene.seed, scene.index, LESIONS)
    count = count_lesions(lesion_rng)
    lesions: list[Placed] = []
    if not scene.lesion_free:
        lesions = draw_lesions(
            lesion_rng,
            count,
            scene.anatomy,
            tissue,
            pet_grid,
            scene.tracer,
            scene.scale,
            scene.suv,
            scene.hu,
            scene.pet.fwhm_mm,
        )
    label = np.zeros(pet_grid.shape, dtype=np.uint8)
    for placed in lesions:
        label[placed.window][placed.mask] = 1
    pet = pet_image(
        tissue, pet_grid, scene.suv, lesions, rng_for(scene.seed, scene.index, PET_NOISE), scene.pet
    )

    ct_settings, ct_grid = _ct_geometry(scene)
    if scene.ct_own_grid:
        ct_tissue = scene.tissue_on(ct_grid)
        ct_lesions = [p for p in (place(q.lesion, ct_grid, ct_tissue) for q in lesions) if p is not None]
    else:
        ct_tissue, ct_lesions = tissue, lesions
    ct = ct_image(
        ct_tissue, ct_grid, scene.hu, ct_lesions, rng_for(scene.seed, scene.index, CT_NOISE), ct_settings
    )
    del ct_tissue

    described = [describe(placed, pet_grid) for placed in lesions]
    low, high = pet_grid.bounds()
    organs = {}
    for name, centre in sorted(scene.landmarks.items()):
        tissue_class = LANDMARK_TISSUE.get(name)
        organs[name] = {
            "centre_mm": [round(float(c), 2) for c in centre],
            "in_fov": bool(np.all(centre >= low) and np.all(centre <= high)),
            "suv": None if tissue_class is None else round(scene.suv.get(tissue_class, 0.0), 3),
            "hu": None if tissue_class is None else round(scene.hu.get(tissue_class, 0.0), 1),
        }
    info = {
        "case_id": scene.case_id,
        "patient_id": scene.patient_id,
        "tracer": scene.tracer,
        "seed": int(scene.seed),
        "index": int(scene.index),
        "size": scene.size,
        "grid": scene.grid_name,
        "anatomy_scale": round(scene.scale, 5),
        "pet_grid": pet_grid.describe(),
        "ct_grid": ct_grid.describe(),
        "ct_own_grid": scene.ct_own_grid,
        "ct_uuid": scene.ct_uuid,
        "pet_uuid": scene.pet_uuid,
        **scene.extra,
        "pet": {"noise_cov": round(scene.pet.noise_cov, 4), "psf_fwhm_mm": round(scene.pet.fwhm_mm, 3)},
        "ct": {"noise_hu": round(scene.ct_noise_hu, 2), "fov_radius_mm": round(ct_settings.fov_radius, 2)},
        "uptake_suv": {t.name.lower(): round(v, 4) for t, v in sorted(scene.suv.items())},
        "ct_hu": {t.name.lower(): round(v, 1) for t, v in sorted(scene.hu.items())},
        "organs": organs,
        "lesion_free": not described,
        "lesions": described,
        "lesion_volume_ml": round(float(label.sum()) * pet_grid.voxel_ml, 4),
    }
    organs_image = pet_grid.image(organ_labels(tissue))
    return Phantom(
        scene.case_id, scene.patient_id, scene.tracer, ct, pet, pet_grid.image(label), info, organs_image
    )


def _ct_geometry(scene: Scene) -> tuple[CtSettings, DiagonalGrid]:
    """The CT's reconstruction circle, and its own grid (or the PET grid)."""
    rng = rng_for(scene.seed, scene.index, CT_GRID)
    anatomy, pet_grid, scale = scene.anatomy, scene.pet_grid, scene.scale
    depth = abs(anatomy.table_y - anatomy.anterior_y) / 2
    needed = max(anatomy.half_width, depth) * 1.03 + 5.0 * scale
    pet_fov = pet_grid.size[0] * pet_grid.spacing[0]
    radius = min(
        float(np.clip(needed, 250.0 * scale, 335.0 * scale)) * rng.uniform(1.0, 1.05), 0.47 * pet_fov
    )
    centre = (
        anatomy.frame.centre_x + rng.normal(0.0, 3.0) * scale,
        (anatomy.anterior_y + anatomy.table_y) / 2 + 15.0 * scale,
    )
    settings = CtSettings(
        noise_hu=scene.ct_noise_hu,
        fov_centre=(float(centre[0]), float(centre[1])),
        fov_radius=float(radius),
        lung_axis_y=anatomy.frame.y(20.0),
        scale=scale,
        smooth=not scene.ct_own_grid,
    )
    if not scene.ct_own_grid:
        return settings, pet_grid
    return settings, own_ct_grid(pet_grid, settings.fov_centre, radius, rng, full=scene.size == "full")


def own_ct_grid(
    pet: DiagonalGrid, centre: tuple[float, float], radius: float, rng: np.random.Generator, full: bool
) -> DiagonalGrid:
    """A finer CT grid around the reconstruction circle: about half the PET's in-plane spacing, its own origin
    (a fraction of a voxel and some mm away) and a slightly different z extent."""
    target = pet.spacing[0] * rng.uniform(0.45, 0.55)
    n = int(np.ceil(2 * radius / target))
    if full and 2 * radius / 512 <= 0.7 * pet.spacing[0]:
        n = 512
    spacing = 2 * radius / n
    sz = pet.spacing[2] if pet.spacing[2] <= 3.3 else pet.spacing[2] / 2
    low, high = pet.bounds()
    z_low = low[2] + rng.uniform(-3.0, 3.0) * pet.spacing[2]
    nz = max(8, round((high[2] - low[2] + rng.uniform(-4.0, 4.0) * pet.spacing[2]) / sz) + 1)
    origin = (
        round(centre[0] - (n - 1) / 2 * spacing + rng.uniform(-0.5, 0.5) * spacing, 4),
        round(centre[1] + (n - 1) / 2 * spacing + rng.uniform(-0.5, 0.5) * spacing, 4),
        round(float(z_low), 4),
    )
    return DiagonalGrid((n, n, nz), (spacing, spacing, sz), origin, pet.direction)
