"""PET DICOM to body-weight SUV: each vendor rule on small synthetic series, and the DICOM SUV reference
objects of ../shared/data/suv-dro (skipped where that folder is absent).

Every synthetic series is written from an SUV truth by the physics of the case (the dose decayed to the
time the scanner corrected to, or not corrected at all), computed here from first principles; a reader that
applies a rule wrongly misses the truth by far more than the tolerance, which covers only the int16
rounding of the stored values.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA
from dicom_factory import (
    DAY,
    DOSE_BQ,
    F18_HALF_LIFE,
    GA68_HALF_LIFE,
    WEIGHT_KG,
    decayed,
    frame_average_time,
    frame_mean_decay,
    hhmmss,
    phantom,
    write_series,
)
from pydicom.dataset import Dataset

from petseg.errors import InputError
from petseg.io.dicom import pixels as dicom_pixels
from petseg.io.dicom import read_pet
from petseg.io.dicom.suv import nuclide_of
from petseg.io.dicom.values import parse_da, parse_dt, parse_tm, private_text

DRO_FOLDER = SHARED_DATA / "suv-dro"
DROS = ("DRO_0_0", "DRO_1_0", "DRO_2_0", "DRO_2_4", "DRO_3_1", "DRO_4_2")
INJECTION = dt.datetime(2025, 1, 1, 10, 0, 0)
SCAN = dt.datetime(2025, 1, 1, 11, 0, 0)
RTOL = 1e-3  # the int16 rounding of the stored values is below this


def _suv(folder: Path) -> tuple[np.ndarray, tuple[str, ...], sitk.Image]:
    _, image, result = read_pet(folder)
    return sitk.GetArrayFromImage(image), result.warnings, image


def _assert_suv(found: np.ndarray, truth: np.ndarray) -> None:
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, truth, rtol=RTOL, atol=RTOL * truth.max())


def _activity(suv: np.ndarray, dose_at_reference: float) -> np.ndarray:
    """Bq/ml of a body-weight SUV when the dose at the reference time is `dose_at_reference`."""
    return suv * dose_at_reference / (WEIGHT_KG * 1000.0)


def _autopet_warned(warnings: tuple[str, ...]) -> bool:
    return any("autoPET" in w for w in warnings)


# ------------------------------------------------------------------ units and decay correction


def test_bqml_start_decays_the_dose_to_the_scan_start(tmp_path: Path) -> None:
    truth = phantom()
    write_series(tmp_path, _activity(truth, decayed(DOSE_BQ, (SCAN - INJECTION).total_seconds())))
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert not _autopet_warned(warnings)  # the first file's acquisition time is the scan start: same result


def test_admin_uses_the_dose_as_given_without_a_second_decay_correction(tmp_path: Path) -> None:
    truth = phantom()
    write_series(tmp_path, _activity(truth, DOSE_BQ), tags={"DecayCorrection": "ADMIN"})
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert _autopet_warned(warnings)  # autoPET decays the dose anyway: +46 % after one hour


def test_none_decays_each_slice_from_its_own_acquisition(tmp_path: Path) -> None:
    truth = phantom()
    frame = 180.0
    starts = [SCAN + dt.timedelta(minutes=3 * (k // 4)) for k in range(truth.shape[0])]  # two beds
    # What an uncorrected frame holds: the mean activity over the frame, the dose decaying throughout.
    stored = np.stack(
        [
            _activity(truth[k], decayed(DOSE_BQ, (start - INJECTION).total_seconds()))
            * frame_mean_decay(frame, F18_HALF_LIFE)
            for k, start in enumerate(starts)
        ]
    )

    def bed(index: int, ds: Dataset) -> None:
        ds.AcquisitionTime = hhmmss(starts[index])
        ds.ActualFrameDuration = f"{int(frame * 1000)}"

    write_series(
        tmp_path, stored, tags={"DecayCorrection": "NONE", "CorrectedImage": ["ATTN"]}, slice_tags=bed
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert _autopet_warned(warnings)


def test_none_without_frame_duration_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, _activity(phantom(), DOSE_BQ), tags={"DecayCorrection": "NONE"})
    with pytest.raises(InputError, match=r"slice_000\.dcm: no ActualFrameDuration \(0018,1242\)"):
        read_pet(tmp_path)


def test_gml_is_suv_already(tmp_path: Path) -> None:
    truth = phantom()
    write_series(tmp_path, truth, slopes=[1e-3] * truth.shape[0], tags={"Units": "GML", "SUVType": "BW"})
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert _autopet_warned(warnings)


def test_gml_of_another_suv_type_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(), tags={"Units": "GML", "SUVType": "LBM"})
    with pytest.raises(InputError, match=r"slice_000\.dcm: .*SUVType \(0054,1006\) LBM"):
        read_pet(tmp_path)


def _philips(element: int, factor: float, creator: str | None = "Philips PET Private Group"):
    def set_factor(_index: int, ds: Dataset) -> None:
        if creator is not None:
            ds.add_new((0x7053, 0x0010), "LO", creator)
        ds.add_new((0x7053, element), "DS", f"{factor}")

    return set_factor


def test_cnts_with_the_philips_suv_scale_factor(tmp_path: Path) -> None:
    truth = phantom()
    factor = 0.0005
    write_series(tmp_path, truth / factor, tags={"Units": "CNTS"}, slice_tags=_philips(0x1000, factor))
    found, _, _ = _suv(tmp_path)
    _assert_suv(found, truth)


def test_cnts_with_the_philips_activity_factor_only_goes_on_as_bqml(tmp_path: Path) -> None:
    truth = phantom()
    factor = 0.5  # counts x factor = Bq/ml
    bqml = _activity(truth, decayed(DOSE_BQ, 3600.0))
    write_series(tmp_path, bqml / factor, tags={"Units": "CNTS"}, slice_tags=_philips(0x1009, factor))
    found, _, _ = _suv(tmp_path)
    _assert_suv(found, truth)


def test_a_zero_suv_scale_factor_falls_back_to_the_activity_factor(tmp_path: Path) -> None:
    truth = phantom()
    bqml = _activity(truth, decayed(DOSE_BQ, 3600.0))

    def factors(index: int, ds: Dataset) -> None:
        _philips(0x1000, 0.0)(index, ds)
        ds.add_new((0x7053, 0x1009), "DS", "0.25")

    write_series(tmp_path, bqml / 0.25, tags={"Units": "CNTS"}, slice_tags=factors)
    _assert_suv(_suv(tmp_path)[0], truth)


def test_cnts_factor_under_another_private_creator_is_not_read(tmp_path: Path) -> None:
    write_series(
        tmp_path, phantom(), tags={"Units": "CNTS"}, slice_tags=_philips(0x1000, 0.5, "OTHER VENDOR")
    )
    with pytest.raises(InputError, match=r"slice_\d+\.dcm: Units CNTS without a usable Philips SUV scale"):
        read_pet(tmp_path)


def test_unsupported_units_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(), tags={"Units": "CPS"})
    with pytest.raises(InputError, match=r"slice_000\.dcm: Units \(0054,1001\) is CPS"):
        read_pet(tmp_path)


# ------------------------------------------------------------------ rescale slope per slice


def test_rescale_slopes_that_differ_by_slice_apply_to_their_own_slice(tmp_path: Path) -> None:
    truth = phantom()
    activity = _activity(truth, decayed(DOSE_BQ, 3600.0))
    base = activity.max() / 30000.0  # the smallest slope that keeps every stored value in int16
    slopes = [base * (k + 1) for k in range(truth.shape[0])]  # a factor 8 between the first and the last
    write_series(tmp_path, activity, slopes=slopes)
    found, _, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    # A reader taking the first slice's slope for all would be off by the slope ratio in every other slice.
    assert not np.allclose(found[1:] * slopes[0] / np.array(slopes[1:])[:, None, None], truth[1:], rtol=0.1)


def test_slices_pydicom_cannot_decode_are_read_by_simpleitk_with_their_own_slope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = phantom()
    activity = _activity(truth, decayed(DOSE_BQ, 3600.0))
    base = activity.max() / 30000.0
    write_series(tmp_path, activity, slopes=[base * k for k in (1, 3, 2, 6, 5, 4, 7, 8)])
    monkeypatch.setattr(dicom_pixels, "_pydicom_slice", lambda *args: None)
    _assert_suv(_suv(tmp_path)[0], truth)


def test_geometry_and_slice_order_are_simpleitks(tmp_path: Path) -> None:
    """Files named against their position, an oblique-free but flipped orientation: the image lies where
    SimpleITK's series reader puts it, and its slices are in the same order."""
    truth = phantom()
    truth[1, 3, 3] = 3.0  # mark one slice
    activity = _activity(truth, decayed(DOSE_BQ, 3600.0))
    write_series(
        tmp_path,
        activity,
        orientation=(1, 0, 0, 0, -1, 0),
        names=lambda index: f"x{(7 - index) * 37 % 11:02d}_{index}.dcm",
    )
    found, _, image = _suv(tmp_path)
    reader = sitk.ImageSeriesReader()
    reference = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(tmp_path)), sitk.sitkFloat64)
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    ratio = found / np.maximum(sitk.GetArrayFromImage(reference), 1e-9)
    inside = truth > 0
    np.testing.assert_allclose(ratio[inside], ratio[inside].flat[0], rtol=RTOL)  # one factor: same order


