"""`petseg evaluate`: matching, geometry checks, the numbers in the CSVs and the summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.app.cli import main
from petseg.evaluation.metrics import case_scores, evaluate_case

SPACING_XYZ = (2.0, 2.0, 3.0)


def image(array: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    return result


def write(folder: Path, name: str, array: np.ndarray, **geometry) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sitk.WriteImage(image(array, **geometry), str(path))
    return path


def make_cases(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Three cases: two lesions (one found), one lesion found exactly, lesion-free with a false positive."""
    rng = np.random.default_rng(0)
    shape = (12, 16, 16)  # z, y, x
    cases = {}
    truth = np.zeros(shape, np.uint8)
    truth[2:4, 2:5, 2:5] = 1
    truth[8:10, 10:13, 10:13] = 1
    prediction = np.zeros_like(truth)
    prediction[2:4, 3:6, 2:5] = 1
    cases["case_a"] = truth, prediction
    truth = np.zeros(shape, np.uint8)
    truth[5:7, 5:8, 5:8] = 1
    cases["case b"] = truth, truth.copy()
    truth = np.zeros(shape, np.uint8)
    prediction = np.zeros_like(truth)
    prediction[1, 1, 1:3] = 1
    cases["case_c"] = truth, prediction
    result = {}
    for index, (name, (truth, prediction)) in enumerate(cases.items()):
        pet = rng.gamma(2.0, 0.5, shape).astype(np.float32) + 5.0 * truth
        extension = ".nii.gz" if index == 1 else ".mha"
        write(root / "gt", name + extension, truth)
        write(root / "pred", name + ".mha", prediction)
        write(root / "pet", name + ("_0001.nii.gz" if index == 2 else ".mha"), pet)
        result[name] = truth, prediction, pet
    return result


def evaluate_argv(root: Path, out: Path) -> list[str]:
    """`petseg evaluate` on the ground truths and predictions of `make_cases(root)`, quietly."""
    return ["evaluate", "--gt", str(root / "gt"), "--pred", str(root / "pred"), "--out", str(out), "-q"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: str) -> float:
    return math.nan if text == "" else float(text)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_numbers_equal_the_metrics(tmp_path, capsys, workers):
    cases = make_cases(tmp_path)
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main([*argv, "--pet", str(tmp_path / "pet"), "--workers", workers]) == 0
    rows = {row["case"]: row for row in read_csv(out / "cases.csv")}
    assert list(rows) == sorted(cases)
    spacing_zyx = SPACING_XYZ[::-1]
    voxel_ml = float(np.prod(SPACING_XYZ)) / 1000
    lesion_rows = read_csv(out / "lesions.csv")
    for name, (truth, prediction, pet) in cases.items():
        want = case_scores(prediction, truth, voxel_ml)
        full = evaluate_case(prediction.astype(bool), truth.astype(bool), spacing_zyx, pet)
        row = rows[name]
        for column, value in [
            ("dice", want.dice),
            ("fpv_ml", want.fpv_ml),
            ("fnv_ml", want.fnv_ml),
            ("lesion_dice", full.lesion_dice),
            ("f1", full.detection.f1),
            ("tmtv_ml", full.lesions.tmtv_ml),
            ("dmax_mm", full.lesions.dmax_mm),
        ]:
            got = number(row[column])
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-5), (
                name,
                column,
            )
        assert int(row["tp"]) == full.detection.tp
        assert int(row["lesion_count"]) == full.lesions.count
        assert sum(1 for r in lesion_rows if r["case"] == name) == full.lesions.count
    assert rows["case b"]["dice"] == "1"
    assert rows["case_c"]["dice"] == ""  # lesion-free: NaN, scored by FPV only
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3
    assert summary["lesion_free_cases"] == 1
    dice_values = [number(rows[n]["dice"]) for n in ("case_a", "case b")]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice_values), rel=1e-5)
    assert summary["metrics"]["dice"]["n"] == 2
    assert "dice" in capsys.readouterr().out


def test_without_pet_there_are_no_lesion_level_columns(tmp_path):
    make_cases(tmp_path)
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main(argv) == 0
    header = (out / "cases.csv").read_text().splitlines()[0].split(",")
    assert header == ["case", "dice", "fpv_ml", "fnv_ml", "lesion_dice", "lesion_count"]
    assert (out / "lesions.csv").read_text().strip() == "case,lesion,mtv_ml,suvmax,suvmean,dice"


def test_missing_prediction_is_an_error_unless_scored_as_empty(tmp_path, capsys):
    make_cases(tmp_path)
    (tmp_path / "pred" / "case b.mha").unlink()
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main(argv) == 3
    assert "no prediction for case 'case b'" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--missing-as-empty"]) == 0
    rows = {row["case"]: row for row in read_csv(out / "cases.csv")}
    assert rows["case b"]["dice"] == "0"


