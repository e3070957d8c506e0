import copy
import json
import re
from pathlib import Path

import pytest
from conftest import RECIPE_CARD

from petseg.card import CARD_NAME, load_card, parse_card, save_card
from petseg.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    """The autoPET III recipe card (the shipped demo model has a card of its own, tested below)."""
    return json.loads(RECIPE_CARD.read_text())


def test_defaults_are_the_seed_pipeline():
    """A card that leaves preprocessing and ensemble out gets exactly the autoPET III entry's settings."""
    data = shipped()
    del data["preprocessing"], data["ensemble"]
    data["architecture"] = {"name": "resunet", "args": {}}
    card = parse_card(data)
    assert card.ensemble.roi_size == (192, 192, 192)
    assert card.ensemble.overlap == 0.5
    assert card.preprocessing.spacing_mm == (2.0, 2.0, 2.0)
    assert card.preprocessing.ct_window_hu == (-1024.0, 1024.0)
    assert card.preprocessing.channels == ("ct", "pet")
    assert card.preprocessing.orientation == "RAS"


def test_recipe_card_uses_the_standard_preprocessing():
    card = parse_card(shipped())
    assert card.preprocessing == parse_card({**shipped(), "preprocessing": {}}).preprocessing
    assert len(card.folds) == 5
    assert not card.trained
    # The recipe trains without mirrored patches, so, as `training export` would, it lists no mirrored pass.
    assert card.ensemble.mirror_axes == ()


def test_shipped_model_is_the_synthetic_demo_and_small():
    card = load_card(REPO / "model")
    assert card.trained
    assert card.provenance["synthetic"] is True
    assert card.architecture.name == "resunet-tiny"
    sampling = card.provenance["sampling"]
    # Its folds never saw a mirrored patch, so --tta auto must not add mirrored passes.
    assert sampling.get("flip_probability", 0.0) == 0.0
    assert card.ensemble.mirror_axes == ()
    assert card.preprocessing == parse_card({**shipped(), "preprocessing": {}}).preprocessing
    size = sum(p.stat().st_size for p in (REPO / "model").iterdir())
    assert size <= 10 * 2**20


def test_round_trip(tmp_path):
    card = load_card(REPO / "model")
    save_card(card, tmp_path)
    again = load_card(tmp_path)
    assert again.to_json() == card.to_json()


def test_mirror_axes_null_empty_or_listed():
    data = shipped()
    del data["ensemble"]["mirror_axes"]
    assert parse_card(data).ensemble.mirror_axes is None  # not given: all seven mirrors may run
    for given, parsed in (([], ()), ([[0], [1, 0]], ((0,), (0, 1))), (None, None)):
        data["ensemble"]["mirror_axes"] = given
        card = parse_card(data)
        assert card.ensemble.mirror_axes == parsed
        assert parse_card(card.to_json()).ensemble == card.ensemble


def edit(path: str, value):
    """A copy of the shipped card with one field set (value ... deletes it)."""
    data = copy.deepcopy(shipped())
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[keys[-1]]
    elif isinstance(target, list):
        target[int(keys[-1])] = value
    else:
        target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", "something-else", "format must be 'petseg-model-card'"),
        ("version", 2, "version is 2; this petseg reads version 1"),
        ("architecture", ..., "architecture is missing"),
        ("architecture.name", "vnet", "unknown architecture 'vnet'"),
        ("architecture.name", 3, "architecture.name must be a string"),
        ("ensemble.roi_size", [100, 192, 192], "must be a multiple of 16"),
        ("ensemble.roi_size", [192, 192], "ensemble.roi_size must be a list of 3 numbers"),
        ("ensemble.overlap", 1.5, "ensemble.overlap must be in [0.0, 0.95]"),
        ("ensemble.average", "median", "ensemble.average must be one of probabilities, logits"),
        ("ensemble.sw_batch_size", 0, "ensemble.sw_batch_size must be at least 1"),
        ("ensemble.threshold", True, "ensemble.threshold must be"),
        (
            "ensemble.back_interpolation",
            "cubic",
            "ensemble.back_interpolation must be one of nearest, linear",
        ),
        ("preprocessing.channels", ["pet", "ct"], "CT first, then PET"),
        ("preprocessing.spacing_mm", [2, 0, 2], "preprocessing.spacing_mm must be positive"),
        ("preprocessing.ct_window_hu", [100, -100], "low < high"),
        ("preprocessing.orientation", "LPS", "preprocessing.orientation must be one of RAS"),
        ("folds", [], "folds must list at least one fold"),
        ("folds.0.weights", "../../etc/passwd", "must be a file name inside the model folder"),
        ("folds.0.weights", "/abs/fold0.safetensors", "must be a file name inside the model folder"),
        ("folds.1.fold", 0, "must not repeat a fold number"),
        ("folds.0.sha256", 12, "folds[0].sha256 must be a string or null"),
        ("ensemble.window", 3, "unknown field(s) ensemble.window"),
        ("ensemble.grow_to_suvmax_fraction", 0, "ensemble.grow_to_suvmax_fraction must be null or in (0, 1]"),
        ("ensemble.grow_to_suvmax_fraction", 1.5, "must be null or in (0, 1], got 1.5"),
        ("ensemble.grow_to_suvmax_fraction", "40%", "ensemble.grow_to_suvmax_fraction must be"),
        ("ensemble.grow_within_mm", -1, "ensemble.grow_within_mm must be in [0.0, 100.0]"),
        ("ensemble.mirror_axes", [[3]], "must list non-empty lists of distinct axes 0-2"),
        ("ensemble.mirror_axes", [[]], "ensemble.mirror_axes must list non-empty lists"),
        ("ensemble.mirror_axes", [[0, 0]], "ensemble.mirror_axes must list non-empty lists of distinct"),
        ("ensemble.mirror_axes", [0], "ensemble.mirror_axes must list non-empty lists"),
        ("ensemble.mirror_axes", [[0], [0]], "ensemble.mirror_axes must not repeat a mirror"),
        ("ensemble.mirror_axes", "lr", "ensemble.mirror_axes must be a list or null"),
    ],
)
def test_invalid_cards_are_rejected_with_the_field_named(path, value, message):
    with pytest.raises(ModelError) as raised:
        parse_card(edit(path, value), "model.json")
    text = str(raised.value)
    assert message in text
    assert text.startswith("model.json")
    assert "\n" not in text


