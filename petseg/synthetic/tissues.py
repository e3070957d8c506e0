"""Tissue classes and their CT numbers and tracer uptakes, drawn per case.

Uptake ranges are the usual clinical SUVs about an hour after injection; each case draws its own value for
every tissue (log-uniform in the range), so organ-to-background contrast varies between cases as it does
between patients.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    MUSCLE = 2
    BOWEL = 3
    BOWEL_GAS = 4
    LUNG = 5
    AIRWAY = 6
    BRAIN = 7
    CSF = 8
    HEART = 9  # cardiac chambers (blood pool)
    MYOCARDIUM = 10
    BLOOD = 11  # great vessels
    LIVER = 12
    SPLEEN = 13
    KIDNEY = 14
    RENAL_PELVIS = 15
    BLADDER = 16
    STOMACH = 17
    STOMACH_GAS = 18
    PROSTATE = 19
    PAROTID = 20
    SUBMANDIBULAR = 21
    TONSIL = 22
    MARROW = 23
    CORTICAL = 24
    DISC = 25
    TABLE = 26
    TABLE_CORE = 27
    BREAST = 28
    YELLOW_MARROW = 29  # fatty marrow of adult long-bone shafts: low uptake, low CT number


N_TISSUES = len(Tissue)
# The tissues behind each organ label of `petseg.model.organs` (the first is the one an organ map paints).
ORGAN_TISSUES: dict[int, tuple[Tissue, ...]] = {
    1: (Tissue.SPLEEN,),
    2: (Tissue.KIDNEY, Tissue.RENAL_PELVIS),
    3: (Tissue.LIVER,),
    4: (Tissue.BLADDER,),
    5: (Tissue.LUNG,),
    6: (Tissue.BRAIN,),
    7: (Tissue.HEART, Tissue.MYOCARDIUM),
    8: (Tissue.STOMACH, Tissue.STOMACH_GAS),
    9: (Tissue.PROSTATE,),
    10: (Tissue.PAROTID, Tissue.SUBMANDIBULAR),
}
OUTSIDE_BODY = (Tissue.AIR, Tissue.TABLE, Tissue.TABLE_CORE)
BONE = (Tissue.MARROW, Tissue.YELLOW_MARROW, Tissue.CORTICAL)


def table(values: dict[Tissue, float], default: float = 0.0) -> np.ndarray:
    """A float32 lookup table indexed by tissue class."""
    lut = np.full(256, default, dtype=np.float32)
    for tissue, value in values.items():
        lut[int(tissue)] = value
    return lut


def allowed(*tissues: Tissue) -> np.ndarray:
    """A boolean table over tissue classes for `raster.paint(allowed=...)`."""
    lut = np.zeros(256, dtype=bool)
    lut[[int(t) for t in tissues]] = True
    return lut


def allowed_except(*tissues: Tissue) -> np.ndarray:
    return ~allowed(*tissues)


# SUV ranges (low, high) per tracer. Chambers and vessels share the blood value (drawn once as BLOOD).
SUV_RANGES: dict[str, dict[Tissue, tuple[float, float]]] = {
    "fdg": {
        Tissue.FAT: (0.25, 0.45),
        Tissue.MUSCLE: (0.6, 0.9),
        Tissue.BREAST: (0.5, 0.9),
        Tissue.BOWEL: (0.8, 1.8),
        Tissue.LUNG: (0.3, 0.5),
        Tissue.AIRWAY: (0.03, 0.08),
        Tissue.BRAIN: (7.0, 10.0),
        Tissue.CSF: (0.3, 0.6),
        Tissue.BLOOD: (1.3, 2.0),
        Tissue.MYOCARDIUM: (2.0, 8.0),
        Tissue.LIVER: (2.0, 2.5),
        Tissue.SPLEEN: (1.6, 2.0),
        Tissue.KIDNEY: (3.0, 6.0),
        Tissue.RENAL_PELVIS: (8.0, 30.0),
        Tissue.BLADDER: (15.0, 60.0),
        Tissue.STOMACH: (1.2, 2.5),
        Tissue.PROSTATE: (0.8, 1.5),
        Tissue.PAROTID: (1.2, 2.2),
        Tissue.SUBMANDIBULAR: (1.3, 2.4),
        Tissue.TONSIL: (2.5, 5.0),
        Tissue.MARROW: (1.2, 1.8),
        Tissue.YELLOW_MARROW: (0.4, 0.7),
        Tissue.CORTICAL: (0.3, 0.5),
        Tissue.DISC: (0.5, 0.8),
    },
    "psma": {
        Tissue.FAT: (0.15, 0.3),
        Tissue.MUSCLE: (0.4, 0.7),
        Tissue.BREAST: (0.3, 0.6),
        Tissue.BOWEL: (1.2, 3.5),
        Tissue.LUNG: (0.2, 0.4),
        Tissue.AIRWAY: (0.02, 0.05),
        Tissue.BRAIN: (0.2, 0.4),
        Tissue.CSF: (0.05, 0.15),
        Tissue.BLOOD: (0.8, 1.5),
        Tissue.MYOCARDIUM: (1.0, 2.0),
        Tissue.LIVER: (5.0, 7.0),
        Tissue.SPLEEN: (4.0, 6.0),
        Tissue.KIDNEY: (20.0, 30.0),
        Tissue.RENAL_PELVIS: (10.0, 40.0),
        Tissue.BLADDER: (10.0, 40.0),
        Tissue.STOMACH: (1.0, 2.5),
        Tissue.PROSTATE: (3.0, 8.0),
        Tissue.PAROTID: (10.0, 15.0),
        Tissue.SUBMANDIBULAR: (10.0, 15.0),
        Tissue.TONSIL: (0.8, 1.5),
        Tissue.MARROW: (0.8, 1.5),
        Tissue.YELLOW_MARROW: (0.2, 0.4),
        Tissue.CORTICAL: (0.2, 0.4),
        Tissue.DISC: (0.3, 0.5),
    },
}

# CT numbers (HU) without and with intravenous contrast; (value, per-case jitter).
HU_NATIVE: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 12.0),
    Tissue.MUSCLE: (45.0, 6.0),
    Tissue.BREAST: (-40.0, 20.0),
    Tissue.BOWEL: (20.0, 8.0),
    Tissue.BOWEL_GAS: (-950.0, 20.0),
    Tissue.LUNG: (-850.0, 25.0),
    Tissue.AIRWAY: (-990.0, 5.0),
    Tissue.BRAIN: (35.0, 3.0),
    Tissue.CSF: (8.0, 3.0),
    Tissue.HEART: (42.0, 4.0),
    Tissue.MYOCARDIUM: (50.0, 4.0),
    Tissue.BLOOD: (42.0, 4.0),
    Tissue.LIVER: (60.0, 6.0),
    Tissue.SPLEEN: (50.0, 4.0),
    Tissue.KIDNEY: (35.0, 4.0),
    Tissue.RENAL_PELVIS: (12.0, 4.0),
    Tissue.BLADDER: (10.0, 4.0),
    Tissue.STOMACH: (25.0, 8.0),
    Tissue.STOMACH_GAS: (-950.0, 20.0),
    Tissue.PROSTATE: (40.0, 4.0),
    Tissue.PAROTID: (15.0, 10.0),
    Tissue.SUBMANDIBULAR: (45.0, 5.0),
    Tissue.TONSIL: (50.0, 5.0),
    Tissue.MARROW: (250.0, 50.0),
    Tissue.YELLOW_MARROW: (10.0, 25.0),
    Tissue.CORTICAL: (950.0, 150.0),
    Tissue.DISC: (85.0, 8.0),
    Tissue.TABLE: (200.0, 40.0),
    Tissue.TABLE_CORE: (-900.0, 30.0),
}
HU_CONTRAST: dict[Tissue, tuple[float, float]] = {
    Tissue.HEART: (180.0, 30.0),
    Tissue.BLOOD: (180.0, 30.0),
    Tissue.MYOCARDIUM: (110.0, 10.0),
    Tissue.LIVER: (110.0, 12.0),
    Tissue.SPLEEN: (120.0, 12.0),
    Tissue.KIDNEY: (170.0, 25.0),
    Tissue.BOWEL: (45.0, 10.0),
}


def draw_suv(tracer: str, rng: np.random.Generator) -> dict[Tissue, float]:
    """One case's uptake per tissue (SUV): log-uniform in each range."""
    suv = {
        tissue: float(np.exp(rng.uniform(np.log(low), np.log(high))))
        for tissue, (low, high) in SUV_RANGES[tracer].items()
    }
    suv[Tissue.HEART] = suv[Tissue.BLOOD]
    if tracer == "fdg" and rng.random() < 0.25:
        # Fasting suppresses myocardial glucose uptake in some patients: heart at blood-pool level.
        suv[Tissue.MYOCARDIUM] = suv[Tissue.BLOOD] * rng.uniform(1.0, 1.4)
    return suv


def draw_hu(contrast: bool, rng: np.random.Generator) -> dict[Tissue, float]:
    """One case's CT number per tissue (HU)."""
    values = dict(HU_NATIVE)
    if contrast:
        values.update(HU_CONTRAST)
    hu = {tissue: float(mean + spread * rng.standard_normal()) for tissue, (mean, spread) in values.items()}
    hu[Tissue.AIR] = -1000.0
    hu[Tissue.CORTICAL] = max(hu[Tissue.CORTICAL], 700.0)
    return hu


def organ_labels(tissue: np.ndarray) -> np.ndarray:
    """A tissue map as an organ label map (uint8, `petseg.model.organs` values; 0 elsewhere)."""
    lut = np.zeros(256, dtype=np.uint8)
    for value, tissues in ORGAN_TISSUES.items():
        lut[[int(t) for t in tissues]] = value
    return lut[tissue]
