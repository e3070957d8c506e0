"""Analytic shapes in physical millimetres, and their rasterisation on any `DiagonalGrid`.

A shape answers `mask(x, y, z)` for coordinate vectors shaped (1, 1, nx), (1, ny, 1) and (nz, 1, 1) with a
boolean array broadcastable to (nz, ny, nx). Painting evaluates it only inside the shape's index bounding box,
in slabs of a few million voxels, so a body outline on a 400 x 400 x 661 grid never needs more than a few
tens of MB of temporaries, and the same shape lands consistently on a PET grid and on a finer CT grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from petseg.synthetic.grids import DiagonalGrid

INFINITE = 1e12
_SLAB_VOXELS = 1 << 22

Bounds = tuple[np.ndarray, np.ndarray]


class Shape:
    """Base class; subclasses implement `bounds` and `mask`."""

    def bounds(self) -> Bounds:
        raise NotImplementedError

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _unbounded() -> Bounds:
    return np.full(3, -INFINITE), np.full(3, INFINITE)


@dataclass
class Box(Shape):
    """Axis-aligned box; use ±INFINITE for open sides (a half-space or slab)."""

    low: Sequence[float]
    high: Sequence[float]

    def bounds(self) -> Bounds:
        return np.asarray(self.low, dtype=float), np.asarray(self.high, dtype=float)

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (x0, y0, z0), (x1, y1, z1) = self.low, self.high
        return ((x >= x0) & (x <= x1)) & ((y >= y0) & (y <= y1)) & ((z >= z0) & (z <= z1))


@dataclass
class Ellipsoid(Shape):
    """Axis-aligned (super-)ellipsoid: sum |d_i / r_i|^power <= 1."""

    centre: Sequence[float]
    semi: Sequence[float]
    power: float = 2.0

    def bounds(self) -> Bounds:
        centre, semi = np.asarray(self.centre, dtype=float), np.abs(np.asarray(self.semi, dtype=float))
        return centre - semi, centre + semi

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        terms = [
            _term(c, centre, semi, self.power)
            for c, centre, semi in zip((x, y, z), self.centre, self.semi, strict=True)
        ]
        return (terms[0] + terms[1]) + terms[2] <= 1.0


def _term(coord: np.ndarray, centre: float, semi: float, power: float) -> np.ndarray:
    d = (coord - np.float32(centre)) / np.float32(max(abs(semi), 1e-6))
    return d * d if power == 2.0 else np.abs(d) ** np.float32(power)


@dataclass
class Profile(Shape):
    """A stack of (super-)ellipses whose centre, semi-axes and exponent vary linearly with z.

    Used for the body outline, limbs, spine and airways: anything tube-like along the body axis. Knots must
    be sorted by z; there is nothing below the first knot or above the last.
    """

    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    power: np.ndarray | float = 2.0

    def __post_init__(self) -> None:
        order = np.argsort(self.z)
        self.z = np.asarray(self.z, dtype=float)[order]
        self.cx = np.asarray(self.cx, dtype=float)[order]
        self.cy = np.asarray(self.cy, dtype=float)[order]
        self.a = np.abs(np.asarray(self.a, dtype=float))[order]
        self.b = np.abs(np.asarray(self.b, dtype=float))[order]
        self.power = np.broadcast_to(np.asarray(self.power, dtype=float), self.z.shape)[order]

    def bounds(self) -> Bounds:
        low = np.array([np.min(self.cx - self.a), np.min(self.cy - self.b), self.z[0]])
        high = np.array([np.max(self.cx + self.a), np.max(self.cy + self.b), self.z[-1]])
        return low, high

    def at(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre, semi-axes and exponent at each z (semi-axes 0 outside the knot range)."""
        flat = np.ravel(z).astype(float)
        inside = (flat >= self.z[0]) & (flat <= self.z[-1])
        values = [np.interp(flat, self.z, knots) for knots in (self.cx, self.cy, self.a, self.b, self.power)]
        values[2] = np.where(inside, values[2], 0.0)
        values[3] = np.where(inside, values[3], 0.0)
        return tuple(v.reshape(np.shape(z)).astype(np.float32) for v in values)

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        cx, cy, a, b, power = self.at(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = np.abs(x - cx) / a
            dy = np.abs(y - cy) / b
            total = dx * dx + dy * dy if np.all(power == 2.0) else dx**power + dy**power
        return total <= 1.0


@dataclass
class Dome(Shape):
    """Everything above a paraboloid surface z = top - depth * r^2 (r: normalised distance from its axis).

    Cuts the lungs above the diaphragm: highest at the centre, lower towards the costophrenic recesses.
    """

    centre: Sequence[float]  # x, y of the axis, z of the top
    radius: Sequence[float]  # x, y extent at which the surface has dropped by `depth`
    depth: float

    def bounds(self) -> Bounds:
        low, high = _unbounded()
        low[2] = self.centre[2] - abs(self.depth) * 4.0
        return low, high

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        r2 = _term(x, self.centre[0], self.radius[0], 2.0) + _term(y, self.centre[1], self.radius[1], 2.0)
        return z >= np.float32(self.centre[2]) - np.float32(self.depth) * r2


@dataclass
class Bands(Shape):
    """Periodic slabs across z that may tilt with y: frac((z - slope * y - offset) / period) < width / period.

    Cut into vertebrae (discs) and ribs, which descend towards the front.
    """

    period: float
    width: float
    offset: float = 0.0
    slope: float = 0.0

    def bounds(self) -> Bounds:
        return _unbounded()

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        phase = (z - np.float32(self.slope) * y - np.float32(self.offset)) / np.float32(self.period)
        return (phase - np.floor(phase)) < np.float32(self.width / self.period)


@dataclass
class Waves(Shape):
    """Where a sum of plane waves exceeds a threshold: an irregular foam of blobs (bowel loops in fat)."""

    directions: np.ndarray  # (n, 3) unit vectors
    phases: np.ndarray  # (n,)
    wavelength: float
    threshold: float

    def bounds(self) -> Bounds:
        return _unbounded()

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        k = np.float32(2.0 * np.pi / self.wavelength)
        total = None
        for (dx, dy, dz), phase in zip(self.directions, self.phases, strict=True):
            wave = np.cos(
                (np.float32(dx) * k * x + np.float32(dy) * k * y)
                + (np.float32(dz) * k * z + np.float32(phase))
            )
            total = wave if total is None else total + wave
        return total > np.float32(self.threshold)


@dataclass
class Blob(Shape):
    """An ellipsoid whose radius varies with low-frequency harmonics of the direction: irregular lesions."""

    centre: Sequence[float]
    semi: Sequence[float]
    # Each harmonic: (unit vector d, frequency f, phase p, amplitude m) -> m * cos(pi * f * (d . n) + p).
    harmonics: list[tuple[np.ndarray, float, float, float]] = field(default_factory=list)

    def reach(self) -> float:
        return 1.0 + sum(abs(m) for *_, m in self.harmonics)

    def bounds(self) -> Bounds:
        centre, semi = np.asarray(self.centre, dtype=float), np.asarray(self.semi, dtype=float)
        return centre - semi * self.reach(), centre + semi * self.reach()

    def radial(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance from the centre relative to the boundary in that direction (<= 1 inside)."""
        dx = (x - np.float32(self.centre[0])) / np.float32(self.semi[0])
        dy = (y - np.float32(self.centre[1])) / np.float32(self.semi[1])
        dz = (z - np.float32(self.centre[2])) / np.float32(self.semi[2])
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        safe = np.maximum(r, np.float32(1e-6))
        boundary = np.ones(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
        for direction, frequency, phase, amplitude in self.harmonics:
            cosine = (direction[0] * dx + direction[1] * dy + direction[2] * dz) / safe
            boundary += np.float32(amplitude) * np.cos(
                np.float32(np.pi * frequency) * cosine + np.float32(phase)
            )
        return r / np.maximum(boundary, np.float32(0.2))

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.radial(x, y, z) <= 1.0


@dataclass
class Union(Shape):
    parts: Sequence[Shape]

    def bounds(self) -> Bounds:
        lows, highs = zip(*(part.bounds() for part in self.parts), strict=True)
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        result = self.parts[0].mask(x, y, z)
        for part in self.parts[1:]:
            result = result | part.mask(x, y, z)
        return result


@dataclass
class Intersection(Shape):
    parts: Sequence[Shape]

    def bounds(self) -> Bounds:
        lows, highs = zip(*(part.bounds() for part in self.parts), strict=True)
        return np.max(lows, axis=0), np.min(highs, axis=0)

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        result = self.parts[0].mask(x, y, z)
        for part in self.parts[1:]:
            result = result & part.mask(x, y, z)
        return result


@dataclass
class Difference(Shape):
    keep: Shape
    remove: Shape

    def bounds(self) -> Bounds:
        return self.keep.bounds()

    def mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.keep.mask(x, y, z) & ~self.remove.mask(x, y, z)


Window = tuple[slice, slice, slice]


def window(grid: DiagonalGrid, shape: Shape, margin_mm: float = 0.0) -> Window | None:
    """Array slices (z, y, x) of the voxels whose centres may lie inside the shape; None if none do."""
    low, high = shape.bounds()
    ranges = [grid.index_range(axis, low[axis] - margin_mm, high[axis] + margin_mm) for axis in range(3)]
    if any(stop <= start for start, stop in ranges):
        return None
    return tuple(slice(start, stop) for start, stop in reversed(ranges))  # type: ignore[return-value]


def coordinates(grid: DiagonalGrid, win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable physical coordinate vectors (x, y, z) of a window."""
    zs, ys, xs = win
    x = grid.coords(0, xs.start, xs.stop)[None, None, :]
    y = grid.coords(1, ys.start, ys.stop)[None, :, None]
    z = grid.coords(2, zs.start, zs.stop)[:, None, None]
    return x, y, z


def slabs(win: Window) -> Iterator[Window]:
    """Split a window along z into pieces of at most ~4 M voxels."""
    zs, ys, xs = win
    per_slice = max(1, (ys.stop - ys.start) * (xs.stop - xs.start))
    step = max(1, _SLAB_VOXELS // per_slice)
    for start in range(zs.start, zs.stop, step):
        yield slice(start, min(zs.stop, start + step)), ys, xs


def paint(
    volume: np.ndarray, grid: DiagonalGrid, shape: Shape, value: int, allowed: np.ndarray | None = None
) -> None:
    """Set `value` inside the shape; with `allowed` (a bool table over current values), only there."""
    win = window(grid, shape)
    if win is None:
        return
    for slab in slabs(win):
        inside = np.broadcast_to(shape.mask(*coordinates(grid, slab)), volume[slab].shape)
        target = volume[slab]
        if allowed is not None:
            inside = inside & allowed[target]
        target[inside] = value


def rasterise(grid: DiagonalGrid, shape: Shape) -> tuple[Window, np.ndarray] | None:
    """The shape's window and boolean mask inside it (for small shapes such as lesions)."""
    win = window(grid, shape)
    if win is None:
        return None
    inside = np.broadcast_to(shape.mask(*coordinates(grid, win)), tuple(s.stop - s.start for s in win))
    return win, np.ascontiguousarray(inside)
