"""`python -m bench inference` on a tiny case: the guard rail that petseg and the seed's MONAI pipeline agree.

One random one-fold resunet-tiny, a 64^3 window, one run per pipeline. The MONAI reference on petseg's crop
and grid must give petseg's mask, every pipeline must report every stage, and a run in a fresh process must
report its peak memory. Speed is not asserted: it depends on the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ARGUMENTS = ["--case", "tiny", "--arch", "resunet-tiny", "--folds", "1", "--window", "64", "--repeats", "1"]
CASES = (((61, 38, 144), 64, 0.25), ((303, 170, 489), 128, 0.25), ((20, 9, 40), 16, 0.5))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """The report, work folder and printed output of one in-process run of the command."""
    work = tmp_path_factory.mktemp("bench-inference")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        from bench.__main__ import main

        capture = work / "report.json"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            options = [
                "--in-process",
                "--min-speedup",
                "0",
                "--json",
                str(capture),
                "--work",
                str(work / "work"),
            ]
            status = main(["inference", *ARGUMENTS, *options])
    assert status == 0, printed.getvalue()
    return json.loads(capture.read_text()), work / "work", printed.getvalue()


def test_matched_reference_gives_petsegs_mask(benchmark):
    report, _, printed = benchmark
    masks = report["masks"]
    # an empty (or full) mask would agree trivially: the calibrated random ensemble marks some voxels only
    pet_voxels = int(np.prod(report["case"]["pet_size"]))
    assert 50 < masks["petseg"]["voxels"] < pet_voxels // 10
    assert masks["matched"]["dice"] >= 0.99
    assert abs(masks["matched"]["voxels"] - masks["petseg"]["voxels"]) <= 0.01 * masks["petseg"]["voxels"]
    assert report["network_input_xyz"]["matched"] == report["network_input_xyz"]["petseg"]
    assert "Dice petseg / matched reference" in printed


def test_seed_reference_keeps_the_entrys_own_crop(benchmark):
    report, _, _ = benchmark
    # its crop is everything above -1024 HU, not petseg's body box: another network input, same PET grid
    assert report["network_input_xyz"]["seed"] != report["network_input_xyz"]["petseg"]
    assert 0.0 <= report["masks"]["seed"]["dice"] <= 1.0  # compare_masks checked the grid


def test_every_stage_is_reported(benchmark):
    report, _, printed = benchmark
    from bench.seed_style import STAGES

    assert set(report["summary"]) == {"petseg", "seed", "matched"}
    for name, summary in report["summary"].items():
        assert list(summary["stages_s"]) == list(STAGES), name
        assert all(seconds >= 0.0 for seconds in summary["stages_s"].values()), name
        assert summary["stages_s"]["network"] > 0.0, name
        assert summary["total_s"] == pytest.approx(sum(summary["stages_s"].values()))
        assert summary["load_s"] > 0.0
    for stage in (*STAGES, "total", "load model"):
        assert any(line.startswith(stage) for line in printed.splitlines()), stage


def test_window_count_matches_monai():
    from monai.inferers import sliding_window_inference

    from bench.inference import window_count

    calls = []

    def predictor(window: torch.Tensor) -> torch.Tensor:
        calls.append(window.shape[0])
        return window

    for shape, roi, overlap in (
        ((61, 38, 144), 64, 0.25),
        ((303, 170, 489), 128, 0.25),
        ((20, 9, 40), 16, 0.5),
    ):
        calls.clear()
        sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, predictor, overlap=overlap)
        assert window_count(shape, roi, overlap) == sum(calls), shape


@pytest.mark.slow  # a fresh interpreter importing torch and MONAI: about 10 s on a 2-core machine
def test_a_fresh_process_reports_its_peak_memory(benchmark, tmp_path):
    report, work, _ = benchmark
    from bench.inference import read_mask, run_child

    spec = {
        "pipeline": "petseg",
        "model": str(work / "model"),
        "input": str(work / "case" / "input"),
        "output": str(tmp_path / "output"),
        "device": "cpu",
        "precision": "auto",
        "gzip": False,
    }
    result = run_child(spec, tmp_path / "run")
    # the interpreter with torch, MONAI and the case: hundreds of MB, not nothing and not the parent's
    assert 100e6 < result["peak_rss_bytes"] < 8e9
    assert list(result["stages"]) == list(report["summary"]["petseg"]["stages_s"])
    in_process = read_mask(Path(report["runs"]["petseg"][0]["mask"]))[0]
    assert np.array_equal(read_mask(Path(result["mask"]))[0], in_process)