# ------------------------------------------------------------------ the scan reference time


def _beds(starts: list[dt.datetime], frame: float, reference: dt.datetime | None = None):
    """Per-slice AcquisitionTime, ActualFrameDuration and FrameReferenceTime (ms from `reference` to the
    frame's decay-weighted mid-time), as a whole-body scanner writes them."""

    def bed(index: int, ds: Dataset) -> None:
        ds.AcquisitionTime = hhmmss(starts[index])
        if reference is not None:
            ds.ActualFrameDuration = f"{int(frame * 1000)}"
            offset = (starts[index] - reference).total_seconds() + frame_average_time(frame, F18_HALF_LIFE)
            ds.FrameReferenceTime = f"{offset * 1000:.3f}"

    return bed


def test_series_time_after_acquisition_back_computes_the_decay_reference(tmp_path: Path) -> None:
    """SeriesTime rewritten by post-processing (40 min late), the first bed cropped away: the decay
    reference is the scan start (11:00), which only FrameReferenceTime tells."""
    truth = phantom()
    frame = 180.0
    starts = [SCAN + dt.timedelta(minutes=3 * (1 + k // 4)) for k in range(truth.shape[0])]  # beds 2 and 3
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, (SCAN - INJECTION).total_seconds())),
        tags={"SeriesTime": "114000.000000"},
        slice_tags=_beds(starts, frame, reference=SCAN),
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert _autopet_warned(warnings)  # the first file's acquisition (11:03) is 3 minutes late: 1.9 %


def test_series_time_after_acquisition_without_frame_times_uses_the_earliest_acquisition(
    tmp_path: Path,
) -> None:
    truth = phantom()
    starts = [SCAN + dt.timedelta(minutes=3 * (k // 4)) for k in range(truth.shape[0])]
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, (SCAN - INJECTION).total_seconds())),
        tags={"SeriesTime": "114000.000000"},
        slice_tags=_beds(starts[::-1], 0.0),  # the latest bed's file comes first
    )
    _assert_suv(_suv(tmp_path)[0], truth)


def test_ge_private_scan_datetime_when_series_time_is_late(tmp_path: Path) -> None:
    truth = phantom()
    late = SCAN + dt.timedelta(minutes=5)  # every AcquisitionTime, and the SeriesTime later still

    def ge(_index: int, ds: Dataset) -> None:
        ds.AcquisitionTime = hhmmss(late)
        ds.add_new((0x0009, 0x0010), "LO", "GEMS_PETD_01")
        ds.add_new((0x0009, 0x100D), "DT", SCAN.strftime("%Y%m%d%H%M%S.00"))

    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, (SCAN - INJECTION).total_seconds())),
        tags={"SeriesTime": "113000.000000", "Manufacturer": "GE MEDICAL SYSTEMS"},
        slice_tags=ge,
    )
    _assert_suv(_suv(tmp_path)[0], truth)


