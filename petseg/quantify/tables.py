"""The lesion figures as files: `lesions.csv` (one row per lesion) and the `summary.json` record."""

from __future__ import annotations

import csv
import io
from typing import Any

from petseg.quantify.lesions import CONNECTIVITY, LesionReport
from petseg.quantify.suvpeak import SPHERE_RADIUS_MM, SPHERE_VOLUME_ML

__all__ = ["DEFINITIONS", "LESION_COLUMNS", "lesions_csv", "summary_record"]

LESION_COLUMNS = (
    "lesion",
    "voxels",
    "mtv_ml",
    "suvmax",
    "suvpeak",
    "suvmean",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)

# What summary.json says each figure is, so that the file explains itself.
DEFINITIONS = {
    "lesion": f"a {CONNECTIVITY}-connected component of the mask",
    "mtv_ml": "voxels x voxel volume",
    "suvmax": "highest SUV in the lesion",
    "suvpeak": (
        f"highest mean SUV of a {SPHERE_VOLUME_ML:g} ml sphere (radius {SPHERE_RADIUS_MM:.4f} mm, the voxels "
        "whose centres lie within it, inside the image) centred on any voxel of the lesion (PERCIST)"
    ),
    "suvmean": "mean SUV of the lesion's voxels",
    "tlg": "SUVmean x MTV (ml x SUV)",
    "centroid": "mean position of the lesion's voxel centres, patient coordinates LPS (mm)",
    "tmtv_ml": "sum of the lesions' MTV",
    "total_tlg": "sum of the lesions' TLG",
    "dmax_mm": "largest distance between the centroids of two lesions; null with fewer than two",
}


def _number(value: float) -> str:
    return f"{value:.10g}"


def lesions_csv(report: LesionReport) -> str:
    """One row per lesion, columns `LESION_COLUMNS`; a header only when there is none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LESION_COLUMNS)
    for lesion in report.lesions:
        writer.writerow(
            [
                lesion.number,
                lesion.voxels,
                *(_number(v) for v in (lesion.mtv_ml, lesion.suvmax, lesion.suvpeak, lesion.suvmean)),
                _number(lesion.tlg),
                *(_number(v) for v in lesion.centroid_mm),
            ]
        )
    return buffer.getvalue()


def summary_record(report: LesionReport, **context: Any) -> dict[str, Any]:
    """The case's totals with their definitions; `context` (model, SUV provenance, ...) is added as given."""
    return {
        "lesion_count": report.count,
        "tmtv_ml": report.tmtv_ml,
        "total_tlg": report.total_tlg,
        "dmax_mm": report.dmax_mm,
        "voxel_ml": report.voxel_ml,
        "connectivity": CONNECTIVITY,
        "suvpeak_sphere_radius_mm": SPHERE_RADIUS_MM,
        "definitions": DEFINITIONS,
        **context,
    }
