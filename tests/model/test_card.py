import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import recipe_card_text

from petseg.errors import ModelError
from petseg.model.card import (
    CARD_NAME,
    _Reader,
    load_card,
    parse_card,
    parse_ensemble,
    read_card_json,
    save_card,
)

REPO = Path(__file__).resolve().parents[2]


def shipped() -> dict:
    """The autoPET III recipe card (the shipped demo model has a card of its own, tested below)."""
    return json.loads(recipe_card_text())


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
    # The standard preprocessing on the demo recipe's coarser network grid.
    from training.demo import DemoRecipe

    standard = parse_card({**shipped(), "preprocessing": {}}).preprocessing
    assert card.preprocessing == dataclasses.replace(standard, spacing_mm=tuple(DemoRecipe().spacing_mm))
    size = sum(p.stat().st_size for p in (REPO / "model").iterdir())
    assert size <= 10 * 2**20


def test_round_trip(tmp_path):
    card = load_card(REPO / "model")
    save_card(card, tmp_path)
    again = load_card(tmp_path)
    assert again.to_json() == card.to_json()


def test_an_organ_head_is_recorded_only_where_there_is_one():
    data = shipped()
    assert data["architecture"]["organ_classes"] == 11  # the autoPET III recipe trains one
    headed = parse_card(data)
    assert headed.architecture.organ_classes == 11
    assert parse_card(headed.to_json()).architecture == headed.architecture
    del data["architecture"]["organ_classes"]
    card = parse_card(data)
    assert card.architecture.organ_classes == 0
    assert "organ_classes" not in card.to_json()["architecture"]  # cards without a head read as before
    demo = json.loads((REPO / "model" / "model.json").read_text())
    assert "organ_classes" not in demo["architecture"]  # the shipped demo ensemble has none


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
        ("version", 3, "version is 3; this petseg reads versions 1, 2"),
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
        ("architecture.organ_classes", 1, "architecture.organ_classes must be 0 (no organ head) or 2 to 255"),
        ("architecture.organ_classes", 300, "must be 0 (no organ head) or 2 to 255, got 300"),
        ("architecture.organ_classes", "11", "architecture.organ_classes must be an integer"),
        ("ensemble.suv_floor", 1.5, "ensemble.suv_floor must be an object or null"),
        ("ensemble.suv_floor", {}, "ensemble.suv_floor must be null or an object keyed by fdg, psma, all"),
        ("ensemble.suv_floor", {"FDG": 1.5}, "ensemble.suv_floor must be null or an object keyed by"),
        ("ensemble.suv_floor", {"fdg": -1}, "ensemble.suv_floor.fdg must be in [0.0, 20.0], got -1.0"),
        ("ensemble.suv_floor", {"psma": 150}, "ensemble.suv_floor.psma must be in [0.0, 20.0]"),
        ("ensemble.suv_floor", {"all": "1.5"}, "ensemble.suv_floor.all must be an integer or a number"),
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
    from petseg.model.untrained import create_untrained_model

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
    import petseg.model.networks
    from petseg.inference.predict import Predictor

    model = escaping_model(tmp_path, how)
    opened = []
    monkeypatch.setattr(petseg.model.networks, "load_file", lambda path, *a, **k: opened.append(path))
    with pytest.raises(ModelError) as raised:
        Predictor.load(model, device="cpu")
    message = str(raised.value)
    assert message.startswith(f"{model / CARD_NAME}: folds[1].weights"), message
    assert "\n" not in message
    assert opened == []


@pytest.mark.parametrize("how", ["link", "folder link"])
def test_process_py_refuses_a_model_whose_weights_link_outside(tmp_path, capsys, how):
    from conftest import write_gc_input

    from petseg.app.process import process_main
    from petseg.synthetic import make_case

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
    from petseg.inference.predict import Predictor
    from petseg.model.untrained import create_untrained_model

    create_untrained_model(tmp_path, folds=2)
    (tmp_path / "weights").mkdir()
    (tmp_path / "fold1.safetensors").rename(tmp_path / "weights" / "fold1.safetensors")
    (tmp_path / "fold1.safetensors").symlink_to(tmp_path / "weights" / "fold1.safetensors")
    assert len(Predictor.load(tmp_path, device="cpu").ensemble.networks) == 2


