"""An analytic whole-body anatomy: body outline, fat, organs, bones and the patient table.

`build_anatomy` turns a frame and the per-patient and per-study variation into an ordered list of layers
(tissue, shape); `render` paints them on any grid. Painting order resolves overlaps: later layers win, and a
layer may only overwrite the tissues it allows (ribs never cut into a lung, the liver may push a lung base
away). Dimensions are those of the reference adult in `reference.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from petseg.synthetic.builder import SOFT, SOFT_AND_LUNG, Builder, Layer, bounding, interp
from petseg.synthetic.frame import Frame
from petseg.synthetic.grids import DiagonalGrid
from petseg.synthetic.raster import (
    INFINITE,
    Box,
    Difference,
    Dome,
    Ellipsoid,
    Intersection,
    Shape,
    Union,
    Waves,
    paint,
)
from petseg.synthetic.reference import (
    ARM_DOWN,
    ARM_UP,
    BELLY_PROFILE,
    BRAIN,
    CRANIUM,
    FACE,
    FAT_PROFILE,
    LEG,
    LUNG,
    ORGANS,
    STATIONS,
    SUPPLIABLE,
    TRUNK,
)
from petseg.synthetic.skeleton import add_skeleton
from petseg.synthetic.tissues import Tissue, allowed
from petseg.synthetic.variation import Habitus, Setup

T = Tissue
__all__ = ["SUPPLIABLE", "Anatomy", "build_anatomy", "render"]


@dataclass
class Anatomy:
    """Layers to paint, plus what lesion placement and the CT field of view need to know."""

    frame: Frame
    layers: list[Layer]
    landmarks: dict[str, np.ndarray]
    regions: dict[str, Shape]
    stations: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    half_width: float = 0.0
    anterior_y: float = 0.0
    table_y: float = 0.0


@dataclass
class Outline:
    """The body's outer shape in frame knots, as the skeleton and the CT field of view need it."""

    trunk: list[tuple]
    legs: list[list[tuple]]
    arms: list[list[tuple]]
    table_v: float


def build_anatomy(
    frame: Frame,
    habitus: Habitus,
    setup: Setup,
    supplied: frozenset[str] = frozenset(),
    brain: Ellipsoid | None = None,
) -> Anatomy:
    """All layers of one body. Organs in `supplied` come from a real label map and are left out here;
    `brain` (physical) then places the cranium and skull around the real brain."""
    builder = Builder(frame, habitus, setup, supplied)
    outline = _outline(builder, brain)
    _cavity(builder)
    _chest(builder)
    _abdomen(builder)
    _head(builder, brain)
    add_skeleton(builder, outline.legs, outline.arms)

    f, fat = frame, habitus.fat_mm
    half_width = max(
        max(abs(u) + a + fat for _, u, _, a, _ in outline.arms[1]),
        max(a + fat * interp(FAT_PROFILE, w) for w, _, _, a, _, _ in outline.trunk),
    )
    front = min(v0 - b - fat * interp(FAT_PROFILE, w) for w, _, v0, _, b, _ in outline.trunk)
    stations = {
        name: (np.asarray(centre, dtype=float), np.asarray(spread, dtype=float))
        for name, (centre, spread) in STATIONS.items()
    }
    return Anatomy(
        frame=f,
        layers=builder.layers,
        landmarks=builder.landmarks,
        regions=builder.regions,
        stations=stations,
        half_width=f.width * half_width,
        anterior_y=f.y(front),
        table_y=f.y(outline.table_v),
    )


def render(anatomy: Anatomy, grid: DiagonalGrid) -> np.ndarray:
    """The tissue-class volume (z, y, x) of the anatomy on a grid."""
    volume = np.zeros(grid.shape, dtype=np.uint8)
    for layer in anatomy.layers:
        paint(volume, grid, layer.shape, int(layer.tissue), layer.allowed)
    return volume


