"""Synthetic PET/CT phantoms: determinism, lesions, physiology, geometry, layouts and organ maps."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from petseg.errors import InputError, OutputError
from petseg.io import find_case, image_stem
from petseg.io.splits import leaking_patients, patient_id, read_splits
from petseg.synthetic import GRIDS, LAYOUTS, SIZES, TRACERS, Phantom, generate, make_case
from petseg.synthetic.generate import plan_cases
from petseg.synthetic.grids import FAMILIES, DiagonalGrid
from petseg.synthetic.layouts import ct_on_pet_grid
from petseg.synthetic.organs import downsample_factors, select_maps

AUTOPET_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ORGAN_MAPS = SHARED_DATA / "autopet3-organs"


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _near(phantom: Phantom, organ: str, image: sitk.Image) -> float:
    """Mean of the 3 x 3 x 3 voxels of `image` (on the PET grid) around an organ's centre."""
    centre = phantom.info["organs"][organ]["centre_mm"]
    i, j, k = np.rint(phantom.pet.TransformPhysicalPointToContinuousIndex(centre)).astype(int)
    return float(_array(image)[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean())


@pytest.fixture(scope="module")
def tiny_cases() -> list[Phantom]:
    """40 tiny cases, alternating FDG and PSMA."""
    return [make_case(11, index, tracer="fdg" if index % 2 == 0 else "psma") for index in range(40)]


def test_public_constants() -> None:
    assert TRACERS == ("fdg", "psma", "mixed")
    assert SIZES == ("tiny", "small", "full")
    assert LAYOUTS == ("gc", "nnunet")
    assert GRIDS == ("fdg-400", "psma-200", "psma-256", "psma-168")


def test_same_seed_and_index_give_identical_cases() -> None:
    first, second = make_case(3, 2, tracer="psma"), make_case(3, 2, tracer="psma")
    assert (first.case_id, first.patient_id) == (second.case_id, second.patient_id)
    assert first.info == second.info
    assert (first.info["ct_uuid"], first.info["pet_uuid"]) == (
        second.info["ct_uuid"],
        second.info["pet_uuid"],
    )
    for a, b in ((first.ct, second.ct), (first.pet, second.pet), (first.label, second.label)):
        assert _geometry(a) == _geometry(b)
        np.testing.assert_array_equal(_array(a), _array(b))
    other = make_case(4, 2, tracer="psma")
    assert other.case_id != first.case_id
    assert other.info["pet_uuid"] != first.info["pet_uuid"]
    assert _array(other.pet).shape != _array(first.pet).shape or not np.array_equal(
        _array(other.pet), _array(first.pet)
    )


def test_overriding_one_choice_keeps_the_others() -> None:
    with_lesions = make_case(8, 1, lesion_free=False)
    without = make_case(8, 1, lesion_free=True)
    assert with_lesions.case_id == without.case_id
    assert with_lesions.info["body"] == without.info["body"]
    assert with_lesions.info["pet_grid"] == without.info["pet_grid"]
    assert without.info["lesions"] == []
    assert with_lesions.info["lesions"]


def test_case_is_independent_of_the_number_generated(tmp_path: Path) -> None:
    few = generate(tmp_path / "few", 2, seed=5, progress=False)
    many = generate(tmp_path / "many", 4, seed=5, progress=False)
    assert few == many[:2]
    for row in few:
        a = sitk.ReadImage(str(tmp_path / "few" / row["pet"]))
        b = sitk.ReadImage(str(tmp_path / "many" / row["pet"]))
        np.testing.assert_array_equal(_array(a), _array(b))


def test_label_is_binary_uint8_on_the_exact_pet_grid(tiny_cases: list[Phantom]) -> None:
    for phantom in tiny_cases[:10]:
        assert phantom.label.GetPixelID() == sitk.sitkUInt8
        assert phantom.pet.GetPixelID() == sitk.sitkFloat32
        assert phantom.ct.GetPixelID() == sitk.sitkInt16
        assert _geometry(phantom.label) == _geometry(phantom.pet)
        assert set(np.unique(_array(phantom.label))) <= {0, 1}


def test_each_lesion_is_hotter_than_the_body_around_it(tiny_cases: list[Phantom]) -> None:
    checked = 0
    for phantom in tiny_cases:
        label = _array(phantom.label)
        if not label.any():
            continue
        pet = _array(phantom.pet)
        ct = _array(ct_on_pet_grid(phantom))
        body = np.stack([ndimage.binary_fill_holes(plane) for plane in ct > -500])
        if not phantom.info["ct_own_grid"]:
            # Lesion voxels lie inside the body (lungs count as inside).
            assert body[label > 0].all(), phantom.case_id
        components, count = ndimage.label(label, structure=np.ones((3, 3, 3)))
        for index in range(1, count + 1):
            lesion = components == index
            around = ndimage.binary_dilation(lesion, iterations=2) & (label == 0) & body
            assert pet[lesion].mean() > 1.2 * np.median(pet[around]), phantom.case_id
            checked += 1
    assert checked > 30


def test_label_matches_the_lesions_described(tiny_cases: list[Phantom]) -> None:
    for phantom in tiny_cases:
        info = phantom.info
        voxels = int(_array(phantom.label).sum())
        assert (voxels == 0) == info["lesion_free"]
        assert 0 < voxels <= sum(lesion["voxels"] for lesion in info["lesions"]) or voxels == 0
        for lesion in info["lesions"]:
            assert lesion["voxels"] >= 6
            assert 2.0 <= lesion["suvmax"] <= 60.0
            assert lesion["region"] in {"node", "lung", "bone", "liver", "near-organ", "prostate"}


def test_lesion_free_cases_have_an_empty_label() -> None:
    phantom = make_case(2, 0, tracer="psma", lesion_free=True)
    assert not _array(phantom.label).any()
    assert phantom.info["lesion_free"]
    assert phantom.info["lesions"] == []


def test_about_a_quarter_of_cases_are_lesion_free(tiny_cases: list[Phantom]) -> None:
    free = sum(phantom.info["lesion_free"] for phantom in tiny_cases)
    assert 4 <= free <= 17
    counts = [len(phantom.info["lesions"]) for phantom in tiny_cases if not phantom.info["lesion_free"]]
    assert max(counts) <= 10
    assert len(set(counts)) > 1


def test_tracer_physiology(tiny_cases: list[Phantom]) -> None:
    fdg = [p for p in tiny_cases if p.tracer == "fdg" and p.info["organs"]["brain"]["in_fov"]]
    psma = [p for p in tiny_cases if p.tracer == "psma" and p.info["organs"]["brain"]["in_fov"]]
    assert fdg
    assert psma
    fdg_brain = np.mean([_near(p, "brain", p.pet) for p in fdg])
    psma_brain = np.mean([_near(p, "brain", p.pet) for p in psma])
    assert fdg_brain > 5.0
    assert psma_brain < 1.0
    for phantom in psma:
        # Tiny glands are smaller than the scanner blur: hot, but far below their true uptake.
        muscle = phantom.info["uptake_suv"]["muscle"]
        assert _near(phantom, "parotid_left", phantom.pet) > 1.5 * muscle
        assert _near(phantom, "kidney_left", phantom.pet) > 8.0
        assert _near(phantom, "liver", phantom.pet) > 3.0
    for phantom in tiny_cases[:12]:
        ct = ct_on_pet_grid(phantom)
        for lung in ("lung_left", "lung_right"):
            if phantom.info["organs"][lung]["in_fov"]:
                assert -950 < _near(phantom, lung, ct) < -700


def test_reduced_phantoms_shrink_the_psf_as_their_lesions() -> None:
    """Lesion volumes shrink by the anatomy scale s, their lengths by s^(1/3), and the PSF (5.5-7 mm at
    full size) alike, so that a tiny case's lesions lose as much contrast to the blur as full-size ones."""
    full = make_case(5, 1, tracer="psma", size="full", grid="psma-168", z_slices=40, ct_own_grid=False)
    assert full.info["anatomy_scale"] == 1.0
    assert 5.5 <= full.info["pet"]["psf_fwhm_mm"] <= 7.0
    for index in range(3):
        tiny = make_case(5, index, size="tiny", ct_own_grid=False)
        factor = tiny.info["anatomy_scale"] ** (1 / 3)
        assert tiny.info["anatomy_scale"] < 0.5
        assert 5.5 * factor - 1e-3 <= tiny.info["pet"]["psf_fwhm_mm"] <= 7.0 * factor + 1e-3


def test_psma_salivary_glands_and_kidneys_at_real_scale() -> None:
    phantom = make_case(2, 0, tracer="psma", size="full", grid="psma-168", z_slices=120, ct_own_grid=False)
    assert phantom.info["anatomy_scale"] == 1.0
    for gland in ("parotid_left", "parotid_right"):
        assert _near(phantom, gland, phantom.pet) > 6.0
    for kidney in ("kidney_left", "kidney_right"):
        assert _near(phantom, kidney, phantom.pet) > 15.0
    assert 3.5 < _near(phantom, "liver", phantom.pet) < 8.0
    assert _near(phantom, "brain", phantom.pet) < 1.0


def test_every_image_has_the_autopet_direction(tiny_cases: list[Phantom]) -> None:
    for phantom in tiny_cases[:8]:
        for image in (phantom.ct, phantom.pet, phantom.label):
            assert image.GetDirection() == AUTOPET_DIRECTION


@pytest.mark.parametrize("grid", GRIDS)
def test_each_grid_family_has_its_real_spacing(grid: str) -> None:
    family = FAMILIES[grid]
    phantom = make_case(1, 0, tracer=family.tracer, grid=grid, ct_own_grid=False)
    assert phantom.info["grid"] == grid
    np.testing.assert_allclose(phantom.pet.GetSpacing(), family.spacing, rtol=1e-6)
    assert phantom.pet.GetSize() == (64, 64, 96)
    assert _geometry(phantom.ct) == _geometry(phantom.pet)
    origin = phantom.pet.GetOrigin()
    assert origin[0] == pytest.approx(-(63 * family.spacing[0]) / 2, abs=0.6)


def test_psma_cases_draw_all_three_psma_grids(tiny_cases: list[Phantom]) -> None:
    grids = {p.info["grid"] for p in tiny_cases if p.tracer == "psma"}
    assert grids == {"psma-200", "psma-256", "psma-168"}
    assert {p.info["grid"] for p in tiny_cases if p.tracer == "fdg"} == {"fdg-400"}


def test_ct_on_its_own_grid_is_finer_and_overlaps_the_pet() -> None:
    phantom = make_case(6, 3, tracer="fdg", ct_own_grid=True)
    ct, pet = phantom.ct, phantom.pet
    assert phantom.info["ct_own_grid"]
    assert ct.GetSpacing()[0] < 0.7 * pet.GetSpacing()[0]
    assert ct.GetSize() != pet.GetSize()
    assert ct.GetOrigin() != pet.GetOrigin()
    assert ct.GetDirection() == AUTOPET_DIRECTION
    ct_grid, pet_grid = DiagonalGrid.of(ct), DiagonalGrid.of(pet)
    (ct_low, ct_high), (pet_low, pet_high) = ct_grid.bounds(), pet_grid.bounds()
    overlap = np.clip(np.minimum(ct_high, pet_high) - np.maximum(ct_low, pet_low), 0, None)
    assert np.prod(overlap) > 0.2 * np.prod(pet_high - pet_low)
    assert (ct_high - ct_low)[0] < (pet_high - pet_low)[0]
    # The body drawn on the CT grid matches the PET: the lungs are where the PET says.
    resampled = ct_on_pet_grid(phantom)
    assert _geometry(resampled) == _geometry(pet)
    assert -950 < _near(phantom, "lung_right", resampled) < -700
    assert (_array(ct) >= -1024).all()


def test_about_forty_percent_of_cts_have_their_own_grid(tiny_cases: list[Phantom]) -> None:
    own = sum(phantom.info["ct_own_grid"] for phantom in tiny_cases)
    assert 6 <= own <= 26


def test_z_slices_override_and_geometry_helpers() -> None:
    phantom = make_case(0, 0, z_slices=40)
    assert phantom.pet.GetSize()[2] == 40
    grid = DiagonalGrid.of(phantom.pet)
    for index in ((0, 0, 0), (63, 5, 39), (10, 60, 20)):
        expected = phantom.pet.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(grid.physical(np.array(index)), expected, atol=1e-4)


def test_gc_layout(tmp_path: Path) -> None:
    rows = generate(tmp_path, 3, seed=4, layout="gc", progress=False)
    assert len(rows) == 3
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    assert manifest["arguments"]["layout"] == "gc"
    assert manifest["cases"] == rows
    for row in rows:
        case_dir = tmp_path / row["case_id"]
        files = find_case(case_dir / "input")
        assert files.ct.name == f"{row['ct_uuid']}.mha"
        assert files.pet.name == f"{row['pet_uuid']}.mha"
        assert row["ct_uuid"] != row["pet_uuid"]
        for name in (row["ct_uuid"], row["pet_uuid"]):
            assert uuid.UUID(name).version == 4
        truth = list((case_dir / "ground-truth").iterdir())
        assert [p.name for p in truth] == [f"{files.pet_uuid}.mha"]
        pet, label = sitk.ReadImage(str(files.pet)), sitk.ReadImage(str(truth[0]))
        assert _geometry(label) == _geometry(pet)
        assert label.GetPixelID() == sitk.sitkUInt8
        assert sitk.ReadImage(str(files.ct)).GetPixelID() == sitk.sitkInt16
        assert row["patient_id"] == patient_id(row["case_id"])


def test_nnunet_layout_with_patient_grouped_splits(tmp_path: Path) -> None:
    plan = plan_cases(2, 10, "mixed")
    assert any(patient is not None for _, patient in plan)  # some second studies in this dataset
    rows = generate(tmp_path, 10, seed=2, layout="nnunet", progress=False)
    case_ids = [row["case_id"] for row in rows]
    assert len({patient_id(case) for case in case_ids}) < len(case_ids)
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == sorted(
        f"{c}.nii.gz" for c in case_ids
    )
    expected = sorted(f"{c}_{channel}.nii.gz" for c in case_ids for channel in ("0000", "0001"))
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == expected
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "PET"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["numTraining"] == 10
    assert dataset["file_ending"] == ".nii.gz"
    folds = read_splits(tmp_path / "splits_final.json", case_ids=case_ids)
    assert len(folds) == 5
    assert leaking_patients(folds) == []
    own = [row for row in rows if row["ct_own_grid"]]
    assert own
    for row in own[:2]:
        ct = sitk.ReadImage(str(tmp_path / row["ct"]))
        pet = sitk.ReadImage(str(tmp_path / row["pet"]))
        assert ct.GetSize() == pet.GetSize()
        np.testing.assert_allclose(ct.GetOrigin(), pet.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(ct.GetSpacing(), pet.GetSpacing(), atol=1e-5)
        assert _array(ct).min() == -1024


def test_nnunet_layout_skips_splits_for_too_few_patients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        generate(tmp_path, 2, seed=3, layout="nnunet", progress=False)
    assert (tmp_path / "dataset.json").is_file()
    assert not (tmp_path / "splits_final.json").exists()
    assert "splits_final.json not written" in caplog.text


def test_second_studies_reuse_an_earlier_patient() -> None:
    plan = plan_cases(0, 60, "mixed")
    seconds = [patient for _, patient in plan if patient is not None]
    assert 4 <= len(seconds) <= 22
    tracers = [tracer for tracer, patient in plan if patient is None]
    assert 0.4 < tracers.count("fdg") / len(tracers) < 0.8
    index = next(i for i, (_, patient) in enumerate(plan) if patient is not None)
    tracer, patient = plan[index]
    again = make_case(0, index, tracer=tracer, patient_id=patient)
    assert again.patient_id == patient
    assert again.case_id.startswith(patient + "_")
    root = next(i for i in range(index) if make_case(0, i, tracer=plan[i][0]).patient_id == patient)
    first = make_case(0, root, tracer=tracer)
    assert first.case_id != again.case_id
    assert first.info["body"]["height_factor"] == again.info["body"]["height_factor"]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_fdg_share_sets_the_mix_of_new_patients(share: float) -> None:
    plan = plan_cases(0, 200, "mixed", fdg_share=share)
    new = [tracer for tracer, patient in plan if patient is None]
    fraction = new.count("fdg") / len(new)
    assert abs(fraction - share) < 0.12
    if share in (0.0, 1.0):
        assert {tracer for tracer, _ in plan} == {"fdg" if share else "psma"}  # second studies keep theirs


def test_generate_records_the_fdg_share(tmp_path: Path) -> None:
    rows = generate(tmp_path, 3, seed=4, fdg_share=0.0, progress=False)
    assert {row["tracer"] for row in rows} == {"psma"}
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    assert manifest["arguments"]["fdg_share"] == 0.0


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_worker_processes_write_what_one_process_writes(tmp_path: Path, layout: str) -> None:
    # Seed 1403 draws the same date for the second study of case 1's patient (case 2), which is then
    # given another: the worker that built it cannot know, so the case is built again in order.
    one = generate(tmp_path / "one", 3, seed=1403, layout=layout, progress=False)
    three = generate(tmp_path / "three", 3, seed=1403, layout=layout, progress=False, workers=3)
    assert one == three
    assert len({row["case_id"] for row in three}) == 3
    assert _tree(tmp_path / "one") == _tree(tmp_path / "three")
    assert not (tmp_path / "three" / ".staging").exists()


def test_a_case_failing_in_a_worker_leaves_no_scratch_files(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "fdg_0000000000_01-01-2001.nii.gz").write_text("not an image")
    with pytest.raises(InputError, match=r"fdg_0000000000_01-01-2001\.nii\.gz: cannot read organ label map"):
        generate(tmp_path / "out", 3, organs_dir=maps, progress=False, workers=2)
    assert not (tmp_path / "out").exists()


def test_regenerating_into_the_same_folder_replaces_the_earlier_run(tmp_path: Path) -> None:
    generate(tmp_path, 3, seed=1, progress=False)
    rows = generate(tmp_path, 2, seed=2, progress=False)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == sorted(row["case_id"] for row in rows)


def test_refuses_a_folder_that_holds_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        generate(tmp_path, 1, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tracer": "mixed"}, "tracer"),
        ({"size": "huge"}, "size"),
        ({"grid": "fdg-512"}, "grid"),
        ({"tracer": "fdg", "grid": "psma-200"}, "psma grid"),
        ({"z_slices": 2}, "z_slices"),
        ({"patient_id": "psma_0123456789abcdef"}, "patient_id"),
        ({"index": -1}, "index"),
    ],
)
def test_make_case_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_case(0, **{"index": 0, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cases": 0}, "cases"),
        ({"cases": 1, "layout": "tcia"}, "layout"),
        ({"cases": 1, "tracer": "pib"}, "tracer"),
        ({"cases": 1, "seed": -3}, "seed"),
        ({"cases": 1, "fdg_share": 1.5}, "fdg_share"),
        ({"cases": 1, "fdg_share": "half"}, "fdg_share"),
        ({"cases": 1, "workers": 0}, "workers"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_organs_folder_without_nifti_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no maps here")
    with pytest.raises(InputError, match="no NIfTI"):
        generate(tmp_path / "out", 1, organs_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="not found"):
        generate(tmp_path / "out", 1, organs_dir=tmp_path / "absent", progress=False)


def test_phantoms_around_real_organ_maps(tmp_path: Path) -> None:
    if not ORGAN_MAPS.is_dir():
        pytest.skip(f"{ORGAN_MAPS} not available")
    maps = sorted(p for p in ORGAN_MAPS.iterdir() if p.name.endswith(".nii.gz"))
    chosen = tmp_path / "maps"
    chosen.mkdir()
    picks = [
        next(p for p in maps if p.name.startswith("fdg_")),
        next(p for p in maps if p.name.startswith("psma_")),
    ]
    for path in picks:
        (chosen / path.name).symlink_to(path)
    rows = generate(tmp_path / "out", 5, seed=0, organs_dir=chosen, progress=False)
    assert len(rows) == 5  # the maps first, then analytic cases
    assert [row["case_id"] for row in rows[:2]] == sorted(image_stem(p) for p in picks)
    assert [row["source"] for row in rows[2:]] == ["analytic"] * 3
    for row, path in zip(rows, sorted(picks), strict=False):
        assert row["tracer"] == path.name.split("_")[0]
        assert row["source"] == path.name
        organ_map = sitk.ReadImage(str(path))
        factors = downsample_factors(DiagonalGrid.of(organ_map), "tiny")
        labels = _array(organ_map)[:: factors[2], :: factors[1], :: factors[0]]
        pet = sitk.ReadImage(str(tmp_path / "out" / row["pet"]))
        ct = sitk.ReadImage(str(tmp_path / "out" / row["ct"]))
        assert pet.GetSize() == labels.shape[::-1]
        np.testing.assert_allclose(pet.GetOrigin(), organ_map.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(
            pet.GetSpacing(), np.asarray(organ_map.GetSpacing()) * np.asarray(factors), rtol=1e-6
        )
        manifest = json.loads((tmp_path / "out" / "phantoms.json").read_text())
        uptake = next(c for c in manifest["cases"] if c["case_id"] == row["case_id"])
        assert uptake["pet_uuid"] == row["pet_uuid"]
        values = _array(pet)
        liver = ndimage.binary_erosion(labels == 3, iterations=1)
        lungs = ndimage.binary_erosion(labels == 5, iterations=1)
        expected_liver = {"fdg": (1.5, 3.2), "psma": (3.5, 8.5)}[row["tracer"]]
        assert expected_liver[0] < float(np.median(values[liver])) < expected_liver[1]
        assert float(np.median(values[lungs])) < 0.8
        ct_on_pet = sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear, -1024.0)
        assert -950 < float(np.median(_array(ct_on_pet)[lungs])) < -700


def test_the_organ_map_split_is_fixed_by_file_name(tmp_path: Path) -> None:
    names = [f"{tracer}_{index:04x}_2020-01-01.nii.gz" for tracer in ("fdg", "psma") for index in range(40)]
    maps = [tmp_path / name for name in names]
    held_out = select_maps(maps, "held-out")
    train = select_maps(maps, "train")
    assert set(held_out).isdisjoint(train)
    assert set(held_out) | set(train) == set(maps)
    assert 0.1 < len(held_out) / len(maps) < 0.4
    # Another folder's maps never move a map across the split.
    assert select_maps(maps[::3], "held-out") == [path for path in held_out if path in maps[::3]]
    with pytest.raises(ValueError, match="organ map set"):
        select_maps(maps, "test")


@pytest.mark.slow
def test_full_size_fdg_case() -> None:
    phantom = make_case(0, 0, tracer="fdg", size="full", ct_own_grid=True)
    size = phantom.pet.GetSize()
    assert size[:2] == (400, 400)
    assert 200 <= size[2] <= 661
    np.testing.assert_allclose(phantom.pet.GetSpacing(), (2.03642011, 2.03642011, 3.0))
    assert _geometry(phantom.label) == _geometry(phantom.pet)
    assert phantom.ct.GetSize()[0] == 512
    assert phantom.info["anatomy_scale"] == 1.0


def test_plain_ids_by_default_autopet_ids_on_request_and_no_negatives(tmp_path):
    """Ids without spaces unless autoPET's own are asked for; --no-negatives gives every case lesions."""
    import json

    from petseg.app.cli import main

    plain, autopet = tmp_path / "plain", tmp_path / "autopet"
    common = ["--cases", "12", "--seed", "5", "--tracer", "fdg", "--size", "tiny", "-q"]
    assert main(["phantoms", "--output", str(plain), *common]) == 0
    assert main(["phantoms", "--output", str(autopet), *common, "--autopet-ids"]) == 0
    plain_rows = json.loads((plain / "phantoms.json").read_text())["cases"]
    autopet_rows = json.loads((autopet / "phantoms.json").read_text())["cases"]
    assert all(" " not in row["case_id"] and "-NA-" not in row["case_id"] for row in plain_rows)
    assert any(" " in row["case_id"] for row in autopet_rows)  # 30 % of FDG studies carry a description
    assert [r["case_id"].split("-NA-")[0] for r in autopet_rows] == [r["case_id"] for r in plain_rows]
    assert any(row["lesion_free"] for row in plain_rows)  # some negatives by default, with this seed

    lesions = tmp_path / "lesions"
    assert main(["phantoms", "--output", str(lesions), *common, "--no-negatives"]) == 0
    manifest = json.loads((lesions / "phantoms.json").read_text())
    assert not any(row["lesion_free"] for row in manifest["cases"])
    assert manifest["arguments"]["negatives"] is False
