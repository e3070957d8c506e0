"""Mirroring test-time augmentation within a time budget: flip-back, budget arithmetic, process.py options."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import all_files, assert_binary_mask_on_grid, run_process, write_gc_input

from petseg.app.process import process_main
from petseg.inference.pipeline import segment_case
from petseg.inference.predict import Predictor
from petseg.inference.preprocess import preprocess
from petseg.inference.timing import StageTimer
from petseg.inference.tta import MIRROR_AXES, MirrorTTA, TimeBudget
from petseg.io import MASK_FOLDER, CaseFiles, write_image
from petseg.synthetic import make_case


class FakeClock:
    """A clock that moves only when told to: passes 'take' time without sleeping."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TimedPredictor:
    """Advances the clock by the next duration per call and records the inputs it saw."""

    def __init__(self, clock: FakeClock, durations, output=None) -> None:
        self.clock = clock
        self.durations = iter(durations)
        self.output = output or (lambda image: np.zeros(image.shape[1:], np.float32))
        self.inputs: list[np.ndarray] = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.inputs.append(image.copy())
        self.clock.now += next(self.durations)
        return self.output(image)


class RecordingPredictor:
    """A real ensemble that keeps every pass's output."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.card = predictor.card
        self.outputs: list[np.ndarray] = []

    def __call__(self, image: np.ndarray, tracer: str | None = None, progress: bool = False) -> np.ndarray:
        self.outputs.append(self.predictor(image, tracer=tracer, progress=progress))
        return self.outputs[-1]

    def choose_tracer(self, image: np.ndarray, given: str | None = None) -> str | None:
        return self.predictor.choose_tracer(image, given)


def plan(budget_s: float = 300.0, clock: FakeClock | None = None, start: float = 0.0) -> MirrorTTA:
    return MirrorTTA(TimeBudget(budget_s, clock=clock or FakeClock(start), start=start))


def volume(seed: int = 0, shape=(2, 6, 5, 4)) -> np.ndarray:
    """Non-cubic, so that a flip along the wrong axis cannot go unnoticed."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ---------------------------------------------------------------- flip-back


def test_every_mirrored_pass_is_flipped_back_to_the_original_orientation():
    """A 'network' returning its PET channel: every flip, predict, flip-back is the plain pass again."""
    image = volume()
    predictor = TimedPredictor(FakeClock(), itertools.repeat(0.0), lambda x: x[1].copy())

    probability, report = plan().predict(predictor, image, after_s=5.0)

    assert report.mirrored == report.planned == 7
    np.testing.assert_array_equal(probability, image[1])
    assert probability.dtype == np.float32
    # the passes saw the input flipped along each subset of the spatial axes, single axes first
    assert len(predictor.inputs) == 8
    np.testing.assert_array_equal(predictor.inputs[0], image)
    for seen, axes in zip(predictor.inputs[1:], MIRROR_AXES, strict=True):
        np.testing.assert_array_equal(seen, np.flip(image, [a + 1 for a in axes]))
    assert [len(axes) for axes in MIRROR_AXES] == [1, 1, 1, 2, 2, 2, 3]
    assert sorted(MIRROR_AXES) == sorted(s for n in (1, 2, 3) for s in itertools.combinations(range(3), n))


@pytest.mark.parametrize(("after_s", "mirrored"), [(5.0, 7), (267.0, 2)])
def test_a_position_dependent_network_gives_the_mean_of_flipped_back_passes(after_s, mirrored):
    """f(x) = PET * w with a fixed random w: flipped back, pass `axes` is PET * flip(w, axes)."""
    image = volume(1)
    weights = np.random.default_rng(2).random(image.shape[1:], dtype=np.float32)
    clock = FakeClock()
    predictor = TimedPredictor(clock, itertools.repeat(1.0), lambda x: x[1] * weights)
    # 1 s passes, budget 300, margin 30: with 267 s kept for writing, a pass may start up to t = 2 s
    probability, report = plan(300.0, clock).predict(predictor, image, after_s=after_s)

    assert report.mirrored == mirrored
    by_hand = {
        (): weights,
        (0,): weights[::-1, :, :],
        (1,): weights[:, ::-1, :],
        (2,): weights[:, :, ::-1],
        (0, 1): weights[::-1, ::-1, :],
        (0, 2): weights[::-1, :, ::-1],
        (1, 2): weights[:, ::-1, ::-1],
        (0, 1, 2): weights[::-1, ::-1, ::-1],
    }
    used = [(), *MIRROR_AXES[:mirrored]]
    expected = image[1].astype(np.float64) * np.mean([by_hand[axes] for axes in used], axis=0)
    np.testing.assert_allclose(probability, expected, rtol=1e-6)
    assert not np.allclose(probability, predictor.output(image), rtol=1e-3)  # the passes did change it


