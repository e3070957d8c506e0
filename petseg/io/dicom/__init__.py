"""PET and CT DICOM series to a Grand-Challenge case folder, with PET in body-weight SUV.

`series` finds and validates one series in a folder (one SeriesInstanceUID, the expected modality, a
regular untilted grid) and takes its slice order and geometry from SimpleITK; `pet_tags` reads the tags
SUV depends on; `suv` holds the SUV rules as pure functions of those tag values; `pixels` applies each
slice's rescale; `convert` writes the case folder and its `suv.json` record, all or nothing.

For `petseg predict --dicom`: `study` finds the studies under a folder and each one's PET and CT series;
`source`, `seg` and `rtstruct` make the DICOM SEG and RTSTRUCT of a lesion mask referring to the PET series;
`outputs` writes a study's output folder, all or nothing.
"""

from petseg.io.dicom.convert import SUV_JSON, Conversion, convert_dicom, read_ct, read_pet
from petseg.io.dicom.suv import SuvResult, compute_suv

__all__ = ["SUV_JSON", "Conversion", "SuvResult", "compute_suv", "convert_dicom", "read_ct", "read_pet"]
