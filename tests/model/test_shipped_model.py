"""The demo ensemble shipped in model/ (its card: tests/model/test_card.py), on whole-body phantoms of a seed
it was never trained on (`score_demo_model` refuses the training seed), through the container's own path."""

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from training.demo import EVALUATION_CASES, DemoRecipe
from training.phantom_scores import score_demo_model

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
ORGAN_MAPS = SHARED_DATA / "autopet3-organs"

# The targets of the whole-body demo model (docs/experiments/demo-recipe.md has its measured figures):
FRESH_MEAN_DICE_FLOOR = 0.75  # 24 fresh whole-body phantoms with lesions
HELD_OUT_MEAN_DICE_FLOOR = 0.70  # the phantoms built around the held-out organ maps
NEGATIVE_FPV_CEILING_ML = 2.0  # every lesion-free whole-body phantom


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
    organs = ORGAN_MAPS if ORGAN_MAPS.is_dir() else None
    scores = score_demo_model(
        MODEL_DIR, cases=EVALUATION_CASES, negatives=DemoRecipe().evaluation_negatives, organs_dir=organs
    )
    fresh = [s.dice for s in scores.fresh]
    assert len(fresh) == EVALUATION_CASES == 24
    assert float(np.mean(fresh)) >= FRESH_MEAN_DICE_FLOOR, [round(d, 3) for d in fresh]
    fpv = [s.fpv_ml for s in scores.negatives]
    assert fpv
    assert all(s.lesion_free for s in scores.negatives)
    assert max(fpv) <= NEGATIVE_FPV_CEILING_ML, [round(v, 2) for v in fpv]
    if organs is None:
        pytest.skip(f"{ORGAN_MAPS} not available: the held-out organ maps were not scored")
    held_out = [s.dice for s in scores.held_out]
    assert len(held_out) >= 10
    assert all(s.source != "analytic" for s in scores.held_out)
    assert float(np.mean(held_out)) >= HELD_OUT_MEAN_DICE_FLOOR, [round(d, 3) for d in held_out]
