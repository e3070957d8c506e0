"""The typed training configuration: defaults from the recipe file, options built from the fields,
recipes as data, and a run's run.json read back into the same type."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from training.config import DEFAULT_RECIPE, TrainConfig, TrainingError, read_recipe


def _parse(argv):
    from training.__main__ import build_parser

    base = ["train", "--data", "d", "--fold", "1", "--out", "o", "--organs", "none"]  # "d" has no organ maps
    return build_parser().parse_args([*base, *argv])


def test_the_dataclass_defaults_are_the_default_recipe():
    recipe = read_recipe(DEFAULT_RECIPE)
    config = TrainConfig(data="d", fold=0, out="o")
    for name, value in recipe.items():
        if name == "organs":  # a folder inside the dataset: resolved with --data (the test below)
            continue
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, name) == expected, name


def test_the_recipes_organ_maps_are_a_folder_of_the_dataset_and_must_be_there(tmp_path, capsys):
    """The autoPET III recipe trains an organ head on DATASET/organsTr: found there, given elsewhere,
    switched off with `--organs none`, and refused in one line (nothing trained) when it is missing."""
    from training.__main__ import build_parser, main
    from training.config import config_from_args

    dataset = tmp_path / "Dataset"
    dataset.mkdir()
    parse = build_parser().parse_args
    base = ["train", "--data", str(dataset), "--fold", "0", "--out", str(tmp_path / "run")]
    assert main(base) == TrainingError.exit_code
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"{dataset / 'organsTr'}: organ maps not found" in error
    assert "--organs none" in error
    assert not (tmp_path / "run").exists()

    assert config_from_args(parse([*base, "--organs", "none"]), {}).organs is None
    assert config_from_args(parse([*base, "--organs", "NONE"]), {}).organ_classes == 0
    elsewhere = tmp_path / "autopet3-organs"
    assert config_from_args(parse([*base, "--organs", str(elsewhere)]), {}).organs == elsewhere
    (dataset / "organsTr").mkdir()
    config = config_from_args(parse(base), {})
    assert config.organs == dataset / "organsTr"
    assert config.organ_classes > 0


def test_every_option_of_train_is_a_field_and_its_help_shows_the_recipe_default(capsys):
    from training.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR AdamW learning rate (recipe default: 0.0002)" in text
    assert "--epochs EPOCHS epochs of the cosine schedule (recipe default: 400)" in text
    config_fields = {f.name for f in fields(TrainConfig)}
    args = vars(_parse(["--epochs", "3", "--lr", "0.01", "--no-augment", "--spacing-mm", "4", "-q"]))
    loss_flags = {"batch_dice", "l1dfl_eps", "focal_gamma", "l1dfl_global_histogram"}
    assert set(args) - loss_flags - {"recipe", "verbose", "command", "run"} <= config_fields


def test_options_override_the_recipe_file_and_the_recipe_the_defaults(tmp_path):
    from training.config import config_from_args

    recipe = json.loads(DEFAULT_RECIPE.read_text())
    recipe["train"].update(epochs=7, patch_size=48, loss="dfl")
    path = tmp_path / "mine.train.json"
    path.write_text(json.dumps(recipe))
    config = config_from_args(_parse(["--recipe", str(path), "--epochs", "3"]), {})
    assert (config.epochs, config.patch_size, config.loss) == (3, 48, "dfl")
    plain = config_from_args(_parse(["--spacing-mm", "4", "3", "3"]), {})
    assert (plain.epochs, plain.spacing_mm) == (400, (4.0, 3.0, 3.0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "petseg-model-card"}', "not a training recipe"),
        ('{"format": "petseg-training-recipe"}', "has no 'train' object"),
        ('{"format": "petseg-training-recipe", "train": {"epoch": 3}}', "unknown training setting(s) epoch"),
    ],
)
def test_a_bad_recipe_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.train.json"
    path.write_text(content)
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_recipe(path)


def test_run_json_reads_back_into_the_config():
    config = TrainConfig(
        data="d", fold=2, out="o", spacing_mm=(4.0, 4.0, 3.0), arch_args={"channels": [4, 8]}
    )
    stored = json.loads(json.dumps({**config.comparable(), "data": "d", "out": "o"}))
    again = TrainConfig.from_json(stored)
    assert again.comparable() == config.comparable()
    assert again.spacing_mm == (4.0, 4.0, 3.0)
    older = {k: v for k, v in stored.items() if k != "flip_probability"}  # a run.json from before the field
    assert (
        TrainConfig.from_json(older).flip_probability
        == TrainConfig(data="d", fold=0, out="o").flip_probability
    )
    # A run from before CT misalignment existed trained without it, whatever today's recipe default.
    assert TrainConfig(data="d", fold=0, out="o").misalign_probability > 0
    before = {k: v for k, v in stored.items() if k != "misalign_probability"}
    assert TrainConfig.from_json(before).misalign_probability == 0.0


def test_the_recipe_card_is_what_an_export_of_the_recipe_describes(tmp_path, capsys):
    """`python -m training card` writes the recipe's card before there are weights: the window, overlap
    and spacing come from the recipe (one place), the card loads, and it is marked untrained."""
    from petseg.model.card import CARD_NAME, load_card
    from training.__main__ import main

    assert main(["card", "--out", str(tmp_path / "m"), "--folds", "3"]) == 0
    card = load_card(tmp_path / "m")
    recipe = read_recipe(DEFAULT_RECIPE)
    assert card.ensemble.roi_size == (recipe["window"],) * 3
    assert card.ensemble.overlap == recipe["overlap"]
    assert card.preprocessing.spacing_mm == tuple(recipe["spacing_mm"])
    assert card.architecture.name == recipe["arch"]
    assert [f.weights for f in card.folds] == ["fold0.safetensors", "fold1.safetensors", "fold2.safetensors"]
    assert not card.trained
    assert card.training["loss"] == recipe["loss"]
    assert recipe["organs"]  # the winner's ingredients, recommended
    assert recipe["misalign_probability"] > 0
    assert card.architecture.organ_classes == 11  # the autoPET III organ classes, background included
    # A second card into the same folder is refused, and the first is left as it was.
    before = (tmp_path / "m" / CARD_NAME).read_bytes()
    assert main(["card", "--out", str(tmp_path / "m")]) != 0
    assert "a model card is already there" in capsys.readouterr().err
    assert (tmp_path / "m" / CARD_NAME).read_bytes() == before
