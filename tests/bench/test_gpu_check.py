"""The prepared GPU check runs end to end at toy sizes on the CPU, so it is known to work before a GPU
machine's minutes are spent on it."""

from __future__ import annotations

import json

import pytest

from bench.gpu_check import _epoch_seconds, markdown


def test_epoch_lines_are_read_from_the_trainers_log():
    log = (
        "12:00:01 INFO    epoch 1/100  loss 0.9000  4.2 s\n"
        "12:00:09 INFO    epoch 2/100  loss 0.8000  val_score 0.1000  val_dice 0.1000  val_fpv_ml -  7.5 s\n"
    )
    assert _epoch_seconds(log) == [4.2, 7.5]


@pytest.mark.slow
def test_the_gpu_check_runs_at_smoke_sizes_on_the_cpu(tmp_path):
    from bench.__main__ import main

    status = main(["gpu-check", "--out", str(tmp_path), "--smoke", "--device", "cpu"])
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert set(report["steps"]) == {"inference", "phantoms", "loader-32", "loader-32-device", "demo-training"}
    failed = {name: step.get("tail") for name, step in report["steps"].items() if step["status"] != 0}
    assert status == 0, failed
    assert report["steps"]["loader-32"]["figures"]["loader_patches_per_s"] > 0
    on_device = report["steps"]["loader-32-device"]["figures"]
    assert on_device["augment_on"] == "device"
    assert on_device["loader_patches_per_s"] > 0
    assert report["steps"]["inference"]["figures"]
    assert report["steps"]["demo-training"]["recipe_minutes_estimate"] > 0
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| loader-32 | 0 |" in table
    assert table == markdown(report)


def test_a_step_past_its_time_limit_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    import argparse
    import sys

    import bench.gpu_check as gpu_check

    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    fast = [sys.executable, "-c", "print('done')"]
    monkeypatch.setattr(
        gpu_check, "_steps", lambda out, smoke, device: [("slow", slow, None), ("fast", fast, None)]
    )
    args = argparse.Namespace(out=tmp_path, smoke=True, device="cpu", step_timeout=2.0)
    assert gpu_check.run(args) == 1
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["steps"]["slow"]["status"] == "timeout"
    assert "started" in report["steps"]["slow"]["tail"]
    assert report["steps"]["fast"]["status"] == 0
    assert (tmp_path / "fast.log").read_text() == "done\n"
