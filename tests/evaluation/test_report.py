"""report.html: self-contained, with the summary, figures and outlined MIPs; rendered by Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from test_evaluate import evaluate_argv, make_cases

from petseg.app.cli import main
from petseg.evaluation.preview import FALSE_POSITIVE_RGB, FOUND_RGB, MATCHED_RGB, MISSED_RGB, outline_panel

IMAGE = re.compile(r'<img class="(\w+)" alt="([^"]*)" src="data:image/png;base64,([^"]+)">')


def report_of(tmp_path, *extra: str) -> str:
    make_cases(tmp_path)
    out = tmp_path / "out"
    assert main([*evaluate_argv(tmp_path, out), "--pet", str(tmp_path / "pet"), *extra]) == 0
    return (out / "report.html").read_text()


def test_report_is_self_contained_with_every_section(tmp_path):
    document = report_of(tmp_path)
    images = IMAGE.findall(document)
    assert [alt for css, alt, _ in images if css == "mip"] == ["case_a", "case b", "case_c"]  # worst first
    assert {alt for css, alt, _ in images if css == "figure"} == {"box plots", "stratified evaluation"}
    for _, _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert document.count("<img") == len(images)  # nothing else is embedded, nothing linked
    assert "http://" not in document
    assert "https://" not in document
    assert "<td>dice</td>" in document
    assert "3 cases, 1 of them lesion-free" in document
    # One sentence says why a low Dice can come with FPV = FNV = 0 (the autoPET component definitions).
    assert "FPV = FNV = 0 ml" in document
    assert "overflow-wrap: anywhere" in document  # long case names wrap instead of being cut


def test_gallery_size_and_opting_out(tmp_path):
    document = report_of(tmp_path, "--report-cases", "1")
    assert [alt for css, alt, _ in IMAGE.findall(document) if css == "mip"] == ["case_a"]
    out = tmp_path / "out"
    (out / "report.html").unlink()
    assert main([*evaluate_argv(tmp_path, out), "--no-report"]) == 0
    assert not (out / "report.html").exists()
    assert (out / "summary.json").exists()


def colours(panel: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in rgb) for rgb in np.unique(panel.reshape(-1, 3), axis=0)}


def test_outlines_separate_found_missed_matched_and_false_positive():
    pet = sitk.Image(24, 20, 30, sitk.sitkFloat32)  # x, y, z
    truth = np.zeros((30, 20, 24), bool)
    prediction = np.zeros_like(truth)
    truth[4:8, 8:12, 4:8] = True  # found
    prediction[5:9, 8:12, 4:8] = True
    truth[20:24, 8:12, 16:20] = True  # missed
    only_errors = colours(outline_panel(pet, truth & False, prediction))
    assert FALSE_POSITIVE_RGB in only_errors
    assert MATCHED_RGB not in only_errors
    prediction[12:16, 8:12, 16:20] = True  # false positive (touches no lesion)
    found = colours(outline_panel(pet, truth, prediction))
    assert {FOUND_RGB, MISSED_RGB, MATCHED_RGB, FALSE_POSITIVE_RGB} <= found
    nothing = colours(outline_panel(pet, np.zeros_like(truth), np.zeros_like(truth)))
    assert not {FOUND_RGB, MISSED_RGB, MATCHED_RGB, FALSE_POSITIVE_RGB} & nothing


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    report_of(tmp_path)
    page = (tmp_path / "out" / "report.html").as_uri()
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
    )
    decoded = re.search(r'data-images-decoded="(\d+)/(\d+)"', dom.stdout)
    assert decoded is not None, "the report's load handler did not run"
    assert decoded.group(1) == decoded.group(2) == "5"  # 2 figures + 3 cases, all decoded
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,2400", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    screen = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))[..., :3]
    assert screen.shape[:2] == (2400, 1200)
    assert (screen < 250).any(axis=-1).mean() > 0.01  # not a blank page
