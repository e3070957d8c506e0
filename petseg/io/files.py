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
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError, OutputError, PetsegError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd")
CT_FOLDER = Path("images") / "ct"
PET_FOLDER = Path("images") / "pet"
MASK_FOLDER = Path("images") / "automated-petct-lesion-segmentation"
DATA_CENTRIC_JSON = "data-centric-model.json"

# The first bytes of a Git LFS pointer: a clone without `git lfs pull` holds these instead of the file.
LFS_SIGNATURE = b"version https://git-lfs"
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
_DIRECTION_TOLERANCE = 1e-4  # |D^T D - I|: headers store rotations rounded to about six digits
# What ITK's MetaImage reader prints (without raising) when the voxel data it returns are incomplete.
_NATIVE_READ_FAILURES = ("Uncompress failed", "not read completely")
_native_stderr_lock = threading.Lock()
# PET in SUV rarely exceeds ~100 outside the bladder; activity concentrations in Bq/ml are thousands.
_BQML_PERCENTILE = 99.0
MIN_CT_COVERAGE = 0.05  # share of the PET's field of view the CT must cover
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
    try:
        images = sorted(p for p in folder.iterdir() if is_image_file(p))
    except OSError as error:  # it vanished, or cannot be listed
        raise InputError(f"{folder}: cannot list the input folder: {error.strerror or error}") from None
    if not images:
        raise InputError(f"{folder}: no image file ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(f"{folder}: expected exactly one image, found {len(images)}: {names}")
    return images[0]


def find_case(input_dir: Path) -> CaseFiles:
    """The CT and PET of a Grand-Challenge input folder (`images/ct/`, `images/pet/`).

    Symbolic links inside the folder are followed only where they stay inside it (the folder itself may
    be a link, as the platform links /input to each job's folder): the same rule as for the model folder.
    """
    files = CaseFiles(ct=find_image(input_dir / CT_FOLDER), pet=find_image(input_dir / PET_FOLDER))
    for path in (files.ct, files.pet):
        check_link_inside(path, input_dir, "input")
    return files


def check_link_inside(path: Path, root: Path, what: str, error: type[PetsegError] = InputError) -> None:
    """`path` must resolve (links followed) to a place inside `root` (resolved too), the rule for the
    input, model and output folders alike: `error` (InputError, ModelError, OutputError) naming it
    otherwise."""
    try:
        target, base = Path(path).resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as problem:  # a loop of links
        raise error(f"{path}: cannot follow the symbolic link: {problem}") from None
    if base not in target.parents:
        raise error(f"{path}: a symbolic link leads outside the {what} folder {root} (to {target})")


def _check_not_pointer(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(LFS_SIGNATURE))
    except OSError as error:
        raise InputError(f"{path}: cannot open file: {error.strerror or error}") from None
    if head == LFS_SIGNATURE:
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
    check_readable_name(path, role)
    if not path.exists():
        raise InputError(f"{path}: {role} file not found")
    if not is_regular_file(path):
        raise InputError(f"{path}: {role} image is not a regular file (a folder, FIFO or device)")
    failure = None
    with _native_stderr() as noise:
        try:
            _check_not_pointer(path)
            _check_data_source(path, role)
            _check_metaimage_dimension(path, role)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.SetImageIO(_image_io(path))
            reader.ReadImageInformation()
            image = _read_alongside(reader, _check_header(reader, path, role))
        except RuntimeError as error:
            failure = _first_itk_line(str(error))
        except OSError as error:  # e.g. the file vanished, or lost its permissions, while being read
            failure = f"{error.strerror or error}"
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


def _image_io(path: Path) -> str:
    """ITK's reader for the file's suffix, in any letter case: ITK itself matches suffixes case-sensitively,
    so an `.MHA` that petseg counts as an image would otherwise be unreadable."""
    name = path.name.lower()
    if name.endswith((".mha", ".mhd")):
        return "MetaImageIO"
    if name.endswith((".nii", ".nii.gz")):
        return "NiftiImageIO"
    if name.endswith(".nrrd"):
        return "NrrdImageIO"
    return ""  # ITK chooses


def is_regular_file(path: Path) -> bool:
    """A regular file, after following symbolic links: never a FIFO or a device, whose read may block
    for ever or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_readable_name(path: Path, role: str) -> None:
    """A path that is not valid UTF-8 reaches ITK as a string it cannot encode, and ITK aborts the whole
    process (SIGABRT) without a message: such a name is refused before ITK sees it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{str(path)!a}: the {role} image's path is not valid UTF-8; rename the file or folder"
        ) from None