# ------------------------------------------------------------------ injection time, nuclide, dose, weight


def test_injection_time_without_a_date_takes_the_series_date(tmp_path: Path) -> None:
    truth = phantom()
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, 5400.0)),
        radiopharmaceutical={
            "RadiopharmaceuticalStartDateTime": None,
            "RadiopharmaceuticalStartTime": "093000",
        },
    )
    _assert_suv(_suv(tmp_path)[0], truth)


def test_injection_before_midnight_scan_after_it(tmp_path: Path) -> None:
    truth = phantom()
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, 3600.0)),  # 23:30 to 00:30
        tags={"SeriesDate": "20250102", "AcquisitionDate": "20250102", "StudyDate": "20250102"},
        radiopharmaceutical={
            "RadiopharmaceuticalStartDateTime": None,
            "RadiopharmaceuticalStartTime": "233000",
        },
        slice_tags=lambda _i, ds: (
            setattr(ds, "AcquisitionTime", "003000") or setattr(ds, "SeriesTime", "003000")
        ),
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert _autopet_warned(warnings)  # autoPET subtracted the times of day: -23 h


def test_injection_time_after_the_scan_is_refused(tmp_path: Path) -> None:
    write_series(
        tmp_path,
        phantom(),
        radiopharmaceutical={"RadiopharmaceuticalStartDateTime": f"{DAY}113000"},
    )
    with pytest.raises(InputError, match=r"slice_000\.dcm: the injection .* is after the scan time"):
        read_pet(tmp_path)


