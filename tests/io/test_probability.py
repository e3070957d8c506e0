"""Saved lesion probabilities: float16 on the PET grid, consistent with the mask, read back with its grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.app.cli import main
from petseg.errors import InputError
from petseg.inference.pipeline import segment, segment_case
from petseg.inference.predict import Predictor
from petseg.inference.timing import StageTimer
from petseg.io import CaseFiles, write_image
from petseg.io.probability import probability_path, read_probability, write_probability
from petseg.synthetic import generate, make_case


def test_probability_path_sits_beside_the_mask(tmp_path):
    assert probability_path(tmp_path / "case  a.nii.gz") == tmp_path / "case  a_probability.npz"
    assert probability_path(tmp_path / "uuid.mha") == tmp_path / "uuid_probability.npz"


def test_round_trip_keeps_the_grid_and_float16_precision(tmp_path):
    reference = sitk.Image(5, 4, 3, sitk.sitkUInt8)
    reference.SetSpacing((2.0, 2.5, 3.0))
    reference.SetOrigin((-10.0, 4.0, 7.5))
    reference.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    probability = rng.random((3, 4, 5)).astype(np.float32)
    path = write_probability(probability, reference, tmp_path / "p_probability.npz")
    with np.load(path) as archive:
        assert archive["probability"].dtype == np.float16
    image = read_probability(path)
    assert image.GetSize() == reference.GetSize()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), probability, atol=5e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["p_probability.npz"]  # no staging leftovers
    with pytest.raises(ValueError, match="reference grid"):
        write_probability(probability[:2], reference, tmp_path / "q.npz")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a zip", "cannot read probability file"), (None, "not a petseg probability file")],
)
def test_a_damaged_probability_file_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "bad_probability.npz"
    if content is None:
        np.savez(path, something=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_probability(path)
    assert str(path) in str(error.value)


def test_the_kept_probability_thresholds_to_the_lean_paths_mask(tmp_path, tiny_model_dir):
    phantom = make_case(seed=5, index=0, tracer="fdg", size="tiny", lesion_free=False)
    files = CaseFiles(
        ct=write_image(phantom.ct, tmp_path / "ct.mha"), pet=write_image(phantom.pet, tmp_path / "pet.mha")
    )
    predictor = Predictor.load(tiny_model_dir, device="cpu")
    lean = sitk.GetArrayFromImage(segment(files, predictor, StageTimer(quiet=True)))
    result = segment_case(files, predictor, StageTimer(quiet=True), keep_probability=True)
    assert result.probability is not None
    assert result.probability.shape == lean.shape
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.mask), lean)
    threshold = predictor.card.ensemble.threshold
    np.testing.assert_array_equal(result.probability > threshold, lean.astype(bool))
    assert result.probability.min() >= 0.0
    assert result.probability.max() <= 1.0


def test_predict_save_probabilities_writes_one_file_per_mask(tmp_path, tiny_model_dir):
    cases = tmp_path / "cases"
    generate(cases, cases=2, seed=23, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(cases), "--output", str(out), "--model", str(tiny_model_dir), "-q"]
    assert main([*argv, "--save-probabilities"]) == 0
    labels = sorted(p.name for p in (cases / "labelsTr").iterdir())
    for name in labels:
        mask = sitk.ReadImage(str(out / name))
        probability = read_probability(out / name.replace(".nii.gz", "_probability.npz"))
        assert probability.GetSize() == mask.GetSize()
        np.testing.assert_allclose(probability.GetOrigin(), mask.GetOrigin(), atol=1e-4)
        values = sitk.GetArrayFromImage(probability)
        decided = np.abs(values - 0.5) > 1e-3  # float16 rounding may move values at the threshold
        np.testing.assert_array_equal(
            (values > 0.5)[decided], sitk.GetArrayFromImage(mask).astype(bool)[decided]
        )
