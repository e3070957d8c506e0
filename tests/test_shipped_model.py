"""The demo ensemble shipped in model/ (its card: tests/test_card.py), on phantoms of a seed it was never
trained on (`dice_on_fresh_phantoms` refuses the training seed)."""

from pathlib import Path

import numpy as np

from training.demo import EVALUATION_CASES, dice_on_fresh_phantoms

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"

# The shipped ensembles (one per tracer) score a mean Dice of 0.624 on these 24 phantoms with their card's
# threshold 0.7 and growth of each lesion to the 40 %-of-SUVmax contour (README); the floor guards that
# figure against regressions of the pipeline, the tracer classifier or the generator. The goal for a demo
# ensemble is 0.7, which this one does not reach.
SHIPPED_MEAN_DICE_FLOOR = 0.6


def test_the_shipped_card_has_the_demo_recipes_inference_settings():
    from petseg.card import load_card
    from training.demo import DemoRecipe

    card = load_card(MODEL_DIR)
    ensemble = card.ensemble
    recipe = DemoRecipe()
    assert card.tracers == recipe.tracers
    assert card.provenance["checkpoint"] == recipe.checkpoint
    assert card.provenance["phantoms"]["cases"] == recipe.cases
    assert card.provenance["phantoms"]["fdg_share"] == recipe.fdg_share
    assert (ensemble.threshold, ensemble.grow_to_suvmax_fraction, ensemble.grow_within_mm) == (
        recipe.threshold,
        recipe.grow_to_suvmax_fraction,
        recipe.grow_within_mm,
    )


def test_shipped_demo_ensemble_on_fresh_phantoms():
    scores = dice_on_fresh_phantoms(MODEL_DIR)
    assert len(scores) == EVALUATION_CASES
    assert float(np.mean(scores)) >= SHIPPED_MEAN_DICE_FLOOR, [round(s, 3) for s in scores]
