"""scripts/slurm/predict-array.sh: array task K of N runs `petseg predict --parts N --part K`, with one
math-library thread per allocated core, and refuses what would segment a cohort only in part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "slurm" / "predict-array.sh"


def _run(tmp_path, **env):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    fake = tmp_path / "python"  # stands in for the interpreter: prints what petseg would be run with
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "print(' '.join(sys.argv[1:]))\n"
        "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))\n"
    )
    fake.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_", "MKL_"))}
    environment.update(PETSEG_PYTHON=str(fake), **env)
    return subprocess.run(
        ["bash", str(SCRIPT), "--input", "cohort", "--output", "masks"],
        capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip


def test_a_task_runs_its_part_with_a_thread_per_allocated_core(tmp_path):
    done = _run(tmp_path, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8", SLURM_CPUS_PER_TASK="4")
    assert done.returncode == 0, done.stderr
    command, threads = done.stdout.splitlines()
    assert command == "-m petseg predict --parts 8 --part 3 --quiet --input cohort --output masks"
    assert threads == "4 4"
    kept = _run(
        tmp_path,
        SLURM_ARRAY_TASK_ID="0",
        SLURM_ARRAY_TASK_COUNT="2",
        SLURM_CPUS_PER_TASK="4",
        OMP_NUM_THREADS="1",
    )
    assert kept.stdout.splitlines()[1] == "1 4"  # a thread count the user set is kept
    unset = _run(tmp_path, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2")
    assert unset.stdout.splitlines()[1] == "None None"  # no allocation named: the libraries decide


def test_a_gapped_array_or_a_plain_run_is_refused(tmp_path):
    gapped = _run(
        tmp_path, SLURM_ARRAY_TASK_ID="7", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="3",
        SLURM_ARRAY_TASK_MAX="7",
    )  # fmt: skip
    assert gapped.returncode == 2
    assert "without gaps" in gapped.stderr
    assert gapped.stdout == ""
    plain = _run(tmp_path)
    assert plain.returncode == 2
    assert "run it as a job array" in plain.stderr
