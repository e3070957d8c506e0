"""Postprocessing tuned on selection cases: every setting is scored exactly as the container would segment
and `petseg evaluate` would score with that setting in the card, and the choice never buys Dice with false
positives on lesion-free cases."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from petseg.evaluation.metrics import case_scores
from petseg.inference.pipeline import segment
from petseg.inference.predict import Predictor
from petseg.inference.timing import StageTimer
from petseg.io import find_case
from petseg.model.card import load_card
from training.evaluation_set import write_evaluation_set
from training.trainer import TrainingError
from training.tune import (
    TUNING_FILE,
    PostprocessSetting,
    SettingScore,
    choose,
    current_setting,
    score_settings,
    selection_cases,
    setting_grid,
    with_setting,
)


@pytest.fixture(scope="module")
def selection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny phantoms with lesions and one lesion-free, as evaluation-phantoms writes them."""
    out = tmp_path_factory.mktemp("selection") / "sel"
    write_evaluation_set(out, cases=2, negatives=1, seed=31, size="tiny", progress=False)
    return out


def _scored_by_the_pipeline(card, case) -> tuple[float, float, float]:
    predictor = Predictor.load(REPO / "model", device="cpu", precision="fp32")
    predictor.card = card
    mask = sitk.GetArrayFromImage(segment(find_case(case.input_dir), predictor, StageTimer(quiet=True)))
    truth_image = sitk.ReadImage(str(case.truth))
    truth = sitk.GetArrayFromImage(truth_image) > 0
    figures = case_scores(mask > 0, truth, float(np.prod(truth_image.GetSpacing())) / 1000.0)
    return figures.dice, figures.fpv_ml, figures.fnv_ml


def test_each_setting_scores_what_the_container_segments_with_it_in_the_card(selection, monkeypatch):
    card = load_card(REPO / "model")
    assert card.component_filter is not None
    assert card.ensemble.grow_to_suvmax_fraction is not None
    settings = [
        current_setting(card),
        PostprocessSetting(0.3, 0.05, 0.5, 4.0),
        PostprocessSetting(0.6, 0.4, None, 0.0),
    ]
    cases = selection_cases(selection)
    assert len(cases) == 3
    # fp32 both ways, so the two passes of the networks agree to the bit.
    load = Predictor.load
    monkeypatch.setattr(Predictor, "load", lambda *a, **kw: load(*a, **{**kw, "precision": "fp32"}))
    scores = score_settings(REPO / "model", cases, settings, device="cpu")
    assert [score.setting for score in scores] == settings
    masks_differ = set()
    for score in scores:
        expected = [_scored_by_the_pipeline(with_setting(card, score.setting), case) for case in cases]
        for got, want in zip(zip(score.dice, score.fpv_ml, score.fnv_ml, strict=True), expected, strict=True):
            assert got == pytest.approx(want, nan_ok=True, abs=1e-12)
        masks_differ.add((score.dice, score.fpv_ml))
        assert sum(math.isnan(d) for d in score.dice) == 1  # the lesion-free case has no Dice
    assert len(masks_differ) > 1, "the settings must change the masks for this test to mean anything"


def _score(threshold: float, dice: list[float], fpv: list[float]) -> SettingScore:
    fnv = [math.nan if math.isnan(d) else 1.0 for d in dice]
    return SettingScore(PostprocessSetting(threshold, None, None, 0.0), tuple(dice), tuple(fpv), tuple(fnv))


