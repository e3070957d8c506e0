import gzip
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import all_files

import petseg.io.files as pio
from petseg.errors import InputError, OutputError
from petseg.io import (
    CaseFiles,
    find_case,
    find_image,
    read_case,
    read_image,
    write_image,
    write_json,
    write_outputs,
)

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4ef7ec6924009bf35e9ca400d97bee0ee154969dfa0e31f846755fce917100ac\nsize 52648\n"
)


def volume(shape=(6, 7, 8), value=1.0, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.full(shape, value, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image


def test_find_image_errors(tmp_path):
    with pytest.raises(InputError, match="input folder not found"):
        find_image(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no image file"):
        find_image(tmp_path / "empty")
    two = tmp_path / "two"
    two.mkdir()
    sitk.WriteImage(volume(), str(two / "a.mha"))
    sitk.WriteImage(volume(), str(two / "b.nii.gz"))
    with pytest.raises(InputError, match=r"expected exactly one image, found 2: a.mha, b.nii.gz"):
        find_image(two)


def test_find_image_ignores_hidden_files(tmp_path):
    sitk.WriteImage(volume(), str(tmp_path / "x.mha"))
    (tmp_path / ".petseg-partial.mha").write_text("half")
    assert find_image(tmp_path).name == "x.mha"


def test_case_pet_uuid_is_the_file_stem(tmp_path):
    files = CaseFiles(ct=tmp_path / "a.mha", pet=tmp_path / "b1c2-d3.nii.gz")
    assert files.pet_uuid == "b1c2-d3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (LFS_POINTER, "Git LFS pointer"),
        (b"", "file is empty"),
        (b"ObjectType = Image\nNDims = 3\n garbage \x00\x01", "cannot read PET image"),
        (b"\x89PNG not really", "cannot read PET image"),
    ],
)
def test_unreadable_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "pet.mha"
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_image(path, "PET")
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(path))
    assert "\n" not in str(raised.value)


def test_truncated_file_is_reported(tmp_path):
    good = tmp_path / "good.mha"
    sitk.WriteImage(volume((20, 20, 20)), str(good), False)
    cut = tmp_path / "cut.mha"
    cut.write_bytes(good.read_bytes()[:-5000])
    with pytest.raises(InputError, match="CT image is truncated: the header describes 32000 bytes"):
        read_image(cut, "CT")


def test_2d_and_4d_images_are_rejected(tmp_path):
    flat = sitk.GetImageFromArray(np.zeros((5, 5), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.mha"))
    with pytest.raises(InputError, match=r"PET image is 2D .* expected 3D"):
        read_image(tmp_path / "flat.mha", "PET")
    four = sitk.JoinSeries([volume(), volume()])
    sitk.WriteImage(four, str(tmp_path / "four.mha"))
    with pytest.raises(InputError, match=r"CT image is 4D .* expected 3D"):
        read_image(tmp_path / "four.mha", "CT")
    vector = sitk.Compose([volume(), volume()])
    sitk.WriteImage(vector, str(tmp_path / "vector.mha"))
    with pytest.raises(InputError, match="2 components per voxel"):
        read_image(tmp_path / "vector.mha", "PET")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_rejected(tmp_path, bad):
    array = np.ones((6, 7, 8), np.float32)
    array[2, 3, 4] = bad
    array[1, 1, 1] = bad
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "pet.mha"))
    with pytest.raises(InputError, match="PET image has 2 NaN or infinite voxels"):
        read_image(tmp_path / "pet.mha", "PET")


def test_integer_images_are_read_as_float32(tmp_path):
    sitk.WriteImage(sitk.Cast(volume(value=-1000), sitk.sitkInt16), str(tmp_path / "ct.mha"))
    image = read_image(tmp_path / "ct.mha", "CT")
    assert image.GetPixelID() == sitk.sitkFloat32
    assert float(sitk.GetArrayViewFromImage(image).min()) == -1000.0


