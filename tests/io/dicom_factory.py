"""Small DICOM series written with pydicom from arrays, for the from-dicom tests.

`write_series` writes one file per slice with the values a correct reader must get back after
RescaleSlope x stored + RescaleIntercept; every tag of the SUV rules can be set, per series or per slice.
`phantom` is a DRO-like volume (background 1, hot cube 4, cold cube 0.2, zero outside) and the physics
helpers compute what a scanner would store for it, from first principles, independently of petseg.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
F18_HALF_LIFE = 6586.2
GA68_HALF_LIFE = 4062.6
WEIGHT_KG = 70.0
DOSE_BQ = 370e6
DAY = "20250101"


def phantom(slices: int = 8, size: int = 16) -> np.ndarray:
    """SUV truth (z, y, x): 0 outside, 1 background, a hot cube of 4 and a cold cube of 0.2."""
    suv = np.zeros((slices, size, size))
    suv[1:-1, 2:-2, 2:-2] = 1.0
    suv[2:4, 4:7, 4:7] = 4.0
    suv[4:6, 9:12, 9:12] = 0.2
    return suv


def decayed(dose: float, seconds: float, half_life: float = F18_HALF_LIFE) -> float:
    return dose * 0.5 ** (seconds / half_life)


def frame_mean_decay(duration_s: float, half_life: float, steps: int = 200_001) -> float:
    """Mean of the decay factor over a frame (numerically): what a frame without decay correction sees."""
    t = np.linspace(0.0, duration_s, steps)
    return float(np.trapezoid(0.5 ** (t / half_life), t) / duration_s)


def frame_average_time(duration_s: float, half_life: float) -> float:
    """The time after the frame start at which the decay factor equals its mean over the frame."""
    return -math.log(frame_mean_decay(duration_s, half_life)) / (math.log(2) / half_life)


def hhmmss(time: dt.datetime) -> str:
    return time.strftime("%H%M%S.%f")


def write_series(
    folder: Path,
    values: np.ndarray,
    *,
    modality: str = "PT",
    series_uid: str | None = None,
    slopes: Sequence[float] | None = None,
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
    positions: Sequence[Sequence[float]] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    tags: dict[str, Any] | None = None,
    radiopharmaceutical: dict[str, Any] | None = None,
    slice_tags: Callable[[int, Dataset], None] | None = None,
    intercept: float = 0.0,
    names: Callable[[int], str] = lambda index: f"slice_{index:03d}.dcm",
) -> list[Path]:
    """One file per slice; `values` (z, y, x) are the real-world values RescaleSlope x stored +
    RescaleIntercept must give (stored as int16, each slice with its own slope unless `slopes` is given).
    `tags` are set on every file (None deletes), `radiopharmaceutical` on its sequence item (None deletes),
    `slice_tags(index, dataset)` changes one file."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    depth, rows, columns = values.shape
    row, column = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, column)
    if positions is None:
        positions = [(k * spacing[2] * normal).tolist() for k in range(depth)]
    paths = []
    for k in range(depth):
        real = values[k] - intercept
        slope = slopes[k] if slopes is not None else (float(np.abs(real).max()) / 30000.0 or 1.0)
        stored = np.round(real / slope)
        if np.abs(stored).max() > 32767:
            raise ValueError(f"slice {k}: slope {slope} too small for int16")
        stored = stored.astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_class = PET_SOP_CLASS if modality == "PT" else CT_SOP_CLASS
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = DAY
        ds.SeriesTime = ds.AcquisitionTime = "110000.000000"
        ds.Manufacturer = "Test"
        ds.PatientWeight = f"{WEIGHT_KG}"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]}", f"{spacing[0]}"]
        ds.SliceThickness = f"{spacing[2]}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if modality == "PT":
            ds.Units = "BQML"
            ds.DecayCorrection = "START"
            ds.CorrectedImage = ["ATTN", "DECY"]
            item = Dataset()
            item.Radiopharmaceutical = "FDG"
            item.RadionuclideTotalDose = f"{DOSE_BQ:.1f}"
            item.RadionuclideHalfLife = f"{F18_HALF_LIFE}"
            item.RadiopharmaceuticalStartDateTime = f"{DAY}100000.000000"
            item.RadiopharmaceuticalStartTime = "100000.000000"
            for keyword, value in (radiopharmaceutical or {}).items():
                if value is None:
                    delattr(item, keyword)
                else:
                    setattr(item, keyword, value)
            ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        for keyword, value in (tags or {}).items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        if slice_tags is not None:
            slice_tags(k, ds)
        path = folder / names(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