def test_without_a_mirrored_pass_the_first_pass_comes_back_unchanged():
    image = volume(3)
    first = np.random.default_rng(4).random(image.shape[1:], dtype=np.float32)
    clock = FakeClock()
    predictor = TimedPredictor(clock, [100.0], lambda x: first)
    probability, report = plan(60.0, clock).predict(predictor, image, after_s=5.0)
    assert report.mirrored == 0
    assert len(predictor.inputs) == 1
    assert probability.dtype == first.dtype
    np.testing.assert_array_equal(probability, first)


# ---------------------------------------------------------------- budget arithmetic


@pytest.mark.parametrize(
    ("budget_s", "pass_s", "start_s", "after_s", "mirrored"),
    [
        (300.0, 10.0, 0.0, 5.0, 7),  # everything fits: 80 s of passes
        (300.0, 40.0, 0.0, 5.0, 5),  # passes end at 40 ... 240 s; a 6th would end at 280 > 300 - 30 - 5
        (300.0, 10.0, 200.0, 5.0, 5),  # 200 s already gone (model load, read, preprocess)
        (60.0, 10.0, 0.0, 5.0, 3),  # margin 10 s (the minimum): passes end at 10, 20, 30, 40
        (300.0, 10.0, 0.0, 250.0, 1),  # a slow write eats the budget: 10 + 10 + 250 <= 270
        (20.0, 10.0, 0.0, 5.0, 0),  # no extra pass fits
    ],
)
def test_mirrored_passes_fit_the_budget(budget_s, pass_s, start_s, after_s, mirrored):
    clock = FakeClock(start_s)
    predictor = TimedPredictor(clock, itertools.repeat(pass_s))
    tta = MirrorTTA(TimeBudget(budget_s, clock=clock, start=0.0))
    _, report = tta.predict(predictor, volume(), after_s=after_s)
    assert report.mirrored == mirrored
    assert len(predictor.inputs) == mirrored + 1
    assert report.first_pass_s == pass_s
    assert report.left_s == budget_s - start_s - (mirrored + 1) * pass_s


@pytest.mark.parametrize(
    ("budget_s", "durations", "mirrored"),
    [
        # mirrored passes end at 40, 70, 100, 130; then 13.5 s are free: room for a 10 s pass, not a 30 s one
        (165.0, [10.0, *[30.0] * 7], 4),
        # a 30 s pass, then 1 s ones: each still needs 30 s free, so they stop at t = 44 (29 s free), not 72
        (88.0, [10.0, 30.0, *[1.0] * 6], 5),
    ],
)
def test_the_slowest_pass_so_far_decides(budget_s, durations, mirrored):
    clock = FakeClock()
    predictor = TimedPredictor(clock, durations)
    tta = plan(budget_s, clock)
    _, report = tta.predict(predictor, volume(), after_s=5.0)
    assert report.mirrored == mirrored
    assert report.slowest_pass_s == 30.0
    assert clock.now + 5.0 <= budget_s - tta.budget.margin