def _outline(builder: Builder, brain: Ellipsoid | None) -> Outline:
    """Head, trunk (with the belly), legs and arms, first inflated by the fat, then the muscle; breasts; the
    back flattened on the table; the table."""
    f, habitus, setup, add = builder.frame, builder.habitus, builder.setup, builder.add
    fat = habitus.fat_mm
    trunk = []
    for w, a, b, v0, power in TRUNK:
        grown = b * (1.0 + (habitus.belly - 1.0) * interp(BELLY_PROFILE, w))
        trunk.append((w, 0.0, v0 - 0.8 * (grown - b), a, grown, power))
    table_v = max(
        v0 + b + 0.6 * fat * interp(FAT_PROFILE, w) for w, _, v0, _, b, _ in trunk if 330 <= w <= 860
    )
    legs = [
        [(w, side * u, table_v - b - fat * interp(FAT_PROFILE, w), a, b) for w, u, a, b in LEG]
        for side in (-1, 1)
    ]
    down = setup.arms == "down"
    arms = []
    for side in (-1, 1):
        knots = []
        for w, u, v, a, b in ARM_DOWN if down else ARM_UP:
            # Hanging arms clear the trunk's fat and their own, and rest near the table.
            shift = fat * (interp(FAT_PROFILE, min(max(w, 330.0), 880.0)) + 0.6) - 5 if down else 0.0
            knots.append((w, side * (u + shift), min(v, table_v - b - 0.6 * fat) if down else v, a, b))
        arms.append(knots)

    def inflated(knots: list[tuple], scale: float) -> Shape:
        rows = []
        for knot in knots:
            w, u, v, a, b = knot[:5]
            t = fat * interp(FAT_PROFILE, w) * scale
            rows.append((w, u, v, a + t, b + t, *knot[5:]))
        return f.profile(rows)

    (cu, cv, cw), (ca, cb, cc) = CRANIUM
    if brain is not None:
        # Around a real brain: the cranium follows it, 14 mm out (skull and scalp muscle).
        centre, semi = np.asarray(brain.centre), np.asarray(brain.semi)
        cu, cv, cw = (centre[0] - f.centre_x) / f.width, (centre[1] - f.centre_y) / f.width, f.w(centre[2])
        ca, cb, cc = semi[0] / f.width + 14, semi[1] / f.width + 14, semi[2] / f.height + 14
    (fu, fv, fw), (fa, fb, fc) = FACE
    scalp = 0.25 * fat
    for tissue, grow in ((T.FAT, 1.0), (T.MUSCLE, 0.0)):
        pad = grow * scalp
        add(tissue, f.ellipsoid((cu, cv, cw), (ca + pad, cb + pad, cc + pad)))
        add(tissue, f.ellipsoid((fu, fv, fw), (fa + pad, fb + pad, fc + pad)))
        add(tissue, inflated(trunk, grow))
        for knots in legs:
            add(tissue, inflated(knots, grow * 0.8))
        for knots in arms:
            add(tissue, inflated(knots, grow * 0.6))
    if habitus.sex == "female":
        size = habitus.width * (0.8 + 0.4 * fat / 30.0)
        for side in (-1, 1):
            centre = (side * 72, 5 - 107 - 0.5 * fat - 8 * size, 450)
            add(T.FAT, f.ellipsoid(centre, (55 * size, 38 * size, 52 * size)), allowed(T.AIR, T.FAT))
            add(T.BREAST, f.ellipsoid(centre, (30 * size, 20 * size, 30 * size)), allowed(T.FAT))
    table_y = f.y(table_v)
    add(T.AIR, Box((-INFINITE, table_y, -INFINITE), (INFINITE, INFINITE, INFINITE)), allowed(T.FAT, T.MUSCLE))
    # A carbon-fibre table: thin dense skins around a foam core, running the whole length of the scan.
    table = Ellipsoid((f.x(0), table_y + f.width * 24, 0.0), (f.width * 235, f.width * 22, INFINITE), 8.0)
    core = Ellipsoid((f.x(0), table_y + f.width * 24, 0.0), (f.width * 229, f.width * 17, INFINITE), 8.0)
    add(T.TABLE, table, allowed(T.AIR))
    add(T.TABLE_CORE, core, allowed(T.TABLE))
    return Outline(trunk, legs, arms, table_v)


