"""The sample cases committed in test/ are exactly what `petseg samples` generates."""

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import REPO

from petseg.synthetic.samples import write_samples


def test_committed_samples_are_reproduced_by_the_generator(tmp_path):
    rows = write_samples(tmp_path)
    committed = json.loads((REPO / "test" / "samples.json").read_text())
    assert [r["case_id"] for r in committed["cases"]] == [r["case_id"] for r in rows]
    for row in rows:
        for key, relative in row["files"].items():
            fresh = sitk.ReadImage(str(tmp_path / relative))
            shipped = sitk.ReadImage(str(REPO / "test" / relative))
            assert fresh.GetSize() == shipped.GetSize(), (row["case_id"], key)
            assert fresh.GetSpacing() == shipped.GetSpacing()
            assert fresh.GetOrigin() == shipped.GetOrigin()
            assert fresh.GetDirection() == shipped.GetDirection()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(fresh), sitk.GetArrayFromImage(shipped))


def test_samples_are_whole_bodies_on_real_grids_with_lesions_and_a_negative_case():
    committed = json.loads((REPO / "test" / "samples.json").read_text())
    fdg, psma = committed["cases"]
    fdg_label = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "test" / fdg["files"]["label"])))
    psma_label = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "test" / psma["files"]["label"])))
    assert fdg_label.sum() > 0
    assert psma_label.sum() == 0
    for row, size, spacing in (
        (fdg, (400, 400, 326), (2.03642, 2.03642, 3.0)),
        (psma, (168, 168), (4.07283, 4.07283, 5.0)),
    ):
        pet = sitk.ReadImage(str(REPO / "test" / row["files"]["pet"]))
        assert pet.GetSize()[: len(size)] == size
        np.testing.assert_allclose(pet.GetSpacing(), spacing, atol=1e-4)
        extent_mm = pet.GetSize()[2] * pet.GetSpacing()[2]
        assert extent_mm >= 800, f"{row['case_id']}: {extent_mm:.0f} mm is not a whole body"
    in_git = sum(path.stat().st_size for path in (REPO / "test").rglob("*") if path.is_file())
    assert in_git < 15 * 1024 * 1024, f"test/ holds {in_git / 2**20:.1f} MiB"


def test_compact_quantizes_without_changing_what_matters():
    from petseg.synthetic import make_case
    from petseg.synthetic.samples import AIR_HU, CT_STEP_HU, PET_STEP_SUV, compact

    phantom = make_case(seed=3, index=0, tracer="fdg", size="tiny")
    small = compact(phantom)
    pet, pet_small = (sitk.GetArrayFromImage(i) for i in (phantom.pet, small.pet))
    ct, ct_small = (sitk.GetArrayFromImage(i).astype(int) for i in (phantom.ct, small.ct))
    assert np.abs(pet - pet_small).max() <= PET_STEP_SUV / 2 + 1e-6
    assert np.allclose(np.round(pet_small / PET_STEP_SUV) * PET_STEP_SUV, pet_small, atol=1e-6)
    body = ct > -900
    assert np.abs(ct[body] - ct_small[body]).max() <= CT_STEP_HU / 2
    assert (ct_small[~body] % CT_STEP_HU == 0).all()
    assert ct_small.min() >= AIR_HU
    assert small.pet.GetSpacing() == phantom.pet.GetSpacing()
    assert small.ct.GetOrigin() == phantom.ct.GetOrigin()
    assert sitk.GetArrayFromImage(small.label).sum() == sitk.GetArrayFromImage(phantom.label).sum()


def test_expected_masks_are_the_models_masks_on_the_pet_grid(tmp_path, tiny_model_dir):
    from petseg.synthetic.samples import write_expected
    from tools.container_check import check_case

    rows = write_samples(tmp_path, size="tiny")  # the same cases in miniature: seconds, not minutes
    stale = tmp_path / rows[0]["case_id"] / "expected" / "old-uuid.mha"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    written = write_expected(tmp_path, tiny_model_dir, device="cpu")
    assert not stale.exists()
    manifest = json.loads((tmp_path / "samples.json").read_text())
    assert manifest["expected"]["model"] == "untrained-resunet-tiny"
    assert manifest["expected"]["trained"] is False
    for row, path in zip(manifest["cases"], written, strict=True):
        assert tmp_path / row["files"]["expected"] == path
        assert path.name == Path(row["files"]["pet"]).name  # named after the PET's uuid
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
        # the expected mask checks as a correct container output of its own case
        output = tmp_path / "output" / row["case_id"]
        (output / "images" / "automated-petct-lesion-segmentation").mkdir(parents=True)
        shutil.copy(path, output / "images" / "automated-petct-lesion-segmentation" / path.name)
        (output / "data-centric-model.json").write_text("false")
        report = check_case(tmp_path / row["case_id"], output)
        assert report.passed, report.lines()
