"""Finding, reading, validating and atomically writing the images of one case.

Reading checks everything that would otherwise fail late or silently (a Git LFS pointer, a 2D or 4D file,
NaN voxels, PET in Bq/ml, CT and PET that do not overlap) and raises `InputError` with one line naming the
file. Writing goes through a hidden staging folder next to the destination and an `os.replace`, so an
interrupted write never leaves a second (partial) image in a folder the platform scans.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import json
import logging
import math
import os
import shutil
import struct
import sys
import tempfile
import threading
import uuid
import zlib
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
# Bytes per voxel of the scalar pixel types an input may have; anything else (complex, vector) is refused.
_PIXEL_BYTES = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkUInt64: 8,
    sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}
# Deflate cannot expand data more than about 1032-fold: a header describing more is lying.
_MAX_DEFLATE_RATIO = 1032
_METAIMAGE_HEADER_LIMIT = 1 << 20
_MAX_METAIMAGE_DIMENSION = 5  # ITK's limit for image IO
# What ITK's MetaImage reader prints (without raising) when the voxel data it returns are incomplete.
_NATIVE_READ_FAILURES = ("Uncompress failed", "not read completely")
_native_stderr_lock = threading.Lock()
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

    The header is read and checked first (dimension, pixel type, geometry, and that the file holds as much
    voxel data as the header describes, or for a compressed stream could hold), so a lying header costs
    neither time nor memory; the exact length of a compressed stream is checked while ITK reads it. What
    ITK prints on the process's stderr while reading is kept off it: it becomes part of the error, or one
    warning line, and a read that ITK completes with a complaint there (corrupt compressed data) is an
    error.
    `role` ("CT", "PET", "label") only names the image in messages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {role} file not found")
    _check_not_pointer(path)
    failure = None
    with _native_stderr() as noise:
        try:
            _check_metaimage_dimension(path, role)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            image = _read_alongside(reader, _check_header(reader, path, role))
        except RuntimeError as error:
            failure = _first_itk_line(str(error))
    if failure is not None:
        detail = f" ({noise[0][:200]})" if noise else ""
        raise InputError(f"{path}: cannot read {role} image: {failure}{detail}")
    complaints = [line for line in noise if any(marker in line for marker in _NATIVE_READ_FAILURES)]
    if complaints:
        raise InputError(f"{path}: cannot read {role} image: voxel data are corrupt ({complaints[0]})")
    if noise:
        log.warning("%s: the image reader says: %s", path, " ".join(noise)[:500])
    if role.lower() != "label":
        image = sitk.Cast(image, sitk.sitkFloat32)
        _check_finite(image, path, role)
    return image


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code (ITK's readers) writes to file descriptor 2 while the block runs.

    The non-empty lines are in the yielded list once the block has ended. Without a usable descriptor 2
    or a temporary file to collect into, nothing is captured.
    """
    lines: list[str] = []
    with _native_stderr_lock, contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(tempfile.TemporaryFile())
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved is None:
            yield lines
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _read_alongside(reader: sitk.ImageFileReader, check: Callable[[], None] | None) -> sitk.Image:
    """ITK reads the voxels while `check` inflates the same compressed stream in a thread.

    Both release the GIL, so on two cores the check costs almost no time (it used to add a second
    inflation, 1.8 s on a 400 x 400 x 661 PET). Its verdict wins over whatever ITK made of the data.
    """
    if check is None:
        return reader.Execute()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(check)
        try:
            image = reader.Execute()
        except RuntimeError:
            pending.result()  # its InputError names the problem better than ITK's message
            raise
        pending.result()
    return image