def _cavity(builder: Builder) -> None:
    """The abdominal and pelvic cavity: bowel loops in mesenteric fat, with gas in the colon."""
    f, setup, belly = builder.frame, builder.setup, builder.habitus.belly
    cavity = f.profile(
        [
            (560, 0, -20, 118, 70 * belly),
            (650, 0, -22 - 40 * (belly - 1), 122, 72 * belly),
            (740, 0, -20 - 40 * (belly - 1), 128, 70 * belly),
            (800, 0, -20, 110, 62),
            (845, 0, -22, 60, 40),
        ]
    )
    builder.add(T.BOWEL, cavity, allowed(T.MUSCLE))
    loops = Waves(np.asarray(setup.bowel_directions), np.asarray(setup.bowel_phases), 45.0 * f.width, 0.8)
    builder.add(T.FAT, Intersection([cavity, loops]), allowed(T.BOWEL))
    builder.regions["bowel"] = cavity
    for centre, semi in setup.gas_pockets:
        builder.add(T.BOWEL_GAS, f.ellipsoid(centre, semi), allowed(T.BOWEL))


def _chest(builder: Builder) -> None:
    """Lungs under the diaphragm domes, airways, heart with its left-ventricular wall, great vessels."""
    f, habitus, add = builder.frame, builder.habitus, builder.add
    if builder.analytic("lungs"):
        lungs = []
        for side in (-1, 1):
            shrink = 0.95 if side > 0 else 1.0
            knots = [(w, side * (u + (4 if side > 0 else 0)), v, a * shrink, b) for w, u, v, a, b in LUNG]
            top = 462 if side > 0 else 450
            dome = Dome((f.x(side * 72), f.y(5), f.z(top)), (f.width * 70, f.width * 90), f.height * 62)
            lungs.append(Intersection([f.profile(knots), dome]))
            add(T.LUNG, lungs[-1], SOFT)
        builder.regions["lungs"] = Union(lungs)
        builder.landmarks["lung_left"] = f.point(72, 15, 380)
        builder.landmarks["lung_right"] = f.point(-72, 15, 380)
    trachea = [
        (150, 0, -10, 10, 8),
        (215, 0, -15, 9, 8),
        (300, 0, -20, 9, 9),
        (400, 0, -5, 9, 9),
        (425, 0, 0, 8, 8),
    ]
    for tube in (trachea, [(425, 0, 0, 7, 7), (455, 35, 5, 6, 6)], [(425, 0, 0, 7, 7), (450, -30, 5, 7, 7)]):
        add(T.AIRWAY, f.profile(tube), allowed(T.FAT, T.MUSCLE, T.LUNG))
    if builder.analytic("heart"):
        heart = builder.organ("heart")
        add(T.HEART, heart, SOFT_AND_LUNG)
        (hu, hv, hw), _ = ORGANS["heart"]
        du, dv, dw = habitus.organ_shift["heart"]
        k = habitus.organ_scale["heart"]
        ventricle = (hu + du + 15 * k, hv + dv - 5 * k, hw + dw + 12 * k)
        wall = Difference(
            f.ellipsoid(ventricle, (38 * k, 34 * k, 44 * k)), f.ellipsoid(ventricle, (27 * k, 23 * k, 33 * k))
        )
        add(T.MYOCARDIUM, wall, allowed(T.HEART))
        builder.regions["heart"] = heart
        builder.landmarks["heart"] = np.asarray(heart.centre)
    aorta = [
        (355, 22, 30, 12, 12),
        (450, 22, 30, 12, 12),
        (560, 15, 25, 11, 11),
        (720, 5, 10, 10, 10),
        (740, 3, 12, 9, 9),
    ]
    vessels = [
        f.profile([(360, 8, -20, 14, 14), (420, 8, -20, 14, 14)]),  # ascending aorta
        f.ellipsoid((15, 5, 355), (14, 35, 12)),  # arch
        f.profile(aorta),  # descending aorta
        f.profile(IVC),
        f.profile([(740, 3, 12, 8, 8), (820, 70, 20, 7, 7)]),  # iliac arteries
        f.profile([(740, -3, 12, 8, 8), (820, -70, 20, 7, 7)]),
    ]
    for vessel in vessels:
        add(T.BLOOD, vessel, SOFT_AND_LUNG)


IVC = [(460, -20, 30, 11, 11), (740, -15, 18, 11, 11)]


