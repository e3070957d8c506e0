"""`petseg predict --dicom` end to end on small synthetic studies (the untrained test ensemble: its masks
mean nothing, what is written around them does), its refusals, and `predict --quantify` on image files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cc3d
import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_studies import study_tags, write_ct, write_pet, write_study

from petseg.app.cli import main
from petseg.io.dicom import SUV_JSON, read_pet

STUDY_FILES = ["lesions.csv", "mask.mha", "preview.png", "seg.dcm", "summary.json"]


def _predict(tmp_path: Path, model: Path, *extra: str, dicom: list[Path], output: Path | None = None) -> int:
    out = output or tmp_path / "out"
    return main(
        ["predict", "--dicom", *map(str, dicom), "--output", str(out), "--model", str(model), "-q", *extra]
    )


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _error_lines(err: str, text: str) -> list[str]:
    return [line for line in err.splitlines() if text in line]


def test_each_study_of_a_folder_gets_its_folder(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    studies = tmp_path / "studies"
    tags = write_study(studies / "patient-1" / "baseline")
    write_study(studies / "patient-2" / "baseline")
    assert _predict(tmp_path, tiny_model_dir, "--rtstruct", dicom=[studies]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*")) == [
        "patient-1/baseline",
        "patient-2/baseline",
    ]
    folder = out / "patient-1" / "baseline"
    assert _files(folder) == sorted([*STUDY_FILES, "rtstruct.dcm"])
    # The mask lies on the PET's grid, as from-dicom converts the series.
    _, pet, suv = read_pet(studies / "patient-1" / "baseline" / "PET")
    mask = sitk.ReadImage(str(folder / "mask.mha"))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == pet.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), pet.GetSpacing())
    np.testing.assert_allclose(mask.GetOrigin(), pet.GetOrigin())
    np.testing.assert_allclose(mask.GetDirection(), pet.GetDirection())
    voxels = sitk.GetArrayFromImage(mask)
    # The SEG holds the same voxels, and refers to the PET series.
    seg = hd.seg.segread(folder / "seg.dcm")
    a_pet_file = next((studies / "patient-1" / "baseline" / "PET").iterdir())
    pet_uid = pydicom.dcmread(a_pet_file, stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet_uid
    assert int(np.asarray(seg.get_volume().array).sum()) == int(voxels.sum())
    structure = pydicom.dcmread(folder / "rtstruct.dcm")
    assert structure.StudyInstanceUID == tags["StudyInstanceUID"]
    # The lesion table and the summary agree with each other and with the mask and PET.
    rows = list(csv.DictReader((folder / "lesions.csv").open()))
    summary = json.loads((folder / "summary.json").read_text())
    count = cc3d.connected_components(voxels > 0, connectivity=26, return_N=True)[1]
    assert summary["lesion_count"] == len(rows) == count
    voxel_ml = float(np.prod(pet.GetSpacing())) / 1000.0
    assert summary["tmtv_ml"] == pytest.approx(int(voxels.sum()) * voxel_ml)
    suv_values = sitk.GetArrayFromImage(pet).astype(np.float64)
    assert summary["total_tlg"] == pytest.approx(float(suv_values[voxels > 0].sum()) * voxel_ml, rel=1e-6)
    assert sum(float(row["mtv_ml"]) for row in rows) == pytest.approx(summary["tmtv_ml"], rel=1e-6)
    # The SUV provenance is the record from-dicom writes as suv.json.
    assert summary["suv"]["units"] == "BQML"
    assert summary["suv"]["factors"] == pytest.approx(list(suv.factors))
    assert summary["study_instance_uid"] == tags["StudyInstanceUID"]
    assert (folder / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_refused_study_writes_nothing_and_the_others_still_run(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    studies = tmp_path / "studies"
    write_study(studies / "good")
    write_study(studies / "no-pet", pet=False)
    tags = write_study(studies / "two-pet")
    write_pet(studies / "two-pet" / "PET-NAC", tags)  # a second PET series of the same study
    code = _predict(tmp_path, tiny_model_dir, dicom=[studies])
    err = capsys.readouterr().err
    assert code == 3
    assert _files(tmp_path / "out") == ["good"]  # nothing for the refused studies, not even a folder
    assert _files(tmp_path / "out" / "good") == STUDY_FILES
    (no_pet,) = _error_lines(err, "no PET series")
    assert str(studies / "no-pet") in no_pet
    (two_pet,) = _error_lines(err, "2 PET series")
    assert str(studies / "two-pet") in two_pet
    assert "Traceback" not in err
    assert "2 of 3 study(ies) failed" in err


def test_a_folder_without_pet_is_refused(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    write_study(tmp_path / "ct-only", pet=False)
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "ct-only"]) == 3
    err = capsys.readouterr().err
    (line,) = _error_lines(err, "no PET series")
    assert str(tmp_path / "ct-only") in line
    assert not (tmp_path / "out").exists()


def test_a_folder_without_dicom_files_is_refused(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("not DICOM")
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "empty"]) == 3
    assert len(_error_lines(capsys.readouterr().err, "no DICOM files")) == 1
    assert not (tmp_path / "out").exists()


def test_series_of_one_study_side_by_side_in_one_folder(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """A flat export (every file of the study in one folder) is one study, named after the folder."""
    tags = study_tags()
    write_pet(tmp_path / "flat", tags, names=lambda index: f"IM{index:04d}")
    write_ct(tmp_path / "flat", tags)  # the CT's files beside the PET's (slice_NNN.dcm)
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "flat"]) == 0, capsys.readouterr().err
    assert _files(tmp_path / "out" / "flat") == STUDY_FILES


def test_an_existing_study_folder_is_kept_unless_overwrite(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    write_study(tmp_path / "study")
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "study"]) == 0
    seg = tmp_path / "out" / "study" / "seg.dcm"
    first = pydicom.dcmread(seg).SOPInstanceUID
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "study"]) == 0
    assert pydicom.dcmread(seg).SOPInstanceUID == first  # skipped
    assert _predict(tmp_path, tiny_model_dir, "--overwrite", dicom=[tmp_path / "study"]) == 0
    assert pydicom.dcmread(seg).SOPInstanceUID != first  # replaced, whole
    assert _files(tmp_path / "out") == ["study"]  # no staging or replaced folder left beside it
    assert _files(tmp_path / "out" / "study") == STUDY_FILES


def test_an_output_that_cannot_be_written_leaves_nothing(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    write_study(tmp_path / "study")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study").write_text("a file where the study folder would go")
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "study"]) == 5
    (line,) = _error_lines(capsys.readouterr().err, "exists and is not a folder")
    assert str(tmp_path / "out" / "study") in line
    assert _files(tmp_path / "out") == ["study"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "i", "--rtstruct"], "--rtstruct: with --dicom only"),
        (["--dicom", "d", "--save-probabilities"], "--save-probabilities: with --input only"),
        (["--input", "i", "--dicom", "d"], "not allowed with argument"),
        ([], "one of the arguments --input --manifest --dicom is required"),
    ],
)
def test_options_of_the_other_input_are_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["predict", *argv, "--output", "o"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: petseg predict ")
    assert message in err


def _independent_figures(mask_path: Path, pet_path: Path) -> tuple[int, float, float]:
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    pet_image = sitk.ReadImage(str(pet_path))
    pet = sitk.GetArrayFromImage(pet_image).astype(np.float64)
    voxel_ml = float(np.prod(pet_image.GetSpacing())) / 1000.0
    count = cc3d.connected_components(mask, connectivity=26, return_N=True)[1]
    return int(count), int(mask.sum()) * voxel_ml, float(pet[mask].sum()) * voxel_ml


def test_predict_quantify_on_image_files(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """A case folder from `from-dicom` (Grand-Challenge layout, with suv.json) and an nnU-Net folder."""
    write_study(tmp_path / "study")
    case = tmp_path / "cases" / "case-1"
    argv = ["from-dicom", "--pet", str(tmp_path / "study" / "PET"), "--ct", str(tmp_path / "study" / "CT")]
    assert main([*argv, "--output", str(case)]) == 0
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_dir), "-q", "--quantify"]
    assert main(["predict", "--input", str(tmp_path / "cases"), "--output", str(out), *model]) == 0
    table, record = out / "case-1" / "case-1_lesions.csv", out / "case-1" / "case-1_summary.json"
    rows = list(csv.DictReader(table.open()))
    summary = json.loads(record.read_text())
    (mask_path,) = (out / "case-1").rglob("*.mha")
    (pet_path,) = (case / "images" / "pet").glob("*.mha")
    count, tmtv, tlg = _independent_figures(mask_path, pet_path)
    assert summary["lesion_count"] == len(rows) == count
    assert summary["tmtv_ml"] == pytest.approx(tmtv)
    assert summary["total_tlg"] == pytest.approx(tlg, rel=1e-6)
    assert summary["suv"] == json.loads((case / SUV_JSON).read_text())
    # nnU-Net layout: the files go beside the mask, OUT/<case>_lesions.csv.
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    for channel, source in (("0000", case / "images" / "ct"), ("0001", case / "images" / "pet")):
        sitk.WriteImage(sitk.ReadImage(str(next(source.glob("*.mha")))), str(nnunet / f"c2_{channel}.nii.gz"))
    assert main(["predict", "--input", str(nnunet), "--output", str(tmp_path / "out2"), *model]) == 0
    summary = json.loads((tmp_path / "out2" / "c2_summary.json").read_text())
    count, tmtv, tlg = _independent_figures(tmp_path / "out2" / "c2.nii.gz", nnunet / "c2_0001.nii.gz")
    assert (summary["lesion_count"], summary["suv"]) == (count, None)
    assert summary["tmtv_ml"] == pytest.approx(tmtv)
    assert len(list(csv.DictReader((tmp_path / "out2" / "c2_lesions.csv").open()))) == count


def test_a_write_that_fails_leaves_nothing_or_the_previous_folder(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The mask is the last file written into the staging folder: when it fails, the SEG and the tables
    written before it must not appear, and a folder being replaced must come back as it was."""
    import petseg.io.dicom.outputs as outputs

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    write_study(tmp_path / "study")
    with monkeypatch.context() as patch:
        patch.setattr(outputs.sitk, "WriteImage", broken)
        assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "study"]) == 5
    (line,) = _error_lines(capsys.readouterr().err, "disk full")
    assert "mask.mha" in line
    assert _files(tmp_path / "out") == []  # no study folder, no staging folder
    assert _predict(tmp_path, tiny_model_dir, dicom=[tmp_path / "study"]) == 0
    before = {name: (tmp_path / "out" / "study" / name).read_bytes() for name in STUDY_FILES}
    with monkeypatch.context() as patch:
        patch.setattr(outputs.sitk, "WriteImage", broken)
        assert _predict(tmp_path, tiny_model_dir, "--overwrite", dicom=[tmp_path / "study"]) == 5
    assert _files(tmp_path / "out") == ["study"]
    assert {name: (tmp_path / "out" / "study" / name).read_bytes() for name in STUDY_FILES} == before


