"""The trainer on tiny phantoms: run artefacts, exact resume, checkpoints, and two-process DDP."""

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

import training.trainer as trainer_module
from petseg.model.networks import build_network
from petseg.model.settings import Architecture
from petseg.synthetic import generate
from training.export import export
from training.trainer import TrainConfig, TrainingError, load_checkpoint, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    generate(root, cases=10, seed=31, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    return root


def config(dataset, out, **changes) -> TrainConfig:
    settings = {
        "data": dataset,
        "fold": 0,
        "out": out,
        "loss": "l1dfl",
        "arch": "resunet-tiny",
        "epochs": 2,
        "batch_size": 2,
        "patch_size": 32,
        "samples_per_epoch": 4,
        "val_every": 1,
        "window": 32,
        "overlap": 0.25,
        "sw_batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
        "cache_dir": dataset.parent / f"{dataset.name}-cache",
        "progress": False,
    }
    settings.update(changes)
    return TrainConfig(**settings)


def test_a_run_writes_its_log_checkpoints_curves_and_best_weights(dataset, tmp_path):
    result = train(config(dataset, tmp_path / "run"))
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(r["val_score"] != "" for r in rows)
    assert result.best_epoch in (1, 2)
    best = (run / "best.json").read_text()
    assert json.loads(best)["epoch"] == result.best_epoch
    assert "NaN" not in best
    assert (run / "curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    stored = json.loads((run / "run.json").read_text())
    assert stored["config"]["loss"] == "l1dfl"
    assert len(stored["dataset_fingerprint"]) == 16
    network = build_network(Architecture("resunet-tiny"))
    network.load_state_dict(load_file(str(run / "best.safetensors")))  # strict: the exported weights fit
    assert not list(run.glob(".*partial*"))


def test_an_interrupted_run_resumes_to_the_same_weights(dataset, tmp_path, monkeypatch):
    train(config(dataset, tmp_path / "straight"))
    straight = load_checkpoint(tmp_path / "straight")

    real_save = trainer_module.save_checkpoint

    def save_then_die(state, run_dir):
        real_save(state, run_dir)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(dataset, tmp_path / "interrupted"))
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "interrupted")["epoch"] == 0
    with pytest.raises(TrainingError, match="stopped after epoch 1 of 2; finish it with --resume"):
        export([tmp_path / "interrupted"], tmp_path / "model", checkpoint="last")
    assert not (tmp_path / "model" / "model.json").exists()

    train(config(dataset, tmp_path / "interrupted", resume=True))
    resumed = load_checkpoint(tmp_path / "interrupted")
    assert resumed["epoch"] == straight["epoch"] == 1
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["history"][-1]["train_loss"] == straight["history"][-1]["train_loss"]
    rows = list(csv.DictReader((tmp_path / "interrupted" / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]

    card = export([tmp_path / "interrupted"], tmp_path / "model", checkpoint="last")  # the final weights
    assert card.provenance["checkpoint"] == "last"
    assert card.provenance["checkpoint_epochs"] == {"fold0": 2}
    assert card.provenance["validation_score"]["fold0"] == pytest.approx(float(rows[-1]["val_score"]))
    exported = load_file(str(tmp_path / "model" / "fold0.safetensors"))
    assert exported.keys() == straight["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, exported[key]), key


def train_command(dataset, out, *extra):
    """`python -m training train` on the tiny phantoms: epochs of 48 patches, seconds long, to be cut."""
    return [
        sys.executable, "-m", "training", "train", "--data", str(dataset), "--fold", "0", "--out", str(out),
        "--arch", "resunet-tiny", "--loss", "l1dfl", "--epochs", "2", "--batch-size", "2",
        "--patch-size", "32", "--samples-per-epoch", "48", "--val-every", "2", "--window", "32",
        "--overlap", "0.25", "--sw-batch-size", "4", "--workers", "0", "--device", "cpu",
        "--cache", str(dataset.parent / f"{dataset.name}-cache"), "-q", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(dataset, tmp_path):
    """SIGKILL (no cleanup at all) during the second epoch: --resume continues from the first epoch's
    checkpoint and ends with exactly the weights of a run that was never stopped (same seed, CPU)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: same sums
    straight = subprocess.run(
        train_command(dataset, tmp_path / "straight"), capture_output=True, text=True, timeout=300,
        cwd=REPO, env=environment, check=False,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    child = subprocess.Popen(
        train_command(dataset, killed), stderr=subprocess.PIPE, text=True, cwd=REPO, env=environment
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:  # logged after the first epoch's checkpoint, as the second epoch starts
            if "epoch 1/2" in line:
                break
        time.sleep(0.5)  # a second epoch's 24 optimisation steps take seconds
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        child.kill()
    assert load_checkpoint(killed)["epoch"] == 0  # killed inside the second epoch: one epoch lost at most
    assert [int(r["epoch"]) for r in csv.DictReader((killed / "log.csv").open())] == [1]

    resumed = subprocess.run(
        train_command(dataset, killed, "--resume"), capture_output=True, text=True, timeout=300,
        cwd=REPO, env=environment, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 1/2" not in resumed.stderr  # the finished epoch is not trained again
    assert "epoch 2/2" in resumed.stderr
    want, got = load_checkpoint(tmp_path / "straight"), load_checkpoint(killed)
    assert got["epoch"] == want["epoch"] == 1
    for key, value in want["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert got["history"][-1]["train_loss"] == want["history"][-1]["train_loss"]
    assert [int(r["epoch"]) for r in csv.DictReader((killed / "log.csv").open())] == [1, 2]
    assert load_file(str(killed / "best.safetensors")).keys() == want["model"].keys()


def test_resume_refuses_other_settings_and_missing_runs(dataset, tmp_path):
    with pytest.raises(TrainingError, match="no run to resume"):
        train(config(dataset, tmp_path / "none", resume=True))
    train(config(dataset, tmp_path / "run", epochs=1))
    with pytest.raises(TrainingError, match="settings differ from the run being resumed: epochs, loss"):
        train(config(dataset, tmp_path / "run", epochs=2, loss="dfl", resume=True))
    with pytest.raises(TrainingError, match="use --resume"):
        train(config(dataset, tmp_path / "run", epochs=1))

    # A run started before a setting existed resumes as long as it asks for that setting's default.
    run_json = tmp_path / "run" / "run.json"
    record = json.loads(run_json.read_text())
    for added in ("arch_args", "hot_probability", "hot_suv"):
        del record["config"][added]
    run_json.write_text(json.dumps(record))
    train(config(dataset, tmp_path / "run", epochs=1, resume=True))
    with pytest.raises(TrainingError, match="settings differ from the run being resumed: hot_probability"):
        train(config(dataset, tmp_path / "run", epochs=1, hot_probability=0.5, resume=True))
    # One from before CT misalignment existed trained without it: it resumes without, not at today's default.
    record = json.loads(run_json.read_text())
    del record["config"]["misalign_probability"]
    run_json.write_text(json.dumps(record))
    with pytest.raises(TrainingError, match="differ from the run being resumed: misalign_probability"):
        train(config(dataset, tmp_path / "run", epochs=1, resume=True))
    train(config(dataset, tmp_path / "run", epochs=1, misalign_probability=0.0, resume=True))


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(dataset, tmp_path):
    run = tmp_path / "run"
    train(config(dataset, run))
    last = run / "checkpoint-last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    state = load_checkpoint(run)
    assert state["epoch"] == 0  # the previous checkpoint
    (run / "checkpoint-previous.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="no readable checkpoint"):
        load_checkpoint(run)


def test_bad_settings_are_one_line_errors(dataset, tmp_path):
    with pytest.raises(TrainingError, match="--patch-size 30 must be a multiple of 8"):
        train(config(dataset, tmp_path / "x", patch_size=30))
    with pytest.raises(TrainingError, match="--fold 7: the dataset has 5 folds"):
        train(config(dataset, tmp_path / "x", fold=7))
    with pytest.raises(TrainingError, match=r"--hot-probability must be in \[0, 1\], got 1.5"):
        train(config(dataset, tmp_path / "x", hot_probability=1.5))
    with pytest.raises(TrainingError, match="--lesion-sampling must be one of voxel, lesion, got blob"):
        train(config(dataset, tmp_path / "x", lesion_sampling="blob"))
    with pytest.raises(TrainingError, match=r"--misalign-probability must be in \[0, 1\], got 2.0"):
        train(config(dataset, tmp_path / "x", misalign_probability=2.0))
    with pytest.raises(TrainingError, match=r"--misalign-shift-voxels must be in \[0, 16\], got -1"):
        train(config(dataset, tmp_path / "x", misalign_shift_voxels=-1))
    with pytest.raises(
        TrainingError, match=r"--spacing-mm takes one positive value or three \(x y z\), got 4 0 4"
    ):
        train(config(dataset, tmp_path / "x", spacing_mm=(4.0, 0.0, 4.0)))


@pytest.mark.slow
def test_two_process_ddp_ranks_agree_on_the_validation_score(dataset, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
        "-m", "training", "train", "--data", str(dataset), "--fold", "1", "--out", str(tmp_path / "ddp"),
        "--arch", "resunet-tiny", "--loss", "l1dfl", "--epochs", "1", "--batch-size", "1",
        "--patch-size", "32", "--samples-per-epoch", "4", "--window", "32", "--overlap", "0.25",
        "--workers", "0", "--device", "cpu", "--cache", str(tmp_path / "cache"), "-q",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = dict(re.findall(r"rank (\d): epoch 1 val_score (\S+)", result.stderr))
    assert set(scores) == {"0", "1"}, result.stderr[-3000:]
    assert scores["0"] == scores["1"]
    rows = list(csv.DictReader((tmp_path / "ddp" / "log.csv").open()))
    assert len(rows) == 1  # only rank 0 writes
    assert float(rows[0]["val_score"]) == pytest.approx(float(scores["0"]), abs=1e-6)


def test_export_builds_a_card_from_the_runs_and_refuses_mixed_ensembles(
    dataset, tmp_path, capsys, caplog, tiny_fdg_input
):
    from petseg.app.process import process_main
    from petseg.inference.predict import Predictor
    from petseg.model.card import load_card

    runs = []
    for fold in (0, 1):
        train(config(dataset, tmp_path / f"fold{fold}", fold=fold, epochs=1))
        runs.append(tmp_path / f"fold{fold}")
    card = export(runs, tmp_path / "model", synthetic=True)
    assert [f.weights for f in card.folds] == ["fold0.safetensors", "fold1.safetensors"]
    # Not told, export still marks the card synthetic: the runs' own records say they trained on phantoms.
    # It warns that folds 2-4 of the five-fold split are missing, and about folds that barely learned.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petseg.training"):
        untold = export(runs, tmp_path / "untold")
    assert untold.provenance["synthetic"] is True
    # The card records the PET grids the folds were trained on, for inference to check cases against.
    assert untold.input_range is not None
    assert untold.input_range.cases == 10
    assert untold.provenance["phantoms"]["seed"] == 31
    assert "the card is marked synthetic" in caplog.text
    assert "has 2 of the 5 folds of its cross-validation (missing: 2, 3, 4)" in caplog.text
    low = [s for s in untold.provenance["validation_score"].values() if s is not None and s < 0.05]
    assert caplog.text.count("barely better than an empty mask") == len(low)
    assert card.trained
    assert card.provenance["loss"] == "l1dfl"
    assert card.provenance["epochs"] == 1
    assert set(card.provenance["validation_score"]) == {"fold0", "fold1"}
    # The card records what every fold was trained with (card version 2), and reads it back.
    assert card.training is not None
    assert (card.training["loss"], card.training["epochs"], card.training["patch_size"]) == ("l1dfl", 1, 32)
    assert not {"fold", "out", "data", "seed", "tracer"} & set(card.training)
    assert load_card(tmp_path / "model").training == card.training
    assert card.ensemble.roi_size == (32, 32, 32)
    predictor = Predictor.load(tmp_path / "model", device="cpu")  # the exported folder is a working model
    assert len(predictor.ensemble.networks) == 2

    sample = tiny_fdg_input
    assert (
        process_main(
            ["--input", str(sample), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "model")]
        )
        == 0
    )
    assert "SYNTHETIC phantoms" in capsys.readouterr().err

    train(config(dataset, tmp_path / "other", fold=2, epochs=1, loss="dfl"))
    with pytest.raises(TrainingError, match=r"settings differ .*: loss"):
        export([*runs, tmp_path / "other"], tmp_path / "mixed")
    with pytest.raises(TrainingError, match="repeat a fold"):
        export([runs[0], runs[0]], tmp_path / "twice")
    # Sampling settings must agree as well; one a run.json predates counts at its default.
    import json
    import shutil

    flipped = tmp_path / "flipped"
    shutil.copytree(runs[1], flipped)
    run_json = json.loads((flipped / "run.json").read_text())
    run_json["config"]["flip_probability"] = 0.5
    (flipped / "run.json").write_text(json.dumps(run_json))
    with pytest.raises(TrainingError, match=r"settings differ .*: flip_probability"):
        export([runs[0], flipped], tmp_path / "mixed")
    # Test-time mirrors follow training: left-right for left-right mirrored patches, none without.
    assert card.ensemble.mirror_axes == ()
    assert export([flipped], tmp_path / "lr").ensemble.mirror_axes == ((0,),)
    assert load_card(tmp_path / "lr").ensemble.mirror_axes == ((0,),)
    del run_json["config"]["flip_probability"]
    (flipped / "run.json").write_text(json.dumps(run_json))
    assert len(export([runs[0], flipped], tmp_path / "older").folds) == 2
    # The network grid is the card's preprocessing, and the folds of one ensemble share it.
    assert card.preprocessing.spacing_mm == (2.0, 2.0, 2.0)
    coarse = tmp_path / "coarse"
    shutil.copytree(runs[1], coarse)
    run_json = json.loads((coarse / "run.json").read_text())
    run_json["config"]["spacing_mm"] = [4.0, 4.0, 3.0]
    (coarse / "run.json").write_text(json.dumps(run_json))
    with pytest.raises(TrainingError, match=r"settings differ .*: spacing_mm"):
        export([runs[0], coarse], tmp_path / "mixed")
    assert export([coarse], tmp_path / "coarse-model").preprocessing.spacing_mm == (4.0, 4.0, 3.0)
    assert load_card(tmp_path / "coarse-model").preprocessing.spacing_mm == (4.0, 4.0, 3.0)
    with pytest.raises(TrainingError, match="not a training run"):
        export([tmp_path / "model"], tmp_path / "x")
    # A fold without a validation score (NaN: no validation case) is null in the card, which still loads.
    unscored = tmp_path / "unscored"
    shutil.copytree(runs[1], unscored)
    best = json.loads((unscored / "best.json").read_text())
    (unscored / "best.json").write_text(json.dumps({**best, "val_score": float("nan")}))
    exported = export([runs[0], unscored], tmp_path / "unscored-model")
    assert exported.provenance["validation_score"]["fold1"] is None
    assert exported.provenance["validation_score_mean"] == exported.provenance["validation_score"]["fold0"]
    assert load_card(tmp_path / "unscored-model").provenance["validation_score"]["fold1"] is None

    assert (card.ensemble.threshold, card.ensemble.grow_to_suvmax_fraction) == (0.5, None)  # by default
    tuned = export(runs, tmp_path / "tuned", threshold=0.7, grow_to_suvmax_fraction=0.4, grow_within_mm=5.0)
    assert load_card(tmp_path / "tuned").ensemble == tuned.ensemble
    assert (tuned.ensemble.threshold, tuned.ensemble.grow_to_suvmax_fraction) == (0.7, 0.4)
    assert tuned.ensemble.grow_within_mm == 5.0
    floored = export(runs, tmp_path / "floored", suv_floor={"fdg": 1.5, "psma": 1.0})
    assert load_card(tmp_path / "floored").ensemble.suv_floor == {"fdg": 1.5, "psma": 1.0}
    assert card.ensemble.suv_floor is None
    assert floored.ensemble.suv_floor == {"fdg": 1.5, "psma": 1.0}
    for bad, message in (
        ({"threshold": 1.5}, "threshold must be in"),
        ({"grow_to_suvmax_fraction": 0.0}, "grow_to_suvmax_fraction must be null or in"),
        ({"grow_within_mm": -1.0}, r"grow_within_mm must be in \[0.0, 100.0\]"),
        ({"grow_within_mm": 150.0}, r"grow_within_mm must be in \[0.0, 100.0\]"),  # a card could not load it
        ({"suv_floor": {"fgd": 1.5}}, "suv_floor must be null or an object keyed by fdg, psma, all"),
    ):
        with pytest.raises(TrainingError, match=message):
            export(runs, tmp_path / "bad", **bad)
        assert not (tmp_path / "bad").exists()  # refused before anything is written


# A demo recipe that runs in seconds: one epoch of small patches, two evaluation phantoms.
QUICK_DEMO = {
    "size": "tiny",
    "epochs": 1,
    "patch_size": 32,
    "batch_size": 2,
    "window": 32,
    "workers": 0,
    "evaluation_cases": 2,
    "evaluation_negatives": 1,
    "component_filter": None,  # one epoch gives no components worth a filter (fitted in test_components)
    "tune_lesion_free_fpv_ml": None,  # the tuning stage has its own test (test_tune), and one run below
}


def test_training_demo_trains_exports_and_marks_the_card_synthetic(tmp_path):
    from petseg.model.card import load_card
    from training.demo import DemoRecipe, run_training_demo
    from training.phantom_scores import dice_on_fresh_phantoms

    recipe = DemoRecipe(
        **{**QUICK_DEMO, "tune_lesion_free_fpv_ml": 1000.0},  # postprocessing chosen on selection phantoms
        cases=10,
        folds=2,
        samples_per_epoch=4,
        parallel=2,  # the folds train side by side, in spawned processes
        channels=(4, 8, 16, 32),  # the options the shipped recipe leaves off must reach the card
        hot_probability=0.5,
        lesion_sampling="lesion",
        misalign_probability=0.5,
        organ_weight=0.5,  # an organ head on the phantoms' own organ maps
        flip_probability=0.5,
        batch_dice=True,
        checkpoint="last",
        spacing_mm=(3.0, 3.0, 3.0),
        tracers=(),  # one ensemble for every case (the tracer-split demo has its own test)
        selection_cases=1,
        selection_negatives=1,
    )
    card = run_training_demo(tmp_path / "work", tmp_path / "model", recipe, progress=False)
    tuned = card.provenance["postprocessing_tuned"]
    assert tuned["cases"] == 2
    assert tuned["folder"] == f"selection-seed{recipe.selection_seed}-1-1"
    table = json.loads((tmp_path / "work" / "tuning" / "tuning.json").read_text())
    assert card.ensemble.threshold == table["chosen"]["threshold"]
    again = load_card(tmp_path / "model")
    assert again.provenance["synthetic"] is True
    assert again.provenance["trained_on"] == ["CPU (fp32)"]
    assert again.provenance["phantoms"]["seed"] == recipe.seed  # what fresh-phantom scoring checks against
    with pytest.raises(TrainingError, match="generated the training phantoms"):
        dice_on_fresh_phantoms(tmp_path / "model", seed=recipe.seed, cases=1)
    scores = dice_on_fresh_phantoms(tmp_path / "model", seed=recipe.seed + 1, cases=2)
    assert len(scores) == 2
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert again.architecture.name == "resunet-tiny"
    assert again.architecture.args == {"channels": list(recipe.channels)}
    assert again.provenance["sampling"]["hot_probability"] == 0.5
    assert again.provenance["sampling"]["flip_probability"] == 0.5
    assert again.provenance["sampling"]["lesion_sampling"] == "lesion"
    assert again.provenance["sampling"]["misalign_probability"] == 0.5
    assert again.architecture.organ_classes == 11
    run = json.loads((tmp_path / "work" / "fold1" / "run.json").read_text())["config"]
    assert (run["organs"], run["organ_weight"]) == (str(tmp_path / "work" / "phantoms" / "organsTr"), 0.5)
    assert again.provenance["loss_options"] == {"batch": True}
    assert again.provenance["checkpoint"] == "last"
    assert again.provenance["checkpoint_epochs"] == {"fold0": 1, "fold1": 1}
    # Every fold trained on the recipe's grid: the one cache the demo filled, and the card's preprocessing.
    assert again.preprocessing.spacing_mm == (3.0, 3.0, 3.0)
    caches = list((tmp_path / "work" / "phantoms" / ".petseg-cache").glob("*/settings.json"))
    assert [json.loads(c.read_text())["spacing_mm"] for c in caches] == [[3.0, 3.0, 3.0]]
    assert [f.fold for f in card.folds] == [0, 1]
    assert (tmp_path / "work" / "fold1" / "log.csv").exists()


def test_training_demo_trains_one_ensemble_per_tracer(tmp_path, caplog):
    from petseg.model.card import load_card
    from training.demo import DemoRecipe, run_training_demo
    from training.phantom_scores import dice_on_fresh_phantoms

    # Fold 0 validates on both tracers; the recipe's component filter is fitted after export.
    quick = {**QUICK_DEMO, "component_filter": DemoRecipe.component_filter}
    recipe = DemoRecipe(**quick, cases=16, folds=1, samples_per_epoch=2)
    assert recipe.tracers == ("fdg", "psma")  # the shipped recipe splits by tracer
    with caplog.at_level("WARNING", logger="petseg.training"):
        card = run_training_demo(tmp_path / "work", tmp_path / "model", recipe, progress=False)
    # One epoch may mark too little to teach the filter: then the demo says so and ships the folds alone.
    if card.component_filter is None:
        assert "the demo model has no component filter" in caplog.text
    else:
        assert set(card.component_filter.models) == {"fdg", "psma"}
    assert load_card(tmp_path / "model").component_filter == card.component_filter
    assert [(f.tracer, f.fold, f.weights) for f in card.folds] == [
        ("fdg", 0, "fdg-fold0.safetensors"),
        ("psma", 0, "psma-fold0.safetensors"),
    ]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "fdg-fold0",
        "phantom-scores.json",
        "phantoms",
        "psma-fold0",
    ]
    scores = json.loads((tmp_path / "work" / "phantom-scores.json").read_text())
    assert len(scores["fresh"]) == 2
    assert len(scores["negatives"]) == 1
    assert all(row["lesion_free"] and row["dice"] is None for row in scores["negatives"])
    classifier = load_card(tmp_path / "model").tracer_classifier
    assert classifier is not None
    assert classifier.training_cases == 16
    scores = dice_on_fresh_phantoms(tmp_path / "model", seed=recipe.seed + 1, cases=2)
    assert len(scores) == 2


def test_training_demo_command_line_reaches_the_recipe(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import training.demo
    from training.__main__ import main
    from training.demo import DemoRecipe

    seen = []

    def fake_demo(work, out, recipe, progress):
        seen.append(recipe)
        return SimpleNamespace(folds=[0], provenance={"validation_score": {"fold0": 0.5}})

    monkeypatch.setattr(training.demo, "run_training_demo", fake_demo)
    assert main(["demo", "--work", str(tmp_path), "--out", str(tmp_path / "m")]) == 0
    assert seen[-1] == DemoRecipe()
    flags = ["--flip-probability", "0.5", "--hot-probability", "0.3", "--batch-dice", "--epochs", "7"]
    flags += ["--organ-weight", "0.25", "--suv-floor", "fdg=1.5", "psma=1.0", "--component-filter", "none"]
    assert (
        main(["demo", "--work", str(tmp_path), "--out", str(tmp_path / "m"), *flags, "--spacing-mm", "2"])
        == 0
    )
    assert seen[-1] == DemoRecipe(
        flip_probability=0.5,
        hot_probability=0.3,
        batch_dice=True,
        epochs=7,
        spacing_mm=(2.0, 2.0, 2.0),
        organ_weight=0.25,
        suv_floor={"fdg": 1.5, "psma": 1.0},
        component_filter=None,
    )
    assert (
        main(["demo", "--work", str(tmp_path), "--out", str(tmp_path / "m"), "--component-filter", "0.3"])
        == 0
    )
    assert seen[-1] == DemoRecipe(component_filter=0.3)
    assert main(["demo", "--work", str(tmp_path), "--out", str(tmp_path / "m"), "--no-split-by-tracer"]) == 0
    assert seen[-1] == DemoRecipe(tracers=())
    assert "1 fold(s)" in capsys.readouterr().out
    # Run bare, it would have replaced the shipped model/: --out is required, and nothing runs without it.
    with pytest.raises(SystemExit) as raised:
        main(["demo", "--work", str(tmp_path)])
    assert raised.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert len(seen) == 4


def test_training_demo_refuses_a_bad_grid_before_generating_anything(tmp_path):
    from training.demo import DemoRecipe, run_training_demo

    with pytest.raises(TrainingError, match=r"--spacing-mm takes one positive value or three"):
        run_training_demo(tmp_path / "work", tmp_path / "model", DemoRecipe(spacing_mm=(2.0, -2.0, 2.0)))
    assert not (tmp_path / "work").exists()
    assert not (tmp_path / "model").exists()


def test_training_demo_refuses_phantoms_made_by_another_recipe(tmp_path):
    import json

    from petseg.synthetic import generate
    from training.demo import DemoRecipe, _check_phantoms, run_training_demo

    data = tmp_path / "work" / "phantoms"
    generate(data, cases=2, seed=100, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    with pytest.raises(TrainingError, match=r"other settings \(cases 2 \(recipe: 3\), fdg_share"):
        run_training_demo(
            tmp_path / "work", tmp_path / "model", DemoRecipe(cases=3, size="tiny"), progress=False
        )
    with pytest.raises(TrainingError, match=r"fdg_share 0.6 \(recipe: 0.5\)"):
        _check_phantoms(data, DemoRecipe(size="tiny", cases=2, fdg_share=0.5))
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["phantoms"]  # nothing trained
    assert not (tmp_path / "model").exists()

    _check_phantoms(data, DemoRecipe(size="tiny", cases=2, fdg_share=0.6))  # the same recipe reuses them
    manifest = json.loads((data / "phantoms.json").read_text())
    for option in ("fdg_share", "organs_dir", "organ_maps"):  # written before these options existed
        del manifest["arguments"][option]
    (data / "phantoms.json").write_text(json.dumps(manifest))
    _check_phantoms(data, DemoRecipe(size="tiny", cases=2, fdg_share=0.6))
    (data / "phantoms.json").write_text("{")
    with pytest.raises(TrainingError, match="cannot read the manifest"):
        _check_phantoms(data, DemoRecipe(size="tiny", cases=2, fdg_share=0.6))


def test_training_demo_refuses_a_selection_seed_it_trains_or_scores_on(tmp_path):
    from training.demo import DemoRecipe, run_training_demo
    from training.phantom_scores import EVALUATION_SEED

    for seed in (DemoRecipe.seed, EVALUATION_SEED):
        recipe = DemoRecipe(tune_lesion_free_fpv_ml=2.0, selection_seed=seed)
        with pytest.raises(TrainingError, match=f"selection seed {seed} is the training or the evaluation"):
            run_training_demo(tmp_path / "work", tmp_path / "model", recipe)
    with pytest.raises(TrainingError, match="FPV bound must be 0 ml or more"):
        run_training_demo(tmp_path / "work", tmp_path / "model", DemoRecipe(tune_lesion_free_fpv_ml=-1.0))
    assert not (tmp_path / "work").exists()  # refused before any phantom is generated


def test_training_demo_refuses_an_organ_head_without_organ_maps(tmp_path):
    import shutil

    from petseg.synthetic import generate
    from training.demo import DemoRecipe, run_training_demo

    with pytest.raises(TrainingError, match=r"the organ head's weight must be 0 \(none\) or more, got -1"):
        run_training_demo(tmp_path / "work", tmp_path / "model", DemoRecipe(organ_weight=-1.0))
    # The card's settings are refused before the hours of training, not at the export after them.
    with pytest.raises(TrainingError, match=r"suv_floor must be null or an object keyed by fdg, psma, all"):
        run_training_demo(tmp_path / "work", tmp_path / "model", DemoRecipe(suv_floor={"pet": 1.5}))
    with pytest.raises(TrainingError, match=r"minimum probability must be in \[0, 1\), got 1.5"):
        run_training_demo(tmp_path / "work", tmp_path / "model", DemoRecipe(component_filter=1.5))
    assert not (tmp_path / "work").exists()
    data = tmp_path / "work" / "phantoms"
    generate(data, cases=2, seed=100, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    shutil.rmtree(data / "organsTr")  # phantoms written before organ maps existed
    recipe = DemoRecipe(size="tiny", cases=2, fdg_share=0.6, organ_weight=1.0)
    with pytest.raises(TrainingError, match=r"organsTr: not found; these phantoms predate organ maps"):
        run_training_demo(tmp_path / "work", tmp_path / "model", recipe, progress=False)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["phantoms"]  # nothing trained


def test_git_commit_says_when_the_tree_differs_from_the_commit(tmp_path):
    import shutil
    import subprocess

    from training.trainer import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert git_commit(tmp_path) is None  # not a repository

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("ignored: not part of the code\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == f"{head}+modified"


def _loader_start_method() -> str:
    """How a DataLoader started in this process would start its workers (its default context)."""
    import multiprocessing

    return multiprocessing.get_context().get_start_method()


def test_fold_processes_start_their_loader_workers_as_this_process_does():
    from training.demo import fold_pool

    with fold_pool(1) as pool:
        child = pool.submit(_loader_start_method).result()
    assert child == _loader_start_method()  # not "spawn", the pool's own method


def test_export_command_passes_the_inference_settings(tmp_path, capsys):
    from training.__main__ import build_parser, main

    argv = ["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]
    args = build_parser().parse_args([*argv, "--threshold", "0.7", "--grow-to-suvmax-fraction", "0.4"])
    assert (args.threshold, args.grow_to_suvmax_fraction, args.grow_within_mm) == (0.7, 0.4, 6.0)
    assert main([*argv, "--threshold", "1.5"]) == TrainingError.exit_code
    assert "export: ensemble.threshold must be in [0.0, 1.0], got 1.5" in capsys.readouterr().err
    assert main([*argv, "--grow-to-suvmax-fraction", "0.4"]) == TrainingError.exit_code
    assert "not a training run" in capsys.readouterr().err  # the settings were fine: the run was read
    floors = build_parser().parse_args([*argv, "--suv-floor", "fdg=1.5", "psma=1"])
    assert floors.suv_floor == [("fdg", 1.5), ("psma", 1.0)]
    assert main([*argv, "--suv-floor", "all=-2"]) == TrainingError.exit_code
    assert "export: ensemble.suv_floor.all must be in [0.0, 20.0], got -2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--suv-floor", "fdg:1.5"])
    assert "expected TRACER=SUV (e.g. fdg=1.5), got 'fdg:1.5'" in capsys.readouterr().err


def test_network_overrides_reach_the_card_and_must_agree_across_folds(dataset, tmp_path, capsys, monkeypatch):
    from petseg.inference.predict import Predictor
    from training.__main__ import main

    narrow = {"channels": [4, 8, 16, 32]}
    runs = []
    for fold in (0, 1):
        train(config(dataset, tmp_path / f"fold{fold}", fold=fold, epochs=1, arch_args=narrow))
        runs.append(tmp_path / f"fold{fold}")
    card = export(runs, tmp_path / "model")
    assert card.architecture.args == narrow
    # With a minimum probability, export hands the written model and the runs' dataset to the fit.
    import training.export

    fits = []
    monkeypatch.setattr(training.export, "fit_components", lambda *args, **kw: fits.append(args) or card)
    export(runs, tmp_path / "filtered", component_filter=0.3)
    assert fits == [(tmp_path / "filtered", dataset, 0.3)]
    predictor = Predictor.load(tmp_path / "model", device="cpu")  # weights fit the card's network
    first = predictor.ensemble.networks[0]
    assert sum(p.numel() for p in first.parameters()) < 50_000  # the narrow network, not the default
    train(config(dataset, tmp_path / "default", fold=2, epochs=1))
    with pytest.raises(TrainingError, match=r"settings differ .*: arch_args"):
        export([*runs, tmp_path / "default"], tmp_path / "mixed")

    base = ["train", "--data", str(dataset), "--fold", "0", "--out", str(tmp_path / "cli")]
    assert main([*base, "--arch-args", "{channels: 4}"]) == TrainingError.exit_code
    assert "--arch-args is not valid JSON" in capsys.readouterr().err
    assert main([*base, "--arch-args", "[4, 8]"]) == TrainingError.exit_code
    assert "--arch-args must be a JSON object" in capsys.readouterr().err


def test_batch_dice_flag_reaches_the_loss_options_and_only_for_dice_losses(tmp_path, capsys):
    from training.__main__ import _loss_options, build_parser, main

    base = ["train", "--data", str(tmp_path), "--fold", "0", "--out", str(tmp_path / "run")]
    args = build_parser().parse_args([*base, "--loss", "dfl", "--batch-dice"])
    assert _loss_options(args, args.loss) == {"batch": True}
    assert _loss_options(build_parser().parse_args([*base, "--loss", "dl"]), "dl") == {}
    assert main([*base, "--loss", "gdfl", "--batch-dice"]) == TrainingError.exit_code
    assert "--batch-dice applies to the dl and dfl losses, not gdfl" in capsys.readouterr().err


def test_train_patch_options_reach_the_config(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import training.trainer
    from training.__main__ import main

    seen = []

    def fake_train(config):
        seen.append(config)
        return SimpleNamespace(best_score=0.5, best_epoch=1)

    monkeypatch.setattr(training.trainer, "train", fake_train)
    base = ["train", "--data", str(tmp_path), "--fold", "0", "--out", str(tmp_path / "run")]
    base += ["--organs", "none"]
    assert main(base) == 0
    assert (seen[-1].flip_probability, seen[-1].hot_probability) == (0.0, 0.0)
    assert main([*base, "--flip-probability", "0.5", "--hot-probability", "0.25"]) == 0
    assert (seen[-1].flip_probability, seen[-1].hot_probability) == (0.5, 0.25)
    assert seen[-1].spacing_mm == (2.0, 2.0, 2.0)  # the seed recipe's grid by default
    assert main([*base, "--spacing-mm", "4"]) == 0
    assert seen[-1].spacing_mm == (4.0, 4.0, 4.0)
    assert main([*base, "--spacing-mm", "4", "4", "3"]) == 0
    assert seen[-1].spacing_mm == (4.0, 4.0, 3.0)
    calls = len(seen)
    assert main([*base, "--spacing-mm", "4", "3"]) == 6
    printed = capsys.readouterr()
    assert "--spacing-mm takes one positive value or three (x y z), got 4 3" in printed.err
    assert len(seen) == calls  # refused before training
    assert "best validation score 0.5000 at epoch 1" in printed.out


class _PlantedCode:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 3, "payload": _PlantedCode(str(marker))}, run / "checkpoint-last.pt")
    with pytest.raises(TrainingError, match="no readable checkpoint") as error:
        load_checkpoint(run)
    assert "checkpoint-last.pt" in str(error.value)
    assert not marker.exists()


def test_a_figure_without_a_value_is_null_in_best_json_and_the_log_says_why(tmp_path, caplog):
    """A fold whose validation cases all have lesions has no FPV: best.json holds null (valid JSON), the
    log shows "-" and says once why, and export still reads the run."""
    from training.trainer import _save_best, describe_validation

    network = build_network(Architecture("resunet-tiny"))
    row = {"epoch": 3, "train_loss": 0.5, "val_score": 0.4, "val_dice": 0.4, "val_fnv_ml": 1.0}
    _save_best(network, tmp_path, 3, {**row, "val_fpv_ml": float("nan")})
    text = (tmp_path / "best.json").read_text()
    assert (
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in best.json"))["val_fpv_ml"]
        is None
    )
    shown, why = describe_validation({**row, "val_fpv_ml": float("nan")})
    assert "val_fpv_ml -" in shown
    assert "no lesion-free case" in why
    assert describe_validation({**row, "val_fpv_ml": 2.0}) == (
        "val_score 0.4000  val_dice 0.4000  val_fpv_ml 2.0000",
        "",
    )


def test_augmentation_on_the_training_device_trains_and_resumes_exactly(
    dataset, tmp_path, monkeypatch, caplog
):
    """`augment_on device`: the loader only crops and the batch is augmented where it lies (here the CPU);
    the epoch's seed drives it, so an interrupted run resumes to the same weights."""
    with caplog.at_level("INFO", logger="petseg.training"):
        train(config(dataset, tmp_path / "straight", augment_on="device"))
    assert "augmentation on the training device" in caplog.text
    straight = load_checkpoint(tmp_path / "straight")
    real_save = trainer_module.save_checkpoint

    def save_then_die(state, run_dir):
        real_save(state, run_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(dataset, tmp_path / "interrupted", augment_on="device"))
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    train(config(dataset, tmp_path / "interrupted", augment_on="device", resume=True))
    resumed = load_checkpoint(tmp_path / "interrupted")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    in_loader = load_checkpoint(tmp_path / "straight")  # the loader's augmentation draws differently
    train(config(dataset, tmp_path / "loader", augment_on="loader"))
    loader_weights = load_checkpoint(tmp_path / "loader")["model"]
    assert any(not torch.equal(value, loader_weights[key]) for key, value in in_loader["model"].items())


def test_the_card_names_the_phantoms_organ_maps_by_their_folder_only():
    from training.export import card_phantoms

    arguments = {"cases": 80, "seed": 100, "organs_dir": "/data/maps/autopet3-organs", "organ_maps": "train"}
    assert card_phantoms(arguments) == {**arguments, "organs_dir": "autopet3-organs"}
    assert card_phantoms({"cases": 8, "organs_dir": None}) == {"cases": 8, "organs_dir": None}


def test_training_reads_torchruns_environment_as_predict_does(monkeypatch):
    from petseg.errors import InputError
    from training.distributed import Distributed, init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed() == Distributed()  # not launched by torchrun: one process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() == Distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match=r"RANK 2 and LOCAL_RANK 2 must lie from 0 to 1"):
        init_distributed()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="torchrun's environment"):
        init_distributed()


class _Constant(torch.nn.Module):
    """A network whose every voxel is background (or every voxel lesion)."""

    def __init__(self, lesion: bool) -> None:
        super().__init__()
        self.sign = 1.0 if lesion else -1.0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.sign * 10.0 + 0.0 * self.weight
        return torch.stack([-logit * torch.ones_like(x[:, 0]), logit * torch.ones_like(x[:, 0])], dim=1)


def test_validation_says_when_the_network_marks_nothing_where_there_are_lesions(dataset, tmp_path):
    from petseg.model.settings import PreprocessSettings
    from training.data import PreprocessedCache, discover_dataset
    from training.distributed import init_distributed
    from training.trainer import network_spacing, training_device, validate

    run = config(dataset, tmp_path / "run")
    records = discover_dataset(dataset)[:3]
    cache = PreprocessedCache(run.cache_dir, PreprocessSettings(spacing_mm=network_spacing(run.spacing_mm)))
    cache.prepare(records, progress=False)
    compute, dist = training_device("cpu"), init_distributed()
    empty = validate(_Constant(lesion=False), records, cache, run.ensemble, compute, dist)
    assert empty["val_marks_nothing"] == 1.0
    assert empty["val_dice"] == 0.0
    everything = validate(_Constant(lesion=True), records, cache, run.ensemble, compute, dist)
    assert everything["val_marks_nothing"] == 0.0


def test_a_collapsed_epoch_is_never_the_best_one_and_the_log_says_why(dataset, tmp_path, monkeypatch, caplog):
    rows = iter([
        {"val_score": 0.10, "val_dice": 0.10, "val_fnv_ml": 1.0, "val_fpv_ml": 2.0, "val_marks_nothing": 0.0},
        {"val_score": 0.50, "val_dice": 0.00, "val_fnv_ml": 3.0, "val_fpv_ml": 0.0, "val_marks_nothing": 1.0},
    ])  # fmt: skip
    monkeypatch.setattr(trainer_module, "validate", lambda *args: next(rows))
    with caplog.at_level("WARNING", logger="petseg.training"):
        result = train(config(dataset, tmp_path / "run", loss="dfl"))
    assert (result.best_epoch, result.best_score) == (1, 0.10)  # epoch 2's higher score marks nothing
    assert "epoch 2: the network marks no voxel in any validation case with lesions" in caplog.text
    assert "--batch-dice" in caplog.text
    logged = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [r["val_score"] for r in logged] == ["0.1", "0.5"]