@pytest.mark.parametrize(("path", "value"), [("ensemble.overlap", 2.0), ("folds.1.sha256", 5), ("zzz", 1)])
def test_an_invalid_card_is_refused_before_any_weights_are_read(tmp_path, monkeypatch, path, value):
    """The whole card, its last fields included, is checked before the first fold's weights are opened."""
    import petseg.model.networks
    from petseg.inference.predict import Predictor
    from petseg.model.untrained import create_untrained_model

    create_untrained_model(tmp_path, folds=2)
    data = json.loads((tmp_path / CARD_NAME).read_text())
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[keys[-1]] = value
    (tmp_path / CARD_NAME).write_text(json.dumps(data))
    opened = []
    monkeypatch.setattr(petseg.model.networks, "load_file", lambda file, *a, **k: opened.append(file))
    with pytest.raises(ModelError, match=re.escape(str(tmp_path / CARD_NAME))):
        Predictor.load(tmp_path, device="cpu")
    assert opened == []


# ------------------------------------------------------------------ values beyond JSON's ordinary range


def recipe_text(old: str, new: str) -> str:
    """The recipe card's JSON text with one literal replaced (numbers no Python dict could carry): its
    first occurrence, which lies before the card's `training` section repeats a training setting."""
    text = recipe_card_text()
    assert old in text, old
    return text.replace(old, new, 1)


BAD_TEXTS = {
    "100,000 nested arrays": ("[" * 100000, "not a model card: its JSON is nested too deeply to read"),
    "nested arrays in a field": (
        recipe_text('"commit": null', '"commit": ' + "[" * 100000),
        "not a model card: its JSON is nested too deeply to read",
    ),
    "1e400": (
        recipe_text('"threshold": 0.5', '"threshold": 1e400'),
        "ensemble.threshold must be a finite number, got inf",
    ),
    "400-digit float": (
        recipe_text('"threshold": 0.5', '"threshold": ' + "1" * 400 + ".5"),
        "ensemble.threshold must be a finite number, got inf",
    ),
    "400-digit integer": (
        recipe_text('"threshold": 0.5', '"threshold": ' + "9" * 400),
        "ensemble.threshold is a 400-digit integer; a card's integers have at most 30 digits",
    ),
    "5,001-digit integer": (
        recipe_text('"sw_batch_size": 1', '"sw_batch_size": ' + "1" * 5001),
        "ensemble.sw_batch_size is a 5001-digit integer; a card's integers have at most 30 digits",
    ),
    "NaN threshold": (
        recipe_text('"threshold": 0.5', '"threshold": NaN'),
        "ensemble.threshold must be a finite number, got nan",
    ),
    "Infinity overlap": (
        recipe_text('"overlap": 0.5', '"overlap": Infinity'),
        "ensemble.overlap must be a finite number, got inf",
    ),
    "-Infinity CT fill": (
        recipe_text('"ct_fill_hu": -1024.0', '"ct_fill_hu": -Infinity'),
        "preprocessing.ct_fill_hu must be a finite number, got -inf",
    ),
    "NaN spacing": (
        recipe_text('"spacing_mm": [2.0, 2.0, 2.0]', '"spacing_mm": [2.0, NaN, 2.0]'),
        "preprocessing.spacing_mm[1] must be a finite number, got nan",
    ),
    "NaN in provenance": (
        recipe_text('"trained": false', '"trained": false, "validation_dice": NaN'),
        "provenance.validation_dice must be a finite number, got nan",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEXTS))
def test_card_text_beyond_json_ordinary_range_is_a_bad_card(tmp_path, case):
    """Deep nesting, overflowing floats, NaN/Infinity and overlong integers: one line naming the card and
    the field, never a RecursionError, OverflowError or ValueError from the JSON reader."""
    text, expected = BAD_TEXTS[case]
    (tmp_path / CARD_NAME).write_text(text)
    with pytest.raises(ModelError) as raised:
        load_card(tmp_path)
    message = str(raised.value)
    assert message == f"{tmp_path / CARD_NAME}: {expected}"


def test_read_card_json_returns_an_ordinary_card(tmp_path):
    (tmp_path / CARD_NAME).write_text(recipe_card_text())
    assert read_card_json(tmp_path / CARD_NAME) == shipped()


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "path",
    [
        "ensemble.threshold",
        "ensemble.overlap",
        "ensemble.grow_within_mm",
        "preprocessing.body_margin_mm",
        "preprocessing.ct_fill_hu",
        "preprocessing.body_threshold_hu",
        "provenance.validation_dice",
        "architecture.args.dropout",
    ],
)
def test_non_finite_numbers_in_a_card_dict_are_refused(path, value):
    """parse_card is also handed Python dicts, which (unlike JSON) carry NaN and infinities as floats:
    NaN compares false with every bound, so it used to pass `threshold in [0, 1]` and give empty masks."""
    with pytest.raises(ModelError) as raised:
        parse_card(edit(path, value), "model.json")
    assert str(raised.value) == f"model.json: {path} must be a finite number, got {value}"


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_in_lists_and_ensembles_are_refused(value):
    data = edit("preprocessing.spacing_mm", [2.0, 2.0, value])
    with pytest.raises(
        ModelError, match=re.escape("model.json: preprocessing.spacing_mm[2] must be a finite")
    ):
        parse_card(data, "model.json")
    with pytest.raises(ModelError, match=re.escape("export: ensemble.overlap must be a finite number")):
        parse_ensemble({"overlap": value}, "export")