def test_ga68_half_life(tmp_path: Path) -> None:
    truth = phantom()
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, 3600.0, GA68_HALF_LIFE)),
        radiopharmaceutical={"RadionuclideHalfLife": f"{GA68_HALF_LIFE}", "Radiopharmaceutical": "Ga68-PSMA"},
    )
    _assert_suv(_suv(tmp_path)[0], truth)


def test_a_missing_half_life_comes_from_the_nuclide_code(tmp_path: Path) -> None:
    truth = phantom()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-131A3", "SRT", "^68^Gallium"
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, 3600.0, GA68_HALF_LIFE)),
        radiopharmaceutical={"RadionuclideHalfLife": None, "RadionuclideCodeSequence": [code]},
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert any("Ga-68" in w for w in warnings)


def test_dose_in_mbq_is_recognised_and_warned_about(tmp_path: Path) -> None:
    truth = phantom()
    write_series(
        tmp_path,
        _activity(truth, decayed(DOSE_BQ, 3600.0)),
        radiopharmaceutical={"RadionuclideTotalDose": f"{DOSE_BQ / 1e6:g}"},
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert any("MBq" in w for w in warnings)


def test_weight_in_grams_is_recognised_and_warned_about(tmp_path: Path) -> None:
    truth = phantom()
    write_series(
        tmp_path, _activity(truth, decayed(DOSE_BQ, 3600.0)), tags={"PatientWeight": f"{WEIGHT_KG * 1000:g}"}
    )
    found, warnings, _ = _suv(tmp_path)
    _assert_suv(found, truth)
    assert any("grams" in w for w in warnings)


# ------------------------------------------------------------------ refusals: one line, naming file and tag


@pytest.mark.parametrize(
    ("tags", "radiopharmaceutical", "message"),
    [
        ({}, {"RadionuclideTotalDose": None}, r"no RadionuclideTotalDose \(0018,1074\)"),
        ({"PatientWeight": None}, {}, r"no PatientWeight \(0010,1030\)"),
        ({"PatientWeight": "0"}, {}, r"PatientWeight \(0010,1030\) '0' is not a weight"),
        (
            {},
            {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None},
            r"no RadiopharmaceuticalStartDateTime \(0018,1078\) or RadiopharmaceuticalStartTime",
        ),
        (
            {"SeriesTime": None, "AcquisitionTime": None},
            {},
            r"no SeriesTime \(0008,0031\) and no AcquisitionTime",
        ),
        ({"Units": None}, {}, r"no Units \(0054,1001\)"),
        ({"DecayCorrection": None}, {}, r"no DecayCorrection \(0054,1102\)"),
        ({}, {"RadionuclideHalfLife": None}, r"no RadionuclideHalfLife \(0018,1075\)"),
    ],
)
def test_missing_tags_are_refused_naming_tag_and_file(
    tmp_path: Path, tags: dict, radiopharmaceutical: dict, message: str
) -> None:
    write_series(tmp_path, phantom(), tags=tags, radiopharmaceutical=radiopharmaceutical)
    with pytest.raises(InputError, match=rf"^{tmp_path}/slice_000\.dcm: {message}") as raised:
        read_pet(tmp_path)
    assert "\n" not in str(raised.value)


def test_a_ct_series_is_not_pet(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(), modality="CT")
    with pytest.raises(InputError, match=r"slice_000\.dcm: Modality \(0008,0060\) is CT, not PT"):
        read_pet(tmp_path)


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, phantom())
    write_series(tmp_path, phantom(), names=lambda index: f"other_{index:03d}.dcm")
    with pytest.raises(InputError, match=r"2 series in one folder"):
        read_pet(tmp_path)


def test_a_missing_slice_is_uneven_spacing(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, 3.0 * k) for k in (0, 1, 2, 3, 5, 6, 7, 8)]
    write_series(tmp_path, phantom(), positions=positions)
    with pytest.raises(InputError, match=r"slice_004\.dcm: uneven slice spacing"):
        read_pet(tmp_path)


