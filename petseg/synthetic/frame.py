"""The body frame: reference-adult millimetres mapped onto patient (LPS) millimetres.

Anatomy is written once, for a reference adult lying supine, head first, in frame coordinates: u towards the
patient's left, v towards the back (the table), w downwards from the vertex. A case stretches, shrinks and
places that frame (`Frame`), so every shape stays axis-aligned in physical space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from petseg.synthetic.raster import Ellipsoid, Profile

# A reference adult is about 1720 mm from vertex to sole.
BODY_LENGTH_MM = 1720.0


@dataclass(frozen=True)
class Frame:
    """x = centre_x + width * u, y = centre_y + width * v, z = vertex_z - height * w (LPS mm)."""

    centre_x: float
    centre_y: float
    vertex_z: float
    width: float
    height: float

    def x(self, u: float) -> float:
        return self.centre_x + self.width * u

    def y(self, v: float) -> float:
        return self.centre_y + self.width * v

    def z(self, w: float) -> float:
        return self.vertex_z - self.height * w

    def w(self, z: float) -> float:
        return (self.vertex_z - z) / self.height

    def point(self, u: float, v: float, w: float) -> np.ndarray:
        return np.array([self.x(u), self.y(v), self.z(w)])

    def ellipsoid(self, centre: Sequence[float], semi: Sequence[float], power: float = 2.0) -> Ellipsoid:
        u, v, w = centre
        a, b, c = semi
        return Ellipsoid(self.point(u, v, w), (self.width * a, self.width * b, self.height * c), power)

    def profile(self, knots: Sequence[Sequence[float]]) -> Profile:
        """Knots (w, u, v, a, b[, power]) in frame mm; the power defaults to 2."""
        rows = np.array([tuple(k) + (2.0,) * (6 - len(k)) for k in knots], dtype=float)
        w, u, v, a, b, power = rows.T
        return Profile(
            z=self.vertex_z - self.height * w,
            cx=self.centre_x + self.width * u,
            cy=self.centre_y + self.width * v,
            a=self.width * a,
            b=self.width * b,
            power=power,
        )
