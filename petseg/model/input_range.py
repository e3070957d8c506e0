"""The range of inputs a model was trained on, recorded in its card, and the check of a new case against it.

A network trained on whole-body autoPET scans says nothing useful about a head-only scan at 1 mm, and it
says it without a word of doubt. Export records, per axis (x, y, z), the PET voxel spacing and the PET field
of view of the training cases, read from their headers; inference warns when a case lies well outside,
so a user learns that the mask rests on extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from petseg.errors import ModelError

__all__ = ["OUTSIDE_FACTOR", "InputRange"]

# A case is outside the range when a figure is below low / factor or above high * factor: autoPET's own
# spacings differ by a factor of 2 (2.0 to 4.1 mm in-plane), so nearby grids are not extrapolation.
OUTSIDE_FACTOR = 1.5
_AXES = "xyz"

Bounds = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class InputRange:
    """Per axis (x, y, z), (lowest, highest) PET voxel spacing and field of view in mm, and the count of
    training cases they were read from."""

    pet_spacing_mm: Bounds
    pet_extent_mm: Bounds
    cases: int

    @classmethod
    def of(cls, spacings_mm: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]]) -> InputRange:
        """The range of PET grids given as (x, y, z) spacings and voxel counts, one per training case."""
        if not spacings_mm or len(spacings_mm) != len(sizes):
            raise ValueError("one spacing and one size per case, and at least one case")
        extents = [
            [s * n for s, n in zip(spacing, size, strict=True)]
            for spacing, size in zip(spacings_mm, sizes, strict=True)
        ]
        return cls(_bounds(spacings_mm), _bounds(extents), len(spacings_mm))

    def outside(self, pet_spacing_mm: Sequence[float], pet_size: Sequence[int]) -> list[str]:
        """One phrase per figure of this PET grid well outside the training range; empty when inside."""
        extent = [s * n for s, n in zip(pet_spacing_mm, pet_size, strict=True)]
        found = []
        for name, values, bounds in (
            ("voxel spacing", pet_spacing_mm, self.pet_spacing_mm),
            ("field of view", extent, self.pet_extent_mm),
        ):
            for axis, value, (low, high) in zip(_AXES, values, bounds, strict=True):
                if value < low / OUTSIDE_FACTOR or value > high * OUTSIDE_FACTOR:
                    found.append(f"{name} {axis} {value:.4g} mm (trained on {low:.4g}-{high:.4g} mm)")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "pet_spacing_mm": [list(b) for b in self.pet_spacing_mm],
            "pet_extent_mm": [list(b) for b in self.pet_extent_mm],
            "cases": self.cases,
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> InputRange:
        where = f"{source}: input_range"
        if not isinstance(data, dict) or set(data) != {"pet_spacing_mm", "pet_extent_mm", "cases"}:
            raise ModelError(f"{where} must hold exactly pet_spacing_mm, pet_extent_mm and cases")
        cases = data["cases"]
        if not isinstance(cases, int) or isinstance(cases, bool) or cases < 1:
            raise ModelError(f"{where}.cases must be a positive whole number, got {cases!r}")
        return cls(
            _read_bounds(data["pet_spacing_mm"], f"{where}.pet_spacing_mm"),
            _read_bounds(data["pet_extent_mm"], f"{where}.pet_extent_mm"),
            cases,
        )


def _bounds(rows: Sequence[Sequence[float]]) -> Bounds:
    columns = list(zip(*rows, strict=True))
    if len(columns) != 3:
        raise ValueError("three axes (x, y, z) per case")
    return tuple((float(min(c)), float(max(c))) for c in columns)  # type: ignore[return-value]


def _read_bounds(data: Any, where: str) -> Bounds:
    if not isinstance(data, list) or len(data) != 3:
        raise ModelError(f"{where} must be three [low, high] pairs (x, y, z)")
    pairs = []
    for axis, pair in zip(_AXES, data, strict=True):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
            or not all(math.isfinite(v) and v > 0 for v in pair)
            or pair[0] > pair[1]
        ):
            raise ModelError(f"{where} {axis} must be [low, high] with 0 < low <= high, got {pair!r}")
        pairs.append((float(pair[0]), float(pair[1])))
    return tuple(pairs)  # type: ignore[return-value]
