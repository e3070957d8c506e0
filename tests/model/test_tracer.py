"""Models split by tracer: the uptake-histogram classifier, the card, per-tracer training and export, and
inference picking the ensemble of the case's tracer."""

import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from petseg.errors import ModelError
from petseg.inference.preprocess import preprocess
from petseg.io.splits import tracer_of
from petseg.model.card import PreprocessSettings, load_card, parse_card
from petseg.model.tracer import SUV_EDGES, TracerClassifier, fit_tracer_classifier, uptake_features
from petseg.synthetic import generate, make_case
from training.export import export
from training.trainer import TrainConfig, TrainingError, train

SETTINGS = PreprocessSettings()


def test_case_ids_name_their_tracer():
    assert tracer_of("fdg_0c13e4df10_10-11-2003  PET-CT Ganzkoerper") == "fdg"
    assert tracer_of("psma_95b833d46f153cd2_2018-04-16") == "psma"
    assert tracer_of("PSMA_95b833d46f153cd2_2018-04-16") == "psma"
    assert tracer_of("case 7") is None
    assert tracer_of("fdg") is None  # a prefix needs the id after it
    assert tracer_of("fdgx_1") is None


def _image(pet_body: np.ndarray, pet_air: float) -> np.ndarray:
    """A network-grid image: half body (CT 0 HU), half air (-1000 HU), with the given PET values."""
    ct = np.zeros((4, 4, 4), np.float32)
    ct[:2] = (0.0 + 1024.0) / 2048.0
    ct[2:] = (-1000.0 + 1024.0) / 2048.0
    pet = np.full((4, 4, 4), pet_air, np.float32)
    pet[:2] = pet_body
    return np.stack([ct, pet])


def test_uptake_features_are_log_fractions_per_suv_bin_of_the_superior_body_and_the_rest():
    body = np.ones((2, 4, 4), np.float32) * 0.5
    body[0, :, 3] = 20.0  # in the superior slice (RAS: the last axis points up), 4 of its 8 body voxels
    features = uptake_features(_image(body, pet_air=30.0), SETTINGS)  # the air is hotter still: not counted
    bins = len(SUV_EDGES) + 1
    assert features.shape == (2 * bins,)
    superior, rest = 10.0 ** features[:bins] - 1e-4, 10.0 ** features[bins:] - 1e-4
    hot_bin = int(np.searchsorted(SUV_EDGES, 20.0))
    cool_bin = int(np.searchsorted(SUV_EDGES, 0.5))
    assert superior.sum() == pytest.approx(1.0, abs=1e-3)
    assert superior[hot_bin] == pytest.approx(4 / 8, abs=1e-6)
    assert superior[cool_bin] == pytest.approx(4 / 8, abs=1e-6)
    assert rest[cool_bin] == pytest.approx(1.0, abs=1e-6)  # the 24 body voxels below
    assert rest[hot_bin] == pytest.approx(0.0, abs=1e-6)
    assert superior[int(np.searchsorted(SUV_EDGES, 30.0))] == pytest.approx(0.0, abs=1e-6)


def test_the_classifier_learns_and_scores_itself_leave_one_out():
    rng = np.random.default_rng(0)
    fdg = rng.normal(0.0, 1.0, (12, 5)) + np.array([2.0, 0, 0, 0, 0])
    psma = rng.normal(0.0, 1.0, (12, 5)) - np.array([2.0, 0, 0, 0, 0])
    features = np.concatenate([fdg, psma])
    tracers = ["fdg"] * 12 + ["psma"] * 12
    model = fit_tracer_classifier(features, tracers, suv_edges=(1.0, 2.0, 3.0, 4.0))
    assert model.training_cases == 24
    assert model.cross_validated_accuracy is not None
    assert model.cross_validated_accuracy >= 0.9
    assert model.probability_psma(np.array([-4.0, 0, 0, 0, 0])) > 0.95
    assert model.probability_psma(np.array([4.0, 0, 0, 0, 0])) < 0.05
    # Noise alone cannot be learned: leave-one-out says so.
    noise = fit_tracer_classifier(rng.normal(size=(24, 5)), tracers, suv_edges=(1.0, 2.0, 3.0, 4.0))
    assert noise.cross_validated_accuracy is not None
    assert noise.cross_validated_accuracy < 0.8
    with pytest.raises(ValueError, match="both tracers"):
        fit_tracer_classifier(fdg, ["fdg"] * 12)


