"""Cohort runs of `petseg predict`: manifests, parts, resuming, the status log, torchrun ranks, cuda:N."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import petseg.inference.pipeline
from petseg.app.cli import main
from petseg.io.parts import nested_part, take_part
from petseg.synthetic import generate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nnunet_cases(tmp_path_factory):
    """Five tiny cases in the nnU-Net layout: outputs OUT/<case>.nii.gz."""
    root = tmp_path_factory.mktemp("cohort")
    generate(root, cases=5, seed=31, size="tiny", layout="nnunet", progress=False)
    return root / "imagesTr"


@pytest.fixture(scope="module")
def unsharded(nnunet_cases, tiny_model_dir, tmp_path_factory):
    """The masks of one plain run over every case: what every other way of running must reproduce."""
    out = tmp_path_factory.mktemp("unsharded")
    assert main(_predict(nnunet_cases, out, tiny_model_dir)) == 0
    return _masks(out)


def _predict(source, out, model, *extra):
    given = ["--manifest", str(source)] if Path(source).suffix == ".csv" else ["--input", str(source)]
    return ["predict", *given, "--output", str(out), "--model", str(model), "--device", "cpu", "-q", *extra]


def _masks(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.nii.gz"))}


def _status(out):
    return [json.loads(line) for line in (Path(out) / "status.jsonl").read_text().splitlines()]


def test_parts_cover_every_case_once_whatever_the_order():
    ids = [f"case{i:02d}" for i in range(11)]
    parts = [take_part(ids, 3, k, key=str) for k in range(3)]
    assert sorted(i for p in parts for i in p) == ids
    assert [len(p) for p in parts] == [4, 4, 3]
    assert take_part(list(reversed(ids)), 3, 1, key=str) == parts[1]
    # rank r of R within part p of P is one part of P * R, and the ranks of a part cover it exactly
    within = [take_part(ids, *nested_part(3, 1, 2, r), key=str) for r in range(2)]
    assert sorted(i for p in within for i in p) == parts[1]


def test_the_union_of_the_parts_is_the_unsharded_run(nnunet_cases, unsharded, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    for part in range(3):  # three runs into one folder, as three array tasks would
        assert main(_predict(nnunet_cases, out, tiny_model_dir, "--parts", "3", "--part", str(part))) == 0
    assert _masks(out) == unsharded
    lines = _status(out)
    assert sorted(line["case"] for line in lines) == sorted(name[: -len(".nii.gz")] for name in unsharded)
    assert {line["outcome"] for line in lines} == {"done"}
    assert {line["part"] for line in lines} == {0, 1, 2}
    assert all(
        line["seconds"] > 0 and "predict" in line["stages"] and line["peak_rss_mb"] > 0 for line in lines
    )


def test_a_run_killed_mid_case_resumes_with_the_same_masks(
    nnunet_cases, unsharded, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    write = petseg.inference.pipeline.write_image
    calls = []

    def killed_in_the_second_write(image, path, compress=True):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C or a kill arriving while the second mask is written
        return write(image, path=path, compress=compress)

    monkeypatch.setattr(petseg.inference.pipeline, "write_image", killed_in_the_second_write)
    assert main(_predict(nnunet_cases, out, tiny_model_dir)) == 130
    assert len(_masks(out)) == 1
    assert [line["outcome"] for line in _status(out)] == ["done"]  # the interrupted case has no line

    monkeypatch.setattr(petseg.inference.pipeline, "write_image", write)
    assert main(_predict(nnunet_cases, out, tiny_model_dir)) == 0
    assert _masks(out) == unsharded
    outcomes = [line["outcome"] for line in _status(out)]
    assert outcomes == ["done", "skipped"] + ["done"] * (len(unsharded) - 1)
    assert f"{len(unsharded) - 1} done, 1 skipped, 0 failed" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.startswith(".petseg-partial")]


def _manifest_with_a_broken_case(cases, folder):
    """A manifest of `cases` (CT paths relative to the CSV, PET paths absolute) and a case "broken" whose
    PET is cut short."""
    manifest = folder / "cohort.csv"
    rows = ["case_id,ct,pet"]
    for pet in sorted(cases.glob("*_0001.nii.gz")):
        case = pet.name[: -len("_0001.nii.gz")]
        rows.append(f"{case},{os.path.relpath(pet.with_name(case + '_0000.nii.gz'), folder)},{pet}")
    broken = folder / "broken_0001.nii.gz"
    broken.write_bytes(pet.read_bytes()[:300])
    rows.append(f"broken,{cases / (case + '_0000.nii.gz')},broken_0001.nii.gz")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, broken


def test_a_corrupt_case_gets_a_failed_line_and_the_others_are_done(
    nnunet_cases, unsharded, tiny_model_dir, tmp_path, capsys
):
    manifest, broken = _manifest_with_a_broken_case(nnunet_cases, tmp_path)
    out = tmp_path / "out"

    assert main(_predict(manifest, out, tiny_model_dir)) == 3
    assert _masks(out) == unsharded  # a manifest's cases are written as the nnU-Net layout's
    lines = {line["case"]: line for line in _status(out)}
    assert len(lines) == len(unsharded) + 1
    assert lines["broken"]["outcome"] == "failed"
    assert lines["broken"]["exit_code"] == 3
    assert str(broken) in lines["broken"]["error"]
    assert all(line["outcome"] == "done" for name, line in lines.items() if name != "broken")
    err = capsys.readouterr().err
    assert "1 of 6 case(s) failed: broken" in err
    assert f"{len(unsharded)} done, 0 skipped, 1 failed" in err


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("case,ct,pet\n", "row 1: expected the header case_id,ct,pet"),
        ("case_id,ct,pet\na,missing_0000.nii.gz,missing_0001.nii.gz\n", "row 2: ct file"),
        ("case_id,ct,pet\na,x\n", "row 2: expected 3 columns"),
        ("case_id,ct,pet\n../a,x,y\n", "row 2: case_id '../a' cannot name an output file"),
        ("case_id,ct,pet\n\n", "the manifest lists no cases"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_csv_and_row(text, named, tmp_path, tiny_model_dir, capsys):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(text)
    assert main(_predict(manifest, tmp_path / "out", tiny_model_dir)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"petseg: error: {manifest}: {named}" + err[0].split(named, 1)[1]]
    assert not (tmp_path / "out").exists()


def test_a_duplicate_case_id_names_both_rows(nnunet_cases, tmp_path, tiny_model_dir, capsys):
    ct, pet = sorted(nnunet_cases.glob("*_0000.nii.gz"))[0], sorted(nnunet_cases.glob("*_0001.nii.gz"))[0]
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,ct,pet\na,{ct},{pet}\na,{ct},{pet}\n")
    assert main(_predict(manifest, tmp_path / "out", tiny_model_dir)) == 3
    assert f"{manifest}: row 3: case_id 'a' already in row 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--parts", "2"], "--parts and --part go together"),
        (["--parts", "2", "--part", "2"], "--part must be from 0 to 1 (--parts 2), got 2"),
        (["--parts", "0", "--part", "0"], "--parts must be at least 1, got 0"),
        (["--device", "gpu1"], "device must be one of auto, cuda, cpu or cuda:N"),
    ],
)
def test_bad_parts_and_devices_are_usage_errors(extra, named, nnunet_cases, tmp_path, tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_predict(nnunet_cases, tmp_path / "out", tiny_model_dir, *extra))
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_n_without_cuda_is_one_line(nnunet_cases, tmp_path, tiny_model_dir, capsys):
    args = _predict(nnunet_cases, tmp_path / "out", tiny_model_dir)
    args[args.index("cpu")] = "cuda:1"
    assert main(args) == 4
    err = capsys.readouterr().err
    assert err.endswith("petseg: error: --device cuda:1 was requested but no CUDA device is available\n")
    assert "Traceback" not in err


def test_two_torchrun_ranks_split_the_cases_and_a_failed_case_stops_neither(
    nnunet_cases, unsharded, tiny_model_dir, tmp_path
):
    manifest, _ = _manifest_with_a_broken_case(nnunet_cases, tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    command += ["-m", "petseg", *_predict(manifest, out, tiny_model_dir)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    # a rank exiting non-zero would make torchrun stop the other: failures are in the status log instead
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 0: 1 of 3 case(s) failed: broken" in result.stderr
    assert _masks(out) == unsharded
    lines = _status(out)
    assert len(lines) == len(unsharded) + 1
    assert [line["case"] for line in lines if line["outcome"] == "failed"] == ["broken"]
    by_rank = {rank: {line["case"] for line in lines if line["rank"] == rank} for rank in (0, 1)}
    assert len(by_rank[0]) == 3  # sorted ids dealt out in turn: broken, then every second case
    assert len(by_rank[1]) == 3
    assert not by_rank[0] & by_rank[1]
    assert {line["world_size"] for line in lines} == {2}
    assert len({line["pid"] for line in lines}) == 2


def test_a_broken_torchrun_environment_is_a_usage_error(
    nnunet_cases, tmp_path, tiny_model_dir, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(SystemExit) as exit_:
        main(_predict(nnunet_cases, tmp_path / "out", tiny_model_dir))
    assert exit_.value.code == 2
    assert "RANK 5 and LOCAL_RANK 5 must lie from 0 to 1 (WORLD_SIZE 2)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
