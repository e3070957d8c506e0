"""Small PET/CT DICOM studies written with pydicom, for the `predict --dicom` and DICOM-out tests.

A study is a PET series (8 slices of 24 x 24, stored as activity so that the SUV rules give `suv_truth`) and
a CT series over the same place, both with the patient, study and frame-of-reference attributes a scanner
writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from dicom_factory import DOSE_BQ, WEIGHT_KG, decayed, write_series
from pydicom.uid import generate_uid

SLICES, SIZE = 8, 24
PET_SPACING = (2.0, 2.5, 3.0)  # column (x), row (y), slice: non-square pixels


def suv_truth() -> np.ndarray:
    """(z, y, x) SUV: a body of 1 with two hot spheres-ish blocks of 6 and 9."""
    suv = np.zeros((SLICES, SIZE, SIZE))
    suv[1:-1, 3:-3, 3:-3] = 1.0
    suv[2:4, 5:8, 4:7] = 6.0
    suv[5:7, 14:18, 15:19] = 9.0
    return suv


def study_tags(study_uid: str | None = None, frame_uid: str | None = None) -> dict[str, Any]:
    return {
        "StudyInstanceUID": study_uid or generate_uid(),
        "FrameOfReferenceUID": frame_uid or generate_uid(),
        "PatientID": "PETSEG-TEST-1",
        "PatientName": "Phantom^Test",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyID": "1",
        "StudyTime": "100000",
        "AccessionNumber": "ACC1",
        "ReferringPhysicianName": "",
        "PositionReferenceIndicator": "",
    }


def write_pet(folder: Path, tags: dict[str, Any], descending: bool = True, **options: Any) -> list[Path]:
    """The PET series; by default with slice positions going down (as whole-body scans are often stored)
    and file names in the opposite order, so that neither name nor position order is the volume's."""
    step = -PET_SPACING[2] if descending else PET_SPACING[2]
    positions = [(-20.0, -30.0, 100.0 + step * k) for k in range(SLICES)]
    activity = suv_truth() * decayed(DOSE_BQ, 3600.0) / (WEIGHT_KG * 1000.0)
    options.setdefault("names", lambda index: f"pet_{SLICES - index:03d}.dcm")
    return write_series(
        folder,
        activity,
        spacing=PET_SPACING,
        positions=positions,
        tags={"SeriesNumber": 2, "SeriesDescription": "PET AC", **tags},
        **options,
    )


def write_ct(folder: Path, tags: dict[str, Any], **options: Any) -> list[Path]:
    hu = np.full((12, SIZE, SIZE), -1000.0)
    hu[1:11, 3:-3, 3:-3] = 40.0
    positions = [(-21.0, -31.0, 102.0 - 2.5 * k) for k in range(12)]
    return write_series(
        folder,
        hu,
        modality="CT",
        slopes=[1.0] * 12,
        intercept=-1024.0,
        spacing=(2.2, 2.6, 2.5),
        positions=positions,
        tags={"SeriesNumber": 1, "SeriesDescription": "CT", **tags},
        **options,
    )


def write_study(folder: Path, pet: bool = True, ct: bool = True) -> dict[str, Any]:
    """A PET series in `folder/PET` and a CT series in `folder/CT` of one study; the tags used."""
    tags = study_tags()
    if pet:
        write_pet(folder / "PET", tags)
    if ct:
        write_ct(folder / "CT", tags)
    return tags