def test_huge_integers_in_a_card_dict_are_refused():
    with pytest.raises(
        ModelError, match=r"^model.json: ensemble.threshold is an integer of more than 30 digits"
    ):
        parse_card(edit("ensemble.threshold", 10**400), "model.json")
    with pytest.raises(
        ModelError, match=r"^model.json: ensemble.sw_batch_size is an integer of more than 30"
    ):
        parse_card(edit("ensemble.sw_batch_size", 10**5000), "model.json")


@pytest.mark.parametrize("value", [*NON_FINITE, 10**400], ids=["nan", "inf", "-inf", "10**400"])
def test_the_reader_refuses_non_finite_numbers_itself(value):
    """`number`/`numbers` check finiteness themselves, not only through the whole-card check before them."""
    reader = _Reader({"x": value, "xs": [1.0, value]}, "ensemble", "model.json")
    with pytest.raises(ModelError, match=r"^model.json: ensemble.x must be a finite number"):
        reader.number("x", low=0.0, high=1.0)
    with pytest.raises(ModelError, match=r"^model.json: ensemble.xs must hold finite numbers"):
        reader.numbers("xs", 2)


# ------------------------------------------------------------------ sizes a card may ask for


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "architecture.args",
            {"channels": [10**9, 64, 128, 256, 512]},
            "architecture.args.channels[0] must be in [0, 4096], got 1000000000",
        ),
        (
            "architecture.args",
            {"channels": [32, 64, 128, 256, 4097]},
            "architecture.args.channels[4] must be in [0, 4096], got 4097",
        ),
        ("architecture.args", {"num_res_units": -1}, "architecture.args.num_res_units must be in [0, 4096]"),
        (
            "architecture.args",
            {"dropout": 1e9},
            "architecture.args.dropout must be in [0, 4096], got 1000000000.0",
        ),
        (
            "architecture.args",
            {"norm": ["group", {"num_groups": 100000}]},
            "architecture.args.norm[1].num_groups must be in [0, 4096], got 100000",
        ),
        (
            "architecture.args",
            {"channels": [8] * 17},
            "architecture.args.channels must hold at most 16 entries, got 17",
        ),
        ("architecture.args", {"strides": 2}, "architecture.args {'strides': 2} do not fit 'resunet'"),
        (
            "ensemble.roi_size",
            [64, 64, 1048576],
            "ensemble.roi_size must hold sides in [16, 512], got [64, 64, 1048576]",
        ),
        ("ensemble.roi_size", [1024, 1024, 1024], "ensemble.roi_size must hold sides in [16, 512]"),
        ("ensemble.sw_batch_size", 65, "ensemble.sw_batch_size must be at least 1 and at most 64, got 65"),
        ("ensemble.sw_batch_size", 10**9, "ensemble.sw_batch_size must be at least 1 and at most 64"),
        (
            "preprocessing.spacing_mm",
            [0.01, 2.0, 2.0],
            "preprocessing.spacing_mm must hold spacings in [0.1, 20.0] mm, got [0.01, 2.0, 2.0]",
        ),
        (
            "preprocessing.spacing_mm",
            [2, 2, 50],
            "preprocessing.spacing_mm must hold spacings in [0.1, 20.0]",
        ),
        (
            "preprocessing.body_margin_mm",
            1e6,
            "preprocessing.body_margin_mm must be in [0.0, 500.0], got 1000000.0",
        ),
    ],
)
def test_sizes_beyond_the_card_bounds_are_refused_at_load(path, value, message):
    """A card asking for 10**9 channels or a 64 x 64 x 1048576 window is refused when read, not in the
    allocator at load or at the first case."""
    with pytest.raises(ModelError) as raised:
        parse_card(edit(path, value), "model.json")
    text = str(raised.value)
    assert text.startswith(f"model.json: {message}"), text
    assert "\n" not in text


