"""Finding one DICOM series in a folder, checking that it makes a regular 3D volume, and its geometry.

A folder is read flat (no subfolders); files that are not DICOM (a README, a DICOMDIR's index) are passed
over. What remains must be one series of the expected modality whose slices stack into a regular grid: one
SeriesInstanceUID, single-frame images of one size and orientation, evenly spaced along the slice normal with
no gantry tilt. Anything else is refused with one line naming the file and the problem, because a converter
that guessed (the first series, the most common spacing) would hand the network a volume with the wrong
geometry, silently.

The slice order and the geometry are SimpleITK's (GDCM's series file order; origin, spacing and direction
from its series reader), so the converted image lies exactly where any ITK-based reader of the same series
would put it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from petseg.errors import InputError
from petseg.io.dicom.values import element_text, element_texts, tag_label
from petseg.io.files import check_readable_name

log = logging.getLogger(__name__)

__all__ = ["Geometry", "Series", "read_header", "read_series", "series_of"]

MODALITY = tag_label("Modality", 0x00080060)
SERIES_UID = tag_label("SeriesInstanceUID", 0x0020000E)
POSITION = tag_label("ImagePositionPatient", 0x00200032)
ORIENTATION = tag_label("ImageOrientationPatient", 0x00200037)
PIXEL_SPACING = tag_label("PixelSpacing", 0x00280030)
TILT = tag_label("GantryDetectorTilt", 0x00181120)
FRAMES = tag_label("NumberOfFrames", 0x00280008)

# Slice positions are decimal strings of limited precision: steps may differ by this much and still count
# as even (the larger of an absolute and a relative tolerance).
_SPACING_TOLERANCE_MM = 0.01
_SPACING_TOLERANCE_REL = 1e-3
# |cos| between the slices' step and their normal below 1 - this is a tilted (sheared) stack.
_TILT_TOLERANCE = 1e-4
_ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Geometry:
    """The volume's grid, in ITK's convention (LPS, x y z order)."""

    size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class Series:
    """One validated series: its files in slice order, their headers (without pixel data), its grid."""

    folder: Path
    uid: str
    modality: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    geometry: Geometry


def read_series(folder: Path, modality: str, role: str) -> Series:
    """The one series of `modality` ("PT", "CT") in `folder`, validated; `role` names it in messages."""
    folder = Path(folder)
    check_readable_name(folder, role)
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} DICOM folder not found")
    headers = _read_headers(folder, role)
    uids = {}
    for path, header in headers.items():
        uid = element_text(header, 0x0020000E)
        if uid is None:
            raise InputError(
                f"{path}: no {SERIES_UID}: cannot tell which series the file belongs to (damaged?)"
            )
        uids.setdefault(uid, []).append(path)
    if len(uids) > 1:
        listed = "; ".join(f"{uid} ({len(paths)} files, e.g. {paths[0].name})" for uid, paths in uids.items())
        raise InputError(
            f"{folder}: {len(uids)} series in one folder ({listed}); give a folder that holds one series only"
        )
    (uid,) = uids
    return series_of(folder, uid, headers, modality, role)


def series_of(folder: Path, uid: str, headers: dict[Path, Dataset], modality: str, role: str) -> Series:
    """The series `uid` made of the files `headers` holds (all of them directly in `folder`), validated:
    its modality, slice order, regular grid and geometry."""
    for path, header in headers.items():
        found = element_text(header, 0x00080060)
        if found != modality:
            raise InputError(
                f"{path}: {MODALITY} is {found or 'missing'}, not {modality}: this is not a {role} series"
            )
    ordered = _gdcm_order(folder, uid, headers, role)
    ordered_headers = tuple(headers[path] for path in ordered)
    _check_slices(ordered, ordered_headers)
    geometry = _geometry(ordered, role)
    return Series(folder, uid, modality, tuple(ordered), ordered_headers, geometry)


def _read_headers(folder: Path, role: str) -> dict[Path, Dataset]:
    """Every DICOM file directly in `folder`, header only; other files are passed over."""
    try:
        entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    except OSError as error:
        raise InputError(f"{folder}: cannot list the {role} folder: {error.strerror or error}") from None
    headers = {}
    for path in entries:
        if not path.is_file():
            continue
        header = read_header(path, role)
        if header is not None:
            headers[path] = header
    if not headers:
        raise InputError(f"{folder}: no DICOM files in the {role} folder")
    return headers


def read_header(path: Path, role: str) -> Dataset | None:
    """The header (without pixel data) of a DICOM file; None for a file that is not DICOM or is a
    DICOMDIR. A damaged DICOM file is an error naming it, never passed over."""
    check_readable_name(path, role)  # ITK aborts the process on a name it cannot encode
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if _looks_like_dicom(path):  # a DICOM file, damaged: its slice must not silently go missing
            raise InputError(f"{path}: damaged DICOM file (truncated?): pydicom cannot read it") from None
        log.debug("%s: not a DICOM file, passed over", path)
        return None
    except (OSError, EOFError) as error:
        raise InputError(
            f"{path}: cannot read the DICOM file: {getattr(error, 'strerror', None) or error}"
        ) from None
    except Exception as error:  # pydicom raises many kinds of error on a damaged header
        raise InputError(f"{path}: cannot read the DICOM header: {error}") from None
    if len(header) == 0:  # pydicom stops quietly where a file ends early
        raise InputError(f"{path}: damaged DICOM file (truncated?): no data elements after its header")
    if "DirectoryRecordSequence" in header:  # a DICOMDIR: an index of files, not an image
        return None
    return header


def _looks_like_dicom(path: Path) -> bool:
    """Empty, or the DICOM preamble's "DICM" marker at byte 128."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return not head or head[128:132] == b"DICM"