def _pair(tmp_path, pet_value=2.0, ct_origin=(0.0, 0.0, 0.0)):
    ct_path, pet_path = tmp_path / "ct.mha", tmp_path / "pet.mha"
    sitk.WriteImage(volume(value=40.0, origin=ct_origin), str(ct_path))
    sitk.WriteImage(volume(value=pet_value), str(pet_path))
    return CaseFiles(ct=ct_path, pet=pet_path)


def test_pet_in_bqml_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="petseg"):
        read_case(_pair(tmp_path, pet_value=5300.0))
    assert any("looks like Bq/ml" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petseg"):
        read_case(_pair(tmp_path, pet_value=2.5))
    assert not any("Bq/ml" in r.message for r in caplog.records)


def test_ct_and_pet_that_do_not_overlap_are_rejected(tmp_path):
    with pytest.raises(InputError, match="CT does not overlap the PET"):
        read_case(_pair(tmp_path, ct_origin=(5000.0, 0.0, 0.0)))


def test_find_case_uses_the_interface_folders(tmp_path):
    sitk.WriteImage(volume(), str(tmp_path / "x.mha"))
    with pytest.raises(InputError, match="images/ct: input folder not found"):
        find_case(tmp_path)


def test_write_image_is_atomic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    destination = tmp_path / "out" / "mask.mha"
    write_image(volume(), destination)
    assert all_files(tmp_path / "out") == [destination]

    def broken_write(image, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pio.sitk, "WriteImage", broken_write)
    with pytest.raises(OutputError, match="cannot write image: disk full"):
        write_image(volume(), tmp_path / "out" / "other.mha")
    assert all_files(tmp_path / "out") == [destination]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mask.mha"]


def test_outputs_are_both_written_or_neither(tmp_path, monkeypatch):
    mask = sitk.Cast(volume(value=1), sitk.sitkUInt8)
    path = write_outputs(mask, tmp_path / "ok", "pet-uuid")
    assert path == tmp_path / "ok" / "images" / "automated-petct-lesion-segmentation" / "pet-uuid.mha"
    assert json.loads((tmp_path / "ok" / "data-centric-model.json").read_text()) is False
    assert all_files(tmp_path / "ok") == sorted([path, tmp_path / "ok" / "data-centric-model.json"])


def _fail(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


def _replace_failing_on(call: int, error: BaseException, calls: list):
    real = os.replace

    def replace(source, destination):
        calls.append(destination)
        if len(calls) == call:
            raise error
        real(source, destination)

    return replace


# Each point of write_outputs at which something can go wrong, and what is raised there.
WRITE_FAULTS = {
    "mask staging: disk full": ("_stage_mask", RuntimeError("disk full"), OutputError),
    "mask staging: Ctrl-C": ("_stage_mask", KeyboardInterrupt(), KeyboardInterrupt),
    "json staging: disk full": ("_stage_json", OSError(28, "No space left on device"), OutputError),
    "json staging: terminated": ("_stage_json", SystemExit(143), SystemExit),
    "first rename": (1, OSError(5, "Input/output error"), OutputError),
    "second rename": (2, OSError(5, "Input/output error"), OutputError),
    "second rename: Ctrl-C": (2, KeyboardInterrupt(), KeyboardInterrupt),
}


@pytest.mark.parametrize("fault", WRITE_FAULTS)
def test_a_fault_at_any_point_of_the_write_leaves_neither_output(tmp_path, monkeypatch, fault):
    """Raised at each point of the write in turn: nothing stays behind, not even the folders it made."""
    where, error, raised = WRITE_FAULTS[fault]
    calls: list = []
    if isinstance(where, str):
        monkeypatch.setattr(pio, where, _fail(error))
    else:
        monkeypatch.setattr(pio.os, "replace", _replace_failing_on(where, error, calls))
    output = tmp_path / "output"
    output.mkdir()
    with pytest.raises(raised):
        write_outputs(sitk.Cast(volume(value=1), sitk.sitkUInt8), output, "pet-uuid")
    assert list(output.iterdir()) == []


def test_a_signal_between_the_two_renames_waits_until_both_are_done(tmp_path, monkeypatch):
    """SIGTERM arriving right after the mask's rename is handled once the JSON is in place as well."""

    class Stop(BaseException):
        pass

    def handler(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    real = os.replace
    calls = []

    def replace(source, destination):
        real(source, destination)
        calls.append(destination)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)  # the worst moment: one output published, one not

    monkeypatch.setattr(pio.os, "replace", replace)
    try:
        with pytest.raises(Stop):
            write_outputs(sitk.Cast(volume(value=1), sitk.sitkUInt8), tmp_path, "pet-uuid")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(calls) == 2
    names = [p.name for p in all_files(tmp_path)]
    assert sorted(names) == ["data-centric-model.json", "pet-uuid.mha"]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_stale_staging_folders_of_stopped_runs_are_removed(tmp_path):
    """A killed run's `.petseg-partial-*` folder (its process gone, or over an hour old) goes on the next
    write; a running process's stays."""
    folder = tmp_path / "images" / "automated-petct-lesion-segmentation"
    folder.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = folder / f"{pio.STAGING_PREFIX}{pio._HOST}-{int(dead.stdout)}-0123456789ab"
    old = tmp_path / f"{pio.STAGING_PREFIX}otherhost-1-0123456789ab"
    live = folder / f"{pio.STAGING_PREFIX}{pio._HOST}-{os.getppid()}-0123456789ab"
    for entry in (stale, old, live):
        entry.mkdir()
        (entry / "half.mha").write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_outputs(sitk.Cast(volume(value=1), sitk.sitkUInt8), tmp_path, "pet-uuid")
    assert not stale.exists()
    assert not old.exists()
    assert live.exists()


def test_an_output_link_leading_outside_the_output_folder_is_refused(tmp_path):
    """OUT/images as a symbolic link to a folder elsewhere: refused (exit 5), nothing written there."""
    output, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    output.mkdir()
    elsewhere.mkdir()
    (output / "images").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symbolic link leads outside the output folder"):
        write_outputs(sitk.Cast(volume(value=1), sitk.sitkUInt8), output, "pet-uuid")
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in output.iterdir()] == ["images"]


def test_unwritable_output_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        write_json(False, blocker / "x.json")


def test_messages_keep_double_spaces_of_real_case_ids(tmp_path):
    folder = tmp_path / "fdg_0c13e4df10_10-11-2003-NA-PET-CT Ganzkoerper  primaer mit KM-12345"
    with pytest.raises(InputError) as raised:
        find_image(folder)
    assert "Ganzkoerper  primaer" in str(raised.value)
    assert "\n" not in str(raised.value)


def metaimage(dims, element="MET_UCHAR", data=b"", fields="") -> bytes:
    """A hand-written MetaImage file: header lines as given, then `data` as the voxel bytes."""
    header = (
        "ObjectType = Image\n"
        f"NDims = {len(dims)}\n"
        "BinaryData = True\n"
        "BinaryDataByteOrderMSB = False\n"
        f"{fields}"
        f"DimSize = {' '.join(map(str, dims))}\n"
        f"ElementType = {element}\n"
        "ElementDataFile = LOCAL\n"
    )
    return header.encode() + data


@pytest.mark.parametrize(
    ("dims", "fields", "message"),
    [
        ((400, 400, 661), "", "PET image is truncated: the header describes 423040000 bytes of voxel data"),
        ((10**5, 10**5, 10**5), "", "the header describes 4000000000000000 bytes"),
        (
            (1500, 1500, 1000),
            "CompressedData = True\nCompressedDataSize = 100\n",
            "more than 100 compressed bytes can hold",
        ),
        ((20, 20, 20), "CompressedData = True\n", "compressed voxel data but no CompressedDataSize"),
        ((0, 10, 10), "", "PET image has no voxels (size (0, 10, 10))"),
        ((2, 2, 2), "TransformMatrix = 1 0 0 1 0 0 0 0 1\n", "singular direction matrix"),
    ],
)
def test_a_lying_header_is_refused_before_the_voxels_are_read(tmp_path, capfd, dims, fields, message):
    """A header describing far more data than the file holds costs neither time nor memory (ITK would
    allocate, and for compressed data fill, the whole volume: 9 GB for the third case)."""
    path = tmp_path / "pet.mha"
    path.write_bytes(metaimage(dims, "MET_FLOAT", b"\0" * 100, fields))
    with pytest.raises(InputError) as raised:
        read_image(path, "PET")
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(path))
    assert capfd.readouterr().err == ""  # ITK's own complaints stay off stderr


