"""`petseg from-dicom` end to end: the case folder it writes, and what it does with bad input (one line
naming the file, a non-zero exit code, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import DOSE_BQ, WEIGHT_KG, decayed, phantom, write_series

from petseg.app.cli import main
from petseg.io import find_case, read_case
from petseg.io.dicom import SUV_JSON

PET_UID = "1.2.826.0.1.3680043.10.1.1"
CT_UID = "1.2.826.0.1.3680043.10.1.2"


def _pet(folder: Path, **options) -> np.ndarray:
    truth = phantom()
    activity = truth * decayed(DOSE_BQ, 3600.0) / (WEIGHT_KG * 1000.0)
    write_series(folder, activity, series_uid=PET_UID, **options)
    return truth


def _ct(folder: Path, **options) -> np.ndarray:
    hu = np.full((12, 24, 24), -1000.0)
    hu[2:10, 4:20, 4:20] = 40.0
    hu[4:8, 8:12, 8:12] = 700.0
    slopes = [1.0] * hu.shape[0]
    write_series(
        folder,
        hu,
        modality="CT",
        series_uid=CT_UID,
        slopes=slopes,
        intercept=-1024.0,
        spacing=(1.0, 1.0, 2.0),
        **options,
    )
    return hu


def _leftovers(parent: Path, case: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != case)


def test_from_dicom_writes_the_case_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    truth = _pet(tmp_path / "pet")
    hu = _ct(tmp_path / "ct")
    out = tmp_path / "out" / "case"
    code = main(
        ["from-dicom", "--pet", str(tmp_path / "pet"), "--ct", str(tmp_path / "ct"), "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        f"images/ct/{CT_UID}.mha",
        f"images/pet/{PET_UID}.mha",
        SUV_JSON,
    ]
    pet = sitk.ReadImage(str(out / "images" / "pet" / f"{PET_UID}.mha"))
    assert pet.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(pet), truth, rtol=1e-3, atol=4e-3)
    ct = sitk.ReadImage(str(out / "images" / "ct" / f"{CT_UID}.mha"))
    assert ct.GetPixelID() == sitk.sitkInt16  # whole HU
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), hu)
    assert ct.GetSpacing() == (1.0, 1.0, 2.0)  # its own grid, not the PET's
    record = json.loads((out / SUV_JSON).read_text())
    assert record["pet"]["series_instance_uid"] == PET_UID
    assert record["ct"]["series_instance_uid"] == CT_UID
    suv = record["suv"]
    assert suv["units"] == "BQML"
    assert len(suv["factors"]) == truth.shape[0]
    assert suv["tags"]["RadionuclideTotalDose (0018,1074)"] == f"{DOSE_BQ:.1f}"
    assert [step["step"] for step in suv["steps"]] == [
        "rescale",
        "units",
        "weight",
        "dose",
        "half-life",
        "scan reference time",
        "injection time",
        "decay",
        "factor",
    ]
    assert suv["warnings"] == []
    assert suv["autopet_convention"]["max_relative_difference"] < 1e-6
    ct_read, pet_read = read_case(find_case(out))  # what process.py and petseg predict read
    assert pet_read.GetSize() == pet.GetSize()
    assert ct_read.GetSize() == ct.GetSize()


def test_a_ct_with_fractional_values_is_float32(tmp_path: Path) -> None:
    _pet(tmp_path / "pet")
    hu = np.full((12, 24, 24), -1000.0)
    hu[3:9] = 37.25
    write_series(tmp_path / "ct", hu, modality="CT", slopes=[0.25] * 12, intercept=-1024.0)
    out = tmp_path / "case"
    assert (
        main(["from-dicom", "--pet", str(tmp_path / "pet"), "--ct", str(tmp_path / "ct"), "--out", str(out)])
        == 0
    )
    (ct_file,) = (out / "images" / "ct").iterdir()
    ct = sitk.ReadImage(str(ct_file))
    assert ct.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(ct), hu)


def test_warnings_reach_the_log_and_suv_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _pet(tmp_path / "pet", tags={"DecayCorrection": "ADMIN"})
    out = tmp_path / "case"
    assert main(["from-dicom", "--pet", str(tmp_path / "pet"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warnings = json.loads((out / SUV_JSON).read_text())["suv"]["warnings"]
    assert any("autoPET" in w for w in warnings)
    assert "WARNING" in err
    assert "autoPET" in err
    assert not (out / "images" / "ct").exists()


@pytest.mark.parametrize(
    ("pet_options", "ct", "file", "message"),
    [
        (
            {"radiopharmaceutical": {"RadionuclideTotalDose": None}},
            False,
            "pet/slice_000.dcm",
            "RadionuclideTotalDose",
        ),
        ({"tags": {"PatientWeight": None}}, False, "pet/slice_000.dcm", "PatientWeight"),
        ({"tags": {"Modality": "MR"}}, False, "pet/slice_000.dcm", "not a PET series"),
        ({}, "PT", "ct/slice_000.dcm", "not a CT series"),  # a good PET, then a CT folder holding PET
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, pet_options: dict, ct: str | bool, file: str, message: str
) -> None:
    _pet(tmp_path / "pet", **pet_options)
    args = ["from-dicom", "--pet", str(tmp_path / "pet"), "--out", str(tmp_path / "out" / "case")]
    if ct:
        write_series(tmp_path / "ct", phantom(), modality=ct)
        args += ["--ct", str(tmp_path / "ct")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"petseg: error: {tmp_path / file}: ")
    assert message in lines[0]
    assert not (tmp_path / "out").exists()  # not even the parent it would have made


def test_an_existing_case_folder_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _pet(tmp_path / "pet")
    out = tmp_path / "case"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["from-dicom", "--pet", str(tmp_path / "pet"), "--out", str(out)]) == 5
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["from-dicom", "--pet", str(tmp_path / "pet"), "--out", str(empty)]) == 0
    assert (empty / SUV_JSON).is_file()
    assert _leftovers(tmp_path, empty) == ["case", "pet"]  # no staging folder left beside it


def test_the_command_line_tool_exits_without_a_traceback(tmp_path: Path) -> None:
    _pet(tmp_path / "pet", tags={"GantryDetectorTilt": "12"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "petseg",
            "from-dicom",
            "--pet",
            str(tmp_path / "pet"),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr
    assert "GantryDetectorTilt (0018,1120) is 12" in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_failure_while_writing_leaves_no_partial_case_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _pet(tmp_path / "pet")
    _ct(tmp_path / "ct")
    written = []
    real_write = sitk.WriteImage

    def write_then_fail(image: sitk.Image, path: str, *args: object) -> None:
        if written:  # the PET is written into the staging folder, then the CT fails
            raise RuntimeError("disk full")
        written.append(path)
        real_write(image, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", write_then_fail)
    out = tmp_path / "out" / "case"
    code = main(
        ["from-dicom", "--pet", str(tmp_path / "pet"), "--ct", str(tmp_path / "ct"), "--out", str(out)]
    )
    assert code == 5
    assert "disk full" in capsys.readouterr().err
    assert written  # the PET had been written
    assert not (tmp_path / "out").exists()


def test_an_empty_case_folder_given_stays_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _pet(tmp_path / "pet")
    out = tmp_path / "case"
    out.mkdir()

    def fail(*_args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    assert main(["from-dicom", "--pet", str(tmp_path / "pet"), "--out", str(out)]) == 5
    assert "disk full" in capsys.readouterr().err
    assert out.is_dir()
    assert list(out.iterdir()) == []
    assert _leftovers(tmp_path, out) == ["pet"]
