"""Collecting the painting layers of one body: the shared state of the anatomy's parts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from petseg.synthetic.frame import Frame
from petseg.synthetic.raster import Box, Ellipsoid, Shape
from petseg.synthetic.reference import ORGANS
from petseg.synthetic.tissues import Tissue, allowed
from petseg.synthetic.variation import Habitus, Setup

T = Tissue
# What a layer may overwrite: soft tissue only, soft tissue and lung, and for bones also vessels and discs.
SOFT = allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BOWEL_GAS, T.BREAST)
SOFT_AND_LUNG = allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BOWEL_GAS, T.LUNG, T.BREAST)
BONE_ALLOWED = allowed(T.FAT, T.MUSCLE, T.BOWEL, T.BOWEL_GAS, T.LUNG, T.BLOOD, T.DISC, T.BREAST)


@dataclass
class Layer:
    tissue: Tissue
    shape: Shape
    allowed: np.ndarray | None = None


@dataclass
class Builder:
    """Layers in painting order, with the landmarks and lesion regions found on the way."""

    frame: Frame
    habitus: Habitus
    setup: Setup
    supplied: frozenset[str]
    layers: list[Layer] = field(default_factory=list)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    regions: dict[str, Shape] = field(default_factory=dict)

    def add(self, tissue: Tissue, shape: Shape, allow: np.ndarray | None = None) -> None:
        self.layers.append(Layer(tissue, shape, allow))

    def analytic(self, organ: str) -> bool:
        """Whether the organ is drawn here (not supplied by a real organ map)."""
        return organ not in self.supplied

    def organ(self, name: str, scale: float = 1.0) -> Ellipsoid:
        """A reference organ moved and resized by the patient's own factors."""
        (u, v, w), (a, b, c) = ORGANS[name]
        key = "liver" if name == "liver_left" else name
        s = self.habitus.organ_scale.get(key, 1.0) * scale
        du, dv, dw = self.habitus.organ_shift.get(key, (0.0, 0.0, 0.0))
        return self.frame.ellipsoid((u + du, v + dv, w + dw), (a * s, b * s, c * s))


def interp(knots: tuple[tuple[float, float], ...], w: float) -> float:
    xs, ys = zip(*knots, strict=True)
    return float(np.interp(w, xs, ys))


def bounding(shapes: list[Ellipsoid]) -> Box:
    lows, highs = zip(*(shape.bounds() for shape in shapes), strict=True)
    return Box(np.min(lows, axis=0), np.max(highs, axis=0))
