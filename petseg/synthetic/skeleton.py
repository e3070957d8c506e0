"""The skeleton: spine with discs, rib cage, shoulder girdle, pelvis and the long bones of the limbs.

Red (haematopoietic) marrow fills the axial skeleton and the ends of the femurs; the shafts of adult long
bones hold fatty (yellow) marrow, with little uptake and a low CT number.
"""

from __future__ import annotations

import numpy as np

from petseg.synthetic.builder import BONE_ALLOWED, Builder, bounding
from petseg.synthetic.raster import INFINITE, Bands, Box, Difference, Ellipsoid, Intersection
from petseg.synthetic.reference import LUNG, SPINE
from petseg.synthetic.tissues import Tissue, allowed

T = Tissue


def add_skeleton(builder: Builder, legs: list[list[tuple]], arms: list[list[tuple]]) -> None:
    """Spine, ribs, shoulder girdle, pelvis and limb bones: cortex around marrow, painted over soft tissue
    (never over organs). Leg and arm bones follow the limbs' own knots (w, u, v, a, b)."""
    f, add, regions = builder.frame, builder.add, builder.regions
    bone = BONE_ALLOWED
    spine = f.profile([(w, 0, v, a, b) for w, v, a, b in SPINE])
    cortex = f.profile([(w, 0, v, a + 2, b + 2) for w, v, a, b in SPINE])
    add(T.CORTICAL, cortex, bone)
    add(T.MARROW, spine, allowed(T.CORTICAL))
    discs = Intersection(
        [
            spine,
            Bands(f.height * 26, f.height * 5, f.z(760), 0.0),
            Box((-INFINITE,) * 3, (INFINITE, INFINITE, f.z(205))),
        ]
    )
    add(
        T.DISC,
        Intersection([discs, Box((-INFINITE, -INFINITE, f.z(745)), (INFINITE,) * 3)]),
        allowed(T.MARROW),
    )
    arch = f.profile([(w, 0, v + b + 9, max(9.0, 0.9 * a), 8) for w, v, a, b in SPINE if w <= 760])
    add(T.MARROW, arch, bone)
    spinous = f.profile([(w, 0, v + b + 22, 4, 10) for w, v, a, b in SPINE if 200 <= w <= 740])
    add(T.MARROW, spinous, bone)
    canal = f.profile([(w, 0, v + b + 8, 7, 5.5) for w, v, a, b in SPINE if w <= 770])
    add(T.CSF, canal, allowed(T.MARROW, T.CORTICAL, T.MUSCLE, T.FAT))

    # Rib cage: a shell just outside the lungs, cut into ribs that descend towards the front.
    cage_in, cage_out = [], []
    for w, u, v, a, b in LUNG:
        reach = u + a + 4
        cage_in.append((w, 0, v, reach, b + 4))
        cage_out.append((w, 0, v, reach + 9, b + 13))
    cage_in.append((600, 0, 25, 128, 76))
    cage_out.append((600, 0, 25, 137, 85))
    shell = Difference(f.profile(cage_out), f.profile(cage_in))
    slope = 0.45 * f.height / f.width
    front = Box((f.x(-28), -INFINITE, -INFINITE), (f.x(28), f.y(-40), INFINITE))
    low_front = Box((-INFINITE, -INFINITE, -INFINITE), (INFINITE, f.y(-20), f.z(560)))
    ribs = Intersection([shell, Bands(f.height * 25, f.height * 9, f.z(300), slope)])
    add(T.CORTICAL, Difference(Difference(ribs, front), low_front), allowed(T.FAT, T.MUSCLE))
    # Marrow in the middle of each rib: 2 mm of cortex all round.
    core = Difference(
        f.profile([(w, u, v, a - 2, b - 2) for w, u, v, a, b in cage_out]),
        f.profile([(w, u, v, a + 2, b + 2) for w, u, v, a, b in cage_in]),
    )
    add(
        T.MARROW,
        Intersection([core, Bands(f.height * 25, f.height * 5, f.z(300) - 2 * f.height, slope)]),
        allowed(T.CORTICAL),
    )
    add(T.MARROW, f.profile([(330, 0, -92, 16, 7), (420, 0, -96, 14, 7), (520, 0, -94, 12, 6)]), bone)
    for side in (-1, 1):
        add(T.MARROW, f.ellipsoid((side * 80, -60, 318), (70, 9, 9)), bone)
        add(T.MARROW, f.ellipsoid((side * 110, 80, 400), (48, 7, 70)), bone)
    add(
        T.MARROW,
        Intersection(
            [
                Difference(
                    f.ellipsoid((0, -45, 205), (48, 48, 22)), f.ellipsoid((0, -45, 205), (41, 41, 40))
                ),
                Box((-INFINITE,) * 3, (INFINITE, f.y(-30), INFINITE)),
            ]
        ),
        bone,
    )

    # Pelvis and legs.
    pelvis = []
    for side in (-1, 1):
        pieces = [
            f.ellipsoid((side * 95, 45, 735), (48, 16, 52)),
            f.ellipsoid((side * 92, 10, 800), (30, 30, 30)),
            f.ellipsoid((side * 65, 30, 850), (18, 20, 25)),
            f.ellipsoid((side * 40, -45, 835), (45, 12, 14)),
        ]
        for piece in pieces:
            add(T.CORTICAL, Ellipsoid(piece.centre, np.asarray(piece.semi) + 2 * f.width), bone)
            add(T.MARROW, piece, allowed(T.CORTICAL))
        pelvis.extend(pieces)
        leg = legs[0 if side < 0 else 1]
        # v of the long bones is relative to the leg's own centre (the femur and tibia lie anteriorly).
        femur = [
            (840, side * 122, -18, 15, 15),
            (950, side * 112, -12, 14, 14),
            (1100, side * 95, -8, 14, 14),
            (1180, side * 82, -5, 18, 18),
            (1205, side * 78, -2, 36, 28),
            (1222, side * 77, -2, 35, 28),
        ]
        tibia = [
            (1228, side * 75, -5, 34, 28),
            (1260, side * 73, -15, 26, 22),
            (1330, side * 72, -22, 15, 14),
            (1600, side * 70, -10, 13, 13),
            (1640, side * 70, 0, 22, 18),
        ]
        fibula = [(1240, side * 101, 5, 7, 7), (1630, side * 92, 5, 7, 7)]
        leg_v = {w: v for w, _, v, _, _ in leg}
        for knots in (femur, tibia, fibula):
            placed = [(w, u, v + _leg_centre(leg_v, w), a, b) for w, u, v, a, b in knots]
            add(T.CORTICAL, f.profile(placed), bone)
            add(
                T.YELLOW_MARROW,
                f.profile([(w, u, v, a * 0.6, b * 0.6) for w, u, v, a, b in placed]),
                allowed(T.CORTICAL),
            )
        for centre, semi in (
            ((side * 92, 10, 800), (24, 24, 24)),
            ((side * 110, 10, 815), (22, 14, 14)),
            ((side * 130, 15, 820), (18, 18, 24)),
        ):
            add(T.MARROW, f.ellipsoid(centre, semi), bone)
        add(T.MARROW, f.ellipsoid((side * 76, _leg_centre(leg_v, 1190) - 45, 1190), (20, 8, 22)), bone)
        add(T.MARROW, f.ellipsoid((side * 70, _leg_centre(leg_v, 1690) - 10, 1688), (26, 85, 20)), bone)
    regions["pelvis"] = bounding(pelvis)
    # Arm bones along the arm's axis.
    for knots in arms:
        humerus = [(w, u, v, min(a, 44) * 0.27, min(b, 46) * 0.27) for w, u, v, a, b in knots[:-2]]
        add(T.CORTICAL, f.profile(humerus), bone)
        add(
            T.YELLOW_MARROW,
            f.profile([(w, u, v, a * 0.55, b * 0.55) for w, u, v, a, b in humerus]),
            allowed(T.CORTICAL),
        )
    regions["spine"] = spine


def _leg_centre(leg_v: dict[float, float], w: float) -> float:
    ws = sorted(leg_v)
    return float(np.interp(w, ws, [leg_v[k] for k in ws]))
