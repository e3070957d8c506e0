"""The lesion mask as a DICOM Segmentation (SEG) referring to the PET series, made with highdicom.

One frame per PET slice, in the series' slice order, each frame referring to its PET instance and placed at
that slice's position (highdicom takes the plane positions from the source images). BINARY, one segment:

- label "Lesion"; segmented property category SCT 49755003 "Morphologically abnormal structure" and type
  SCT 108369006 "Neoplasm", the codes DICOM (CID 7150/7151) and SNOMED CT give a neoplastic lesion;
- segment algorithm type AUTOMATIC, algorithm identification: name "petseg", version petseg's version,
  family "Artificial Intelligence" (DCM 113112), the model card's name as its "model" parameter.

petseg's version comes in as an argument: this layer does not import the package's top, which leads to the
API above it.

Frames without lesion are kept (a lesion-free mask is a valid SEG of empty frames, and every PET slice has
its frame), so a reader gets the whole volume back on the PET grid.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from petseg.io.dicom.series import Series
from petseg.io.dicom.source import source_headers

__all__ = ["LESION_CATEGORY", "LESION_TYPE", "SEG_SERIES_NUMBER", "lesion_seg"]

LESION_CATEGORY = Code("49755003", "SCT", "Morphologically abnormal structure")
LESION_TYPE = Code("108369006", "SCT", "Neoplasm")
SEGMENT_LABEL = "Lesion"
SEG_SERIES_NUMBER = 901
SERIES_DESCRIPTION = "petseg lesions"


def lesion_seg(pet: Series, mask: np.ndarray, model_name: str, version: str) -> Dataset:
    """The SEG of `mask` ((z, y, x), non-zero for lesion, on the grid of `pet`, slices in its order), made by
    petseg `version` with the model `model_name`."""
    width, height, depth = pet.geometry.size
    if mask.shape != (depth, height, width):
        raise ValueError(f"mask {mask.shape} is not on the PET series' grid {(depth, height, width)}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="petseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=version,
        parameters={"model": model_name},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=LESION_CATEGORY,
        segmented_property_type=LESION_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=source_headers(pet),
        pixel_array=(np.asarray(mask) != 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="petseg",
        manufacturer_model_name=model_name[:64],
        software_versions=version,
        device_serial_number=f"petseg {version}",  # type 1; software has no serial number
        series_description=SERIES_DESCRIPTION,
        content_label="LESIONS",
        content_description=f"lesions segmented by petseg, model {model_name}"[:64],
        omit_empty_frames=False,
    )
    return seg