def test_phantom_tracers_are_told_apart_by_their_uptake():
    """FDG lights the brain, PSMA the glands, kidneys and liver: the histogram separates them."""
    features, tracers = [], []
    for index in range(16):
        tracer = ("fdg", "psma")[index % 2]
        phantom = make_case(seed=7, index=index, tracer=tracer, size="tiny", lesion_free=index % 3 == 0)
        image = preprocess(phantom.ct, phantom.pet, SETTINGS).image
        features.append(uptake_features(image, SETTINGS))
        tracers.append(tracer)
    model = fit_tracer_classifier(np.stack(features), tracers)
    assert model.cross_validated_accuracy == 1.0
    fresh = make_case(seed=8, index=1, tracer="psma", size="tiny", lesion_free=False)
    tracer, confidence = model.classify(preprocess(fresh.ct, fresh.pet, SETTINGS).image, SETTINGS)
    assert (tracer, confidence > 0.9) == ("psma", True)


def _classifier_json() -> dict:
    count = 2 * (len(SUV_EDGES) + 1)
    return TracerClassifier(
        suv_edges=SUV_EDGES,
        superior_share=0.3,
        mean=(0.0,) * count,
        scale=(1.0,) * count,
        coefficients=(0.5,) * count,
        intercept=-1.0,
        training_cases=10,
        cross_validated_accuracy=1.0,
    ).to_json()


def _split_card() -> dict:
    card = json.loads((REPO / "model" / "model.json").read_text())
    card["folds"] = [
        {"fold": 0, "weights": "fdg-fold0.safetensors", "tracer": "fdg"},
        {"fold": 0, "weights": "psma-fold0.safetensors", "tracer": "psma"},
    ]
    card["tracer_classifier"] = _classifier_json()
    return card


def test_a_card_split_by_tracer_round_trips_and_bad_ones_are_refused():
    card = parse_card(_split_card())
    assert card.tracers == ("fdg", "psma")
    assert card.describe_ensemble() == "1-fold resunet-tiny ensembles for FDG and PSMA"
    assert parse_card(card.to_json()) == card
    assert card.tracer_classifier is not None
    assert card.tracer_classifier.intercept == -1.0
    # An unsplit card stays as it was: no tracer in its folds, no classifier.
    unsplit = _split_card()
    del unsplit["tracer_classifier"]
    del unsplit["component_filter"]  # its models are per tracer (an unsplit card's would be "all")
    for fold in unsplit["folds"]:
        del fold["tracer"]
    unsplit["folds"][1]["fold"] = 1
    plain = parse_card(unsplit)
    assert plain.tracers == ()
    assert plain.describe_ensemble() == "2-fold resunet-tiny ensemble"
    assert "tracer" not in plain.to_json()["folds"][0]
    assert "tracer_classifier" not in plain.to_json()
    shipped = load_card(REPO / "model")
    assert shipped.describe_ensemble() == "5-fold resunet-tiny ensembles for FDG and PSMA"

    for change, message in (
        (lambda c: c["folds"][1].pop("tracer"), "must name a tracer in every fold or in none"),
        (lambda c: c.pop("tracer_classifier"), "tracer_classifier is missing"),
        (lambda c: c["folds"][1].update(tracer="fdg"), "must not repeat a fold number"),
        (lambda c: c["folds"][1].update(tracer="fdg", fold=1), "must hold folds of every tracer"),
        (lambda c: c["folds"][0].update(tracer="fet"), r"folds\[0\].tracer must be one of fdg, psma"),
        (lambda c: c["tracer_classifier"].update(mean=[0.0] * 3), "mean must be a list of 30 numbers"),
        (lambda c: c["tracer_classifier"]["suv_edges"].reverse(), "must be a rising list"),
        (lambda c: c["tracer_classifier"].update(scale=[0.0] * 30), "scale must be positive"),
        (lambda c: c["tracer_classifier"].update(bias=1.0), r"unknown field\(s\) tracer_classifier.bias"),
        (lambda c: c["tracer_classifier"].update(superior_share=1.0), r"superior_share must be in"),
    ):
        data = _split_card()
        change(data)
        with pytest.raises(ModelError, match=message):
            parse_card(data)