def _check_header(reader: sitk.ImageFileReader, path: Path, role: str) -> Callable[[], None] | None:
    """Everything the header tells, checked before the voxels are read.

    Returns the one check that must inflate the voxel data, to run alongside the read, or None.
    """
    dimension = reader.GetDimension()
    size = tuple(reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path}: {role} image has {reader.GetNumberOfComponents()} components per voxel;"
            " expected a scalar image"
        )
    if dimension != 3:
        raise InputError(f"{path}: {role} image is {dimension}D (size {size}); expected 3D")
    if reader.GetPixelID() not in _PIXEL_BYTES:
        raise InputError(
            f"{path}: {role} image has pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())};"
            " expected integers or real numbers"
        )
    if min(size) < 1:
        raise InputError(f"{path}: {role} image has no voxels (size {size})")
    spacing = np.asarray(reader.GetSpacing(), dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{path}: {role} image has an invalid voxel spacing {tuple(spacing)}")
    if not np.isfinite(reader.GetOrigin()).all():
        raise InputError(f"{path}: {role} image has an invalid origin {reader.GetOrigin()}")
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
    if not np.isfinite(direction).all() or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{path}: {role} image has a singular direction matrix {reader.GetDirection()}")
    return _check_voxel_data_size(path, role, math.prod(size) * _PIXEL_BYTES[reader.GetPixelID()])


def _check_voxel_data_size(path: Path, role: str, needed: int) -> Callable[[], None] | None:
    """The file must hold the voxel data that its header describes (`needed` bytes, as ITK reads them).

    MetaImage (.mha, .mhd) and NIfTI (.nii, .nii.gz) are checked; ITK itself reports truncated NRRD files.
    Uncompressed data are measured. Compressed MetaImage data are inflated (without keeping them) and
    must give exactly `needed` bytes: a zlib stream records no length, and ITK fills what is missing with
    zeros. A gzip file (NIfTI) records its uncompressed size in its trailer; a mismatch there is settled by
    inflating. The inflation of compressed MetaImage data is returned as a check to run (`_read_alongside`);
    everything else is checked here and None returned.
    """
    name = path.name.lower()
    if name.endswith((".mha", ".mhd")):
        layout = _metaimage_layout(path)
        if layout is None:
            return None
        data_path, offset, available, compressed, declared = layout
        if not compressed:
            if available < needed:
                raise InputError(
                    f"{path}: {role} image is truncated: the header describes {needed} bytes of voxel data, "
                    f"the file holds {available}"
                )
            return None
        if declared is None and data_path == path:
            raise InputError(
                f"{path}: {role} image has compressed voxel data but no CompressedDataSize in its header: "
                "ITK cannot read such a file"
            )
        if declared is not None and available < declared:
            raise InputError(
                f"{path}: {role} image is truncated: the header declares {declared} bytes of compressed "
                f"voxel data, the file holds {available}"
            )
        stored = min(available, declared) if declared is not None else available
        if needed > _MAX_DEFLATE_RATIO * stored + 64:
            raise InputError(
                f"{path}: {role} image header describes {needed} bytes of voxel data, more than "
                f"{stored} compressed bytes can hold"
            )

        def check_inflated() -> None:
            inflated = _inflated_size(
                data_path, offset, stored, limit=needed + 1, what=f"{path}: {role} image"
            )
            if inflated != needed:
                more = "more than" if inflated > needed else f"only {inflated} of"
                raise InputError(
                    f"{path}: {role} image header describes {needed} bytes of voxel data, its compressed "
                    f"data hold {more} that"
                )

        return check_inflated
    elif name.endswith((".nii", ".nii.gz")):
        compressed = name.endswith(".gz")
        nifti = _nifti_layout(path, role, compressed)
        if nifti is None:
            return None
        offset, data_bytes = nifti  # from the header itself: ITK may report scaled data as float
        if compressed:
            _check_gzip_holds(path, role, offset + data_bytes)
        elif path.stat().st_size - offset < data_bytes:
            raise InputError(
                f"{path}: {role} image is truncated: the header describes {data_bytes} bytes of voxel "
                f"data, the file holds {max(path.stat().st_size - offset, 0)}"
            )
    return None


def _inflated_size(path: Path, offset: int, stored: int, limit: int, what: str) -> int:
    """How many bytes the zlib (or gzip) stream of `stored` bytes at `offset` inflates to, up to `limit`."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, as ITK accepts
    total = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        left = stored
        try:
            while left > 0 and total < limit and not inflater.eof:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                while chunk and total < limit:
                    total += len(inflater.decompress(chunk, 1 << 24))
                    chunk = inflater.unconsumed_tail
        except zlib.error as error:
            raise InputError(f"{what}: compressed voxel data are corrupt ({error})") from None
    if not inflater.eof and total < limit:
        raise InputError(f"{what}: compressed voxel data end early (truncated file)")
    return total


def _metaimage_header(path: Path) -> tuple[dict[str, str], int] | None:
    """The fields of a MetaImage header (keys in lower case) and where its local data start.

    None for a file that is not MetaImage (no `ElementDataFile` line in the first megabyte).
    """
    if not path.name.lower().endswith((".mha", ".mhd")):
        return None
    with path.open("rb") as handle:
        head = handle.read(_METAIMAGE_HEADER_LIMIT)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, equals, value = raw.decode("latin-1").partition("=")
        if not equals:
            continue
        key, value = key.strip().lower(), value.strip()
        fields[key] = value
        if key == "elementdatafile":
            return fields, offset
    return None


def _check_metaimage_dimension(path: Path, role: str) -> None:
    """ITK's MetaImage reader never returns from a negative NDims (or one that overflows an int)."""
    header = _metaimage_header(path)
    if header is None or "ndims" not in header[0]:
        return
    ndims = header[0]["ndims"]
    if not (ndims.isdigit() and 1 <= int(ndims) <= _MAX_METAIMAGE_DIMENSION):
        raise InputError(
            f"{path}: {role} image header has NDims = {ndims[:20]!r}; expected a whole number from 1 to "
            f"{_MAX_METAIMAGE_DIMENSION}"
        )


def _metaimage_layout(path: Path) -> tuple[Path, int, int, bool, int | None] | None:
    """(data file, offset, bytes there, compressed, declared compressed size) of a MetaImage's voxel data.

    None when the data are not binary bytes in one file that can be measured (text data, a list or
    pattern of files, an explicit header size) or the header cannot be parsed here: ITK then decides.
    """
    header = _metaimage_header(path)
    if header is None:
        return None
    fields, offset = header
    data_file = fields["elementdatafile"]
    if (
        "headersize" in fields
        or fields.get("binarydata", "true").lower() != "true"
        or data_file.upper().startswith("LIST")
        or "%" in data_file
    ):
        return None
    if data_file.upper() == "LOCAL":
        data_path = path
    else:
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            return None  # ITK names the missing file
    available = data_path.stat().st_size - offset
    compressed = fields.get("compresseddata", "false").lower() == "true"
    declared = fields.get("compresseddatasize", "")
    return data_path, offset, available, compressed, int(declared) if declared.isdigit() else None


def _nifti_layout(path: Path, role: str, compressed: bool) -> tuple[int, int] | None:
    """(offset, bytes) of a single-file NIfTI-1 or NIfTI-2 image's voxel data, from its header.

    None when the header cannot be read here (not gzip, not NIfTI): ITK then reports what is wrong.
    """
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
            header = handle.read(540)
    except EOFError:  # ITK reads what there is of a gzip file cut inside the header, and returns an image
        raise InputError(f"{path}: {role} image is truncated: the file ends inside its header") from None
    except (OSError, zlib.error):
        return None
    for order in "<>":
        if len(header) >= 348 and struct.unpack(f"{order}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{order}8h", header[40:56])
            bitpix = struct.unpack(f"{order}h", header[72:74])[0]
            offset, minimum = struct.unpack(f"{order}f", header[108:112])[0], 352
            break
        if len(header) >= 540 and struct.unpack(f"{order}i", header[:4])[0] == 540:
            dims = struct.unpack(f"{order}8q", header[16:80])
            bitpix = struct.unpack(f"{order}h", header[14:16])[0]
            offset, minimum = struct.unpack(f"{order}q", header[168:176])[0], 544
            break
    else:
        return None
    rank = dims[0]
    if not (1 <= rank <= 7 and all(d > 0 for d in dims[1 : rank + 1])) or bitpix <= 0 or bitpix % 8:
        return None
    if not math.isfinite(offset) or offset < 0:
        return None
    return max(int(offset), minimum), math.prod(dims[1 : rank + 1]) * bitpix // 8


def _check_gzip_holds(path: Path, role: str, needed: int) -> None:
    """A gzip file must decompress to at least `needed` bytes; its trailer says so in the common case."""
    size = path.stat().st_size
    if needed > _MAX_DEFLATE_RATIO * size + 64:
        raise InputError(
            f"{path}: {role} image header describes {needed} bytes of data, more than {size} compressed "
            "bytes can hold"
        )
    with path.open("rb") as handle:
        handle.seek(max(size - 4, 0))
        trailer = handle.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == needed % 2**32:
        return  # the uncompressed size recorded at the end of the file is what the header describes
    # Several gzip members, extra bytes, or a truncated file: count what really decompresses, to the end
    # of the stream (which checks its CRC) unless it runs far past what the header describes.
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while total <= needed + (1 << 20):
                block = handle.read(1 << 22)
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: {role} image is truncated or corrupt: {error}") from None
    if total < needed:
        raise InputError(
            f"{path}: {role} image is truncated: the header describes {needed} bytes of data, the file "
            f"decompresses to {total}"
        )


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
