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
