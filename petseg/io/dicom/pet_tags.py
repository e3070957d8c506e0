"""The DICOM tags SUV conversion depends on, read from a PET series' headers into plain typed values.

`read_pet_tags` is the only place that touches pydicom datasets for SUV: the rules in `suv` are pure
functions of what it returns, so they can be tested (and reasoned about) from tag values alone. Values
stay the text DICOM stores; `suv` parses them, so that a malformed value is reported with its tag.

Tags that describe the whole series (units, dose, weight, times) are read from every file and must agree;
a series whose slices disagree on them has no single correct conversion and is refused, naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from pydicom.dataset import Dataset

from petseg.errors import InputError
from petseg.io.dicom.series import Series
from petseg.io.dicom.values import element_text, element_texts, private_text, tag_label

__all__ = ["LABELS", "PetTags", "SeriesTags", "SliceTags", "read_pet_tags"]

PHILIPS_CREATORS = ("Philips PET Private Group",)
GE_CREATORS = ("GEMS_PETD_01",)
RADIOPHARMACEUTICAL_SEQUENCE = 0x00540016
RADIONUCLIDE_CODES = 0x00540300

# The name each field has in messages and in suv.json: keyword and tag.
LABELS = {
    "manufacturer": tag_label("Manufacturer", 0x00080070),
    "units": tag_label("Units", 0x00541001),
    "decay_correction": tag_label("DecayCorrection", 0x00541102),
    "suv_type": tag_label("SUVType", 0x00541006),
    "corrected_image": tag_label("CorrectedImage", 0x00280051),
    "patient_weight": tag_label("PatientWeight", 0x00101030),
    "series_date": tag_label("SeriesDate", 0x00080021),
    "series_time": tag_label("SeriesTime", 0x00080031),
    "study_date": tag_label("StudyDate", 0x00080020),
    "radiopharmaceuticals": tag_label("RadiopharmaceuticalInformationSequence", RADIOPHARMACEUTICAL_SEQUENCE),
    "radiopharmaceutical": tag_label("Radiopharmaceutical", 0x00180031),
    "total_dose": tag_label("RadionuclideTotalDose", 0x00181074),
    "half_life": tag_label("RadionuclideHalfLife", 0x00181075),
    "start_time": tag_label("RadiopharmaceuticalStartTime", 0x00181072),
    "start_datetime": tag_label("RadiopharmaceuticalStartDateTime", 0x00181078),
    "nuclide_code": tag_label("RadionuclideCodeSequence", RADIONUCLIDE_CODES) + " CodeMeaning",
    "ge_scan_datetime": "GE PET scan date-time (0009,100D)",
    "rescale_slope": tag_label("RescaleSlope", 0x00281053),
    "rescale_intercept": tag_label("RescaleIntercept", 0x00281052),
    "acquisition_date": tag_label("AcquisitionDate", 0x00080022),
    "acquisition_time": tag_label("AcquisitionTime", 0x00080032),
    "acquisition_datetime": tag_label("AcquisitionDateTime", 0x0008002A),
    "frame_duration": tag_label("ActualFrameDuration", 0x00181242),
    "frame_reference_time": tag_label("FrameReferenceTime", 0x00541300),
    "philips_suv_factor": "Philips SUV scale factor (7053,1000)",
    "philips_activity_factor": "Philips activity concentration scale factor (7053,1009)",
}


@dataclass(frozen=True)
class SeriesTags:
    """Tags that hold one value for the whole series (text as stored; None when absent or empty)."""

    manufacturer: str | None = None
    units: str | None = None
    decay_correction: str | None = None
    suv_type: str | None = None
    corrected_image: tuple[str, ...] = ()
    patient_weight: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    study_date: str | None = None
    radiopharmaceuticals: int = 0  # items in the RadiopharmaceuticalInformationSequence
    radiopharmaceutical: str | None = None
    total_dose: str | None = None
    half_life: str | None = None
    start_time: str | None = None
    start_datetime: str | None = None
    nuclide_code: str | None = None
    ge_scan_datetime: str | None = None
    ge_lookup: str = ""  # how the GE private element was found (or why not)


@dataclass(frozen=True)
class SliceTags:
    """Tags that may differ from slice to slice."""

    file: Path
    rescale_slope: str | None = None
    rescale_intercept: str | None = None
    acquisition_date: str | None = None
    acquisition_time: str | None = None
    acquisition_datetime: str | None = None
    frame_duration: str | None = None  # ms
    frame_reference_time: str | None = None  # ms
    philips_suv_factor: str | None = None
    philips_activity_factor: str | None = None
    philips_lookup: str = ""


@dataclass(frozen=True)
class PetTags:
    """What SUV conversion reads from a PET series: the series' tags (as in `file`) and each slice's."""

    file: Path  # the first file in slice order, which the series' tags are reported from
    series: SeriesTags
    slices: tuple[SliceTags, ...]


def _series_tags(header: Dataset) -> SeriesTags:
    radiopharmaceuticals = header.get(RADIOPHARMACEUTICAL_SEQUENCE)
    items = (
        list(radiopharmaceuticals.value)
        if radiopharmaceuticals is not None and radiopharmaceuticals.value
        else []
    )
    item = items[0] if items else Dataset()
    nuclide = None
    codes = item.get(RADIONUCLIDE_CODES)
    if codes is not None and codes.value:
        code = codes.value[0]
        nuclide = element_text(code, 0x00080104) or element_text(code, 0x00080100)
    ge_value, ge_lookup = private_text(header, 0x0009, 0x100D, GE_CREATORS)
    return SeriesTags(
        manufacturer=element_text(header, 0x00080070),
        units=element_text(header, 0x00541001),
        decay_correction=element_text(header, 0x00541102),
        suv_type=element_text(header, 0x00541006),
        corrected_image=tuple(text.upper() for text in element_texts(header, 0x00280051)),
        patient_weight=element_text(header, 0x00101030),
        series_date=element_text(header, 0x00080021),
        series_time=element_text(header, 0x00080031),
        study_date=element_text(header, 0x00080020),
        radiopharmaceuticals=len(items),
        radiopharmaceutical=element_text(item, 0x00180031),
        total_dose=element_text(item, 0x00181074),
        half_life=element_text(item, 0x00181075),
        start_time=element_text(item, 0x00181072),
        start_datetime=element_text(item, 0x00181078),
        nuclide_code=nuclide,
        ge_scan_datetime=ge_value,
        ge_lookup=ge_lookup if ge_value is not None else "",
    )


def _slice_tags(path: Path, header: Dataset) -> SliceTags:
    suv_factor, lookup = private_text(header, 0x7053, 0x1000, PHILIPS_CREATORS)
    activity_factor, _ = private_text(header, 0x7053, 0x1009, PHILIPS_CREATORS)
    return SliceTags(
        file=path,
        rescale_slope=element_text(header, 0x00281053),
        rescale_intercept=element_text(header, 0x00281052),
        acquisition_date=element_text(header, 0x00080022),
        acquisition_time=element_text(header, 0x00080032),
        acquisition_datetime=element_text(header, 0x0008002A),
        frame_duration=element_text(header, 0x00181242),
        frame_reference_time=element_text(header, 0x00541300),
        philips_suv_factor=suv_factor,
        philips_activity_factor=activity_factor,
        philips_lookup=lookup if suv_factor is not None or activity_factor is not None else "",
    )


def read_pet_tags(series: Series) -> PetTags:
    """The SUV tags of a PET series (files in slice order); series tags that differ between files are an
    error naming the first file that differs and the tag."""
    first = _series_tags(series.headers[0])
    for path, header in zip(series.files[1:], series.headers[1:], strict=True):
        other = _series_tags(header)
        if other != first:
            for field in fields(SeriesTags):
                mine, theirs = getattr(first, field.name), getattr(other, field.name)
                if mine != theirs and field.name in LABELS:
                    raise InputError(
                        f"{path}: {LABELS[field.name]} is {theirs!r} here but {mine!r} in "
                        f"{series.files[0].name}: the slices of one series disagree"
                    )
    slices = tuple(
        _slice_tags(path, header) for path, header in zip(series.files, series.headers, strict=True)
    )
    return PetTags(file=series.files[0], series=first, slices=slices)
