"""The demo ensemble shipped in model/, on phantoms of a seed it was never trained on."""

from pathlib import Path

import numpy as np
import pytest

from petseg.card import load_card
from training.demo import EVALUATION_CASES, EVALUATION_SEED, dice_on_fresh_phantoms

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"

# The shipped ensemble scored a mean Dice of 0.492 on these phantoms when it was trained (README); the
# floor guards that figure against regressions of the pipeline or the generator. The goal for a demo
# ensemble is 0.7, which this one does not reach.
SHIPPED_MEAN_DICE_FLOOR = 0.45


def test_shipped_model_is_the_synthetic_demo_ensemble():
    card = load_card(MODEL_DIR)
    assert card.provenance["synthetic"] is True
    assert card.provenance["phantoms"]["seed"] != EVALUATION_SEED
    assert len(card.folds) == 5
    assert sum(path.stat().st_size for path in MODEL_DIR.iterdir()) < 10 * 1024 * 1024


@pytest.mark.slow  # twelve phantoms through the whole pipeline: about half a minute
def test_shipped_demo_ensemble_on_fresh_phantoms():
    scores = dice_on_fresh_phantoms(MODEL_DIR)
    assert len(scores) == EVALUATION_CASES
    assert float(np.mean(scores)) >= SHIPPED_MEAN_DICE_FLOOR, [round(s, 3) for s in scores]
