"""Per-patient and per-study variation of the body: habitus, organ sizes and positions, study setup."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petseg.synthetic.reference import ORGANS


@dataclass(frozen=True)
class Habitus:
    """What stays the same across a patient's studies."""

    height: float
    width: float
    fat_mm: float
    belly: float
    sex: str
    organ_scale: dict[str, float]
    organ_shift: dict[str, tuple[float, float, float]]


@dataclass(frozen=True)
class Setup:
    """What changes between studies of the same patient."""

    arms: str
    bladder_fill: float
    stomach: bool
    stomach_gas: bool
    gas_pockets: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    contrast: bool
    # Plane waves whose sum separates bowel loops from mesenteric fat.
    bowel_directions: tuple[tuple[float, float, float], ...]
    bowel_phases: tuple[float, ...]


def draw_habitus(rng: np.random.Generator, sex: str | None = None) -> Habitus:
    """Height and width factors, fat, belly, sex, and per-organ size factors and shifts (frame mm)."""
    names = [*ORGANS, "brain", "lungs"]
    return Habitus(
        height=float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        width=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)),
        fat_mm=float(np.clip(rng.lognormal(np.log(14.0), 0.45), 4.0, 45.0)),
        belly=float(np.clip(rng.lognormal(0.0, 0.1), 0.85, 1.35)),
        sex=sex if sex is not None else ("male" if rng.random() < 0.55 else "female"),
        organ_scale={name: float(np.clip(rng.lognormal(0.0, 0.1), 0.75, 1.3)) for name in names},
        organ_shift={name: tuple(float(s) for s in rng.normal(0.0, 5.0, 3)) for name in names},
    )


def draw_setup(rng: np.random.Generator, contrast_probability: float) -> Setup:
    """Arms up or down, bladder filling, stomach and colon gas, bowel pattern, intravenous contrast."""
    paths = (
        lambda t: (-90.0, 0.0, 600 + 160 * t),  # ascending colon
        lambda t: (-90 + 180 * t, -50.0, 600.0),  # transverse colon
        lambda t: (90.0, 5.0, 590 + 170 * t),  # descending colon
        lambda t: (-10 + 50 * t, 25.0, 770 + 60 * t),  # sigmoid and rectum
    )
    pockets = []
    for _ in range(int(rng.integers(2, 8))):
        centre = paths[int(rng.integers(len(paths)))](float(rng.random()))
        semi = tuple(float(s) for s in rng.uniform(8.0, 20.0, 3))
        pockets.append((tuple(float(c) for c in centre), semi))
    directions = rng.normal(size=(5, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return Setup(
        bowel_directions=tuple(tuple(float(c) for c in d) for d in directions),
        bowel_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 5)),
        arms="down" if rng.random() < 0.5 else "up",
        bladder_fill=float(rng.uniform(0.45, 1.6)),
        stomach=bool(rng.random() < 0.85),
        stomach_gas=bool(rng.random() < 0.5),
        gas_pockets=tuple(pockets),  # type: ignore[arg-type]
        contrast=bool(rng.random() < contrast_probability),
    )