def test_a_prediction_on_another_grid_is_an_error(tmp_path, capsys):
    cases = make_cases(tmp_path)
    write(tmp_path / "pred", "case_a.mha", cases["case_a"][1], origin=(0.0, 0.0, 6.0))
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "case_a.mha: not on the grid of case_a.mha: origin" in err
    assert not (out / "cases.csv").exists()


def test_non_binary_prediction_is_an_error(tmp_path, capsys):
    cases = make_cases(tmp_path)
    write(tmp_path / "pred", "case_a.mha", cases["case_a"][1] * 2)
    assert main(evaluate_argv(tmp_path, tmp_path / "o")) == 3
    assert "not a binary mask" in capsys.readouterr().err


def test_meta_subsets(tmp_path, capsys):
    make_cases(tmp_path)
    meta = tmp_path / "meta.csv"
    meta.write_text("case,tracer,centre\ncase_a,fdg,tue\ncase b,psma,lmu\ncase_c,psma,lmu\n")
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main([*argv, "--meta", str(meta)]) == 0
    subsets = json.loads((out / "summary.json").read_text())["subsets"]
    assert set(subsets) == {"fdg/tue", "psma/lmu"}
    assert subsets["psma/lmu"]["cases"] == 2
    assert subsets["psma/lmu"]["dice"] == pytest.approx(1.0)  # the lesion-free case has no Dice
    meta.write_text("case,tracer,centre\ncase_a,fdg,tue\n")
    assert main([*argv, "--meta", str(meta)]) == 3
    assert "meta.csv: no row for case(s): case b, case_c" in capsys.readouterr().err


def test_compare_writes_every_set_ranks_them_and_tests_the_reference(tmp_path, capsys):
    cases = make_cases(tmp_path)
    for name, (truth, _prediction, _pet) in cases.items():
        write(tmp_path / "perfect", name + ".mha", truth)  # a second set: every mask exact
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main([*argv, "--pet", str(tmp_path / "pet"), "--compare", str(tmp_path / "perfect")]) == 0
    perfect = {row["case"]: row for row in read_csv(out / "cases-perfect.csv")}
    assert perfect["case_a"]["dice"] == "1"
    comparison = json.loads((out / "summary.json").read_text())["comparison"]
    assert comparison["sets"] == ["pred", "perfect"]
    assert comparison["ranking"]["rank"] == {"perfect": 1, "pred": 2}
    assert {(t["other"], t["metric"]) for t in comparison["wilcoxon"]} == {
        ("perfect", "dice"),
        ("perfect", "fpv_ml"),
        ("perfect", "fnv_ml"),
    }
    assert "rank 1: perfect" in capsys.readouterr().out
    assert main([*argv, "--compare", str(tmp_path / "pred")]) == 3
    assert "two prediction folders are named 'pred'" in capsys.readouterr().err


def test_summary_holds_the_stratified_evaluation(tmp_path):
    make_cases(tmp_path)
    out = tmp_path / "out"
    argv = evaluate_argv(tmp_path, out)
    assert main([*argv, "--pet", str(tmp_path / "pet")]) == 0
    stratified = json.loads((out / "summary.json").read_text())["stratified"]
    assert stratified["single"]["cases"] == 1  # case b
    assert stratified["multiple"]["cases"] == 1  # case_a
    assert len(stratified["multiple"]["dmax_quartiles"]) == 4
    assert stratified["all"]["lesions"] == 3
    assert stratified["all"]["mtv_thresholds"][0]["count"] == 3
    # sorted by case: "case b" found exactly; case_a: 12 of 18 + 18 voxels shared, its second lesion missed
    assert [float(row["dice"]) for row in read_csv(out / "lesions.csv")] == pytest.approx([1.0, 2 / 3, 0.0])


def test_case_names_that_a_spreadsheet_would_run_as_formulas_are_escaped(tmp_path):
    """A case file named `=HYPERLINK(...)` must reach cases.csv as text, not as a formula."""
    from petseg.evaluation.evaluate import _csv

    rows = [
        {"case": '=HYPERLINK("http://x")', "dice": -0.5},
        {"case": "+1", "dice": 0.25},
        {"case": "@SUM(A1)", "dice": float("nan")},
        {"case": "fdg_0a1b  case", "dice": 1.0},
    ]
    written = list(csv.DictReader(_csv(rows, ["case", "dice"]).splitlines()))
    assert [row["case"] for row in written] == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'@SUM(A1)",
        "fdg_0a1b  case",
    ]
    assert [row["dice"] for row in written] == ["-0.5", "0.25", "", "1"]  # numbers stay numbers
