"""The `petseg` command line: batch prediction, model tools, the demo."""

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import all_files, recipe_card_text

from petseg.app.cli import build_parser, main
from petseg.io import MASK_FOLDER
from petseg.synthetic import generate


@pytest.fixture(scope="module")
def gc_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    generate(root, cases=3, seed=21, tracer="mixed", size="tiny", layout="gc", progress=False)
    return root


@pytest.fixture(scope="module")
def nnunet_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    generate(root, cases=2, seed=22, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    return root


def case_names(root):
    return sorted(p.name for p in root.iterdir() if (p / "input").is_dir())


def test_predict_gc_folder_writes_one_output_folder_per_case(tmp_path, gc_folder, tiny_model_dir):
    out = tmp_path / "out"
    assert (
        main(
            ["predict", "--input", str(gc_folder), "--output", str(out), "--model", str(tiny_model_dir), "-q"]
        )
        == 0
    )
    names = case_names(gc_folder)
    assert len(names) == 3
    for name in names:
        pet = next((gc_folder / name / "input" / "images" / "pet").iterdir())
        mask_path = out / name / MASK_FOLDER / pet.name
        mask = sitk.ReadImage(str(mask_path))
        reference = sitk.ReadImage(str(pet))
        assert mask.GetSize() == reference.GetSize()
        assert mask.GetOrigin() == reference.GetOrigin()
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert json.loads((out / name / "data-centric-model.json").read_text()) is False


def test_predict_nnunet_folder_names_masks_like_labels(tmp_path, nnunet_folder, tiny_model_dir):
    out = tmp_path / "out"
    args = ["predict", "--input", str(nnunet_folder), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*args, "--preview"]) == 0
    labels = sorted(p.name for p in (nnunet_folder / "labelsTr").iterdir())
    # beside the masks only the status log of the run (tests/app/test_cohort.py)
    assert sorted(p.name for p in all_files(out) if p.parent == out and p.name != "status.jsonl") == labels
    assert len((out / "status.jsonl").read_text().splitlines()) == len(labels)
    previews = sorted(p.name for p in (out / "preview").iterdir())
    assert previews == sorted(name.replace(".nii.gz", ".png") for name in labels)
    for name in labels:
        mask = sitk.ReadImage(str(out / name))
        label = sitk.ReadImage(str(nnunet_folder / "labelsTr" / name))
        assert mask.GetSize() == label.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), label.GetOrigin(), atol=1e-4)