def _check_data_source(path: Path, role: str) -> None:
    """An image's voxel data come from the file itself, or from one regular file in the same folder.

    MetaImage (`ElementDataFile`) and NRRD (`data file:`) headers may name other files: anywhere on the
    disk, many of them (LIST, or a pattern), a device or a FIFO. An uploaded header could so make the
    algorithm read any file in the container, or block for ever. Anything but the file itself or one
    regular file beside it is refused here, before ITK opens anything.
    """
    data_file = _metaimage_data_file(path) if path.name.lower().endswith((".mha", ".mhd")) else None
    if path.name.lower().endswith(".nrrd"):
        data_file = _nrrd_data_file(path)
    if data_file is not None and data_file.upper() != "LOCAL":
        data_file_beside(path, data_file, role)


def data_file_beside(path: Path, data_file: str, role: str) -> Path:
    """The regular file in `path`'s own folder that its header names for the voxel data (links followed
    only where they stay in that folder); anything else is an `InputError` naming the image."""
    where = f"{path}: {role} image header points its voxel data at {data_file!a}"
    words = data_file.split()
    if data_file.upper().startswith("LIST") or "%" in data_file or len(words) != 1:
        raise InputError(f"{where}: several files (a list or a pattern); only one file beside it is read")
    if "/" in data_file or "\\" in data_file or data_file in (".", "..") or "\x00" in data_file:
        raise InputError(f"{where}: only a file in the image's own folder is read")
    folder = path.parent.resolve()
    try:
        target = (path.parent / data_file).resolve()
    except (OSError, RuntimeError) as error:  # a symbolic link loop
        raise InputError(f"{where}: {error}") from None
    if target.parent != folder:
        raise InputError(f"{where}, which leads outside the image's folder (to {str(target)!a})")
    if not target.exists():
        raise InputError(f"{where}: file not found")
    if not is_regular_file(target):
        raise InputError(f"{where}: not a regular file (a folder, FIFO or device)")
    return target


def _metaimage_data_file(path: Path) -> str | None:
    header = _metaimage_header(path)
    return None if header is None else header[0]["elementdatafile"]


def _nrrd_data_file(path: Path) -> str | None:
    """The `data file` field of an NRRD header, if any (None: the data follow the header in the file)."""
    with path.open("rb") as handle:
        head = handle.read(_METAIMAGE_HEADER_LIMIT)
    if not head.startswith(b"NRRD"):
        return None
    for raw in head.split(b"\n")[1:]:
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line:
            return None  # the blank line that ends the header
        key, colon, value = line.partition(":")
        if colon and not value.startswith("=") and key.strip().lower() in ("data file", "datafile"):
            return value.strip()
    return None


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
    # Scanners write rotations (orthonormal columns); a shear or a scale in the direction matrix would be
    # resampled as if it were a rotation, with every voxel in the wrong place.
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        raise InputError(
            f"{path}: {role} image has a direction matrix that is not a rotation (sheared or scaled): "
            f"{tuple(round(float(v), 6) for v in direction.ravel())}"
        )
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
    # ITK reads the first NDims numbers of DimSize and ignores the rest: a header that disagrees with
    # itself is refused rather than read one way or the other.
    sizes = header[0].get("dimsize", "").split()
    if "dimsize" in header[0] and len(sizes) != int(ndims):
        raise InputError(f"{path}: {role} image header has {len(sizes)} DimSize numbers for NDims = {ndims}")


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
    if fields.get("binarydata", "true").lower() != "true":
        return None
    if data_file.upper() == "LOCAL":
        data_path = path
    else:  # checked by _check_data_source before: one regular file beside the header
        data_path, offset = data_file_beside(path, data_file, "the"), 0
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if "headersize" in fields:
        # Bytes that MetaIO skips before the data (-1: the data end the file). Measured conservatively:
        # the file must hold the skipped bytes and the data after them.
        skip = fields["headersize"]
        if compressed or not skip.lstrip("-").isdigit() or int(skip) < -1:
            raise InputError(f"{path}: image header has HeaderSize = {skip[:20]!r}, which is not read here")
        offset = max(offset, int(skip))
    available = data_path.stat().st_size - offset
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