def test_truncated_compressed_metaimage_is_reported_from_its_declared_size(tmp_path, capfd):
    good = tmp_path / "good.mha"
    sitk.WriteImage(volume((20, 20, 20), value=3.0), str(good), True)
    cut = tmp_path / "cut.mha"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"PET image is truncated: the header declares \d+ bytes"):
        read_image(cut, "PET")
    assert capfd.readouterr().err == ""


def compressed_pet(tmp_path) -> bytes:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.gamma(2.0, 1.0, (20, 20, 20)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "good.mha"), True)
    return (tmp_path / "good.mha").read_bytes()


def test_corrupt_compressed_voxels_are_an_error_not_a_garbage_image(tmp_path, capfd):
    """ITK prints 'Uncompress failed' on stderr and returns an image anyway; petseg refuses the file."""
    data = bytearray(compressed_pet(tmp_path))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    bad = tmp_path / "bad.mha"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="PET image: compressed voxel data are corrupt"):
        read_image(bad, "PET")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("20 20 40", "describes 64000 bytes of voxel data, its compressed data hold only 32000 of that"),
        ("20 20 19", "describes 30400 bytes of voxel data, its compressed data hold more than that"),
    ],
)
def test_compressed_data_must_inflate_to_exactly_what_the_header_describes(tmp_path, size, message):
    """ITK fills voxels missing from a compressed stream with zeros and drops extra ones, silently."""
    lying = compressed_pet(tmp_path).replace(b"DimSize = 20 20 20", f"DimSize = {size}".encode())
    (tmp_path / "lying.mha").write_bytes(lying)
    with pytest.raises(InputError, match=message):
        read_image(tmp_path / "lying.mha", "PET")


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_nifti_is_reported(tmp_path, name):
    """ITK's NIfTI reader returns a truncated file's image with zeros (or garbage) where data are missing."""
    good = tmp_path / name.replace("cut", "good")
    sitk.WriteImage(volume((20, 30, 40), value=2.0), str(good), name.endswith(".gz"))
    (tmp_path / name).write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.8)])
    with pytest.raises(InputError, match="CT image is truncated"):
        read_image(tmp_path / name, "CT")


