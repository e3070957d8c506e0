"""The demo ensemble shipped in model/ (its card: tests/model/test_card.py), on whole-body phantoms of a seed
it was never trained on (`score_demo_model` refuses the training seed), through the container's own path."""

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from training.demo import EVALUATION_CASES, DemoRecipe

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
ORGAN_MAPS = SHARED_DATA / "autopet3-organs"

# The whole-body targets (issue 24) are a mean Dice of 0.75 on 24 fresh phantoms, 0.70 on the phantoms around
# the held-out organ maps, and at most 2 ml of false positives on every lesion-free phantom. The shipped model
# does not meet them yet: `python -m training demo` measured 0.531, 0.557 and 0.00-17.7 ml on the full sets
# (docs/experiments/demo-recipe.md). This test scores the first cases of the same sets (the full sets take
# about 15 min on 2 cores) against floors a little under what those cases measured there (0.682 on the first
# 8 fresh, 0.429 on the first 5 held-out, 0.00 ml at most on the first 3 lesion-free), so that a change that
# makes the model worse fails here.
FRESH_CASES, HELD_OUT_CASES, NEGATIVE_CASES = 8, 5, 3
FRESH_MEAN_DICE_FLOOR = 0.63
HELD_OUT_MEAN_DICE_FLOOR = 0.38
NEGATIVE_FPV_CEILING_ML = 2.0


def test_the_shipped_card_has_the_demo_recipes_settings():
    from petseg.model.card import load_card

    card = load_card(MODEL_DIR)
    ensemble = card.ensemble
    recipe = DemoRecipe()
    assert card.tracers == recipe.tracers
    assert card.provenance["synthetic"] is True
    assert card.provenance["checkpoint"] == recipe.checkpoint
    phantoms = card.provenance["phantoms"]
    assert (phantoms["cases"], phantoms["size"], phantoms["fdg_share"]) == (
        recipe.cases,
        recipe.size,
        recipe.fdg_share,
    )
    assert phantoms["size"] == "full"
    assert phantoms["organ_maps"] == "train"  # the held-out maps never reached training
    assert card.preprocessing.spacing_mm == tuple(recipe.spacing_mm)
    assert (ensemble.threshold, ensemble.grow_to_suvmax_fraction, ensemble.grow_within_mm) == (
        recipe.threshold,
        recipe.grow_to_suvmax_fraction,
        recipe.grow_within_mm,
    )
    assert card.component_filter is not None
    assert card.component_filter.minimum_probability == recipe.component_filter
    assert set(card.component_filter.models) == set(recipe.tracers)
    assert card.input_range is not None  # export recorded the PET grids it was trained on
    assert sum(path.stat().st_size for path in MODEL_DIR.iterdir()) <= 10 * 1024 * 1024


@pytest.mark.slow
def test_shipped_demo_ensemble_on_fresh_whole_body_phantoms():
    from itertools import islice

    from training.phantom_scores import (
        EVALUATION_SEED,
        fresh_phantoms,
        held_out_phantoms,
        score_phantoms,
    )

    assert EVALUATION_CASES == 24
    assert DemoRecipe().evaluation_negatives == 8
    fresh = score_phantoms(MODEL_DIR, fresh_phantoms(EVALUATION_SEED, FRESH_CASES, "full"))
    dice = [s.dice for s in fresh]
    assert float(np.mean(dice)) >= FRESH_MEAN_DICE_FLOOR, [round(d, 3) for d in dice]
    negatives = score_phantoms(MODEL_DIR, fresh_phantoms(EVALUATION_SEED, NEGATIVE_CASES, "full", True))
    assert all(s.lesion_free for s in negatives)
    fpv = [s.fpv_ml for s in negatives]
    assert max(fpv) <= NEGATIVE_FPV_CEILING_ML, [round(v, 2) for v in fpv]
    if not ORGAN_MAPS.is_dir():
        pytest.skip(f"{ORGAN_MAPS} not available: the held-out organ maps were not scored")
    phantoms = islice(held_out_phantoms(ORGAN_MAPS, EVALUATION_SEED, "full"), HELD_OUT_CASES)
    held_out = score_phantoms(MODEL_DIR, phantoms)
    assert len(held_out) == HELD_OUT_CASES
    assert all(s.source != "analytic" for s in held_out)
    dice = [s.dice for s in held_out]
    assert float(np.mean(dice)) >= HELD_OUT_MEAN_DICE_FLOOR, [round(d, 3) for d in dice]
