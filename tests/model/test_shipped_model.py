"""The demo ensemble shipped in model/ (its card: tests/model/test_card.py), on phantoms of a seed it was
never trained on (`dice_on_fresh_phantoms` refuses the training seed)."""

from pathlib import Path

import numpy as np

from training.demo import EVALUATION_CASES, dice_on_fresh_phantoms

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"

# The goal for a demo ensemble (issue 3): a mean Dice of at least 0.7 on fresh phantoms. The shipped
# ensembles (one per tracer) with their card's threshold 0.5, component filter and growth of each lesion to
# its 40 %-of-SUVmax contour score 0.701 on these 24 phantoms with bf16 autocast (a CPU with native bf16)
# and 0.703 in fp32; without the filter, at threshold 0.7, they scored 0.624
# (docs/experiments/demo-recipe.md).
SHIPPED_MEAN_DICE_FLOOR = 0.7


def test_the_shipped_card_has_the_demo_recipes_inference_settings():
    from petseg.model.card import load_card
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
    assert card.component_filter is not None
    assert card.component_filter.minimum_probability == recipe.component_filter
    assert set(card.component_filter.models) == set(recipe.tracers)


def test_shipped_demo_ensemble_on_fresh_phantoms():
    scores = dice_on_fresh_phantoms(MODEL_DIR)
    assert len(scores) == EVALUATION_CASES
    assert float(np.mean(scores)) >= SHIPPED_MEAN_DICE_FLOOR, [round(s, 3) for s in scores]
