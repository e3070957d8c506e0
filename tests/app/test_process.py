"""The Grand-Challenge contract, end to end through process.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, all_files, recipe_card_text, run_process, write_gc_input

import petseg.app.runtime as runtime
from petseg.app.process import process_main
from petseg.io import MASK_FOLDER
from petseg.synthetic import make_case


def tracer_of(grid: str) -> str:
    return "fdg" if grid.startswith("fdg") else "psma"


def phantom_input(root: Path, grid="fdg-400", ct_own_grid=False, orientation=None, seed=3, lesion_free=False):
    phantom = make_case(
        seed=seed,
        index=0,
        tracer=tracer_of(grid),
        size="tiny",
        grid=grid,
        ct_own_grid=ct_own_grid,
        lesion_free=lesion_free,
    )
    ct, pet = phantom.ct, phantom.pet
    if orientation is not None:
        ct, pet = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(pet, orientation)
    return write_gc_input(root, ct, pet, "c0ffee00-ct", "5eed0000-pet"), pet


def assert_contract(output: Path, pet: sitk.Image) -> np.ndarray:
    files = all_files(output)
    masks = [p for p in files if p.suffix == ".mha"]
    assert [p.relative_to(output) for p in masks] == [MASK_FOLDER / "5eed0000-pet.mha"]
    assert sorted(p.name for p in files) == ["5eed0000-pet.mha", "data-centric-model.json"]
    assert json.loads((output / "data-centric-model.json").read_text()) is False
    mask = sitk.ReadImage(str(masks[0]))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == pet.GetSize()
    assert mask.GetSpacing() == pet.GetSpacing()
    assert mask.GetOrigin() == pet.GetOrigin()
    assert mask.GetDirection() == pet.GetDirection()
    values = sitk.GetArrayFromImage(mask)
    assert set(np.unique(values)) <= {0, 1}
    return values


CONTRACT_CASES = [
    ("fdg-400", False, None),
    ("fdg-400", True, None),
    ("psma-200", False, None),
    ("psma-256", True, None),
    ("psma-168", False, None),
    ("fdg-400", True, "PIR"),
]


@pytest.mark.parametrize(("grid", "ct_own_grid", "orientation"), CONTRACT_CASES)
def test_every_grid_honours_the_contract(tmp_path, tiny_model_dir, grid, ct_own_grid, orientation, capsys):
    input_dir, pet = phantom_input(tmp_path / "input", grid, ct_own_grid, orientation)
    code = process_main(
        ["--input", str(input_dir), "--output", str(tmp_path / "output"), "--model", str(tiny_model_dir)]
    )
    assert code == 0, capsys.readouterr().err
    assert_contract(tmp_path / "output", pet)


def test_process_py_runs_the_five_fold_ensemble_as_the_container_does(tmp_path, five_fold_model_dir):
    input_dir, pet = phantom_input(tmp_path / "input", "fdg-400", ct_own_grid=True, orientation="PIR")
    result = run_process(
        "--input", input_dir, "--output", tmp_path / "output", "--model", five_fold_model_dir
    )
    assert result.returncode == 0, result.stderr
    assert_contract(tmp_path / "output", pet)
    stages = [
        line.split("INFO", 1)[1].split()[0:2] for line in result.stderr.splitlines() if " INFO " in line
    ]
    named = [" ".join(words) if words[0] == "load" else words[0] for words in stages]
    for stage in ("load model", "read", "preprocess", "predict", "postprocess", "write"):
        assert stage in named, result.stderr
    assert "5 fold(s)" in result.stderr
    assert "UNTRAINED" in result.stderr
    assert "Traceback" not in result.stderr


def test_process_py_without_weights_says_how_to_get_them(tmp_path):
    input_dir, _ = phantom_input(tmp_path / "input")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(recipe_card_text())  # the card, no weights
    result = run_process("--input", input_dir, "--output", tmp_path / "output", "--model", model)
    assert result.returncode == 4
    assert "python -m training" in result.stderr
    assert "random-model" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("petseg: error:")
    assert all_files(tmp_path / "output") == []


def bad_inputs(root: Path):
    """(name, builder) pairs: each builder writes a broken /input under root."""

    def good(r):
        return phantom_input(r)[0]

    def missing(r):
        return r / "nowhere"

    def empty(r):
        (r / "images" / "ct").mkdir(parents=True)
        (r / "images" / "pet").mkdir(parents=True)
        return r

    def two_pets(r):
        good(r)
        sitk.WriteImage(
            sitk.ReadImage(str(next((r / "images" / "pet").iterdir()))), str(r / "images/pet/b.mha")
        )
        return r

    def lfs(r):
        good(r)
        pet = next((r / "images" / "pet").iterdir())
        pet.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
        return r

    def truncated(r):
        good(r)
        ct = next((r / "images" / "ct").iterdir())
        ct.write_bytes(ct.read_bytes()[:300])
        return r

    def flat(r):
        good(r)
        pet = next((r / "images" / "pet").iterdir())
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8), np.float32)), str(pet))
        return r

    def nan(r):
        good(r)
        pet_path = next((r / "images" / "pet").iterdir())
        pet = sitk.ReadImage(str(pet_path))
        values = sitk.GetArrayFromImage(pet)
        values[3, 3, 3] = np.nan
        broken = sitk.GetImageFromArray(values)
        broken.CopyInformation(pet)
        sitk.WriteImage(broken, str(pet_path))
        return r

    def apart(r):
        good(r)
        ct_path = next((r / "images" / "ct").iterdir())
        ct = sitk.ReadImage(str(ct_path))
        ct.SetOrigin([o + 3000.0 for o in ct.GetOrigin()])
        sitk.WriteImage(ct, str(ct_path))
        return r

    return {
        "missing": (missing, "images/ct: input folder not found"),
        "empty": (empty, "no image file"),
        "two_pets": (two_pets, "expected exactly one image, found 2"),
        "lfs": (lfs, "Git LFS pointer"),
        "truncated": (truncated, "cannot read CT image"),
        "flat": (flat, "PET image is 2D"),
        "nan": (nan, "NaN or infinite voxels"),
        "apart": (apart, "CT does not overlap the PET"),
    }


@pytest.mark.parametrize("name", list(bad_inputs(Path())))
def test_bad_input_gives_one_line_exit_3_and_no_output(tmp_path, tiny_model_dir, capsys, name):
    build, message = bad_inputs(tmp_path)[name]
    (tmp_path / "input").mkdir()
    input_dir = build(tmp_path / "input")
    code = process_main(
        ["--input", str(input_dir), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("petseg: error:")]
    assert code == 3
    assert len(errors) == 1
    assert message in errors[0]
    assert all_files(tmp_path / "out") == []


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path, tiny_model_dir):
    build, _ = bad_inputs(tmp_path)["lfs"]
    (tmp_path / "input").mkdir()
    result = run_process(
        "--input", build(tmp_path / "input"), "--output", tmp_path / "out", "--model", tiny_model_dir
    )
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("petseg: error:")
    assert all_files(tmp_path / "out") == []


def test_bqml_pet_is_warned_about_but_segmented(tmp_path, tiny_model_dir, capsys):
    phantom = make_case(seed=3, index=0, tracer="fdg", size="tiny", grid="fdg-400", ct_own_grid=False)
    input_dir = write_gc_input(tmp_path / "input", phantom.ct, phantom.pet * 5300.0, pet_name="5eed0000-pet")
    code = process_main(
        ["--input", str(input_dir), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    )
    assert code == 0
    assert "looks like Bq/ml" in capsys.readouterr().err
    assert_contract(tmp_path / "out", phantom.pet)


def test_model_folder_defaults_to_opt_ml_model_when_present(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setattr(runtime, "CONTAINER_MODEL_DIR", tmp_path / "absent")
    assert runtime.default_model_dir(REPO) == REPO / "model"
    monkeypatch.setattr(runtime, "CONTAINER_MODEL_DIR", tiny_model_dir)
    assert runtime.default_model_dir(REPO) == tiny_model_dir


def test_sigterm_during_inference_exits_cleanly_without_output(tmp_path):
    """docker stop mid-case: exit 143, one line, nothing in /output (not even a staging folder)."""
    from petseg.model.settings import EnsembleSettings
    from petseg.model.untrained import create_untrained_model

    model = tmp_path / "slow model"  # small windows, heavy overlap: the pass takes minutes
    create_untrained_model(model, folds=2, ensemble=EnsembleSettings(roi_size=(32, 32, 32), overlap=0.9))
    input_dir, _ = phantom_input(tmp_path / "input")
    output = tmp_path / "output"
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "process.py"),
            "--input",
            input_dir,
            "--output",
            output,
            "--model",
            model,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the preprocess line is logged once the network starts
            if "preprocess" in line:
                break
        time.sleep(1.0)
        assert process.poll() is None, "the case finished before it could be stopped"
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    assert rest.strip().splitlines()[-1] == "petseg: terminated (SIGTERM)"
    assert "Traceback" not in rest
    assert not output.exists() or all_files(output) == []
    assert not output.exists() or list(output.iterdir()) == []


def test_process_py_needs_no_network_and_writes_only_its_output(tmp_path, tiny_model_dir):
    """As in the container: socket creation fails, and nothing appears outside /output and the temp dir."""
    blocker = tmp_path / "no-network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import socket\n"
        "class _Blocked(socket.socket):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        raise OSError('network access attempted')\n"
        "socket.socket = _Blocked\n"
    )
    input_dir, _ = phantom_input(tmp_path / "input")
    home, work, scratch, output = (tmp_path / name for name in ("home", "cwd", "tmp", "output"))
    for folder in (home, work, scratch):
        folder.mkdir()
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(blocker),
        "HOME": str(home),
        "TMPDIR": str(scratch),
    }
    command = [sys.executable, str(REPO / "process.py"), "--input", input_dir, "--output", output]
    result = subprocess.run(
        [*command, "--model", str(tiny_model_dir), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.socket()"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert "network access attempted" in probe.stderr  # the blocker is really in place
    assert sorted(p.name for p in all_files(output)) == ["5eed0000-pet.mha", "data-centric-model.json"]
    assert all_files(home) == []
    assert all_files(work) == []


LATE_SIGTERM = """\
import os, signal, sys, tempfile
from petseg.app import process

real = tempfile.TemporaryDirectory.cleanup


def cleanup(self):  # the private caches' cleanup, after the outputs are complete: SIGTERM arrives now
    os.kill(os.getpid(), signal.SIGTERM)
    real(self)


tempfile.TemporaryDirectory.cleanup = cleanup
sys.exit(process.process_main(sys.argv[1:]))
"""


def test_a_sigterm_after_the_outputs_are_written_exits_143_without_a_traceback(tmp_path, tiny_model_dir):
    """The handler that turns SIGTERM into an exception ends with the run it guards: afterwards the signal
    ends the process as it would by default, and the complete outputs stay."""
    input_dir, _ = phantom_input(tmp_path / "input")
    output = tmp_path / "output"
    result = subprocess.run(
        [sys.executable, "-c", LATE_SIGTERM, "--input", str(input_dir), "--output", str(output),
         "--model", str(tiny_model_dir), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    assert sorted(p.name for p in all_files(output)) == ["5eed0000-pet.mha", "data-centric-model.json"]