def test_existing_outputs_are_kept_and_a_bad_case_does_not_stop_the_others(
    tmp_path, gc_folder, tiny_model_dir, capsys
):
    work = tmp_path / "cases"
    generate(work, cases=3, seed=21, tracer="mixed", size="tiny", layout="gc", progress=False)
    names = case_names(work)
    broken = next((work / names[1] / "input" / "images" / "pet").iterdir())
    broken.write_text("version https://git-lfs.github.com/spec/v1\n")
    out = tmp_path / "out"
    first_pet = next((work / names[0] / "input" / "images" / "pet").iterdir())
    kept = out / names[0] / MASK_FOLDER / first_pet.name
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an earlier result")
    (out / names[0] / "data-centric-model.json").write_text("false\n")  # a whole pair: done before

    code = main(["predict", "--input", str(work), "--output", str(out), "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert code == 3
    assert f"1 of 3 case(s) failed: {names[1]}" in err
    assert "Git LFS pointer" in err
    assert kept.read_bytes() == b"an earlier result"  # skipped, not overwritten
    assert (out / names[2] / MASK_FOLDER).is_dir()
    assert not (out / names[1]).exists()


def test_predict_on_a_folder_without_cases(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "nothing").mkdir()
    code = main(
        [
            "predict",
            "--input",
            str(tmp_path / "nothing"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model_dir),
        ]
    )
    assert code == 3
    assert "no cases found" in capsys.readouterr().err


def test_random_model_and_check_model(tmp_path, capsys):
    assert main(["random-model", "--out", str(tmp_path / "m"), "--folds", "2", "--seed", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "fold0.safetensors",
        "fold1.safetensors",
        "model.json",
    ]
    assert main(["check-model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "resunet-tiny" in out
    assert "NO (untrained)" in out
    assert "2 (fold0.safetensors, fold1.safetensors)" in out
    # The stored network's count, although the loaded folds have their batch norms folded away.
    from petseg.model.networks import build_network, count_parameters
    from petseg.model.settings import Architecture

    stored = count_parameters(build_network(Architecture("resunet-tiny")))
    assert f"({stored:,} parameters per fold)" in out


def test_check_model_reports_missing_weights(tmp_path, capsys):
    (tmp_path / "model.json").write_text(recipe_card_text())
    assert main(["check-model", str(tmp_path)]) == 4
    assert "fold weights not found" in capsys.readouterr().err


def test_phantoms_command_writes_cases(tmp_path):
    args = ["phantoms", "--out", str(tmp_path), "--cases", "2", "--seed", "1", "--size", "tiny", "-q"]
    assert main(args) == 0
    assert len(case_names(tmp_path)) == 2


def test_phantoms_command_takes_the_tracer_mix(tmp_path, capsys):
    args = [
        "phantoms",
        "--out",
        str(tmp_path / "a"),
        "--cases",
        "2",
        "--fdg-share",
        "1",
        "--size",
        "tiny",
        "-q",
    ]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "a" / "phantoms.json").read_text())
    assert {row["tracer"] for row in manifest["cases"]} == {"fdg"}
    assert main(["phantoms", "--out", str(tmp_path / "b"), "--fdg-share", "2", "-q"]) != 0
    assert "fdg_share must be a number from 0 to 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_module_entry_point_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "petseg", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("petseg ")


def test_demo_runs_end_to_end(tmp_path, capsys, tiny_model_dir):
    from petseg.synthetic.samples import write_samples

    # The sample cases in miniature: an untrained model marks so much of a whole body that it takes minutes.
    write_samples(tmp_path / "samples", size="tiny")
    args = ["demo", "--out", str(tmp_path / "a"), "--model", str(tiny_model_dir)]
    assert main([*args, "--input", str(tmp_path / "samples")]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out
    assert "2 case(s) from" in out
    masks = [p for p in all_files(tmp_path / "a" / "output") if p.suffix == ".mha"]
    assert len(masks) == 2
    assert len(list((tmp_path / "a" / "preview").glob("*.png"))) == 2


def test_demo_on_fresh_phantoms_with_a_model_lacking_weights(tmp_path, capsys):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "model.json").write_text(recipe_card_text())
    for weights in empty.glob("*.safetensors"):
        weights.unlink()
    args = ["demo", "--out", str(tmp_path / "b"), "--model", str(empty), "--phantoms", "1", "--size", "tiny"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED resunet-tiny ensemble" in captured.out
    assert "fold weights not found" in captured.err


def test_predict_writes_a_grand_challenge_pair_whole_and_redoes_a_half_one(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    """The JSON failing to write takes the mask back (no mask without its JSON), and a mask found without
    its JSON on a rerun is not taken for a finished case."""
    import petseg.io.files as pio

    work = tmp_path / "cases"
    generate(work, cases=1, seed=23, tracer="fdg", size="tiny", layout="gc", progress=False)
    (name,) = case_names(work)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(work), "--output", str(out), "--model", str(tiny_model_dir), "-q"]

    def full_disk(data, path):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pio, "_stage_json", full_disk)
        assert main(argv) == 5
    assert "No space left on device" in capsys.readouterr().err
    status = out / "status.jsonl"
    assert all_files(out) == [status]  # no half of the pair, only the failed case's status line
    assert json.loads(status.read_text())["outcome"] == "failed"

    assert main(argv) == 0
    pet = next((work / name / "input" / "images" / "pet").iterdir())
    mask, answer = out / name / MASK_FOLDER / pet.name, out / name / "data-centric-model.json"
    assert sorted(all_files(out)) == sorted([mask, answer, status])
    answer.unlink()  # a pair cut in half by an earlier petseg, or by hand
    mask.write_bytes(b"half of a pair")
    assert main(argv) == 0
    assert mask.read_bytes() != b"half of a pair"
    assert json.loads(answer.read_text()) is False


# ---------------------------------------------------------------- one convention for every command line


@pytest.mark.parametrize(
    ("entry", "argv", "named"),
    [
        ("petseg", ["evaluate", "--gt", "g", "--pred", "p", "--output", "o", "--no-rep"], "petseg evaluate"),
        ("petseg", ["predict", "--input", "i", "--output", "o", "--prev"], "petseg predict"),
        ("process", ["--prog"], "process.py"),
        ("training", ["export", "r", "--out", "m", "--synth"], "python -m training export"),
    ],
)
def test_abbreviations_are_refused_and_the_error_names_the_subcommand(entry, argv, named, capsys):
    from petseg.app.process import process_main
    from training.__main__ import main as training_main

    run = {"petseg": main, "process": process_main, "training": training_main}[entry]
    with pytest.raises(SystemExit) as raised:
        run(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {named} ")
    assert "unrecognized arguments" in err


def test_help_shows_defaults_and_output_has_one_name(capsys):
    with pytest.raises(SystemExit):
        main(["phantoms", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "number of cases (default: 10)" in text
    assert "--output DIR, --out DIR" in text
    parser = build_parser()
    for argv in (["random-model", "--out", "m"], ["random-model", "--output", "m"]):
        assert parser.parse_args(argv).output == Path("m")
    # The demo's folder of cases is --input, as in predict; --cases is a count everywhere.
    assert parser.parse_args(["demo", "--input", "cases"]).input == Path("cases")


def test_help_shows_a_list_default_as_the_command_line_takes_it(capsys):
    from training.__main__ import build_parser as training_parser

    with pytest.raises(SystemExit):
        training_parser().parse_args(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "probability thresholds for the lesion mask (default: 0.3 0.4 0.5 0.6)" in text
    assert "(default: none 0.4@6 0.4@9 0.5@6)" in text
    assert "(0.3," not in text


def test_check_model_on_the_cpu_does_not_warn_about_a_gpu(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["check-model", str(tiny_model_dir)]) == 0
    assert "GPU" not in caplog.text


@pytest.mark.parametrize("layout", ["gc", "nnunet"])
def test_phantoms_predict_and_evaluate_chain_in_either_layout(layout, tiny_model_dir, tmp_path):
    """What `phantoms` writes, `predict` reads, and what both write, `evaluate` scores: no renaming."""
    cases, predictions, scores = tmp_path / "cases", tmp_path / "pred", tmp_path / "scores"
    args = ["phantoms", "--output", str(cases), "--cases", "2", "--layout", layout, "--size", "tiny", "-q"]
    assert main(args) == 0
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert main(["predict", "--input", str(cases), "--output", str(predictions), *model, "-q"]) == 0
    assert (
        main(["evaluate", "--gt", str(cases), "--pred", str(predictions), "--output", str(scores), "-q"]) == 0
    )
    rows = (scores / "cases.csv").read_text().splitlines()
    assert len(rows) == 3  # the header and both cases
    if layout == "gc":  # the case folders hold the PET: lesion-level metrics without --pet
        assert "suvmax" in (scores / "lesions.csv").read_text().splitlines()[0]


def test_predict_takes_the_case_options_of_process_py(tiny_model_dir, tmp_path, capsys):
    """One set of inference options serves both: --tta, --time-budget and --threshold work in predict."""
    from petseg.app.process import process_parser

    def options(parser) -> set[str]:
        return {o for action in parser._actions for o in action.option_strings}

    predict = next(
        a.choices["predict"] for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    shared = {"--tta", "--time-budget", "--threshold", "--device", "--precision", "--compile", "--tracer"}
    assert shared <= options(predict)
    assert shared <= options(process_parser(tiny_model_dir))

    cases = tmp_path / "cases"
    generate(cases, cases=1, seed=3, tracer="fdg", size="tiny", layout="nnunet", progress=False)
    model = ["--model", str(tiny_model_dir), "--device", "cpu", "-q"]
    strict = ["--threshold", "1", "--tta", "auto", "--time-budget", "600"]
    assert main(["predict", "--input", str(cases), "--output", str(tmp_path / "none"), *model, *strict]) == 0
    (mask,) = (tmp_path / "none").glob("*.nii.gz")
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).any()  # nothing is above probability 1
    everything = ["--threshold", "0"]
    assert (
        main(["predict", "--input", str(cases), "--output", str(tmp_path / "all"), *model, *everything]) == 0
    )
    (mask,) = (tmp_path / "all").glob("*.nii.gz")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).any()
    with pytest.raises(SystemExit):
        main(["predict", "--input", str(cases), "--output", str(tmp_path / "x"), "--threshold", "1.5"])
    assert "must be from 0 to 1" in capsys.readouterr().err


def test_every_option_of_every_command_line_has_a_help_line(tiny_model_dir):
    from petseg.app.process import process_parser
    from petseg.app.server import server_parser
    from training.__main__ import build_parser as training_parser

    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    walk(sub, f"{name} {command}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "petseg")
    walk(training_parser(), "python -m training")
    walk(process_parser(tiny_model_dir), "process.py")
    walk(server_parser(tiny_model_dir), "app.py")
    assert missing == []


def test_quiet_predict_logs_no_line_per_stage_but_keeps_the_times(
    tmp_path, gc_folder, tiny_model_dir, capsys
):
    """A cohort with -q writes a summary, not six lines a case; status.jsonl keeps the times."""
    import re

    stage_line = re.compile(r": predict\s+\d+\.\d+ s")
    base = ["predict", "--input", str(gc_folder), "--model", str(tiny_model_dir)]
    assert main([*base, "--output", str(tmp_path / "loud")]) == 0
    assert len(stage_line.findall(capsys.readouterr().err)) == 3
    assert main([*base, "--output", str(tmp_path / "quiet"), "-q"]) == 0
    err = capsys.readouterr().err
    assert stage_line.findall(err) == []
    assert "summary: 3 done" in err
    statuses = [json.loads(line) for line in (tmp_path / "quiet" / "status.jsonl").read_text().splitlines()]
    assert len(statuses) == 3
    assert all(status["stages"]["predict"] > 0 for status in statuses)
