"""The whole pipeline with a perfect predictor: any error in the geometry chain shows up as lost Dice."""

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.inference.pipeline import segment
from petseg.inference.preprocess import preprocess
from petseg.inference.timing import StageTimer
from petseg.io import CaseFiles, write_image
from petseg.model.card import load_card
from petseg.synthetic import make_case


class OraclePredictor:
    """Returns the ground truth on the network grid, as a trained-to-perfection ensemble would."""

    def __init__(self, card, truth_on_network_grid: np.ndarray) -> None:
        self.card = card
        self.truth = truth_on_network_grid
        self.seen_shape = None

    def __call__(self, image: np.ndarray, tracer: str | None = None, progress: bool = False) -> np.ndarray:
        self.seen_shape = image.shape
        return self.truth.astype(np.float32)

    def choose_tracer(self, image: np.ndarray, given: str | None = None) -> str | None:
        return None  # one ensemble for every case


@pytest.mark.parametrize(
    ("grid", "ct_own_grid", "orientation"),
    [
        ("fdg-400", True, None),
        ("psma-200", False, "PIR"),
        ("psma-256", True, "RAS"),
        ("psma-168", False, None),
    ],
)
def test_perfect_prediction_comes_back_onto_the_pet_grid(
    tmp_path, tiny_model_dir, grid, ct_own_grid, orientation
):
    tracer = "fdg" if grid.startswith("fdg") else "psma"
    phantom = make_case(
        seed=9, index=2, tracer=tracer, size="tiny", grid=grid, ct_own_grid=ct_own_grid, lesion_free=False
    )
    ct, pet, label = phantom.ct, phantom.pet, phantom.label
    if orientation:
        ct, pet, label = (sitk.DICOMOrient(image, orientation) for image in (ct, pet, label))
    files = CaseFiles(ct=write_image(ct, tmp_path / "ct.mha"), pet=write_image(pet, tmp_path / "pet.mha"))
    card = load_card(tiny_model_dir)
    # The truth on the network grid, prepared the way training will prepare it.
    truth = preprocess(ct, pet, card.preprocessing, label=label).label[0]
    oracle = OraclePredictor(card, truth)

    mask = segment(files, oracle, StageTimer())

    assert oracle.seen_shape == (2, *truth.shape)
    assert mask.GetSize() == pet.GetSize()
    assert mask.GetDirection() == pet.GetDirection()
    assert mask.GetOrigin() == pet.GetOrigin()
    predicted = sitk.GetArrayFromImage(mask).astype(bool)
    expected = sitk.GetArrayFromImage(label).astype(bool)
    dice = 2 * (predicted & expected).sum() / (predicted.sum() + expected.sum())
    assert dice >= 0.95