def _abdomen(builder: Builder) -> None:
    """Stomach, liver (with the vena cava through it), spleen, kidneys, prostate and bladder."""
    f, setup, add, landmarks, regions = (
        builder.frame,
        builder.setup,
        builder.add,
        builder.landmarks,
        builder.regions,
    )
    if builder.analytic("stomach") and setup.stomach:
        stomach = builder.organ("stomach")
        add(T.STOMACH, stomach, SOFT)
        if setup.stomach_gas:
            # Gas rises to the front of a supine patient's stomach.
            front = stomach.centre[1] - 0.45 * stomach.semi[1]
            gas = Intersection([stomach, Box((-INFINITE, -INFINITE, -INFINITE), (INFINITE, front, INFINITE))])
            add(T.STOMACH_GAS, gas, allowed(T.STOMACH))
        landmarks["stomach"] = np.asarray(stomach.centre)
    if builder.analytic("liver"):
        liver = builder.organ("liver")
        add(T.LIVER, liver, SOFT_AND_LUNG)
        add(T.LIVER, builder.organ("liver_left"), SOFT_AND_LUNG)
        regions["liver"] = liver
        landmarks["liver"] = np.asarray(liver.centre)
    add(T.BLOOD, f.profile(IVC), allowed(T.LIVER))
    if builder.analytic("spleen"):
        spleen = builder.organ("spleen")
        add(T.SPLEEN, spleen, SOFT_AND_LUNG)
        landmarks["spleen"] = np.asarray(spleen.centre)
    if builder.analytic("kidneys"):
        kidneys = []
        for name in ("kidney_left", "kidney_right"):
            kidney = builder.organ(name)
            add(T.KIDNEY, kidney, allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BOWEL_GAS, T.LIVER, T.SPLEEN))
            side = 1 if name.endswith("left") else -1
            centre = np.asarray(kidney.centre) - np.array([side * 0.55 * kidney.semi[0], 0.0, 0.0])
            semi = np.asarray(kidney.semi) * np.array([0.42, 0.45, 0.4])
            add(T.RENAL_PELVIS, Ellipsoid(centre, semi), allowed(T.KIDNEY))
            kidneys.append(kidney)
            # The cortex, not the collecting system: half-way between the centre and the lateral edge.
            landmarks[name] = np.asarray(kidney.centre) + np.array([side * 0.5 * kidney.semi[0], 0.0, 0.0])
        regions["kidneys"] = bounding(kidneys)
    if builder.analytic("prostate") and builder.habitus.sex == "male":
        prostate = builder.organ("prostate")
        add(T.PROSTATE, prostate, SOFT)
        regions["prostate"] = prostate
        landmarks["prostate"] = np.asarray(prostate.centre)
    if builder.analytic("bladder"):
        bladder = builder.organ("bladder", setup.bladder_fill ** (1 / 3))
        add(T.BLADDER, bladder, allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BOWEL_GAS, T.PROSTATE))
        regions["bladder"] = bladder
        landmarks["bladder"] = np.asarray(bladder.centre)


def _head(builder: Builder, brain: Ellipsoid | None) -> None:
    """Brain in its CSF and skull, salivary glands and tonsils."""
    f, habitus, add = builder.frame, builder.habitus, builder.add
    if builder.analytic("brain"):
        (u, v, w), (a, b, c) = BRAIN
        s = habitus.organ_scale.get("brain", 1.0)
        du, dv, dw = (0.3 * d for d in habitus.organ_shift.get("brain", (0.0, 0.0, 0.0)))
        brain = f.ellipsoid((u + du, v + dv, w + dw), (a * s, b * s, c * s))
    if brain is not None:
        centre, semi = np.asarray(brain.centre), np.asarray(brain.semi)
        pad = np.array([f.width, f.width, f.height])
        add(T.CSF, Ellipsoid(centre, semi + 4 * pad), allowed(T.FAT, T.MUSCLE))
        skull = Difference(Ellipsoid(centre, semi + 11 * pad), Ellipsoid(centre, semi + 4 * pad))
        add(T.CORTICAL, skull, allowed(T.FAT, T.MUSCLE))
        if builder.analytic("brain"):
            add(T.BRAIN, brain, allowed(T.CSF))
            builder.landmarks["brain"] = centre
    if builder.analytic("glands"):
        for name, tissue in (("parotid", T.PAROTID), ("submandibular", T.SUBMANDIBULAR)):
            for side in ("left", "right"):
                gland = builder.organ(f"{name}_{side}")
                add(tissue, gland, allowed(T.FAT, T.MUSCLE))
                if name == "parotid":
                    builder.landmarks[f"parotid_{side}"] = np.asarray(gland.centre)
    for side in (-1, 1):
        add(T.TONSIL, f.ellipsoid((side * 14, -15, 190), (7, 8, 11)), allowed(T.MUSCLE, T.FAT))
