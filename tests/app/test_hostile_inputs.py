"""Hostile inputs for the entry points that read images: process.py, `petseg predict` and `petseg evaluate`.

Every case builds a broken or unusual input, runs the entry point (in this process; a few again in a real
one) and checks:

- the exit code;
- that stderr holds nothing but log lines and petseg's own messages (no traceback, nothing printed by ITK),
  with the problem on exactly one line that names the file or folder at fault;
- that the output holds no file afterwards (besides what was there before), or, where the input is
  accepted, only complete outputs.

The image reader is also fuzzed with hypothesis (random MetaImage headers, truncated files). The counts in
docs/reliability.md come from `pytest tests/app/test_hostile_inputs.py --collect-only -q`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, all_files, assert_binary_mask_on_grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petseg.app.cli import main
from petseg.app.process import process_main
from petseg.errors import InputError
from petseg.io import CT_FOLDER, DATA_CENTRIC_JSON, MASK_FOLDER, PET_FOLDER, read_image
from petseg.model.settings import EnsembleSettings
from petseg.model.untrained import create_untrained_model
from petseg.synthetic import make_case

ENTRY_POINTS = ("process", "predict", "evaluate")
CASE_NAME = "case  01"  # as real autoPET case ids: spaces, double ones included
CT_NAME, PET_NAME = "c0ffee00-ct.mha", "5eed0000-pet.mha"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 882706\n".format("ab" * 32)
PIXEL_TYPES = {
    "int8": sitk.sitkInt8,
    "uint8": sitk.sitkUInt8,
    "int16": sitk.sitkInt16,
    "uint16": sitk.sitkUInt16,
    "int32": sitk.sitkInt32,
    "uint32": sitk.sitkUInt32,
    "int64": sitk.sitkInt64,
    "uint64": sitk.sitkUInt64,
    "float32": sitk.sitkFloat32,
    "float64": sitk.sitkFloat64,
}


@dataclass(frozen=True)
class Refused:
    """Exit `code`, with `message` on exactly one stderr line, which names the file or folder at fault."""

    code: int
    message: str


@dataclass(frozen=True)
class Accepted:
    """Exit 0 with complete outputs; `says`, when given, must be in the log (a warning)."""

    says: str | None = None


@dataclass
class Run:
    """One entry point on one hostile case: where its input and output are."""

    entry: str
    root: Path
    stack: contextlib.ExitStack
    before: dict[Path, bytes] = field(default_factory=dict)  # output files present before the run

    @property
    def input(self) -> Path:  # process and predict: one Grand-Challenge case folder
        return self.root / CASE_NAME

    @property
    def ct_dir(self) -> Path:
        return self.input / CT_FOLDER

    @property
    def pet_dir(self) -> Path:
        return self.input / PET_FOLDER

    @property
    def ct(self) -> Path:
        return self.ct_dir / CT_NAME

    @property
    def pet(self) -> Path:
        return self.pet_dir / PET_NAME

    # evaluate: ground truths, predictions and PET images, one case each
    @property
    def gt_dir(self) -> Path:
        return self.root / "gt"

    @property
    def pred_dir(self) -> Path:
        return self.root / "pred"

    @property
    def pet_eval_dir(self) -> Path:
        return self.root / "pet"

    @property
    def prediction(self) -> Path:
        return self.pred_dir / f"{CASE_NAME}.mha"

    @property
    def output(self) -> Path:
        return self.root / "out"

    def keep(self, path: Path, content: bytes) -> None:
        """Put a file into the output before the run; it must be there, unchanged, afterwards."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.before[path] = content

    def argv(self, model: Path) -> list[str]:
        if self.entry == "process":
            return ["--input", str(self.input), "--output", str(self.output), "--model", str(model)]
        if self.entry == "predict":
            return [
                "predict", "--input", str(self.input), "--output", str(self.output), "--model", str(model),
                "--device", "cpu", "-q",
            ]  # fmt: skip
        return [
            "evaluate", "--gt", str(self.gt_dir), "--pred", str(self.pred_dir),
            "--pet", str(self.pet_eval_dir), "--out", str(self.output), "--workers", "1", "--no-report", "-q",
        ]  # fmt: skip


# ------------------------------------------------------------------------------------------- the images


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A one-fold untrained resunet-tiny with 64-voxel windows and no overlap: the quickest real model."""
    folder = tmp_path_factory.mktemp("hostile-model")
    create_untrained_model(folder, folds=1, ensemble=EnsembleSettings((64, 64, 64), overlap=0.0))
    return folder


@pytest.fixture(scope="module")
def phantom():
    """A tiny FDG phantom (PET 64 x 64 x 96 at the autoPET FDG spacing), with lesions."""
    return make_case(seed=3, index=0, tracer="fdg", size="tiny", grid="fdg-400", lesion_free=False)


def write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def as_float(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32)


def with_value(image: sitk.Image, index: tuple[int, int, int], value: float) -> sitk.Image:
    changed = as_float(image)
    changed[index] = value
    return changed


def moved(image: sitk.Image, shift_mm: float) -> sitk.Image:
    changed = sitk.Image(image)
    changed.SetOrigin([o + shift_mm for o in image.GetOrigin()])
    return changed


def flat(image: sitk.Image) -> sitk.Image:
    """The middle slice as a 2D image."""
    return image[:, :, image.GetSize()[2] // 2]


def four_d(image: sitk.Image) -> sitk.Image:
    return sitk.JoinSeries([image, image])


def vector(image: sitk.Image) -> sitk.Image:
    return sitk.Compose([as_float(image), as_float(image)])


def one_slice(image: sitk.Image) -> sitk.Image:
    middle = image.GetSize()[2] // 2
    return image[:, :, middle : middle + 1]


def tiny(image: sitk.Image, size=(16, 16, 10)) -> sitk.Image:
    """A crop through the body, far smaller than the model's 64-voxel window."""
    x, y, z = (s // 2 for s in image.GetSize())
    return image[x : x + size[0], y : y + size[1], z : z + size[2]]


def lfs_pointer(path: Path) -> None:
    path.write_text(LFS_POINTER)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])