def test_the_budget_minus_margin_is_never_exceeded_and_no_pass_is_left_unused():
    for budget_s, pass_s, start_s, after_s in itertools.product(
        (15.0, 30.0, 60.0, 120.0, 300.0, 900.0),
        (0.5, 3.0, 10.0, 37.0, 100.0, 400.0),
        (0.0, 50.0, 250.0),
        (0.0, 5.0, 30.0),
    ):
        clock = FakeClock(start_s)
        tta = MirrorTTA(TimeBudget(budget_s, clock=clock, start=0.0))
        _, report = tta.predict(TimedPredictor(clock, itertools.repeat(pass_s)), volume(), after_s)
        limit = budget_s - tta.budget.margin
        case = (budget_s, pass_s, start_s, after_s, report)
        if report.mirrored:
            assert clock.now + after_s <= limit, case
        if report.mirrored < 7:  # stopped early: one more pass would have crossed the line
            assert clock.now + pass_s + after_s > limit, case


def test_a_budget_too_small_for_the_first_pass_still_runs_it_and_warns(caplog):
    clock = FakeClock()
    predictor = TimedPredictor(clock, itertools.repeat(10.0), lambda x: x[1].copy())
    image = volume()
    with caplog.at_level(logging.INFO, logger="petseg"):
        probability, report = plan(5.0, clock).predict(predictor, image, after_s=5.0)
    assert report.mirrored == 0
    assert len(predictor.inputs) == 1
    np.testing.assert_array_equal(probability, image[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("time budget of 5 s is too small" in message for message in warnings), warnings
    assert "TTA: 0 of 7 mirrored passes fit in the budget (first pass 10.0 s, -5 s left)" in caplog.text


def test_margin_and_writing_allowance():
    assert TimeBudget(300.0, clock=FakeClock()).margin == 30.0
    assert TimeBudget(60.0, clock=FakeClock()).margin == 10.0
    tta = plan()
    assert tta.after_prediction_s(1.0) == 5.0
    assert tta.after_prediction_s(12.0) == 12.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            TimeBudget(bad)


def test_the_pipeline_measures_preparation_and_averages_real_passes(tmp_path, tiny_model_dir):
    """segment_case with a plan: 8 passes of the real ensemble, and their mean is what is thresholded."""
    phantom = make_case(seed=5, index=0, tracer="fdg", size="tiny", lesion_free=False)
    files = CaseFiles(
        ct=write_image(phantom.ct, tmp_path / "ct.mha"), pet=write_image(phantom.pet, tmp_path / "pet.mha")
    )
    recording = RecordingPredictor(Predictor.load(tiny_model_dir, device="cpu"))
    settings = recording.card.ensemble
    plain = segment_case(files, recording, StageTimer(quiet=True), keep_probability=True)
    assert len(recording.outputs) == 1
    assert plain.tta is None
    result = segment_case(files, recording, StageTimer(quiet=True), keep_probability=True, tta=plan())

    assert result.tta is not None
    assert result.tta.mirrored == 7
    first, *mirrored = recording.outputs[1:]
    assert len(mirrored) == 7
    np.testing.assert_array_equal(first, recording.outputs[0])  # the first pass is the plain pass
    flipped_back = [np.flip(p, axes) for p, axes in zip(mirrored, MIRROR_AXES, strict=True)]
    mean = np.mean(np.stack([first, *flipped_back]).astype(np.float64), axis=0).astype(np.float32)
    back_map = preprocess(phantom.ct, phantom.pet, recording.card.preprocessing).back_map
    expected = back_map.to_pet_grid(mean, settings.back_interpolation)
    assert result.probability is not None
    assert plain.probability is not None
    np.testing.assert_allclose(result.probability, expected, atol=1e-6)
    assert not np.allclose(result.probability, plain.probability, atol=1e-4)  # the passes changed it
    mask = sitk.GetArrayFromImage(result.mask).astype(bool)
    np.testing.assert_array_equal(mask, result.probability > settings.threshold)


# ---------------------------------------------------------------- process.py


def phantom_input(root: Path) -> tuple[Path, sitk.Image]:
    phantom = make_case(seed=3, index=0, tracer="fdg", size="tiny", grid="fdg-400", ct_own_grid=True)
    return write_gc_input(root, phantom.ct, phantom.pet, "c0ffee00-ct", "5eed0000-pet"), phantom.pet


def mask_bytes(output: Path) -> bytes:
    masks = [p for p in all_files(output) if p.suffix == ".mha"]
    assert [p.relative_to(output) for p in masks] == [MASK_FOLDER / "5eed0000-pet.mha"]
    return masks[0].read_bytes()


def test_tta_off_and_no_room_for_tta_write_exactly_the_default_output(tmp_path, tiny_model_dir, capsys):
    input_dir, _ = phantom_input(tmp_path / "input")
    common = ["--input", str(input_dir), "--model", str(tiny_model_dir), "--device", "cpu"]
    runs = {
        "default": [],
        "off": ["--tta", "off"],
        "off-budget": ["--tta", "off", "--time-budget", "1"],
        "auto-no-room": ["--tta", "auto", "--time-budget", "1"],
    }
    written = {}
    for name, extra in runs.items():
        assert process_main([*common, "--output", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
        written[name] = mask_bytes(tmp_path / name)
        err = capsys.readouterr().err
        assert ("TTA:" in err) == (name == "auto-no-room"), err
    assert written["off"] == written["default"]
    assert written["off-budget"] == written["default"]
    assert written["auto-no-room"] == written["default"]  # the first pass, unchanged
    assert "TTA: 0 of 7 mirrored passes fit in the budget" in err
    assert "is too small" in err


def test_process_py_with_tta_auto_logs_the_passes_and_keeps_the_pet_grid(tmp_path, tiny_model_dir):
    input_dir, pet = phantom_input(tmp_path / "input")
    output = tmp_path / "output"
    result = run_process(
        "--input", input_dir, "--output", output, "--model", tiny_model_dir, "--device", "cpu",
        "--tta", "auto", "--time-budget", "300",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "TTA:" in line]
    assert len(lines) == 1, result.stderr
    assert "of 7 mirrored passes fit in the budget (first pass" in lines[0]
    mirrored = int(lines[0].split("TTA:")[1].split()[0])
    assert 1 <= mirrored <= 7  # a tiny case on any machine leaves room for some
    mask = sitk.ReadImage(str(output / MASK_FOLDER / "5eed0000-pet.mha"))
    assert_binary_mask_on_grid(mask, pet)
    assert sorted(p.name for p in all_files(output)) == ["5eed0000-pet.mha", "data-centric-model.json"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--time-budget", "0"],
        ["--time-budget", "-30"],
        ["--time-budget", "nan"],
        ["--time-budget", "inf"],
        ["--time-budget", "five"],
        ["--tta", "always"],
    ],
)
def test_bad_budget_or_tta_is_a_one_line_error(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        process_main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert argv[0] in errors[0]
    if argv[0] == "--time-budget":
        assert f"must be a positive number of seconds, got '{argv[1]}'" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tta_auto_runs_only_the_mirrors_the_card_lists(tmp_path, tiny_model_dir, capsys):
    """`ensemble.mirror_axes` limits --tta auto: [] keeps the plain pass, [[0]] adds the left-right one."""
    import json
    import shutil

    input_dir, _ = phantom_input(tmp_path / "input")
    written = {}
    for name, mirrors in (("none", []), ("lr", [[0]])):
        model = tmp_path / f"model-{name}"
        shutil.copytree(tiny_model_dir, model)
        card = json.loads((model / "model.json").read_text())
        card["ensemble"]["mirror_axes"] = mirrors
        (model / "model.json").write_text(json.dumps(card))
        argv = ["--input", str(input_dir), "--model", str(model), "--device", "cpu", "--tta", "auto"]
        assert process_main([*argv, "--output", str(tmp_path / name)]) == 0
        written[name] = mask_bytes(tmp_path / name)
        err = capsys.readouterr().err
        expected = "TTA: 0 of 0 mirrored passes" if name == "none" else "TTA: 1 of 1 mirrored passes"
        assert expected in err, err
        assert ("one plain pass" in err) == (name == "none")
    assert process_main(["--input", str(input_dir), "--model", str(tiny_model_dir), "--device", "cpu",
                         "--output", str(tmp_path / "plain")]) == 0  # fmt: skip
    assert written["none"] == mask_bytes(tmp_path / "plain")
