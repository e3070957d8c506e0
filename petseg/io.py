"""Finding, reading, validating and atomically writing the images of one case.

Reading checks everything that would otherwise fail late or silently (a Git LFS pointer, a 2D or 4D file,
NaN voxels, PET in Bq/ml, CT and PET that do not overlap) and raises `InputError` with one line naming the
file. Writing goes through a hidden staging folder next to the destination and an `os.replace`, so an
interrupted write never leaves a second (partial) image in a folder the platform scans.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError, OutputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd")
CT_FOLDER = Path("images") / "ct"
PET_FOLDER = Path("images") / "pet"
MASK_FOLDER = Path("images") / "automated-petct-lesion-segmentation"
DATA_CENTRIC_JSON = "data-centric-model.json"

_LFS_SIGNATURE = b"version https://git-lfs"
# PET in SUV rarely exceeds ~100 outside the bladder; activity concentrations in Bq/ml are thousands.
_BQML_PERCENTILE = 99.0
_BQML_THRESHOLD = 100.0


@dataclass(frozen=True)
class CaseFiles:
    """The two input images of one case, as found on disk."""

    ct: Path
    pet: Path

    @property
    def pet_uuid(self) -> str:
        """The PET file's name without extension: the output mask is named after it."""
        return image_stem(self.pet)


def image_stem(path: Path) -> str:
    """File name without its image extension (`a.nii.gz` -> `a`)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def find_image(folder: Path) -> Path:
    """The one image file in an interface folder; zero or several is an error."""
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder not found")
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise InputError(f"{folder}: no image file ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(f"{folder}: expected exactly one image, found {len(images)}: {names}")
    return images[0]


def find_case(input_dir: Path) -> CaseFiles:
    """The CT and PET of a Grand-Challenge input folder (`images/ct/`, `images/pet/`)."""
    return CaseFiles(ct=find_image(input_dir / CT_FOLDER), pet=find_image(input_dir / PET_FOLDER))


def _check_not_pointer(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_LFS_SIGNATURE))
    except OSError as error:
        raise InputError(f"{path}: cannot open file: {error.strerror or error}") from None
    if head == _LFS_SIGNATURE:
        raise InputError(
            f"{path}: this is a Git LFS pointer, not an image; fetch the real file (git lfs pull)"
        )
    if not head:
        raise InputError(f"{path}: file is empty")


def read_image(path: Path, role: str) -> sitk.Image:
    """Read a 3D image as float32 and reject what cannot be segmented.

    `role` ("CT", "PET", "label") only names the image in messages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {role} file not found")
    _check_not_pointer(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = _first_itk_line(str(error))
        raise InputError(f"{path}: cannot read {role} image: {first}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: {role} image has {image.GetNumberOfComponentsPerPixel()} components per voxel;"
            " expected a scalar image"
        )
    if image.GetDimension() != 3:
        raise InputError(
            f"{path}: {role} image is {image.GetDimension()}D (size {image.GetSize()}); expected 3D"
        )
    if role.lower() != "label":
        image = sitk.Cast(image, sitk.sitkFloat32)
        _check_finite(image, path, role)
    return image


def _first_itk_line(message: str) -> str:
    """ITK exceptions are long and multi-line; keep the line that says what went wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    for line in lines:
        if "ERROR" in line.upper() or "Unable" in line or "Could not" in line:
            return line
    return lines[-1] if lines else "unknown error"


def _check_finite(image: sitk.Image, path: Path, role: str) -> None:
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"{path}: {role} image has {bad} NaN or infinite voxels")


def check_pet_units(pet: sitk.Image, path: Path) -> None:
    """Warn when PET values look like activity concentrations (Bq/ml) rather than SUV."""
    array = sitk.GetArrayViewFromImage(pet).ravel()
    sample = array[:: max(1, array.size // 2_000_000)]
    high = float(np.percentile(sample, _BQML_PERCENTILE))
    if high > _BQML_THRESHOLD:
        log.warning(
            "%s: PET %g%% percentile is %.0f; this looks like Bq/ml, not SUV. "
            "The model expects body-weight SUV: results will be wrong.",
            path,
            _BQML_PERCENTILE,
            high,
        )


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min corner, max corner) of the image's voxel extent."""
    size = np.asarray(image.GetSize(), dtype=float)
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        for corner in np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in size])).reshape(3, -1).T
    ]
    points = np.asarray(corners)
    return points.min(axis=0), points.max(axis=0)