def check_image(image: sitk.Image, role: str, name: str) -> sitk.Image:
    """An image already in memory, held to what `read_image` demands of a file: 3D, one value per voxel,
    positive finite spacing, a rotation for direction and finite voxels; returned as float32.

    `name` stands for the file in messages (the image has none).
    """
    if not isinstance(image, sitk.Image):
        raise InputError(
            f"{name}: the {role} must be a SimpleITK image or a path, got {type(image).__name__}"
        )
    if image.GetDimension() != 3:
        raise InputError(f"{name}: {role} image is {image.GetDimension()}D; expected 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: {role} image has several components per voxel; expected a scalar image")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{name}: {role} image has an invalid voxel spacing {tuple(spacing)}")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        raise InputError(f"{name}: {role} image has a direction matrix that is not a rotation")
    image = sitk.Cast(image, sitk.sitkFloat32)
    _check_finite(image, Path(name), role)
    return image


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
    # A 500 mm CT inside an 815 mm PET field of view covers ~38%: normal. Far less means a cropped CT;
    # below MIN_CT_COVERAGE (a sliver, a single voxel) the network would see air where the body is.
    if fraction < MIN_CT_COVERAGE:
        raise InputError(
            f"{ct_path}: CT covers only {100 * fraction:.2g}% of the PET {pet_path.name}'s field of view, "
            f"less than the {100 * MIN_CT_COVERAGE:g}% needed to segment it: a CT of another scan, or a "
            "wrong origin?"
        )
    if fraction < 0.1:
        log.warning("%s: CT covers only %.0f%% of the PET field of view", ct_path, 100 * fraction)


def read_case(files: CaseFiles) -> tuple[sitk.Image, sitk.Image]:
    """Read and validate the CT and PET of one case."""
    ct = read_image(files.ct, "CT")
    pet = read_image(files.pet, "PET")
    check_pet_units(pet, files.pet)
    check_overlap(ct, pet, files.ct, files.pet)
    return ct, pet


STAGING_PREFIX = ".petseg-partial-"
# A staging folder left by a killed run: one of this host's processes that no longer runs, or one older
# than this (another host's, or a process id used again since).
_STALE_STAGING_S = 3600.0


@contextlib.contextmanager
def _staging(destination: Path) -> Iterator[Path]:
    """A hidden folder beside `destination` (same filesystem, so the final rename is atomic).

    Folders that this call creates for the destination are removed again if nothing ends up in them, and
    staging folders that killed runs left there are removed first.
    """
    created = _make_folders(destination.parent)
    _remove_stale_staging(destination.parent)
    staging = destination.parent / f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
    except OSError as error:
        _remove_empty(created)
        raise OutputError(f"{destination.parent}: cannot write here: {error.strerror or error}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def _make_folders(folder: Path) -> list[Path]:
    """`folder` and missing parents, created; the ones created, deepest first."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write here: {error.strerror or error}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (something was written there), or gone


def _remove_stale_staging(folder: Path) -> None:
    """Remove what killed runs left: `.petseg-partial-<host>-<pid>-*` of a process of this host that no
    longer runs, and any such folder older than an hour. A live writer's staging folder is never touched."""
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)]
    except OSError:
        return
    for entry in entries:
        host, _, rest = entry.name[len(STAGING_PREFIX) :].partition("-")
        pid = rest.partition("-")[0]
        try:
            old = time.time() - entry.lstat().st_mtime > _STALE_STAGING_S
        except OSError:
            continue
        dead = host == _HOST and pid.isdigit() and not _process_runs(int(pid))
        if old or dead:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            log.info("removed %s, left by a run that was stopped", entry)


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has ended, then act as they would have.

    For a commit of several renames that must not be split: a signal that arrives in between would
    otherwise leave one output without the other. Python runs signal handlers in the main thread only,
    so elsewhere (the invoke server's worker threads) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, _frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)  # handled now by the handler that was in place before


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
    """Write the Grand-Challenge outputs of one case: both files, or neither.

    Both are written complete into hidden staging folders first. The two renames that publish them then
    run with SIGINT and SIGTERM deferred, so no signal can fall between them, and if the second fails the
    first is taken back. Links under `output_dir` that lead outside it are refused.
    """
    output_dir = Path(output_dir)
    mask_path = output_dir / MASK_FOLDER / f"{name}.mha"
    json_path = output_dir / DATA_CENTRIC_JSON
    for path in (mask_path.parent, json_path):
        check_link_inside(path, output_dir, "output", OutputError)
    try:
        with _staging(mask_path) as mask_stage, _staging(json_path) as json_stage:
            staged_mask, staged_json = mask_stage / mask_path.name, json_stage / json_path.name
            _stage_mask(mask, staged_mask)
            _stage_json(False, staged_json)
            with signals_deferred():
                os.replace(staged_mask, mask_path)
                try:
                    os.replace(staged_json, json_path)
                except BaseException:
                    mask_path.unlink(missing_ok=True)
                    raise
    except RuntimeError as error:
        raise OutputError(f"{mask_path}: cannot write image: {_first_itk_line(str(error))}") from None
    except OSError as error:
        raise OutputError(f"{output_dir}: cannot write the outputs: {error.strerror or error}") from None
    return mask_path


def _stage_mask(mask: sitk.Image, path: Path) -> None:
    sitk.WriteImage(mask, str(path), True)


def _stage_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data) + "\n")