def test_valid_nifti_variants_are_not_mistaken_for_truncated_ones(tmp_path):
    """Scaled integers (read as float), several gzip members, trailing bytes: all complete files."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "plain.nii"))
    header = bytearray((tmp_path / "plain.nii").read_bytes())
    header[112:120] = struct.pack("<2f", 2.0, 0.5)  # scl_slope, scl_inter
    scaled = bytes(header)
    variants = {
        "scaled.nii": scaled,
        "scaled.nii.gz": gzip.compress(scaled),
        "members.nii.gz": gzip.compress(scaled[:500]) + gzip.compress(scaled[500:]),
        "trailing.nii.gz": gzip.compress(scaled + b"\0" * 100),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        image = read_image(tmp_path / name, "PET")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array * 2.0 + 0.5)


@pytest.mark.parametrize("ndims", ["-1", "2147483648", "99", "3.5"])
def test_a_metaimage_header_that_would_hang_itk_is_refused(tmp_path, ndims):
    """ITK's MetaImage reader never returns from NDims = -1 (or 2**31, which overflows to it)."""
    path = tmp_path / "pet.mha"
    path.write_bytes(
        f"ObjectType = Image\nNDims = {ndims}\nDimSize = \nElementType = MET_CHAR\n"
        "ElementDataFile = LOCAL\n".encode()
    )
    with pytest.raises(InputError, match=rf"PET image header has NDims = '{re.escape(ndims)}'"):
        read_image(path, "PET")