def test_a_window_below_16_is_refused_even_where_the_network_would_divide_it():
    data = edit("architecture", {"name": "resunet-tiny", "args": {}})  # divisor 8
    assert parse_card({**data, "ensemble": {**data["ensemble"], "roi_size": [16, 16, 16]}})
    with pytest.raises(
        ModelError, match=re.escape("ensemble.roi_size must hold sides in [16, 512], got [8, 8")
    ):
        parse_card({**data, "ensemble": {**data["ensemble"], "roi_size": [8, 8, 8]}})


def test_sizes_at_the_card_bounds_load():
    data = edit(
        "architecture.args", {"channels": [16, 64, 256, 1024, 4096], "norm": ["group", {"num_groups": 8}]}
    )
    data["ensemble"].update(roi_size=[512, 512, 16], sw_batch_size=64)
    data["preprocessing"].update(spacing_mm=[0.1, 20, 2.0], body_margin_mm=500)
    card = parse_card(data)
    assert card.ensemble.roi_size == (512, 512, 16)
    assert card.ensemble.sw_batch_size == 64
    assert card.preprocessing.spacing_mm == (0.1, 20, 2.0)
    assert card.preprocessing.body_margin_mm == 500.0
    assert card.architecture.args["channels"] == [16, 64, 256, 1024, 4096]


# ------------------------------------------------------------------ one weights file, two folds


@pytest.mark.parametrize(
    "name", ["fold0.safetensors", "./fold0.safetensors", "././fold0.safetensors", ".//fold0.safetensors"]
)
def test_two_folds_naming_one_weights_file_are_refused(name):
    with pytest.raises(ModelError) as raised:
        parse_card(edit("folds.1.weights", name), "model.json")
    assert str(raised.value) == (
        "model.json: folds[0] and folds[1] hold the same weights: "
        f"'fold0.safetensors' and {name!r} name one file"
    )


def test_two_folds_with_one_sha256_are_refused():
    data = shipped()
    data["folds"][0]["sha256"] = "ab" * 32
    data["folds"][3]["sha256"] = "AB" * 32
    with pytest.raises(ModelError) as raised:
        parse_card(data, "model.json")
    assert str(raised.value) == (
        f"model.json: folds[0] and folds[3] hold the same weights: both have sha256 {'AB' * 32!r}"
    )


def test_a_psma_fold_naming_an_fdg_fold_file_is_refused():
    """A hostile card: the PSMA ensemble's fold 0 ran the FDG fold 0 weights under another spelling."""
    data = json.loads((REPO / "model" / CARD_NAME).read_text())
    assert data["folds"][5]["tracer"] == "psma"
    data["folds"][5]["weights"] = "./" + data["folds"][0]["weights"]
    with pytest.raises(
        ModelError, match=re.escape("model.json: folds[0] and folds[5] hold the same weights")
    ):
        parse_card(data, "model.json")
    data["folds"][5]["weights"] = "psma-fold0.safetensors"
    data["folds"][5]["sha256"] = data["folds"][0]["sha256"]
    with pytest.raises(
        ModelError, match=re.escape("model.json: folds[0] and folds[5] hold the same weights")
    ):
        parse_card(data, "model.json")


def one_file_two_folds(tmp_path: Path, how: str) -> Path:
    """A two-fold model folder whose second fold leads to the first fold's file (no sha256 to tell)."""
    from petseg.model.untrained import create_untrained_model

    model = tmp_path / "model"
    create_untrained_model(model, folds=2)
    data = json.loads((model / CARD_NAME).read_text())
    for fold in data["folds"]:
        fold["sha256"] = None
    if how == "link":
        (model / "fold1.safetensors").unlink()
        (model / "fold1.safetensors").symlink_to("fold0.safetensors")
    elif how == "hard link":
        (model / "fold1.safetensors").unlink()
        (model / "fold1.safetensors").hardlink_to(model / "fold0.safetensors")
    else:  # a folder link back into the model folder
        (model / "same").symlink_to(".", target_is_directory=True)
        data["folds"][1]["weights"] = "same/fold0.safetensors"
    (model / CARD_NAME).write_text(json.dumps(data))
    return model


@pytest.mark.parametrize("how", ["link", "hard link", "folder link"])
def test_two_folds_leading_to_one_file_are_refused_at_load(tmp_path, how):
    model = one_file_two_folds(tmp_path, how)
    with pytest.raises(ModelError) as raised:
        load_card(model)
    message = str(raised.value)
    assert message.startswith(f"{model / CARD_NAME}: folds[0] and folds[1] hold the same weights: "), message
    assert "\n" not in message


