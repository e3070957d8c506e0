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


def test_samples_cover_lesions_own_grid_ct_and_a_negative_case():
    committed = json.loads((REPO / "test" / "samples.json").read_text())
    fdg, psma = committed["cases"]
    fdg_label = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "test" / fdg["files"]["label"])))
    psma_label = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "test" / psma["files"]["label"])))
    assert fdg_label.sum() > 0
    assert psma_label.sum() == 0
    ct = sitk.ReadImage(str(REPO / "test" / fdg["files"]["ct"]))
    pet = sitk.ReadImage(str(REPO / "test" / fdg["files"]["pet"]))
    assert ct.GetSpacing() != pet.GetSpacing()


def test_expected_masks_are_the_models_masks_on_the_pet_grid(tmp_path, tiny_model_dir):
    from petseg.synthetic.samples import write_expected
    from tools.container_check import check_case

    rows = write_samples(tmp_path)
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
