"""PET and CT DICOM series to a Grand-Challenge case folder, with PET in body-weight SUV.

`series` finds and validates one series in a folder (one SeriesInstanceUID, the expected modality, a
regular untilted grid) and takes its slice order and geometry from SimpleITK; `pet_tags` reads the tags
SUV depends on; `suv` holds the SUV rules as pure functions of those tag values; `pixels` applies each
slice's rescale; `convert` writes the case folder and its `suv.json` record, all or nothing.
"""

from petseg.io.dicom.convert import SUV_JSON, Conversion, convert_dicom, read_ct, read_pet
from petseg.io.dicom.suv import SuvResult, compute_suv

__all__ = ["SUV_JSON", "Conversion", "SuvResult", "compute_suv", "convert_dicom", "read_ct", "read_pet"]