def lie_about_size(path: Path) -> None:
    """Rewrite the file uncompressed with a header claiming the largest autoPET grid, 400 x 400 x 661."""
    image = sitk.ReadImage(str(path))
    write(image, path, compress=False)
    data = path.read_bytes()
    size = " ".join(map(str, image.GetSize())).encode()
    path.write_bytes(data.replace(b"DimSize = " + size, b"DimSize = 400 400 661", 1))


def garbage(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """The folder cannot be written, also by root (which ignores modes): chmod, or chattr +i as root."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    else:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a read-only folder")
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"running as root and chattr +i fails: {made.stderr.decode().strip()}")
        undo = ["chattr", "-i", str(folder)]
    try:
        with contextlib.suppress(OSError):
            (folder / "probe").touch()
            (folder / "probe").unlink()
            pytest.skip("the folder stays writable")
        yield
    finally:
        subprocess.run(undo, check=False)


# -------------------------------------------------------------------- process.py and petseg predict


def image_input(run: Run, phantom, ct: sitk.Image | None = None, pet: sitk.Image | None = None) -> None:
    write(phantom.ct if ct is None else ct, run.ct)
    write(phantom.pet if pet is None else pet, run.pet)


Builder = Callable[[Run, object], Path]


def _missing_folder(run: Run, phantom) -> Path:
    image_input(run, phantom)
    shutil.rmtree(run.ct_dir)
    return run.ct_dir


def _empty_folders(run: Run, phantom) -> Path:
    run.ct_dir.mkdir(parents=True)
    run.pet_dir.mkdir(parents=True)
    (run.ct_dir / "README.txt").write_text("not an image")
    return run.ct_dir


def _two_images(run: Run, phantom) -> Path:
    image_input(run, phantom)
    write(phantom.pet, run.pet_dir / "5eed0001-pet.nii.gz")
    return run.pet_dir


def _file_case(damage: Callable[[Path], None], which: str = "pet") -> Builder:
    def build(run: Run, phantom) -> Path:
        image_input(run, phantom)
        path = run.pet if which == "pet" else run.ct
        damage(path)
        return path

    return build


def _image_case(pet: Callable | None = None, ct: Callable | None = None, culprit: str = "pet") -> Builder:
    def build(run: Run, phantom) -> Path:
        image_input(
            run,
            phantom,
            ct=None if ct is None else ct(phantom.ct),
            pet=None if pet is None else pet(phantom.pet),
        )
        return {"pet": run.pet, "ct": run.ct, "input": run.input}[culprit]

    return build


def _read_only_output(run: Run, phantom) -> Path:
    image_input(run, phantom)
    run.stack.enter_context(read_only(run.output))
    return run.output


def _output_holds_files(run: Run, phantom) -> Path:
    image_input(run, phantom)
    run.keep(run.output / "notes.txt", b"left here by someone else\n")
    if run.entry == "process":  # a stale mask of the same name: replaced by a complete one
        (run.output / MASK_FOLDER).mkdir(parents=True)
        (run.output / MASK_FOLDER / PET_NAME).write_bytes(b"half a mask from an earlier run")
    return run.output


def _output_is_a_file(run: Run, phantom) -> Path:
    image_input(run, phantom)
    run.root.mkdir(parents=True, exist_ok=True)
    run.keep(run.output, b"a file where the output folder should be\n")
    return run.output


def _pixel_type(name: str) -> Builder:
    return _image_case(
        pet=lambda p: sitk.Cast(p, PIXEL_TYPES[name]), ct=lambda c: sitk.Cast(c, PIXEL_TYPES[name])
    )


OUTPUT_PROBLEM = Refused(5, "cannot write")

IMAGE_CASES: dict[str, tuple[Builder, Refused | Accepted]] = {
    "missing_folder": (_missing_folder, Refused(3, "input folder not found")),
    "empty_folders": (_empty_folders, Refused(3, "no image file")),
    "two_images": (_two_images, Refused(3, "expected exactly one image, found 2")),
    "lfs_pointer": (_file_case(lfs_pointer), Refused(3, "Git LFS pointer")),
    "empty_file": (_file_case(empty_file, "ct"), Refused(3, "file is empty")),
    "not_an_image": (_file_case(garbage, "ct"), Refused(3, "cannot read CT image")),
    "truncated": (_file_case(truncate, "ct"), Refused(3, "CT image is truncated")),
    "lying_header": (_file_case(lie_about_size), Refused(3, "the header describes 423040000 bytes")),
    "2d": (_image_case(pet=flat), Refused(3, "PET image is 2D")),
    "4d": (_image_case(pet=four_d), Refused(3, "PET image is 4D")),
    "vector": (_image_case(pet=vector), Refused(3, "2 components per voxel")),
    "one_slice": (_image_case(pet=one_slice, ct=one_slice), Accepted()),
    "smaller_than_window": (_image_case(pet=tiny, ct=tiny), Accepted()),
    "nan": (
        _image_case(pet=lambda p: with_value(p, (30, 30, 40), float("nan"))),
        Refused(3, "PET image has 1 NaN or infinite voxels"),
    ),
    "inf": (
        _image_case(ct=lambda c: with_value(c, (30, 30, 40), float("inf")), culprit="ct"),
        Refused(3, "CT image has 1 NaN or infinite voxels"),
    ),
    "negative_suv": (_image_case(pet=lambda p: p - 5.0), Accepted()),
    "bq_per_ml": (_image_case(pet=lambda p: p * 5300.0), Accepted(says="looks like Bq/ml")),
    "no_overlap": (
        _image_case(ct=lambda c: moved(c, 3000.0), culprit="ct"),
        Refused(3, "CT does not overlap the PET"),
    ),
    "different_directions": (_image_case(ct=lambda c: sitk.DICOMOrient(c, "LPS")), Accepted()),
    **{f"pixel_{name}": (_pixel_type(name), Accepted()) for name in PIXEL_TYPES},
    "read_only_output": (_read_only_output, OUTPUT_PROBLEM),
    "output_holds_files": (_output_holds_files, Accepted()),
    "output_is_a_file": (_output_is_a_file, OUTPUT_PROBLEM),
}


# ----------------------------------------------------------------------------------- petseg evaluate


def evaluate_input(run: Run, phantom, truth=None, prediction=None, pet=None) -> None:
    label = phantom.label
    write(label if truth is None else truth(label), run.gt_dir / f"{CASE_NAME}.mha")
    write(label if prediction is None else prediction(label), run.prediction)
    write(phantom.pet if pet is None else pet(phantom.pet), run.pet_eval_dir / f"{CASE_NAME}.mha")


def _eval_missing_folder(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    shutil.rmtree(run.pred_dir)
    return run.pred_dir


def _eval_empty_folder(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    for path in run.gt_dir.iterdir():
        path.unlink()
    return run.gt_dir


def _eval_two_images(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    write(phantom.label, run.pred_dir / f"{CASE_NAME}.nii.gz")
    return run.pred_dir


def _eval_file_case(damage: Callable[[Path], None]) -> Builder:
    def build(run: Run, phantom) -> Path:
        evaluate_input(run, phantom)
        damage(run.prediction)
        return run.prediction

    return build


def _eval_image_case(
    prediction: Callable | None = None,
    pet: Callable | None = None,
    truth: Callable | None = None,
    culprit: str = "prediction",
) -> Builder:
    def build(run: Run, phantom) -> Path:
        evaluate_input(run, phantom, truth, prediction, pet)
        return {"prediction": run.prediction, "pet": run.pet_eval_dir / f"{CASE_NAME}.mha"}[culprit]

    return build


def _both(change: Callable) -> Builder:
    """The same change to ground truth, prediction and PET (geometry cases that stay consistent)."""
    return _eval_image_case(prediction=change, pet=change, truth=change)


def _eval_read_only_output(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    run.stack.enter_context(read_only(run.output))
    return run.output


def _eval_output_holds_files(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    run.keep(run.output / "notes.txt", b"left here by someone else\n")
    (run.output / "cases.csv").write_text("case,dice\nfrom an earlier run,0.1\n")  # replaced
    return run.output


def _eval_output_is_a_file(run: Run, phantom) -> Path:
    evaluate_input(run, phantom)
    run.keep(run.output, b"a file where the output folder should be\n")
    return run.output


def _redirected(image: sitk.Image) -> sitk.Image:
    changed = sitk.Image(image)
    changed.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return changed


def _mask_type(name: str) -> Builder:
    def cast(image: sitk.Image) -> sitk.Image:
        return sitk.Cast(image, PIXEL_TYPES[name])

    return _eval_image_case(prediction=cast, truth=cast)


EVALUATE_CASES: dict[str, tuple[Builder, Refused | Accepted]] = {
    "missing_folder": (_eval_missing_folder, Refused(3, "prediction folder not found")),
    "empty_folders": (_eval_empty_folder, Refused(3, "no ground-truth images")),
    "two_images": (_eval_two_images, Refused(3, "two prediction files for case")),
    "lfs_pointer": (_eval_file_case(lfs_pointer), Refused(3, "Git LFS pointer")),
    "empty_file": (_eval_file_case(empty_file), Refused(3, "file is empty")),
    "not_an_image": (_eval_file_case(garbage), Refused(3, "cannot read prediction image")),
    "truncated": (_eval_file_case(truncate), Refused(3, "prediction image is truncated")),
    "lying_header": (_eval_file_case(lie_about_size), Refused(3, "the header describes 105760000 bytes")),
    "2d": (_eval_image_case(prediction=flat), Refused(3, "prediction image is 2D")),
    "4d": (_eval_image_case(prediction=four_d), Refused(3, "prediction image is 4D")),
    "vector": (_eval_image_case(prediction=vector), Refused(3, "2 components per voxel")),
    "one_slice": (_both(one_slice), Accepted()),
    "smaller_than_window": (_both(lambda image: tiny(image, (3, 3, 2))), Accepted()),
    "nan": (
        _eval_image_case(prediction=lambda m: with_value(m, (30, 30, 40), float("nan"))),
        Refused(3, "prediction image has 1 NaN or infinite voxels"),
    ),
    "inf": (
        _eval_image_case(pet=lambda p: with_value(p, (30, 30, 40), float("inf")), culprit="pet"),
        Refused(3, "PET image has 1 NaN or infinite voxels"),
    ),
    "negative_suv": (_eval_image_case(pet=lambda p: p - 5.0), Accepted()),
    "bq_per_ml": (_eval_image_case(pet=lambda p: p * 5300.0), Accepted()),
    "not_a_mask": (
        _eval_image_case(prediction=lambda m: with_value(m, (30, 30, 40), -1.0)),
        Refused(3, "not a binary mask"),
    ),
    "no_overlap": (_eval_image_case(prediction=lambda m: moved(m, 3000.0)), Refused(3, "not on the grid of")),
    "different_directions": (_eval_image_case(prediction=_redirected), Refused(3, "direction differs")),
    **{f"pixel_{name}": (_mask_type(name), Accepted()) for name in PIXEL_TYPES},
    "read_only_output": (_eval_read_only_output, OUTPUT_PROBLEM),
    "output_holds_files": (_eval_output_holds_files, Accepted()),
    "output_is_a_file": (_eval_output_is_a_file, OUTPUT_PROBLEM),
}

# ------------------------------------------------- headers that point their voxel data at other files

# Where a MetaImage's ElementDataFile (or an NRRD's `data file:`) may point: the rule is the file itself, or
# one regular file beside it, and nothing else.
OUTSIDE = "only a file in the image's own folder is read"
POINTERS: dict[str, tuple[str, str]] = {
    "absolute": ("/etc/passwd", OUTSIDE),
    "parent": ("../../../../../../etc/passwd", OUTSIDE),
    "device": ("/dev/zero", OUTSIDE),
    "environ": ("/proc/self/environ", OUTSIDE),
    "list": ("LIST", "several files (a list or a pattern)"),
    "pattern": ("slice%03d.raw 1 96 1", "several files (a list or a pattern)"),
    "missing": ("nowhere.raw", "file not found"),
}


def pointing_header(image: sitk.Image, data_file: str) -> str:
    """A MetaImage header describing `image` (as uint8) whose voxel data are in `data_file`."""
    size = " ".join(map(str, image.GetSize()))
    spacing = " ".join(map(str, image.GetSpacing()))
    origin = " ".join(map(str, image.GetOrigin()))
    direction = " ".join(map(str, image.GetDirection()))
    return (
        f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {direction}\nOffset = {origin}\nElementSpacing = {spacing}\nDimSize = {size}\n"
        f"ElementType = MET_UCHAR\nElementDataFile = {data_file}\n"
    )


def _header_file(run: Run, phantom) -> Path:
    """The entry point's inputs written, and the image that a hostile header will replace: the PET
    (process, predict) or the prediction (evaluate)."""
    if run.entry == "evaluate":
        evaluate_input(run, phantom)
        return run.prediction
    image_input(run, phantom)
    return run.pet


def _pointer(name: str) -> Builder:
    def build(run: Run, phantom) -> Path:
        target = _header_file(run, phantom)
        target.write_text(pointing_header(phantom.pet, POINTERS[name][0]))
        return target

    return build


def _linked_data_file(link_to: str | None) -> Builder:
    """A data file beside the header that is a symbolic link (to `link_to`) or, for None, a FIFO."""

    def build(run: Run, phantom) -> Path:
        target = _header_file(run, phantom)
        data = target.parent / "voxels.raw"
        if link_to is None:
            os.mkfifo(data)
        else:
            data.symlink_to(link_to)
        target.write_text(pointing_header(phantom.pet, data.name))
        return target

    return build


def _data_file_beside(run: Run, phantom) -> Path:
    """A header (named .mha) with its voxel data in a regular file beside it: read as usual."""
    image_input(run, phantom)
    detached = run.pet_dir / "detached.mhd"
    write(phantom.pet, detached, compress=False)
    detached.rename(run.pet)
    return run.pet


def _nrrd_pointing_at(data_file: str) -> Builder:
    def build(run: Run, phantom) -> Path:
        image_input(run, phantom)
        run.pet.unlink()
        nrrd = run.pet_dir / "5eed0000-pet.nrrd"
        size = " ".join(map(str, phantom.pet.GetSize()))
        nrrd.write_text(
            f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {size}\nencoding: raw\ndata file: {data_file}\n\n"
        )
        return nrrd

    return build


def _non_utf8_name(run: Run, phantom) -> Path:
    """A PET whose file name is not valid UTF-8: ITK would abort the process (SIGABRT) on it."""
    image_input(run, phantom)
    os.rename(run.pet, os.path.join(os.fsencode(run.pet_dir), b"5eed\xff-pet.mha"))
    return run.pet_dir


def _absurd_spacing(image: sitk.Image) -> sitk.Image:
    """8 x 8 x 8 voxels of 5 m: a header whose spacing is in the wrong unit, not a body."""
    small = tiny(image, (8, 8, 8))
    small.SetSpacing((5000.0, 5000.0, 5000.0))
    small.SetOrigin((0.0, 0.0, 0.0))
    return small


def _extra_dimsize(path: Path) -> None:
    """`DimSize` with a fourth number for a 3D image: ITK would read the first three."""
    image = sitk.ReadImage(str(path))
    write(image, path, compress=False)
    size = " ".join(map(str, image.GetSize())).encode()
    path.write_bytes(path.read_bytes().replace(b"DimSize = " + size, b"DimSize = " + size + b" 7", 1))


def _sheared(image: sitk.Image) -> sitk.Image:
    sheared = sitk.Image(image)
    sheared.SetDirection((1.0, 0.3, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return sheared


def _upper_case_suffix(run: Run, phantom) -> Path:
    """A CT named `.MHA`: counted as an image, and read (ITK alone matches suffixes case-sensitively)."""
    image_input(run, phantom)
    run.ct.rename(run.ct.with_name("c0ffee00-ct.MHA"))
    return run.ct


def _sliver_of_overlap(ct: sitk.Image) -> sitk.Image:
    """The CT moved until it shares one slice's thickness with the PET: air where the body is."""
    moved_ct = sitk.Image(ct)
    z_extent = ct.GetSize()[2] * ct.GetSpacing()[2]
    origin = list(ct.GetOrigin())
    origin[2] += z_extent - ct.GetSpacing()[2]
    moved_ct.SetOrigin(origin)
    return moved_ct


IMAGE_CASES.update(
    {
        **{
            f"data_file_{name}": (_pointer(name), Refused(3, message))
            for name, (_, message) in POINTERS.items()
        },
        "data_file_link_outside": (
            _linked_data_file("/etc/passwd"),
            Refused(3, "leads outside the image's folder"),
        ),
        "data_file_link_device": (
            _linked_data_file("/dev/zero"),
            Refused(3, "leads outside the image's folder"),
        ),
        "data_file_fifo": (_linked_data_file(None), Refused(3, "not a regular file")),
        "data_file_beside": (_data_file_beside, Accepted()),
        "nrrd_data_file_absolute": (_nrrd_pointing_at("/etc/passwd"), Refused(3, OUTSIDE)),
        "nrrd_data_file_list": (_nrrd_pointing_at("LIST"), Refused(3, "several files")),
        "non_utf8_name": (_non_utf8_name, Refused(3, "path is not valid UTF-8")),
        "absurd_spacing": (
            _image_case(pet=_absurd_spacing, ct=_absurd_spacing),
            Refused(3, "more than any body needs"),
        ),
        "dimsize_beyond_ndims": (_file_case(_extra_dimsize), Refused(3, "4 DimSize numbers for NDims = 3")),
        "sheared_direction": (_image_case(pet=_sheared), Refused(3, "not a rotation (sheared or scaled)")),
        "upper_case_suffix": (_upper_case_suffix, Accepted()),
        "sliver_of_overlap": (_image_case(ct=_sliver_of_overlap, culprit="ct"), Refused(3, "CT covers only")),
    }
)
EVALUATE_CASES.update(
    {
        "data_file_absolute": (_pointer("absolute"), Refused(3, OUTSIDE)),
        "data_file_device": (_pointer("device"), Refused(3, OUTSIDE)),
        "data_file_fifo": (_linked_data_file(None), Refused(3, "not a regular file")),
    }
)


CASES = {"process": IMAGE_CASES, "predict": IMAGE_CASES, "evaluate": EVALUATE_CASES}


def _params():
    for entry in ENTRY_POINTS:
        for name in CASES[entry]:
            yield pytest.param(entry, name, id=f"{entry}-{name}")


# ------------------------------------------------------------------------------------------ the checks


def check_stderr(err: str, outcome: Refused | Accepted, culprit: Path) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    stray = [line for line in lines if not (LOG_LINE.match(line) or line.startswith("petseg: "))]
    assert stray == [], err  # ITK output, warnings, continuation lines of a multi-line message
    if isinstance(outcome, Accepted):
        assert not any(line.startswith("petseg: error") for line in lines), err
        assert not any(" ERROR " in line for line in lines), err
        if outcome.says:
            assert outcome.says in err
        return
    hits = [line for line in lines if outcome.message in line]
    assert len(hits) == 1, err
    assert str(culprit) in hits[0], err
    assert lines[-1].startswith("petseg: error: "), err
    assert sum(line.startswith("petseg: error") for line in lines) == 1, err


def output_files(run: Run) -> list[Path]:
    if run.output.is_file():
        return [run.output]
    return all_files(run.output)


def check_outputs(run: Run, outcome: Refused | Accepted, source_pet: Path | None) -> None:
    for path, content in run.before.items():
        assert path.read_bytes() == content, f"{path} was changed"
    assert not [p for p in run.root.rglob("*") if ".petseg-partial" in p.name]
    made = sorted(set(output_files(run)) - set(run.before))
    status = run.output / "status.jsonl"
    if run.entry == "predict" and status in made:  # the run's status log: one line for its one case
        made.remove(status)
        outcomes = [json.loads(line)["outcome"] for line in status.read_text().splitlines()]
        assert outcomes == ["failed" if isinstance(outcome, Refused) else "done"]
    if isinstance(outcome, Refused):
        assert made == [], made
        return
    if run.entry == "evaluate":
        assert [p.name for p in made] == ["cases.csv", "lesions.csv", "summary.json"]
        with (run.output / "cases.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["case"] for row in rows] == [CASE_NAME]
        assert json.loads((run.output / "summary.json").read_text())["cases"] == 1
        return
    folder = run.output if run.entry == "process" else run.output / CASE_NAME
    mask_path = folder / MASK_FOLDER / PET_NAME
    assert made == sorted([mask_path, folder / DATA_CENTRIC_JSON])
    assert json.loads((folder / DATA_CENTRIC_JSON).read_text()) is False
    mask, pet = sitk.ReadImage(str(mask_path)), sitk.ReadImage(str(source_pet))
    assert_binary_mask_on_grid(mask, pet)


def run_in_process(run: Run, model: Path) -> int:
    argv = run.argv(model)
    return process_main([*argv, "--device", "cpu"]) if run.entry == "process" else main(argv)


@pytest.mark.parametrize(("entry", "name"), list(_params()))
def test_hostile_input(tmp_path, model, phantom, capfd, entry, name):
    build, outcome = CASES[entry][name]
    with contextlib.ExitStack() as stack:
        run = Run(entry, tmp_path, stack)
        culprit = build(run, phantom)
        capfd.readouterr()
        code = run_in_process(run, model)
        err = capfd.readouterr().err
        assert code == (outcome.code if isinstance(outcome, Refused) else 0), err
        check_stderr(err, outcome, culprit)
        check_outputs(run, outcome, run.pet if entry != "evaluate" else None)


SUBPROCESS_CASES = [
    ("process", "non_utf8_name"),  # ITK aborted the process (SIGABRT) on such a name
    ("process", "data_file_fifo"),
    ("process", "data_file_device"),
    ("process", "absurd_spacing"),
    ("process", "lying_header"),
    ("process", "truncated"),
    ("process", "read_only_output"),
    ("process", "one_slice"),
    ("predict", "lfs_pointer"),
    ("evaluate", "lying_header"),
]


@pytest.mark.parametrize(("entry", "name"), SUBPROCESS_CASES, ids=[f"{e}-{n}" for e, n in SUBPROCESS_CASES])
def test_hostile_input_in_a_real_process(tmp_path, model, phantom, entry, name):
    """As users run them: process.py and `python -m petseg`, whose stderr also holds what native code
    (ITK) and Python itself print."""
    build, outcome = CASES[entry][name]
    with contextlib.ExitStack() as stack:
        run = Run(entry, tmp_path, stack)
        culprit = build(run, phantom)
        argv = run.argv(model)
        if entry == "process":
            command = [sys.executable, str(REPO / "process.py"), *argv, "--device", "cpu"]
        else:
            command = [sys.executable, "-m", "petseg", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
        assert result.returncode == (outcome.code if isinstance(outcome, Refused) else 0), result.stderr
        check_stderr(result.stderr, outcome, culprit)
        check_outputs(run, outcome, run.pet if entry != "evaluate" else None)


MEMORY_LIMIT_BYTES = 30 * 10**9  # the platform's `docker run --memory=30g`
# Runs a command and prints its exit code and peak resident memory (kB). A child's maxrss starts from what
# its parent held when it forked, so the command is started from this small launcher, not from pytest.
PEAK_MEMORY_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


@pytest.mark.slow
def test_the_largest_autopet_volume_stays_far_below_the_memory_limit(tmp_path):
    """PET and CT of 400 x 400 x 661 voxels (the largest autoPET grid), through process.py with the shipped
    model as the container runs it: the child's peak resident memory, measured by the kernel (wait4)."""
    phantom = make_case(
        0, 0, tracer="fdg", size="full", grid="fdg-400", z_slices=661, ct_own_grid=False, lesion_free=False
    )
    assert phantom.pet.GetSize() == (400, 400, 661)
    input_dir = tmp_path / "input"
    write(phantom.ct, input_dir / CT_FOLDER / CT_NAME)
    pet_path = write(phantom.pet, input_dir / PET_FOLDER / PET_NAME)
    del phantom
    output = tmp_path / "output"
    command = [
        sys.executable, "-c", PEAK_MEMORY_LAUNCHER, sys.executable, str(REPO / "process.py"),
        "--input", str(input_dir), "--output", str(output), "--model", str(REPO / "model"), "--device", "cpu",
    ]  # fmt: skip
    with (tmp_path / "stderr.txt").open("w+") as log:
        measured = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=log, text=True, timeout=600, check=True
        )
        log.seek(0)
        err = log.read()
    code, peak_kb = map(int, measured.stdout.split())
    peak_bytes = peak_kb * 1024
    print(f"process.py on 400 x 400 x 661: peak resident memory {peak_bytes / 1e9:.2f} GB")
    assert code == 0, err
    assert peak_bytes < MEMORY_LIMIT_BYTES
    check_stderr(err, Accepted(), output)
    mask = sitk.ReadImage(str(output / MASK_FOLDER / PET_NAME))
    assert mask.GetSize() == (400, 400, 661)
    assert mask.GetDirection() == sitk.ReadImage(str(pet_path)).GetDirection()
    assert sorted(p.name for p in all_files(output)) == sorted([DATA_CENTRIC_JSON, PET_NAME])


# ------------------------------------------------------------------------------ fuzzing the image reader

READ_TIMEOUT_S = 20.0
# By default the same 500 examples per property on every run (derandomised): counts and results are
# reproducible. PETSEG_FUZZ_EXAMPLES=N draws N fresh random examples per property instead.
FUZZ_EXAMPLES = os.environ.get("PETSEG_FUZZ_EXAMPLES")
FUZZ_SETTINGS = settings(
    max_examples=int(FUZZ_EXAMPLES or 500),
    deadline=None,  # the reader process below bounds each read
    derandomize=FUZZ_EXAMPLES is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ELEMENT_BYTES = {
    "MET_UCHAR": 1,
    "MET_CHAR": 1,
    "MET_USHORT": 2,
    "MET_SHORT": 2,
    "MET_UINT": 4,
    "MET_INT": 4,
    "MET_ULONG_LONG": 8,
    "MET_LONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
ELEMENT_DTYPES = {
    "MET_UCHAR": "u1",
    "MET_CHAR": "i1",
    "MET_USHORT": "u2",
    "MET_SHORT": "i2",
    "MET_UINT": "u4",
    "MET_INT": "i4",
    "MET_ULONG_LONG": "u8",
    "MET_LONG_LONG": "i8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}


class Reader:
    """`read_image` in a separate process: a hang or a crash shows as no answer within the time limit.

    The process is replaced after one, and the file that caused it is kept beside it (`.hang`).
    """

    def __init__(self) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(1)

    def __call__(self, path: Path):
        """The image, or the exception, that `read_image(path, "PET")` gives in the reader process."""
        pending = self.pool.apply_async(read_image, (path, "PET"))
        try:
            return pending.get(timeout=READ_TIMEOUT_S)
        except multiprocessing.TimeoutError:
            kept = path.with_name(path.name + ".hang")
            shutil.copyfile(path, kept)
            self.close()
            self.pool = multiprocessing.get_context("spawn").Pool(1)
            pytest.fail(f"{kept}: no answer within {READ_TIMEOUT_S:g} s (a hang, or a crash of the reader)")
        except Exception as error:
            return error

    def peak_rss_kb(self) -> int:
        """The reader's own peak resident memory (VmHWM: getrusage would count what the parent held)."""
        status = self.pool.apply(Path.read_text, (Path("/proc/self/status"),))
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


@pytest.fixture(scope="module")
def reader() -> Iterator[Reader]:
    process = Reader()
    try:
        yield process
    finally:
        process.close()


def assert_valid_or_refused(result, path: Path) -> None:
    """What the reader may give: a usable 3D float32 image, or one line of InputError naming the file."""
    if isinstance(result, InputError):
        assert str(result).startswith(str(path)), result
        assert "\n" not in str(result)
        return
    assert isinstance(result, sitk.Image), f"{type(result).__name__}: {result}"
    assert result.GetDimension() == 3
    assert result.GetPixelID() == sitk.sitkFloat32
    assert min(result.GetSize()) >= 1
    assert np.isfinite(sitk.GetArrayViewFromImage(result)).all()


finite = st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3))
anything = st.one_of(
    finite, st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e308]), st.text(max_size=4)
)


# Where a fuzzed header's ElementDataFile may point besides LOCAL: none of them may be read.
DATA_FILE_POINTERS = [
    "LIST",
    "LIST 2D",
    "x.raw",
    "%d.raw",
    "slice%03d.raw 1 3 1",
    "/dev/zero",
    "/dev/urandom",
    "/etc/passwd",
    "/proc/self/environ",
    "../fuzz/fifo.raw",
    "fifo.raw",
    "zero-link.raw",
    "passwd-link.raw",
]


@st.composite
def metaimage_files(draw) -> tuple[bytes, np.ndarray | None, bool]:
    """(file bytes, the voxels it must read as, whether it must be refused).

    A well-formed header (3D, a known scalar type, sane geometry, binary data in the file) comes with an
    expectation: exactly the voxels it describes read back as they are; fewer (uncompressed or compressed)
    are refused. Anything else may be read or refused, but never crash, hang or print more than one line.
    """
    well_formed = draw(st.booleans())
    if well_formed:
        ndims, dims = 3, draw(st.lists(st.integers(1, 12), min_size=3, max_size=3))
        element = draw(st.sampled_from(sorted(ELEMENT_BYTES)))
    else:
        ndims = draw(st.integers(-1, 5))
        dims = draw(
            st.lists(st.one_of(st.integers(-3, 12), st.sampled_from([0, 661, 2**31, 10**12])), max_size=5)
        )
        element = draw(st.sampled_from([*sorted(ELEMENT_BYTES), "MET_FOO", "", "MET_FLOAT_ARRAY"]))
    fields = {"ObjectType": "Image", "NDims": str(ndims), "DimSize": " ".join(map(str, dims))}
    msb = draw(st.booleans())
    fields["BinaryDataByteOrderMSB"] = str(msb)
    if well_formed:
        fields["ElementSpacing"] = " ".join(
            str(v) for v in draw(st.lists(st.floats(0.1, 10), min_size=3, max_size=3))
        )
        fields["Offset"] = " ".join(map(str, draw(st.lists(finite, min_size=3, max_size=3))))
        fields["TransformMatrix"] = draw(
            st.sampled_from(["1 0 0 0 1 0 0 0 1", "1 0 0 0 -1 0 0 0 1", "0 1 0 1 0 0 0 0 1"])
        )
    else:
        for key in (
            "ElementSpacing",
            "Offset",
            "TransformMatrix",
            "ElementNumberOfChannels",
            "CenterOfRotation",
        ):
            if draw(st.booleans()):
                fields[key] = " ".join(map(str, draw(st.lists(anything, max_size=10))))
        for _ in range(draw(st.integers(0, 3))):
            key = "X" + draw(
                st.text(alphabet=st.characters(codec="ascii", exclude_characters="=\r\n"), max_size=8)
            )
            fields[key] = " ".join(draw(st.text(max_size=12)).splitlines())
    compressed = draw(st.booleans())
    fields["CompressedData"] = str(compressed)
    if well_formed:
        dtype = np.dtype(ELEMENT_DTYPES[element]).newbyteorder(">" if msb else "<")
        voxels = draw(
            st.binary(min_size=math.prod(dims) * dtype.itemsize, max_size=math.prod(dims) * dtype.itemsize)
        )
        values = np.frombuffer(voxels, dtype=dtype).reshape(dims[::-1])
        payload = voxels
    else:
        values = None
        payload = draw(st.binary(max_size=4000))
    if compressed:
        payload = zlib.compress(payload)
        if well_formed or draw(st.booleans()):  # ITK cannot read compressed data without it
            fields["CompressedDataSize"] = str(len(payload))
    short = draw(st.integers(0, 3)) == 0
    if short:
        payload = payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    data_file = "LOCAL" if well_formed else draw(st.sampled_from(["LOCAL"] * 6 + DATA_FILE_POINTERS))
    keys = list(fields)
    if not well_formed:
        keys = draw(st.permutations(keys))
    header = "".join(f"{key} = {fields[key]}\n" for key in keys)
    text = f"{header}ElementType = {element}\nElementDataFile = {data_file}\n".encode("utf-8", "replace")
    if not well_formed:  # voxel data anywhere but in the file itself: never read
        return text + payload, None, data_file != "LOCAL"
    with np.errstate(over="ignore", invalid="ignore"):
        as_read = values.astype(np.float32)  # what petseg reads: beyond float32's range is infinite
    if short or not np.isfinite(as_read).all():  # too few voxels, or NaN or infinite ones
        return text + payload, None, True
    return text + payload, as_read, False


@FUZZ_SETTINGS
@given(case=metaimage_files())
def test_fuzzed_metaimage_headers_are_read_or_refused_in_one_line(reader, fuzz_dir, case):
    content, expected, must_refuse = case
    path = fuzz_dir / "fuzzed.mha"
    path.write_bytes(content)
    result = reader(path)
    assert_valid_or_refused(result, path)
    if must_refuse:
        assert isinstance(result, InputError), "read voxel data that are short, or not in the file itself"
    elif expected is not None:
        assert isinstance(result, sitk.Image), result
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result), expected)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """The fuzzed file's folder, holding what its header may point at: a FIFO, and links to a device and
    to a file outside it."""
    folder = tmp_path_factory.mktemp("fuzz")
    os.mkfifo(folder / "fifo.raw")
    (folder / "zero-link.raw").symlink_to("/dev/zero")
    (folder / "passwd-link.raw").symlink_to("/etc/passwd")
    return folder


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """One small PET-like volume in every format and compression the reader meets."""
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(7)
    image = sitk.GetImageFromArray(rng.gamma(2.0, 1.0, (9, 11, 13)).astype(np.float32))
    image.SetSpacing((2.0364, 2.0364, 3.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    files = {}
    for name, compress in (("a.mha", True), ("b.mha", False), ("c.nii.gz", True), ("d.nii", False)):
        sitk.WriteImage(image, str(folder / name), compress)
        files[name] = (folder / name).read_bytes()
    return files


@FUZZ_SETTINGS
@given(data=st.data())
def test_truncated_and_corrupted_files_are_read_or_refused_in_one_line(reader, fuzz_dir, valid_files, data):
    """Every truncation is refused; a changed byte gives a usable image or a refusal (for compressed
    MetaImage data, always a refusal: the checksum of the stream no longer matches)."""
    name = data.draw(st.sampled_from(sorted(valid_files)), label="file")
    content = valid_files[name]
    path = fuzz_dir / f"damaged-{name}"
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(content) - 1), label="cut at")
        path.write_bytes(content[:cut])
        result = reader(path)
        assert_valid_or_refused(result, path)
        assert isinstance(result, InputError), f"{name} cut at {cut} of {len(content)} bytes was read"
        return
    position = data.draw(st.integers(0, len(content) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(content)
    damaged[position] ^= mask
    path.write_bytes(bytes(damaged))
    result = reader(path)
    assert_valid_or_refused(result, path)
    if name == "a.mha" and position >= content.index(b"ElementDataFile = LOCAL\n") + 24:
        assert isinstance(result, InputError), f"compressed voxel data changed at byte {position} were read"


@pytest.mark.parametrize("data_file", ["/dev/zero", "zero-link.raw"])
def test_a_200_byte_header_naming_a_device_allocates_nothing(reader, fuzz_dir, data_file):
    """It once made the process allocate 3.5 GB (640^3 doubles) before any check; now it is refused from
    the header alone, and the reader process stays small (checked by the test after this one)."""
    path = fuzz_dir / "device.mha"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 640 640 640\nElementType = MET_DOUBLE\n"
        f"ElementDataFile = {data_file}\n"
    )
    assert len(path.read_bytes()) < 200
    result = reader(path)
    assert isinstance(result, InputError), result
    assert str(result).startswith(f"{path}: PET image header points its voxel data at ")
    assert reader.peak_rss_kb() < 1_000_000


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_the_reader_process_stayed_small(reader):
    """After the fuzzing (this runs after it, in file order), the reader process never held a large volume:
    headers claiming 400 x 400 x 661 voxels or 10**12 were refused before ITK allocated anything."""
    peak_kb = reader.peak_rss_kb()
    assert peak_kb < 1_000_000, f"reader peak RSS {peak_kb / 1e6:.2f} GB"
