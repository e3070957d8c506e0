"""The DICOM SEG and RTSTRUCT of a lesion mask: read back, they give the mask voxel for voxel on the PET grid
(whatever the order of the PET files and slice positions), refer to the PET series, carry the codes, and pass
dciodvfy (dicom3tools) without errors."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_studies import SIZE, SLICES, study_tags, write_pet

from petseg.io.dicom.convert import pet_image
from petseg.io.dicom.rtstruct import lesion_rtstruct
from petseg.io.dicom.seg import lesion_seg
from petseg.io.dicom.series import read_series

VERSION = "9.8.7"
MODEL = "test-model"


def _mask() -> np.ndarray:
    """(z, y, x): two lesions, one with a hole in a slice, one single voxel, and slices without lesion."""
    mask = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    mask[1:4, 4:9, 5:11] = 1
    mask[2, 6, 7] = 0  # a hole
    mask[6, 18, 3] = 1
    return mask


@pytest.fixture(params=[True, False], ids=["positions-down", "positions-up"])
def pet_series(request: pytest.FixtureRequest, tmp_path: Path):
    write_pet(tmp_path / "pet", study_tags(), descending=request.param)
    return read_series(tmp_path / "pet", "PT", "PET")


def _roundtrip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _slice_index(image: sitk.Image, path: Path) -> int:
    """The z index of a PET file on the image's grid, from its own ImagePositionPatient."""
    position = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
    index = image.TransformPhysicalPointToContinuousIndex(position)
    assert np.allclose(index[:2], 0.0, atol=1e-6)
    assert abs(index[2] - round(index[2])) < 1e-6
    return round(index[2])


def test_the_seg_read_back_is_the_mask_on_the_pet_grid(pet_series) -> None:
    _, pet, _ = pet_image(pet_series)
    mask = _mask()
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(lesion_seg(pet_series, mask, MODEL, VERSION)))
    assert seg.number_of_frames == SLICES  # every PET slice has its frame, the empty ones too
    for path in pet_series.files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[header.SOPInstanceUID], segment_numbers=[1]
        )[0, :, :, 0]
        np.testing.assert_array_equal(frame, mask[_slice_index(pet, path)], err_msg=path.name)
    # Each frame lies where its PET slice lies.
    positions = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: [
            float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient
        ]
        for p in pet_series.files
    }
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[source], atol=1e-4)
    # highdicom's volume of the SEG, placed by its own affine (array index -> LPS mm), is the mask on the PET.
    volume = seg.get_volume()
    values = np.asarray(volume.array)[..., 0]
    indices = np.argwhere(np.ones(values.shape, bool))
    points = (np.c_[indices, np.ones(len(indices))] @ np.asarray(volume.affine).T)[:, :3]
    direction = np.reshape(pet.GetDirection(), (3, 3))
    on_pet = ((points - pet.GetOrigin()) @ direction) / pet.GetSpacing()  # continuous (x, y, z) indices
    np.testing.assert_allclose(on_pet, np.round(on_pet), atol=1e-6)
    x, y, z = np.round(on_pet).astype(int).T
    np.testing.assert_array_equal(values[tuple(indices.T)], mask[z, y, x])


def test_the_seg_refers_to_the_pet_and_carries_the_codes(pet_series) -> None:
    seg = _roundtrip(lesion_seg(pet_series, _mask(), MODEL, VERSION))
    first = pet_series.headers[0]
    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == pet_series.uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        h.SOPInstanceUID for h in pet_series.headers
    }
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Lesion"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert category.CodeMeaning == "Morphologically abnormal structure"
    assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == ("108369006", "SCT", "Neoplasm")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("petseg", VERSION)
    assert MODEL in algorithm.AlgorithmParameters
    assert seg.ManufacturerModelName == MODEL
    assert seg.SoftwareVersions == VERSION


def test_rtstruct_contours_lie_on_the_mask_voxels(pet_series) -> None:
    """Every contour point is the centre of a lesion voxel of its own PET slice (rt-utils traces through the
    boundary voxels' centres), with the non-square pixels of the PET."""
    _, pet, _ = pet_image(pet_series)
    mask = _mask()
    structure = _roundtrip(lesion_rtstruct(pet_series, mask, MODEL, VERSION))
    assert structure.Modality == "RTSTRUCT"
    (roi,) = structure.StructureSetROISequence
    assert (roi.ROIName, roi.ROIGenerationAlgorithm) == ("Lesion", "AUTOMATIC")
    code = structure.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("108369006", "SCT")
    study = structure.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == pet_series.uid
    instance_slice = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: _slice_index(pet, p)
        for p in pet_series.files
    }
    corners: dict[int, list[tuple[int, int]]] = {}
    for contour in structure.ROIContourSequence[0].ContourSequence:
        z = instance_slice[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        for point in points:
            x, y, k = pet.TransformPhysicalPointToContinuousIndex(point.tolist())
            assert abs(k - z) < 1e-6
            assert abs(x - round(x)) < 1e-6
            assert abs(y - round(y)) < 1e-6
            assert mask[z, round(y), round(x)] == 1
            corners.setdefault(z, []).append((round(y), round(x)))
    # Every slice with lesion voxels has contours, reaching as far as its voxels do.
    assert sorted(corners) == [z for z in range(SLICES) if mask[z].any()]
    for z, reached in corners.items():
        voxels = np.argwhere(mask[z])
        np.testing.assert_array_equal(np.min(reached, axis=0), voxels.min(axis=0))
        np.testing.assert_array_equal(np.max(reached, axis=0), voxels.max(axis=0))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) absent")
@pytest.mark.parametrize("lesions", [True, False], ids=["lesions", "lesion-free"])
def test_seg_and_rtstruct_pass_dciodvfy(pet_series, tmp_path: Path, lesions: bool) -> None:
    mask = _mask() if lesions else np.zeros((SLICES, SIZE, SIZE), np.uint8)
    for name, dataset in (
        ("seg.dcm", lesion_seg(pet_series, mask, MODEL, VERSION)),
        ("rtstruct.dcm", lesion_rtstruct(pet_series, mask, MODEL, VERSION)),
    ):
        path = tmp_path / name
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
        result = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        report = result.stdout + result.stderr
        assert "Segmentation" in report or "RTStructureSet" in report, report  # it recognised the IOD
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{name}: {errors}"


def test_a_pet_without_frame_of_reference_is_refused(tmp_path: Path) -> None:
    from petseg.errors import InputError

    tags = study_tags()
    tags["FrameOfReferenceUID"] = None
    write_pet(tmp_path / "pet", tags)
    series = read_series(tmp_path / "pet", "PT", "PET")
    with pytest.raises(InputError, match=r"FrameOfReferenceUID \(0020,0052\)"):
        lesion_seg(series, _mask(), MODEL, VERSION)