def test_the_choice_keeps_the_lesion_free_false_positives_of_the_card():
    nan = math.nan
    card_own = _score(0.5, [0.6, 0.5, nan], [1.0, 1.0, 2.0])
    greedy = _score(0.3, [0.8, 0.7, nan], [1.0, 1.0, 9.0])  # more Dice, more lesion-free FPV
    better = _score(0.4, [0.7, 0.6, nan], [3.0, 3.0, 2.0])
    same_but_cleaner = _score(0.45, [0.7, 0.6, nan], [0.0, 0.0, 1.0])
    assert choose([card_own, greedy, better], card_own.setting) is better
    assert choose([card_own, greedy, better, same_but_cleaner], card_own.setting) is same_but_cleaner
    assert choose([card_own, greedy], card_own.setting) is card_own
    # A bound on every lesion-free case instead of the card's mean: a cleaner setting may cost Dice.
    clean = _score(0.55, [0.55, 0.5, nan], [0.0, 0.0, 0.5])
    candidates = [card_own, greedy, better, clean]
    assert choose(candidates, card_own.setting, lesion_free_fpv_ml=1.0) is clean
    assert choose(candidates, card_own.setting, lesion_free_fpv_ml=2.0) is better
    with pytest.raises(TrainingError, match=r"at or below 0.1 ml \(the fewest: 0.50 ml\)"):
        choose(candidates, card_own.setting, lesion_free_fpv_ml=0.1)
    # Without lesion-free cases there is no ceiling: the highest Dice wins.
    lesions_only = [_score(t, [d], [5.0]) for t, d in ((0.5, 0.6), (0.3, 0.8))]
    assert choose(lesions_only, lesions_only[0].setting) is lesions_only[1]
    with pytest.raises(TrainingError, match="no case with lesions"):
        choose([_score(0.5, [nan], [0.0])], PostprocessSetting(0.5, None, None, 0.0))


def test_the_grid_searches_the_filter_only_where_the_card_has_one():
    with_filter = setting_grid(True, (0.4, 0.5), (0.1, 0.2), ((None, 0.0), (0.4, 6.0)))
    assert len(with_filter) == 8
    assert {s.minimum_probability for s in with_filter} == {0.1, 0.2}
    without = setting_grid(False, (0.4, 0.5), (0.1, 0.2), ((None, 0.0), (0.4, 6.0)))
    assert len(without) == 4
    assert {s.minimum_probability for s in without} == {None}


def test_tune_writes_every_setting_and_the_chosen_one_into_the_card(selection, tmp_path, capsys):
    from training.__main__ import main

    model = tmp_path / "model"
    shutil.copytree(REPO / "model", model)
    before = load_card(model)
    out = tmp_path / "tuning"
    args = ["tune", "--model", str(model), "--cases", str(selection), "--device", "cpu", "--output", str(out),
            "--thresholds", "0.4", "0.6", "--minimum-probabilities", "0.2", "--growths", "none", "0.4@6",
            "--lesion-free-fpv-ml", "50", "--write", "-q"]  # fmt: skip
    assert main(args) == 0
    assert "best: threshold" in capsys.readouterr().out
    table = json.loads((out / TUNING_FILE).read_text())
    assert len(table["settings"]) == 5  # the grid of 4 and the card's own (0.5)
    assert table["current"]["threshold"] == before.ensemble.threshold
    assert "no lesion-free case above 50 ml" in table["rule"]
    assert table["chosen"]["largest_lesion_free_fpv_ml"] <= 50
    after = load_card(model)
    chosen = table["chosen"]
    assert after.ensemble.threshold == chosen["threshold"]
    assert after.ensemble.grow_to_suvmax_fraction == chosen["grow_to_suvmax_fraction"]
    assert after.component_filter.minimum_probability == chosen["minimum_probability"]
    assert after.provenance["postprocessing_tuned"]["cases"] == 3
    assert after.folds == before.folds
    assert after.component_filter.models == before.component_filter.models


def test_a_folder_without_ground_truth_is_one_line_naming_it(tmp_path, capsys):
    from training.__main__ import main

    (tmp_path / "cases" / "case1" / "input").mkdir(parents=True)
    code = main(["tune", "--model", str(REPO / "model"), "--cases", str(tmp_path / "cases"), "-q"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "case1" in err[0]
    assert "ground-truth" in err[0]
