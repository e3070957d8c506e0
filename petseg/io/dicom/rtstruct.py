"""The lesion mask as an RT Structure Set (RTSTRUCT) referring to the PET series, made with rt-utils.

One ROI, "Lesion", generated AUTOMATIC, identified by the same code as the SEG's segment (SCT 108369006
"Neoplasm"), with one closed planar contour per connected region (and per hole) of each PET slice; every
contour refers to its PET instance. rt-utils traces the contours with OpenCV through the centres of the
boundary voxels, so a contour encloses about half a voxel less all round than the mask does; the SEG holds the
exact mask, the RTSTRUCT is for planning and viewing systems that read contours only.

Two things are set right around rt-utils 1.2.7:

- it multiplies the column index by PixelSpacing's first value, which DICOM defines as the spacing between
  rows: with non-square pixels its contours would be stretched. It is handed header copies with the two values
  of PixelSpacing swapped, which only its geometry reads, so the contours land on the voxels.
- it leaves type 2 attributes out (OperatorsName, AccessionNumber, ...), names itself as the manufacturer and
  writes its own observation description; those are filled in or replaced here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from petseg.io.dicom.seg import LESION_TYPE, SEGMENT_LABEL, SERIES_DESCRIPTION
from petseg.io.dicom.series import Series
from petseg.io.dicom.source import source_headers

__all__ = ["RTSTRUCT_SERIES_NUMBER", "lesion_rtstruct"]

RTSTRUCT_SERIES_NUMBER = 902
LESION_COLOUR = [255, 0, 0]


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _swapped_spacing(headers: list[Dataset]) -> list[Dataset]:
    swapped = []
    for header in headers:
        twin = copy.deepcopy(header)
        rows, columns = header.PixelSpacing
        twin.PixelSpacing = [columns, rows]
        swapped.append(twin)
    return swapped


def lesion_rtstruct(pet: Series, mask: np.ndarray, model_name: str, version: str) -> Dataset:
    """The RTSTRUCT of `mask` ((z, y, x), non-zero for lesion, on the grid of `pet`, slices in its order)."""
    from rt_utils import RTStruct, ds_helper  # imports OpenCV: only when an RTSTRUCT is asked for

    width, height, depth = pet.geometry.size
    if mask.shape != (depth, height, width):
        raise ValueError(f"mask {mask.shape} is not on the PET series' grid {(depth, height, width)}")
    headers = source_headers(pet)
    geometry = _swapped_spacing(headers)
    # rt-utils prints to stdout and sets encoding attributes pydicom 3 deprecates (pydicom warns and logs
    # that); none of it concerns the user.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("pydicom"):
        warnings.simplefilter("ignore", DeprecationWarning)
        structure = RTStruct(geometry, ds_helper.create_rtstruct_dataset(geometry))
        structure.add_roi(
            mask=np.transpose(np.asarray(mask) != 0, (1, 2, 0)),  # rt-utils takes (rows, columns, slices)
            color=LESION_COLOUR,
            name=SEGMENT_LABEL,
            description=f"lesions segmented by petseg {version}, model {model_name}"[:64],
            roi_generation_algorithm="AUTOMATIC",
        )
    dataset = structure.ds
    first = headers[0]
    dataset.Manufacturer = "petseg"
    dataset.ManufacturerModelName = model_name[:64]
    dataset.SoftwareVersions = version
    for keyword in ("InstitutionName",):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    dataset.SeriesDescription = SERIES_DESCRIPTION
    dataset.StructureSetLabel = "petseg lesions"
    dataset.InstanceNumber = 1
    dataset.OperatorsName = ""
    for keyword in (
        "ReferringPhysicianName",
        "AccessionNumber",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
    ):
        setattr(dataset, keyword, first.get(keyword, ""))
    for observation in dataset.RTROIObservationsSequence:
        if "ROIObservationDescription" in observation:
            del observation.ROIObservationDescription
        code = Dataset()
        code.CodeValue = LESION_TYPE.value
        code.CodingSchemeDesignator = LESION_TYPE.scheme_designator
        code.CodeMeaning = LESION_TYPE.meaning
        observation.RTROIIdentificationCodeSequence = DicomSequence([code])
    for contour in dataset.ROIContourSequence:
        if "ContourSequence" in contour and len(contour.ContourSequence) == 0:
            del contour.ContourSequence  # a lesion-free mask: the ROI without contours (type 3)
    return dataset