# ------------------------------------------------------------------ training and inference, end to end


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 tiny cases whose fold 0 holds both tracers in training and validation."""
    root = tmp_path_factory.mktemp("mixed")
    generate(root, cases=12, seed=32, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    return root


def _config(dataset, out, tracer, **changes) -> TrainConfig:
    settings = {
        "data": dataset,
        "fold": 0,
        "out": out,
        "tracer": tracer,
        "loss": "dfl",
        "arch": "resunet-tiny",
        "epochs": 1,
        "batch_size": 2,
        "patch_size": 32,
        "samples_per_epoch": 2,
        "val_every": 1,
        "window": 32,
        "sw_batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
        "progress": False,
    }
    settings.update(changes)
    return TrainConfig(**settings)


def test_per_tracer_folds_train_export_and_segment_with_their_own_ensemble(
    dataset, tmp_path, capsys, tiny_fdg_input
):
    from petseg.app.process import process_main
    from petseg.inference.predict import Predictor

    runs = {tracer: tmp_path / f"{tracer}-fold0" for tracer in ("fdg", "psma")}
    for tracer, run in runs.items():
        train(_config(dataset, run, tracer))
        stored = json.loads((run / "run.json").read_text())["config"]
        assert stored["tracer"] == tracer
    # A run validates on its tracer's cases only: the validation rows count them.
    folds = json.loads((dataset / "splits_final.json").read_text())
    psma_val = [c for c in folds[0]["val"] if tracer_of(c) == "psma"]
    assert 0 < len(psma_val) < len(folds[0]["val"])

    with pytest.raises(TrainingError, match="needs folds of every tracer"):
        export([runs["psma"]], tmp_path / "psma-only")
    train(_config(dataset, tmp_path / "all-fold1", None, fold=1))
    with pytest.raises(TrainingError, match="some runs trained on one tracer"):
        export([runs["fdg"], tmp_path / "all-fold1"], tmp_path / "mixed")
    assert not (tmp_path / "psma-only").exists()
    assert not (tmp_path / "mixed").exists()

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "fold0.safetensors").write_bytes(b"an earlier export's weights")
    (tmp_path / "model" / "mine.safetensors").write_bytes(b"not export's")
    card = export(list(runs.values()), tmp_path / "model", synthetic=True)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "fdg-fold0.safetensors",
        "mine.safetensors",
        "model.json",
        "psma-fold0.safetensors",
    ]
    assert [(f.tracer, f.weights) for f in card.folds] == [
        ("fdg", "fdg-fold0.safetensors"),
        ("psma", "psma-fold0.safetensors"),
    ]
    assert set(card.provenance["validation_score"]) == {"fdg-fold0", "psma-fold0"}
    classifier = load_card(tmp_path / "model").tracer_classifier
    assert classifier is not None
    assert classifier.training_cases == 12
    assert classifier.cross_validated_accuracy == 1.0

    # The loss-weighting analysis runs each case through its tracer's folds: by its id, else the classifier.
    from petseg.model.tracer_choice import choose_tracer
    from training.weighting import analyse_weighting

    split = load_card(tmp_path / "model")
    image = np.zeros((2, 8, 8, 8), np.float32)
    named = choose_tracer(split, image, given=tracer_of("psma_95b833d46f153cd2_2018-04-16"))
    assert (named.tracer, named.how) == ("psma", "given")
    classified = choose_tracer(split, image, given=tracer_of("case 1"))
    assert classified.how == "classified"
    assert classified.tracer == split.tracer_classifier.classify(image, split.preprocessing)[0]
    result = analyse_weighting(
        tmp_path / "model", dataset, "dfl", tmp_path / "w", cases=2, device="cpu", progress=False
    )
    assert result["cases"] == 2

    predictor = Predictor.load(tmp_path / "model", device="cpu")
    assert set(predictor.ensembles) == {"fdg", "psma"}
    assert all(len(e.networks) == 1 for e in predictor.ensembles.values())
    assert predictor.ensembles["fdg"].networks[0] is not predictor.ensembles["psma"].networks[0]

    # The FDG sample is classified as FDG and runs the FDG ensemble; --tracer overrides the classifier.
    sample = tiny_fdg_input
    model = ["--model", str(tmp_path / "model")]
    capsys.readouterr()
    assert process_main(["--input", str(sample), "--output", str(tmp_path / "out"), *model]) == 0
    assert "tracer fdg (classified from the uptake histogram" in capsys.readouterr().err
    args = ["--input", str(sample), "--output", str(tmp_path / "out2"), *model, "--tracer", "psma"]
    assert process_main(args) == 0
    assert "tracer psma (given)" in capsys.readouterr().err


def test_a_fold_without_cases_of_the_tracer_is_a_one_line_error(tmp_path):
    data = tmp_path / "fdg-only"
    generate(data, cases=8, seed=3, tracer="fdg", size="tiny", layout="nnunet", progress=False)
    with pytest.raises(TrainingError, match="0 training and 0 validation cases of tracer psma"):
        train(_config(data, tmp_path / "run", "psma"))
    with pytest.raises(TrainingError, match="--tracer must be one of fdg, psma"):
        train(_config(data, tmp_path / "run2", "fet"))
    assert not (tmp_path / "run").exists()
    shutil.rmtree(data)