def test_missing_and_malformed_card_files(tmp_path):
    with pytest.raises(ModelError, match="model card not found"):
        load_card(tmp_path)
    (tmp_path / CARD_NAME).write_text("{ not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_card(tmp_path)
    (tmp_path / CARD_NAME).write_text("[1, 2]")
    with pytest.raises(ModelError, match="card must be a JSON object"):
        load_card(tmp_path)


def escaping_model(tmp_path, how: str):
    """A two-fold model folder whose second fold's weights lie outside it, in one of several ways."""
    from petseg.untrained import create_untrained_model

    model, outside = tmp_path / "model", tmp_path / "outside"
    create_untrained_model(model, folds=2)
    outside.mkdir()
    (model / "fold1.safetensors").rename(outside / "x.safetensors")
    data = json.loads((model / CARD_NAME).read_text())
    weights = {
        "parent": "../outside/x.safetensors",
        "absolute": str(outside / "x.safetensors"),
        "nul": "fold1\x00.safetensors",
        "link": "fold1.safetensors",
        "folder link": "shared/x.safetensors",
        "link loop": "loop.safetensors",
    }[how]
    if how == "link":
        (model / "fold1.safetensors").symlink_to(outside / "x.safetensors")
    if how == "folder link":
        (model / "shared").symlink_to(outside, target_is_directory=True)
    if how == "link loop":
        (model / "loop.safetensors").symlink_to(model / "loop.safetensors")
    data["folds"][1]["weights"] = weights
    (model / CARD_NAME).write_text(json.dumps(data))
    return model


ESCAPES = ["parent", "absolute", "nul", "link", "folder link", "link loop"]


@pytest.mark.parametrize("how", ESCAPES)
def test_fold_weights_outside_the_model_folder_are_refused_before_any_weights_are_read(
    tmp_path, monkeypatch, how
):
    """`..`, an absolute path, a NUL byte, a symbolic link to a file or a folder outside, a link loop:
    one line naming the card and the fold, and not one safetensors file opened (fold 0 is fine)."""
    import petseg.networks
    from petseg.predict import Predictor

    model = escaping_model(tmp_path, how)
    opened = []
    monkeypatch.setattr(petseg.networks, "load_file", lambda path, *a, **k: opened.append(path))
    with pytest.raises(ModelError) as raised:
        Predictor.load(model, device="cpu")
    message = str(raised.value)
    assert message.startswith(f"{model / CARD_NAME}: folds[1].weights"), message
    assert "\n" not in message
    assert opened == []


@pytest.mark.parametrize("how", ["link", "folder link"])
def test_process_py_refuses_a_model_whose_weights_link_outside(tmp_path, capsys, how):
    from conftest import write_gc_input

    from petseg.cli import process_main
    from petseg.phantoms import make_case

    model = escaping_model(tmp_path, how)
    phantom = make_case(seed=3, index=0, tracer="fdg", size="tiny", grid="fdg-400")
    input_dir = write_gc_input(tmp_path / "input", phantom.ct, phantom.pet)
    output = tmp_path / "output"
    code = process_main(["--input", str(input_dir), "--output", str(output), "--model", str(model)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("petseg: error")]
    assert code == 4
    assert len(errors) == 1
    assert "leads outside the model folder" in errors[0]
    assert not output.exists() or not any(output.rglob("*"))


def test_links_that_stay_inside_the_model_folder_are_fine(tmp_path):
    """A fold stored once and linked from a second name (inside the folder) still loads."""
    from petseg.predict import Predictor
    from petseg.untrained import create_untrained_model

    create_untrained_model(tmp_path, folds=2)
    (tmp_path / "weights").mkdir()
    (tmp_path / "fold1.safetensors").rename(tmp_path / "weights" / "fold1.safetensors")
    (tmp_path / "fold1.safetensors").symlink_to(tmp_path / "weights" / "fold1.safetensors")
    assert len(Predictor.load(tmp_path, device="cpu").ensemble.networks) == 2


@pytest.mark.parametrize(("path", "value"), [("ensemble.overlap", 2.0), ("folds.1.sha256", 5), ("zzz", 1)])
def test_an_invalid_card_is_refused_before_any_weights_are_read(tmp_path, monkeypatch, path, value):
    """The whole card, its last fields included, is checked before the first fold's weights are opened."""
    import petseg.networks
    from petseg.predict import Predictor
    from petseg.untrained import create_untrained_model

    create_untrained_model(tmp_path, folds=2)
    data = json.loads((tmp_path / CARD_NAME).read_text())
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[keys[-1]] = value
    (tmp_path / CARD_NAME).write_text(json.dumps(data))
    opened = []
    monkeypatch.setattr(petseg.networks, "load_file", lambda file, *a, **k: opened.append(file))
    with pytest.raises(ModelError, match=re.escape(str(tmp_path / CARD_NAME))):
        Predictor.load(tmp_path, device="cpu")
    assert opened == []