@pytest.mark.parametrize("keep", [180, -3])
def test_a_gzip_file_cut_inside_its_header_or_trailer_is_truncated(tmp_path, keep):
    """ITK returns an image for both: from a header cut short, and without the checksum at the end."""
    noise = np.random.default_rng(7).gamma(2.0, 1.0, (9, 11, 13)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(tmp_path / "good.nii.gz"), True)
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "good.nii.gz").read_bytes()[:keep])
    with pytest.raises(InputError, match="PET image is truncated"):
        read_image(tmp_path / "cut.nii.gz", "PET")


def test_reading_works_without_a_writable_temporary_folder(tmp_path, monkeypatch):
    """ITK's stderr is captured through a temporary file; without one, reading still works (uncaptured)."""
    sitk.WriteImage(volume(value=2.0), str(tmp_path / "pet.mha"))

    def no_temporary_file(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pio.tempfile, "TemporaryFile", no_temporary_file)
    assert read_image(tmp_path / "pet.mha", "PET").GetSize() == (8, 7, 6)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 5), np.float32)), str(tmp_path / "flat.mha"))
    with pytest.raises(InputError, match="PET image is 2D"):
        read_image(tmp_path / "flat.mha", "PET")


# ---------------------------------------------------------------- symbolic links, vanishing inputs


def _case_folder(root, pet_target=None):
    for kind in ("ct", "pet"):
        (root / "images" / kind).mkdir(parents=True)
    write_image(volume(), root / "images" / "ct" / "ct.mha")
    if pet_target is None:
        write_image(volume(), root / "images" / "pet" / "pet.mha")
    else:
        (root / "images" / "pet" / "pet.mha").symlink_to(pet_target)
    return root


def test_links_in_the_input_folder_are_followed_only_inside_it(tmp_path):
    """The policy shared with the model folder: the folder may be a link; links in it stay in it."""
    elsewhere = tmp_path / "elsewhere.mha"
    write_image(volume(), elsewhere)
    outside = _case_folder(tmp_path / "outside", pet_target=elsewhere)
    with pytest.raises(InputError, match="a symbolic link leads outside the input folder"):
        find_case(outside)

    inside = _case_folder(tmp_path / "inside")
    (inside / "images" / "pet" / "pet.mha").rename(inside / "store.mha")
    (inside / "images" / "pet" / "pet.mha").symlink_to(inside / "store.mha")
    assert find_case(inside).pet == inside / "images" / "pet" / "pet.mha"

    linked_root = tmp_path / "input"  # as the platform links /input to each job's folder
    linked_root.symlink_to(inside, target_is_directory=True)
    assert find_case(linked_root).pet == linked_root / "images" / "pet" / "pet.mha"


def test_an_image_that_vanishes_while_it_is_read_is_an_input_error(tmp_path, monkeypatch):
    path = write_image(volume(), tmp_path / "pet.mha")
    real = pio._check_data_source

    def vanish_first(p, role):
        p.unlink()
        return real(p, role)

    monkeypatch.setattr(pio, "_check_data_source", vanish_first)
    with pytest.raises(InputError, match=r"pet\.mha: cannot read PET image: No such file"):
        read_image(path, "PET")


def test_a_file_name_that_is_not_utf8_is_refused_before_itk_sees_it(tmp_path):
    """ITK aborts the process (SIGABRT) on such a name; the error names it in ASCII."""
    raw = os.path.join(os.fsencode(tmp_path), b"pet-\xff.mha")
    write_image(volume(), tmp_path / "good.mha")
    os.rename(tmp_path / "good.mha", raw)
    with pytest.raises(InputError, match=r"pet-\\udcff\.mha.*path is not valid UTF-8"):
        read_image(Path(os.fsdecode(raw)), "PET")


def test_upper_case_suffixes_are_read(tmp_path):
    path = write_image(volume(), tmp_path / "pet.mha")
    path.rename(tmp_path / "PET.MHA")
    assert read_image(tmp_path / "PET.MHA", "PET").GetSize() == volume().GetSize()