def _gdcm_order(folder: Path, uid: str, headers: dict[Path, Dataset], role: str) -> list[Path]:
    """The series' files in GDCM's order (sorted along the slice normal), which SimpleITK reads them in."""
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    except RuntimeError as error:
        raise InputError(
            f"{folder}: GDCM cannot order the {role} series: {str(error).splitlines()[0]}"
        ) from None
    ordered = [Path(name) for name in names]
    found = {os.path.realpath(path) for path in ordered}
    for path in headers:
        if os.path.realpath(path) not in found:
            raise InputError(
                f"{path}: GDCM cannot read this file as part of series {uid} (damaged or truncated?)"
            )
    by_real = {os.path.realpath(path): path for path in headers}
    return [by_real[os.path.realpath(path)] for path in ordered]


def _floats(header: Dataset, tag: int, label: str, path: Path, count: int) -> np.ndarray:
    texts = element_texts(header, tag)
    if not texts:
        raise InputError(f"{path}: no {label}: the slice has no place in space")
    try:
        values = np.array([float(text) for text in texts], dtype=float)
    except ValueError:
        raise InputError(f"{path}: {label} is not numbers: {texts}") from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise InputError(f"{path}: {label} should be {count} numbers, is {texts}")
    return values


def _check_slices(paths: list[Path], headers: tuple[Dataset, ...]) -> None:
    """One size, one orientation, single frames, no gantry tilt, even spacing along the normal."""
    if len(paths) < 2:
        raise InputError(f"{paths[0]}: the series has a single slice: no slice spacing, not a volume")
    first = headers[0]
    orientation = _floats(first, 0x00200037, ORIENTATION, paths[0], 6)
    row, column = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(column) - 1) > 1e-3
        or abs(row @ column) > 1e-3
    ):
        raise InputError(
            f"{paths[0]}: {ORIENTATION} is not two orthogonal unit vectors: {orientation.tolist()}"
        )
    normal = np.cross(row, column)
    size = (element_text(first, 0x00280010), element_text(first, 0x00280011))
    pixel_spacing = _floats(first, 0x00280030, PIXEL_SPACING, paths[0], 2)
    positions = []
    for path, header in zip(paths, headers, strict=True):
        frames = element_text(header, 0x00280008)
        if frames is not None and frames not in ("1", "1.0"):
            raise InputError(
                f"{path}: {FRAMES} is {frames}: multi-frame DICOM is not read, only one slice per file"
            )
        tilt = element_text(header, 0x00181120)
        if tilt is not None:
            try:
                tilted = abs(float(tilt)) > 1e-6
            except ValueError:
                raise InputError(f"{path}: {TILT} is not a number: {tilt!r}") from None
            if tilted:
                raise InputError(
                    f"{path}: {TILT} is {tilt} degrees: a tilted gantry gives sheared slices, which are "
                    "not read; reslice the series first"
                )
        if (element_text(header, 0x00280010), element_text(header, 0x00280011)) != size:
            raise InputError(
                f"{path}: the slice's Rows x Columns differ from the first slice's ({paths[0].name})"
            )
        if (
            np.abs(_floats(header, 0x00200037, ORIENTATION, path, 6) - orientation).max()
            > _ORIENTATION_TOLERANCE
        ):
            raise InputError(f"{path}: {ORIENTATION} differs from the first slice's ({paths[0].name})")
        if np.abs(_floats(header, 0x00280030, PIXEL_SPACING, path, 2) - pixel_spacing).max() > 1e-4:
            raise InputError(f"{path}: {PIXEL_SPACING} differs from the first slice's ({paths[0].name})")
        positions.append(_floats(header, 0x00200032, POSITION, path, 3))
    steps = np.diff(np.array(positions), axis=0)
    along = steps @ normal
    lengths = np.linalg.norm(steps, axis=1)
    for index, (length, projected) in enumerate(zip(lengths, along, strict=True)):
        if length < _SPACING_TOLERANCE_MM:
            raise InputError(
                f"{paths[index + 1]}: at the same position as {paths[index].name}: two slices in one place "
                "(a dynamic or gated series?), not a volume"
            )
        if abs(projected) / length < 1 - _TILT_TOLERANCE:
            raise InputError(
                f"{paths[index + 1]}: the slices are not stacked along their normal (tilted gantry or "
                "sheared stack); reslice the series first"
            )
    spacing = float(np.median(along))
    deviation = np.abs(along - spacing)
    tolerance = max(_SPACING_TOLERANCE_MM, _SPACING_TOLERANCE_REL * abs(spacing))
    worst = int(np.argmax(deviation))
    if deviation[worst] > tolerance:
        raise InputError(
            f"{paths[worst + 1]}: uneven slice spacing: {abs(along[worst]):.4g} mm from "
            f"{paths[worst].name}, {abs(spacing):.4g} mm elsewhere (a missing slice, or slices of "
            "different thickness); not a regular volume"
        )


def _geometry(paths: list[Path], role: str) -> Geometry:
    """SimpleITK's series reader on the first two slices: their origin, direction and spacing are the
    whole series' (the slices were checked to be evenly spaced)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in paths[:2]])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise InputError(f"{paths[0]}: SimpleITK cannot read the {role} series: {first_line}") from None
    width, height = image.GetSize()[:2]
    return Geometry(
        size=(width, height, len(paths)),
        origin=tuple(image.GetOrigin()),
        spacing=tuple(image.GetSpacing()),
        direction=tuple(image.GetDirection()),
    )
