"""`petseg from-dicom`: a PET (and CT) DICOM series to a Grand-Challenge case folder.

Writes `CASE/images/pet/<PET SeriesInstanceUID>.mha` in body-weight SUV (float32),
`CASE/images/ct/<CT SeriesInstanceUID>.mha` in HU on the CT's own grid (int16 where every value is a whole
number in its range, else float32), and `CASE/suv.json`: the SUV factors, every tag used with its value,
the rule applied at each step, and the warnings. Everything is read, checked and converted in memory
first, then the whole folder is written under a hidden name beside CASE and renamed into place: a failed
run leaves nothing behind, never a case folder without its PET or its record.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from petseg.errors import InputError, OutputError
from petseg.io.dicom.pet_tags import read_pet_tags
from petseg.io.dicom.pixels import read_rescaled, to_image
from petseg.io.dicom.series import Series, read_series
from petseg.io.dicom.suv import SuvResult, compute_suv
from petseg.io.dicom.values import element_text, tag_label
from petseg.io.files import CT_FOLDER, PET_FOLDER, json_safe, write_atomically

log = logging.getLogger(__name__)

__all__ = [
    "SUV_JSON",
    "Conversion",
    "convert_dicom",
    "ct_image",
    "describe_series",
    "json_text",
    "pet_image",
    "read_ct",
    "read_pet",
]

SUV_JSON = "suv.json"


@dataclass(frozen=True)
class Conversion:
    """What `convert_dicom` wrote."""

    case_dir: Path
    pet_path: Path
    ct_path: Path | None
    suv: SuvResult


def read_pet(folder: Path) -> tuple[Series, sitk.Image, SuvResult]:
    """The PET series of `folder` in body-weight SUV, float32, with the record of its conversion."""
    return pet_image(read_series(folder, "PT", "PET"))


def pet_image(series: Series) -> tuple[Series, sitk.Image, SuvResult]:
    """A validated PET series in body-weight SUV, float32, with the record of its conversion."""
    suv = compute_suv(read_pet_tags(series))
    volume = read_rescaled(series, suv.slopes, suv.intercepts, suv.factors)
    return series, to_image(volume, series), suv


def read_ct(folder: Path) -> tuple[Series, sitk.Image]:
    """The CT series of `folder` in HU on its own grid: int16 where the values allow, else float32."""
    return ct_image(read_series(folder, "CT", "CT"))


def ct_image(series: Series) -> tuple[Series, sitk.Image]:
    """A validated CT series in HU on its own grid: int16 where the values allow, else float32."""
    slopes = [
        _rescale_value(path, header, 0x00281053, "RescaleSlope", 1.0) for path, header in _pairs(series)
    ]
    intercepts = [
        _rescale_value(path, header, 0x00281052, "RescaleIntercept", 0.0) for path, header in _pairs(series)
    ]
    volume = read_rescaled(series, slopes, intercepts)
    if np.all(volume == np.round(volume)) and volume.min() >= -32768 and volume.max() <= 32767:
        volume = volume.astype(np.int16)
    return series, to_image(volume, series)


def _pairs(series: Series) -> list[tuple[Path, Dataset]]:
    return list(zip(series.files, series.headers, strict=True))


def _rescale_value(path: Path, header: Dataset, tag: int, keyword: str, default: float) -> float:
    text = element_text(header, tag)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}: {tag_label(keyword, tag)} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise InputError(f"{path}: {tag_label(keyword, tag)} {text!r} is not a finite number")
    return value


def describe_series(series: Series, image: sitk.Image, relative: Path | None) -> dict[str, Any]:
    """How suv.json describes a converted series; `relative`: where its image was written, if it was."""
    described = {
        "folder": str(series.folder),
        "series_instance_uid": series.uid,
        "files": len(series.files),
        "first_file": series.files[0].name,
        "image": str(relative),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }
    if relative is None:
        del described["image"]
    return described


def convert_dicom(pet_dir: Path, case_dir: Path, ct_dir: Path | None = None) -> Conversion:
    """Convert the PET series in `pet_dir` (and the CT series in `ct_dir`) into the case folder
    `case_dir`, which must not exist yet (or be empty). All or nothing."""
    case_dir = Path(case_dir)
    _check_destination(case_dir)
    pet_series, pet, suv = read_pet(Path(pet_dir))
    ct_series, ct = read_ct(Path(ct_dir)) if ct_dir is not None else (None, None)
    for warning in suv.warnings:
        log.warning("%s: %s", pet_series.folder, warning)
    pet_relative = PET_FOLDER / f"{pet_series.uid}.mha"
    ct_relative = CT_FOLDER / f"{ct_series.uid}.mha" if ct_series is not None else None
    record = {
        "pet": describe_series(pet_series, pet, pet_relative),
        "ct": describe_series(ct_series, ct, ct_relative) if ct_series is not None else None,  # type: ignore[arg-type]
        "suv": suv.as_json(),
    }

    def write(partial: Path) -> None:
        (partial / PET_FOLDER).mkdir(parents=True)
        try:
            sitk.WriteImage(pet, str(partial / pet_relative), True)
            if ct is not None and ct_relative is not None:
                (partial / CT_FOLDER).mkdir(parents=True)
                sitk.WriteImage(ct, str(partial / ct_relative), True)
        except RuntimeError as error:
            raise OutputError(f"{case_dir}: cannot write image: {str(error).splitlines()[0]}") from None
        (partial / SUV_JSON).write_text(json_text(record))

    emptied = case_dir.is_dir()
    if emptied:
        case_dir.rmdir()  # empty (checked above): the rename needs the name free or an empty folder
    try:
        write_atomically(case_dir, write, "case folder")
    except BaseException:
        if emptied:
            case_dir.mkdir(exist_ok=True)  # the empty folder the user gave back as it was
        raise
    log.info(
        "wrote %s: PET %s in SUV (%s)%s",
        case_dir,
        pet_relative.name,
        suv.units,
        f", CT {ct_relative.name}" if ct_relative is not None else "",
    )
    return Conversion(
        case_dir, case_dir / pet_relative, case_dir / ct_relative if ct_relative is not None else None, suv
    )


def json_text(record: dict[str, Any]) -> str:
    """Indented JSON with each list of plain values (per-slice factors, slopes) on one line."""
    text = json.dumps(json_safe(record), indent=2)
    return (
        re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
        + "\n"
    )


def _check_destination(case_dir: Path) -> None:
    if case_dir.exists() and not case_dir.is_dir():
        raise OutputError(f"{case_dir}: exists and is not a folder")
    if case_dir.is_dir() and any(case_dir.iterdir()):
        raise OutputError(f"{case_dir}: the case folder exists and is not empty; remove it or choose another")
