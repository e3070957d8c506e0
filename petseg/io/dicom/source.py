"""The PET series' headers as the source that a derived object (a SEG, an RTSTRUCT) refers to.

A derived object copies the patient and study from its source images and refers to them by their UIDs and
frame of reference. DICOM requires some of those attributes to be present even when they are empty (type 2:
the patient's name, the accession number, ...), and anonymised exports often drop them altogether; a SEG or
RTSTRUCT copying their absence would be invalid. So the copies handed to the writers have each of them, empty
where the PET has none. A PET without the UIDs that placing an object on it needs is refused.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

from petseg.errors import InputError
from petseg.io.dicom.series import Series
from petseg.io.dicom.values import element_text, tag_label

__all__ = ["check_referable", "source_headers"]

# Type 2 attributes of the Patient, General Study and Frame of Reference modules.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
)
_REQUIRED = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "FrameOfReferenceUID": 0x00200052,
}


def check_referable(series: Series) -> None:
    """Every slice has the UIDs a SEG or RTSTRUCT refers to it by; an `InputError` naming the file if not."""
    for path, header in zip(series.files, series.headers, strict=True):
        for keyword, tag in _REQUIRED.items():
            if element_text(header, tag) is None:
                raise InputError(
                    f"{path}: no {tag_label(keyword, tag)}: a SEG or RTSTRUCT cannot refer to this PET slice"
                )


def source_headers(series: Series) -> list[Dataset]:
    """Copies of the series' headers in slice order, with every type 2 attribute present (empty if absent)."""
    check_referable(series)
    headers = []
    for header in series.headers:
        source = copy.deepcopy(header)
        for keyword in _TYPE_2:
            if keyword not in source:
                setattr(source, keyword, "")
        headers.append(source)
    return headers