def test_the_preview_shows_the_patients_right_on_the_left_and_the_head_up(tmp_path: Path) -> None:
    """On the PET of a DICOM series stored feet first, a lesion in the patient's right and upper body shows
    left of and above one in the left and lower body."""
    from PIL import Image

    from petseg.app.dicom_predict import study_preview
    from petseg.evaluation.preview import MASK_OPACITY, PREDICTION_RGB

    write_pet(tmp_path / "PET", study_tags(), descending=True)
    _, pet, _ = read_pet(tmp_path / "PET")
    blank = sitk.Image(pet.GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(pet)  # SUV 0: white, so the mask's tint is one exact colour
    tint = ((1 - MASK_OPACITY) * 255.0 + MASK_OPACITY * np.asarray(PREDICTION_RGB, float)).astype(np.uint8)
    centres = {}
    for name, index in (("right-upper", (3, 10, 6)), ("left-lower", (20, 10, 1))):
        # Where the voxel lies in the patient, from the image's geometry (LPS: x grows to the left).
        x, _, z = pet.TransformIndexToPhysicalPoint(index)
        centres.setdefault("lps", {})[name] = (x, z)
        array = np.zeros(pet.GetSize()[::-1], np.uint8)
        array[index[2], index[1], index[0]] = 1
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(pet)
        png = study_preview(blank, mask, name)
        assert png is not None
        (tmp_path / f"{name}.png").write_bytes(png)
        rgb = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))
        rows, columns = np.nonzero(np.all(rgb == tint, axis=-1))
        assert rows.size > 0
        centres[name] = (columns.mean(), rows.mean())
    lps = centres["lps"]
    assert lps["right-upper"][0] < lps["left-lower"][0]  # the first lesion is the more right one
    assert lps["right-upper"][1] > lps["left-lower"][1]  # and the higher one (superior: larger z)
    assert centres["right-upper"][0] < centres["left-lower"][0]  # shown further left
    assert centres["right-upper"][1] < centres["left-lower"][1]  # and further up