# ------------------------------------------------------------------ the checks report a bad card


def bad_model_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Model folders with hostile cards, each with the field its error must name."""
    cases = {
        "nested": ("[" * 100000, "nested too deeply"),
        "1e400": (BAD_TEXTS["1e400"][0], "ensemble.threshold"),
        "5001 digits": (BAD_TEXTS["5,001-digit integer"][0], "ensemble.sw_batch_size"),
        "NaN": (BAD_TEXTS["NaN threshold"][0], "ensemble.threshold"),
        "channels": (
            recipe_text('"args": {}', '"args": {"channels": [1000000000, 64, 128, 256, 512]}'),
            "architecture.args.channels[0]",
        ),
        "window": (
            recipe_text('"roi_size": [192, 192, 192]', '"roi_size": [64, 64, 1048576]'),
            "ensemble.roi_size",
        ),
        "one file": (recipe_text('"fold1.safetensors"', '"./fold0.safetensors"'), "folds[0] and folds[1]"),
    }
    dirs = {}
    for name, (text, field_name) in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        (folder / CARD_NAME).write_text(text)
        dirs[name] = (folder, field_name)
    return dirs


def test_check_model_reports_a_bad_card_with_exit_code_4(tmp_path, capsys):
    from petseg.app.cli import main

    for name, (folder, field_name) in bad_model_dirs(tmp_path).items():
        assert main(["check-model", str(folder)]) == 4, name
        err = capsys.readouterr().err
        assert err.startswith(f"petseg: error: {folder / CARD_NAME}: "), err[:300]
        assert field_name in err, name
        assert len(err.splitlines()) == 1, name
        assert "Traceback" not in err
        assert "internal error" not in err


def test_container_check_reports_a_bad_card_as_a_failure(tmp_path, capsys):
    from tools.container_check import main

    for name, (folder, field_name) in bad_model_dirs(tmp_path).items():
        assert main(["model", str(folder)]) == 1, name
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"FAIL {folder}: {folder / CARD_NAME}: "), name
        assert captured.err.count(str(folder / CARD_NAME)) == 1, captured.err  # named once
        assert field_name in captured.err, name
        assert len(captured.err.splitlines()) == 1, name
    model = one_file_two_folds(tmp_path / "linked", "link")
    assert main(["model", str(model)]) == 1
    assert "folds[0] and folds[1] hold the same weights" in capsys.readouterr().err


def test_check_model_command_refuses_deep_nesting_without_a_traceback(tmp_path):
    """The real command line, in a fresh interpreter (whose stack depth differs from pytest's)."""
    import subprocess
    import sys

    (tmp_path / CARD_NAME).write_text("[" * 100000)
    result = subprocess.run(
        [sys.executable, "-m", "petseg", "check-model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 4
    assert result.stderr == (
        f"petseg: error: {tmp_path / CARD_NAME}: not a model card: its JSON is nested too deeply to read\n"
    )


def test_a_card_linked_from_outside_the_model_folder_is_refused(tiny_model_dir, tmp_path):
    """The model folder follows the input folder's rule: links in it stay in it (the folder may be one)."""
    import shutil

    from petseg.model.card import load_card

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.json").rename(tmp_path / "card elsewhere.json")
    (model / "model.json").symlink_to(tmp_path / "card elsewhere.json")
    with pytest.raises(ModelError, match="a symbolic link leads outside the model folder"):
        load_card(model)
    linked = tmp_path / "linked model"
    linked.symlink_to(tiny_model_dir, target_is_directory=True)
    assert load_card(linked).name


def test_version_2_cards_record_the_training_settings_and_version_1_cards_still_load(tmp_path):
    recipe = shipped()  # written now: version 2, with the recipe's training settings
    assert recipe["version"] == 2
    assert recipe["training"]["loss"] == "gdfl"
    data = {key: value for key, value in recipe.items() if key != "training"} | {"version": 1}
    old = parse_card(data)  # version 1: no training section
    assert old.training is None
    written = old.to_json()
    assert written["version"] == 2
    assert "training" not in written
    training = {"loss": "gdfl", "epochs": 400, "patch_size": 128, "spacing_mm": [2.0, 2.0, 2.0]}
    newer = parse_card({**written, "training": training})
    assert newer.training == training
    assert parse_card(newer.to_json()) == newer
    with pytest.raises(ModelError, match="training needs a card of version 2"):
        parse_card({**data, "training": training})
    with pytest.raises(ModelError, match=r"training\.epochs must be a finite number"):
        parse_card({**written, "training": {"epochs": float("nan")}})
