"""The demo's evaluation phantoms on disk: the same cases the demo scores, in folders `petseg evaluate` reads,
with the set of each case in meta.csv."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.evaluation.evaluate import match_cases, read_meta
from training.evaluation_set import META_FILE, write_evaluation_set
from training.phantom_scores import fresh_phantoms
from training.trainer import TrainingError


def test_the_sets_are_written_as_case_folders_with_their_meta(tmp_path, capsys):
    from training.__main__ import main

    out = tmp_path / "eval"
    assert main(["evaluation-phantoms", "--output", str(out), "--cases", "2", "--negatives", "1",
                 "--size", "tiny", "--seed", "77"]) == 0  # fmt: skip
    assert "3 case folders (2 fresh, 1 lesion-free)" in capsys.readouterr().out
    assert not (tmp_path / "eval.partial").exists()

    expected = [p.case_id for p in fresh_phantoms(77, 2, "tiny")]
    expected += [p.case_id for p in fresh_phantoms(77, 1, "tiny", lesion_free=True)]
    meta = read_meta(out / META_FILE, expected)
    assert [meta[case]["centre"] for case in expected] == ["fresh", "fresh", "lesion-free"]
    assert [meta[case]["tracer"] for case in expected] == ["fdg", "psma", "fdg"]

    # petseg evaluate pairs each ground truth with its PET beside it; the truths are the phantoms' labels.
    pairs = match_cases(out, out / expected[0] / "ground-truth", missing_as_empty=True)
    assert sorted(pair.name for pair in pairs) == sorted(expected)
    truth = {pair.name: sitk.GetArrayFromImage(sitk.ReadImage(str(pair.truth))) for pair in pairs}
    assert truth[expected[0]].any()
    assert not np.any(truth[expected[2]])  # the lesion-free case
    assert all(pair.pet is not None for pair in pairs)


def test_quiet_writes_no_line_per_case(tmp_path, caplog, capsys):
    import logging

    from training.__main__ import main

    def case_lines() -> list[logging.LogRecord]:
        lines = [r for r in caplog.records if r.levelno >= logging.INFO and "1 fresh:" in r.getMessage()]
        caplog.clear()
        return lines

    with caplog.at_level(logging.DEBUG, logger="petseg.training"):
        write_evaluation_set(tmp_path / "loud", cases=1, negatives=0, size="tiny")
        assert len(case_lines()) == 1
        write_evaluation_set(tmp_path / "quiet", cases=1, negatives=0, size="tiny", progress=False)
        assert case_lines() == []
    assert main(["evaluation-phantoms", "--output", str(tmp_path / "cli"), "--cases", "1",
                 "--negatives", "0", "--size", "tiny", "-q"]) == 0  # fmt: skip
    assert "1 case folders (1 fresh)" in capsys.readouterr().out


def test_an_existing_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(TrainingError, match="already exists"):
        write_evaluation_set(out, cases=1, negatives=0, size="tiny")
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(TrainingError, match="organ maps folder not found"):
        write_evaluation_set(
            tmp_path / "other", cases=1, negatives=0, organs_dir=tmp_path / "none", size="tiny"
        )
    assert not (tmp_path / "other").exists()


def test_a_ct_shift_moves_the_ct_alone_by_the_drawn_vector(tmp_path):
    """The CT takes a new origin (its voxels unchanged); the PET and the label stay where they were."""
    import csv

    from petseg.io import find_case

    write_evaluation_set(tmp_path / "plain", cases=2, negatives=0, seed=5, size="tiny")
    rows = write_evaluation_set(tmp_path / "moved", cases=2, negatives=0, seed=5, size="tiny", ct_shift_mm=6)
    assert [row["case"] for row in rows] == [row["case"] for row in csv.DictReader(
        (tmp_path / "moved" / META_FILE).open())]  # fmt: skip
    shifts = [tuple(float(v) for v in row["ct_shift_mm"].split()) for row in rows]
    assert len(set(shifts)) == 2  # drawn per case
    for row, shift in zip(rows, shifts, strict=True):
        assert all(abs(v) <= 6 for v in shift)
        plain = find_case(tmp_path / "plain" / row["case"] / "input")
        moved = find_case(tmp_path / "moved" / row["case"] / "input")
        ct, ct_moved = sitk.ReadImage(str(plain.ct)), sitk.ReadImage(str(moved.ct))
        assert np.allclose(np.subtract(ct_moved.GetOrigin(), ct.GetOrigin()), shift, atol=1e-6)
        assert np.array_equal(sitk.GetArrayFromImage(ct_moved), sitk.GetArrayFromImage(ct))
        pet, pet_moved = sitk.ReadImage(str(plain.pet)), sitk.ReadImage(str(moved.pet))
        assert pet_moved.GetOrigin() == pet.GetOrigin()
        assert np.array_equal(sitk.GetArrayFromImage(pet_moved), sitk.GetArrayFromImage(pet))
    with pytest.raises(TrainingError, match=r"--ct-shift-mm must be in \[0, 50\] mm, got -1"):
        write_evaluation_set(tmp_path / "bad", cases=1, negatives=0, size="tiny", ct_shift_mm=-1)


def test_worker_processes_write_what_one_process_writes(tmp_path):
    """Cases built side by side land in the folder in the same order, with the same bytes and meta.csv."""
    arguments = {"cases": 3, "negatives": 1, "seed": 9, "size": "tiny", "ct_shift_mm": 4.0, "progress": False}
    one = write_evaluation_set(tmp_path / "one", workers=1, **arguments)
    two = write_evaluation_set(tmp_path / "two", workers=2, **arguments)
    assert two == one
    assert not (tmp_path / "two" / ".staging").exists()

    def files(root):
        return {
            path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
        }

    written = files(tmp_path / "one")
    assert len(written) == 4 * 4 + 1  # CT, PET, label and organ map per case, and meta.csv
    assert files(tmp_path / "two") == written
    with pytest.raises(TrainingError, match="--workers must be at least 1, got 0"):
        write_evaluation_set(tmp_path / "none", workers=0, **arguments)
    assert not (tmp_path / "none").exists()