def check_overlap(ct: sitk.Image, pet: sitk.Image, ct_path: Path, pet_path: Path) -> None:
    """CT and PET must share physical space, or resampling yields an all-air CT."""
    ct_lo, ct_hi = physical_bounds(ct)
    pet_lo, pet_hi = physical_bounds(pet)
    overlap = np.clip(np.minimum(ct_hi, pet_hi) - np.maximum(ct_lo, pet_lo), 0.0, None)
    pet_volume = float(np.prod(pet_hi - pet_lo))
    fraction = float(np.prod(overlap)) / pet_volume if pet_volume > 0 else 0.0
    if fraction == 0.0:
        raise InputError(
            f"{ct_path}: CT does not overlap the PET {pet_path.name} in physical space "
            f"(CT spans {np.round(ct_lo, 1).tolist()}..{np.round(ct_hi, 1).tolist()} mm, "
            f"PET {np.round(pet_lo, 1).tolist()}..{np.round(pet_hi, 1).tolist()} mm)"
        )
    # A 500 mm CT inside an 815 mm PET field of view covers ~38%: normal. Far less means a cropped CT.
    if fraction < 0.1:
        log.warning("%s: CT covers only %.0f%% of the PET field of view", ct_path, 100 * fraction)


def read_case(files: CaseFiles) -> tuple[sitk.Image, sitk.Image]:
    """Read and validate the CT and PET of one case."""
    ct = read_image(files.ct, "CT")
    pet = read_image(files.pet, "PET")
    check_pet_units(pet, files.pet)
    check_overlap(ct, pet, files.ct, files.pet)
    return ct, pet


@contextlib.contextmanager
def _staging(destination: Path) -> Iterator[Path]:
    """A hidden folder beside `destination` (same filesystem, so the final rename is atomic)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".petseg-partial-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
    except OSError as error:
        raise OutputError(f"{destination.parent}: cannot write here: {error.strerror or error}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    """Write an image atomically: a complete file at `path`, or nothing."""
    path = Path(path)
    try:
        with _staging(path) as staging:
            partial = staging / path.name
            sitk.WriteImage(image, str(partial), compress)
            os.replace(partial, path)
    except RuntimeError as error:
        raise OutputError(f"{path}: cannot write image: {_first_itk_line(str(error))}") from None
    except OSError as error:
        raise OutputError(f"{path}: cannot write image: {error.strerror or error}") from None
    return path


def write_atomically(path: Path, write: Callable[[Path], object], what: str = "") -> Path:
    """`write(partial)` into a hidden staging file, then one rename onto `path`: the whole file or nothing.

    `what` names the file in the error ("cannot write cache entry: ...").
    """
    path = Path(path)
    try:
        with _staging(path) as staging:
            partial = staging / path.name
            write(partial)
            os.replace(partial, path)
    except OSError as error:
        named = f" {what}" if what else ""
        raise OutputError(f"{path}: cannot write{named}: {error.strerror or error}") from None
    return path


def write_text(text: str, path: Path) -> Path:
    """Write a text file atomically: the complete file at `path`, or nothing."""
    return write_atomically(path, lambda partial: partial.write_text(text))


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, in nested dicts and lists: strict JSON readers reject NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(data: Any, path: Path) -> Path:
    """Write JSON atomically."""
    return write_text(json.dumps(data, indent=2) + "\n", path)


def write_outputs(mask: sitk.Image, output_dir: Path, name: str) -> Path:
    """Write the Grand-Challenge outputs of one case: both files, or (on failure) neither."""
    mask_path = write_image(mask, Path(output_dir) / MASK_FOLDER / f"{name}.mha", compress=True)
    try:
        write_json(False, Path(output_dir) / DATA_CENTRIC_JSON)
    except BaseException:
        mask_path.unlink(missing_ok=True)
        raise
    return mask_path