def test_a_tilted_gantry_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(), tags={"GantryDetectorTilt": "15"})
    with pytest.raises(InputError, match=r"GantryDetectorTilt \(0018,1120\) is 15"):
        read_pet(tmp_path)


def test_a_sheared_stack_is_refused(tmp_path: Path) -> None:
    positions = [(0.0, 0.8 * k, 3.0 * k) for k in range(8)]  # each slice shifted in y: a tilted gantry
    write_series(tmp_path, phantom(), positions=positions)
    with pytest.raises(InputError, match=r"not stacked along their normal"):
        read_pet(tmp_path)


def test_missing_position_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(), slice_tags=lambda i, ds: i == 3 and delattr(ds, "ImagePositionPatient"))
    with pytest.raises(InputError, match=r"slice_003\.dcm: no ImagePositionPatient \(0020,0032\)"):
        read_pet(tmp_path)


def test_a_single_slice_has_no_spacing(tmp_path: Path) -> None:
    write_series(tmp_path, phantom(slices=1))
    with pytest.raises(InputError, match=r"single slice"):
        read_pet(tmp_path)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not DICOM")
    with pytest.raises(InputError, match=r"no DICOM files"):
        read_pet(tmp_path)


def test_a_truncated_file_is_refused_never_skipped(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _activity(phantom(), DOSE_BQ))
    whole = paths[3].read_bytes()
    for length in range(0, len(whole), len(whole) // 25):
        paths[3].write_bytes(whole[:length])
        with pytest.raises(InputError, match=rf"^{tmp_path}(/slice_00\d\.dcm)?: "):
            read_pet(tmp_path)


def test_slices_that_disagree_on_the_dose_are_refused(tmp_path: Path) -> None:
    def other_dose(index: int, ds: Dataset) -> None:
        if index == 5:
            ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = "1.0"

    write_series(tmp_path, phantom(), slice_tags=other_dose)
    with pytest.raises(
        InputError, match=r"slice_005\.dcm: RadionuclideTotalDose .* the slices of one series disagree"
    ):
        read_pet(tmp_path)


# ------------------------------------------------------------------ value parsing


def test_dicom_dates_and_times() -> None:
    assert parse_da("20250102") == dt.date(2025, 1, 2)
    assert parse_tm("0930") == dt.time(9, 30)
    assert parse_tm("093015.5") == dt.time(9, 30, 15, 500000)
    assert parse_tm("09:30:15") == dt.time(9, 30, 15)
    assert parse_dt("20250101233000.000000+0100") == dt.datetime(2025, 1, 1, 23, 30)
    for bad in ("2025-01-01", "9:30", ""):
        with pytest.raises(ValueError, match="not a DICOM time"):
            parse_tm(bad)


@pytest.mark.parametrize(
    ("text", "nuclide"),
    [
        ("^18^Fluorine", "F-18"),
        ("^68^Gallium", "Ga-68"),
        ("Ga68-PSMA", "Ga-68"),
        ("18F-FDG", "F-18"),
        ("FDG", None),
    ],
)
def test_nuclide_names(text: str, nuclide: str | None) -> None:
    assert nuclide_of(text) == nuclide


def test_private_element_found_through_its_creator_in_any_block() -> None:
    ds = Dataset()
    ds.add_new((0x7053, 0x0010), "LO", "SOMEONE ELSE")
    ds.add_new((0x7053, 0x1000), "DS", "9")
    ds.add_new((0x7053, 0x0011), "LO", "Philips PET Private Group")
    ds.add_new((0x7053, 0x1100), "DS", "0.25")
    value, how = private_text(ds, 0x7053, 0x1000, ["Philips PET Private Group"])
    assert value == "0.25"
    assert "Philips" in how


# ------------------------------------------------------------------ the reference objects


@pytest.mark.parametrize("name", DROS)
def test_suv_reference_objects(name: str) -> None:
    if not DRO_FOLDER.is_dir():
        pytest.skip("../shared/data/suv-dro is not present beside the repository")
    found, _, image = _suv(DRO_FOLDER / name / "PT")
    mask = sitk.ReadImage(str(DRO_FOLDER / name / "mask" / "DRO_mask.nii.gz"))
    mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    inside = found[sitk.GetArrayFromImage(mask) > 0]
    assert inside.size > 1000
    measured = (float(inside.min()), float(np.median(inside)), float(inside.max()))
    for value, expected in zip(measured, (0.20, 1.00, 4.00), strict=True):
        assert math.isclose(value, expected, rel_tol=0.01), f"{name}: min/median/max {measured}"
