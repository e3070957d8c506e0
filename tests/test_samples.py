"""The sample cases committed in test/ are exactly what `petseg samples` generates."""

import json

import numpy as np
import SimpleITK as sitk
from conftest import REPO

from petseg.phantoms.samples import write_samples


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
