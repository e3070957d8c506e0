"""`python -m training prepare`: the cache filled in parts and by processes that meet on the same cases."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from petseg.synthetic import generate
from training.__main__ import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    generate(root, cases=4, seed=41, size="tiny", layout="nnunet", progress=False)
    return root


def _entries(cache):
    return {p.relative_to(cache): p for p in sorted(Path(cache).rglob("*.npz"))}


def _assert_same_cache(cache, reference):
    entries, expected = _entries(cache), _entries(reference)
    assert sorted(entries) == sorted(expected)
    for name, path in expected.items():
        with np.load(path) as want, np.load(entries[name]) as got:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key])


def _prepare(dataset, cache, *extra):
    return ["prepare", "--data", str(dataset), "--cache", str(cache), "--spacing-mm", "4", "-q", *extra]


@pytest.fixture(scope="module")
def one_run(dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("one")
    assert main(_prepare(dataset, cache, "--workers", "1")) == 0
    return cache


def test_one_run_caches_every_case(dataset, one_run):
    assert len(_entries(one_run)) == len(list((dataset / "labelsTr").glob("*.nii.gz")))


def test_parts_fill_what_one_run_fills(dataset, one_run, tmp_path, capsys):
    for part in range(3):
        assert main(_prepare(dataset, tmp_path, "--workers", "1", "--parts", "3", "--part", str(part))) == 0
    _assert_same_cache(tmp_path, one_run)
    assert "part 2 of 3: 1 of 4" in capsys.readouterr().out


def test_two_processes_on_the_same_cases_agree_with_one(dataset, one_run, tmp_path):
    command = [sys.executable, "-m", "training", *_prepare(dataset, tmp_path, "--workers", "2")]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    _assert_same_cache(tmp_path, one_run)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".petseg-partial")]
    assert not leftovers


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--parts", "2"], "--parts and --part go together"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_options_are_one_line(dataset, tmp_path, extra, named, capsys):
    assert main(_prepare(dataset, tmp_path, *extra)) != 0
    assert named in capsys.readouterr().err
