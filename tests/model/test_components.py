"""The component filter: its features, its decision, its place in the card and the pipeline, its fit."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from petseg.errors import ModelError
from petseg.model.card import PreprocessSettings, load_card, parse_card
from petseg.model.components import (
    FEATURES,
    ComponentFilter,
    ComponentModel,
    component_features,
    fit_component_filter,
)
from petseg.model.logistic import LogisticWeights

REPO = Path(__file__).resolve().parents[2]
SETTINGS = PreprocessSettings()
COLUMN = {name: index for index, name in enumerate(FEATURES)}


def _network_grid_case() -> tuple[np.ndarray, np.ndarray]:
    """A body box (CT 0 HU, SUV 1) of 40 x 30 x 60 voxels with three hot spots: a mirrored pair high up
    (glands) and one lesion low on the left, each with its own probability."""
    image = np.zeros((2, 40, 30, 60), np.float32)
    image[0] = 1024 / 2048  # 0 HU in the [-1024, 1024] window
    image[1] = 1.0
    probability = np.zeros((40, 30, 60), np.float32)
    # Mirrored about the midline 19.5: voxels 8-10 and 29-31.
    image[1, 8:11, 14:17, 50:53] = 10.0
    image[1, 29:32, 14:17, 50:53] = 10.0
    probability[8:11, 14:17, 50:53] = 0.9
    probability[29:32, 14:17, 50:53] = 0.8
    image[1, 5:9, 10:14, 10:14] = 20.0
    probability[5:9, 10:14, 10:14] = 0.95
    return probability, image


def test_component_features_say_where_each_component_sits_and_what_it_looks_like():
    assert SETTINGS.scaled_ct(0.0) == 0.5  # the window [-1024, 1024] onto [0, 1]
    assert SETTINGS.ct_hu(SETTINGS.scaled_ct(-500.0)) == -500.0
    probability, image = _network_grid_case()
    labels, rows = component_features(probability, image, SETTINGS, threshold=0.5)
    assert rows.shape == (3, len(FEATURES))
    for k in range(1, 4):  # row k - 1 describes label k
        inside = labels == k
        assert rows[k - 1, COLUMN["probability_max"]] == pytest.approx(float(probability[inside].max()))
    by_volume = {int((labels == k).sum()): rows[k - 1] for k in range(1, 4)}
    gland, lesion = by_volume[27], by_volume[64]
    assert gland[COLUMN["height"]] == pytest.approx(51 / 59)  # centroid z 51 in a body of 0..59
    assert lesion[COLUMN["height"]] == pytest.approx(11.5 / 59)
    assert gland[COLUMN["lateral"]] == pytest.approx(10.5 / 19.5)  # 9 or 30 against the midline 19.5
    assert gland[COLUMN["mirror_uptake"]] == pytest.approx(1.0)  # its twin across the midline
    assert lesion[COLUMN["mirror_uptake"]] == pytest.approx(1.0 / 20.0)  # background across the midline
    assert lesion[COLUMN["log_volume_ml"]] == pytest.approx(math.log10(64 * 8 / 1000))  # 2 mm voxels
    assert lesion[COLUMN["log_suvmax"]] == pytest.approx(math.log10(20.1))
    assert lesion[COLUMN["log_contrast"]] == pytest.approx(math.log10(20.1 / 1.1))
    assert lesion[COLUMN["ct_hu_mean_per_1000"]] == pytest.approx(0.0, abs=1e-6)
    assert lesion[COLUMN["end_distance_per_100mm"]] == pytest.approx(11.5 * 2 / 100)
    assert gland[COLUMN["end_distance_per_100mm"]] == pytest.approx((59 - 51) * 2 / 100)
    # No component, no rows.
    labels, rows = component_features(probability * 0, image, SETTINGS, threshold=0.5)
    assert rows.shape == (0, len(FEATURES))
    assert not labels.any()


def _filter_on(feature: str, coefficient: float, intercept: float, minimum: float = 0.5) -> ComponentFilter:
    coefficients = [0.0] * len(FEATURES)
    coefficients[COLUMN[feature]] = coefficient
    weights = LogisticWeights((0.0,) * len(FEATURES), (1.0,) * len(FEATURES), tuple(coefficients), intercept)
    return ComponentFilter(minimum, {"all": ComponentModel(weights, components=3, lesions=1)})


def test_the_filter_removes_the_components_its_model_finds_unlikely_and_leaves_the_input_alone():
    probability, image = _network_grid_case()
    before = probability.copy()
    # Lesion probability falls with height: the pair high up goes, the low lesion stays.
    high_is_unlikely = _filter_on("height", coefficient=-20.0, intercept=10.0)
    filtered, kept, removed = high_is_unlikely.apply(probability, image, SETTINGS, 0.5, None)
    assert (kept, removed) == (1, 2)
    assert np.array_equal(probability, before)
    assert filtered[8:11, 14:17, 50:53].max() == 0
    assert filtered[29:32, 14:17, 50:53].max() == 0
    assert np.array_equal(filtered[5:9, 10:14, 10:14], probability[5:9, 10:14, 10:14])
    keep_all = _filter_on("height", coefficient=0.0, intercept=10.0)
    same, kept, removed = keep_all.apply(probability, image, SETTINGS, 0.5, None)
    assert (kept, removed) == (3, 0)
    assert np.array_equal(same, probability)
    # Only components above the card's threshold are judged: at 0.85 the 0.8 gland is not one.
    _, kept, removed = high_is_unlikely.apply(probability, image, SETTINGS, 0.85, None)
    assert (kept, removed) == (1, 1)


def test_fitting_learns_a_separable_rule_and_needs_both_kinds_of_component():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, len(FEATURES)))
    is_lesion = x[:, COLUMN["mirror_uptake"]] < 0  # lesions have no twin
    fitted = fit_component_filter({"fdg": x}, {"fdg": is_lesion}, minimum_probability=0.3)
    model = fitted.models["fdg"]
    assert (model.components, model.lesions) == (200, int(is_lesion.sum()))
    predicted = model.weights.probability(x) >= 0.5
    assert (predicted == is_lesion).mean() > 0.95
    strongest = int(np.argmax(np.abs(model.weights.coefficients)))
    assert FEATURES[strongest] == "mirror_uptake"
    assert model.weights.coefficients[strongest] < 0
    with pytest.raises(ValueError, match=r"needs both lesions and false positives.*all lesion"):
        fit_component_filter({"psma": x}, {"psma": np.ones(200, bool)}, 0.3)
    with pytest.raises(ValueError, match="predictions gave none"):
        fit_component_filter({"fdg": x[:0]}, {"fdg": is_lesion[:0]}, 0.3)
    with pytest.raises(ValueError, match="minimum probability must be in"):
        fit_component_filter({"fdg": x}, {"fdg": is_lesion}, 1.0)


def _card_with_filter() -> dict:
    card = json.loads((REPO / "model" / "model.json").read_text())
    weights = LogisticWeights((0.0,) * len(FEATURES), (1.0,) * len(FEATURES), (0.1,) * len(FEATURES), -1.0)
    models = {t: ComponentModel(weights, 10, 4) for t in ("fdg", "psma")}
    card["component_filter"] = ComponentFilter(0.2, models).to_json()
    return card


def test_a_card_with_a_component_filter_round_trips_and_bad_ones_are_refused():
    card = parse_card(_card_with_filter())
    assert card.component_filter is not None
    assert card.component_filter.minimum_probability == 0.2
    assert card.component_filter.models["psma"].lesions == 4
    assert parse_card(card.to_json()) == card
    # A card with one ensemble for every case holds one model, "all".
    unsplit = _card_with_filter()
    unsplit.pop("tracer_classifier")
    unsplit["folds"] = [{"fold": 0, "weights": "fold0.safetensors"}]
    models = unsplit["component_filter"]["models"]
    models["all"] = models.pop("fdg")
    models.pop("psma")
    assert set(parse_card(unsplit).component_filter.models) == {"all"}
    for change, message in (
        (
            lambda c: c["component_filter"]["models"].pop("fdg"),
            r"must have one entry each for \['fdg', 'psma'\]",
        ),
        (
            lambda c: c["component_filter"]["models"].update(all=c["component_filter"]["models"]["fdg"]),
            "one entry each",
        ),
        (lambda c: c["component_filter"]["features"].reverse(), "this petseg's"),
        (lambda c: c["component_filter"]["models"]["fdg"].update(mean=[0.0]), "mean must be a list of 12"),
        (lambda c: c["component_filter"]["models"]["fdg"].update(scale=[0.0] * 12), "scale must be positive"),
        (lambda c: c["component_filter"].update(minimum_probability=1.5), "minimum_probability must be in"),
        (lambda c: c["component_filter"].update(cut=0.5), r"unknown field\(s\) component_filter.cut"),
    ):
        data = _card_with_filter()
        change(data)
        with pytest.raises(ModelError, match=message):
            parse_card(data)


def test_the_pipeline_applies_the_cards_filter_before_thresholding(tmp_path, capsys, tiny_fdg_input):
    """The FDG sample through the shipped folds: a filter that keeps everything changes nothing, one that
    removes everything leaves an empty mask."""
    import SimpleITK as sitk

    from petseg.app.process import process_main

    sample = tiny_fdg_input
    masks = {}
    for name, intercept in (("none", None), ("keep", 50.0), ("remove", -50.0)):
        model = tmp_path / name
        model.mkdir()
        for path in (REPO / "model").glob("*.safetensors"):
            shutil.copyfile(path, model / path.name)
        card = load_card(REPO / "model")
        if intercept is not None:
            flat = _filter_on("height", 0.0, intercept).models["all"]
            card = replace(card, component_filter=ComponentFilter(0.5, {"fdg": flat, "psma": flat}))
        (model / "model.json").write_text(json.dumps(card.to_json()))
        out = tmp_path / f"out-{name}"
        assert process_main(["--input", str(sample), "--output", str(out), "--model", str(model)]) == 0
        written = next((out / "images").rglob("*.mha"))
        masks[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    log = capsys.readouterr().err
    assert "component filter: kept 0 predicted lesion(s), removed" in log
    assert masks["none"].any()
    assert np.array_equal(masks["keep"], masks["none"])
    assert not masks["remove"].any()


# ------------------------------------------------------------- fitting from out-of-fold predictions


@pytest.fixture(scope="module")
def shipped_model_on_a_dataset(tmp_path_factory):
    """12 tiny phantoms with their folds, and a copy of the shipped model whose card names them as its
    training data (so each of its folds predicts its own validation cases)."""
    from petseg.synthetic import generate
    from training.data import discover_dataset, load_folds
    from training.trainer import dataset_fingerprint

    root = tmp_path_factory.mktemp("components")
    data = root / "data"
    generate(data, cases=12, seed=32, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    records = discover_dataset(data)
    load_folds(data, [r.case_id for r in records])
    model = root / "model"
    shutil.copytree(REPO / "model", model)
    card = json.loads((model / "model.json").read_text())
    card["provenance"]["dataset_fingerprint"] = dataset_fingerprint(records)
    card.pop("component_filter", None)  # the tests fit their own
    (model / "model.json").write_text(json.dumps(card))
    return model, data


def test_fit_components_learns_from_out_of_fold_predictions_and_writes_the_card(
    shipped_model_on_a_dataset, tmp_path, capsys, tiny_fdg_input
):
    from petseg.app.process import process_main
    from training.__main__ import main
    from training.components import out_of_fold_components

    source, data = shipped_model_on_a_dataset
    model = tmp_path / "model"
    shutil.copytree(source, model)
    features, is_lesion = out_of_fold_components(
        load_card(model), model, data, 0.4, device="cpu", progress=False
    )
    assert set(features) == {"fdg", "psma"}
    for key in features:
        assert features[key].shape == (is_lesion[key].size, len(FEATURES))
        assert 0 < is_lesion[key].sum() < is_lesion[key].size  # lesions and false positives both
    assert load_card(model).component_filter is None
    args = ["fit-components", "--model", str(model), "--data", str(data), "--threshold", "0.4"]
    assert main([*args, "--minimum-probability", "0.3", "--device", "cpu", "-q"]) == 0
    assert "component filter fitted at threshold 0.4" in capsys.readouterr().out
    card = load_card(model)
    assert card.ensemble.threshold == 0.4  # the filter learned the components of this threshold
    assert card.component_filter is not None
    assert card.component_filter.minimum_probability == 0.3
    for key, fitted in card.component_filter.models.items():
        assert (fitted.components, fitted.lesions) == (is_lesion[key].size, int(is_lesion[key].sum()))
    sample = tiny_fdg_input
    out = tmp_path / "out"
    assert process_main(["--input", str(sample), "--output", str(out), "--model", str(model)]) == 0
    assert "component filter: kept" in capsys.readouterr().err


def test_fit_components_refuses_another_dataset_missing_folds_and_a_bad_threshold(
    shipped_model_on_a_dataset, tmp_path
):
    from training.components import fit_components
    from training.trainer import TrainingError

    source, data = shipped_model_on_a_dataset
    model = tmp_path / "model"
    shutil.copytree(source, model)
    before = (model / "model.json").read_bytes()
    with pytest.raises(TrainingError, match="threshold must be in"):
        fit_components(model, data, threshold=1.5, device="cpu", progress=False)
    with pytest.raises(TrainingError, match=r"minimum probability must be in \[0, 1\), got 1.0"):
        fit_components(model, data, minimum_probability=1.0, device="cpu", progress=False)
    card = json.loads(before)
    card["provenance"]["dataset_fingerprint"] = "0123456789abcdef"
    (model / "model.json").write_text(json.dumps(card))
    with pytest.raises(TrainingError, match=r"not the dataset the model .* was trained on"):
        fit_components(model, data, device="cpu", progress=False)
    (model / "model.json").write_bytes(before)
    bare = tmp_path / "bare"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("splits_final.json", ".petseg-cache"))
    card["provenance"].pop("dataset_fingerprint")  # the copy has other paths, not other cases
    (model / "model.json").write_text(json.dumps(card))
    with pytest.raises(TrainingError, match=r"splits_final\.json: missing"):
        fit_components(model, bare, device="cpu", progress=False)
    assert load_card(model).component_filter is None  # nothing written by a refused fit


def test_export_refuses_a_bad_minimum_probability_before_reading_any_run(tmp_path):
    import training.components
    from training.demo import DemoRecipe
    from training.export import export
    from training.trainer import TrainingError

    assert DemoRecipe().component_filter == training.components.DEFAULT_MINIMUM_PROBABILITY
    with pytest.raises(TrainingError, match=r"minimum probability must be in \[0, 1\), got 1.0"):
        export([tmp_path / "no-such-run"], tmp_path / "model", component_filter=1.0)
    assert not (tmp_path / "model").exists()


def test_the_demo_ships_its_model_without_a_filter_when_the_predictions_cannot_teach_one(
    shipped_model_on_a_dataset, tmp_path, caplog
):
    """A dataset without a single lesion gives only false positives: the fit must refuse, and the demo
    keeps its model, says why, and goes on."""
    import SimpleITK as sitk

    from training.data import discover_dataset
    from training.demo import _fit_component_filter
    from training.trainer import dataset_fingerprint

    source, data = shipped_model_on_a_dataset
    empty = tmp_path / "data"
    shutil.copytree(data, empty, ignore=shutil.ignore_patterns(".petseg-cache"))
    for label in (empty / "labelsTr").iterdir():
        image = sitk.ReadImage(str(label))
        blank = sitk.Image(image.GetSize(), image.GetPixelID())
        blank.CopyInformation(image)
        sitk.WriteImage(blank, str(label), True)
    model = tmp_path / "model"
    shutil.copytree(source, model)
    card = json.loads((model / "model.json").read_text())
    card["provenance"]["dataset_fingerprint"] = dataset_fingerprint(discover_dataset(empty))
    (model / "model.json").write_text(json.dumps(card))
    with caplog.at_level("WARNING", logger="petseg.training"):
        kept = _fit_component_filter(model, empty, 0.2, device="cpu", progress=False)
    assert kept.component_filter is None
    assert load_card(model).component_filter is None
    assert "the demo model has no component filter" in caplog.text
    assert "needs both lesions and false positives" in caplog.text
    assert "all false-positive" in caplog.text
