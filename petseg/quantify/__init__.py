"""Lesion figures of a mask on its PET: per lesion SUVmax, SUVpeak, SUVmean, MTV, TLG and centroid; per case
TMTV, total TLG, lesion count and Dmax.

`lesions` finds the lesions (26-connected components) and measures them, `suvpeak` holds PERCIST's 1 ml sphere
search, `tables` turns the figures into the CSV and JSON that `petseg predict --quantify` and
`petseg predict --dicom` write. Pure computation on images in memory: nothing here reads or writes files.
"""

from petseg.quantify.lesions import CONNECTIVITY, Lesion, LesionReport, quantify
from petseg.quantify.suvpeak import SPHERE_RADIUS_MM, sphere_kernel, suvpeaks
from petseg.quantify.tables import LESION_COLUMNS, lesions_csv, summary_record

__all__ = [
    "CONNECTIVITY",
    "LESION_COLUMNS",
    "SPHERE_RADIUS_MM",
    "Lesion",
    "LesionReport",
    "lesions_csv",
    "quantify",
    "sphere_kernel",
    "summary_record",
    "suvpeaks",
]
