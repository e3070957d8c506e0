"""Patient-grouped folds: grouping, coverage, balance, determinism and the splits_final.json round trip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petseg.errors import InputError
from petseg.io.splits import grouped_folds, leaking_patients, patient_id, read_splits, write_splits


def _case_ids(n_patients: int, studies: list[int]) -> list[str]:
    ids = []
    for p in range(n_patients):
        for s in range(studies[p % len(studies)]):
            if p % 2:
                ids.append(f"psma_{p:016x}_20{10 + s:02d}-01-0{1 + p % 9}")
            else:
                ids.append(
                    f"fdg_{p:010x}_0{1 + s}-11-20{10 + p % 10:02d}-NA-PET-CT Ganzkoerper  primaer mit KM-{p}"
                )
    return ids


@pytest.mark.parametrize(
    ("case_id", "expected"),
    [
        ("fdg_0c13e4df10_10-11-2003", "fdg_0c13e4df10"),
        ("fdg_0011f3deaf_03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445", "fdg_0011f3deaf"),
        ("psma_95b833d46f153cd2_2018-04-16", "psma_95b833d46f153cd2"),
        ("psma_0a52cb5b45b821f7_2016-02-19", "psma_0a52cb5b45b821f7"),
        ("TCIA_001", "TCIA_001"),
        ("fdg_0c13e4df10", "fdg_0c13e4df10"),
        ("fdg_0c13e4df10_2003", "fdg_0c13e4df10_2003"),
        ("fdg_0c13e4df10_10-11-20034", "fdg_0c13e4df10_10-11-20034"),
    ],
)
def test_patient_id(case_id: str, expected: str) -> None:
    assert patient_id(case_id) == expected


def test_two_studies_of_a_patient_share_a_validation_fold() -> None:
    ids = ["psma_0a52cb5b45b821f7_2015-09-18", "psma_0a52cb5b45b821f7_2016-02-19"]
    ids += [f"fdg_{p:010x}_01-01-2005" for p in range(12)]
    for seed in range(10):
        folds = grouped_folds(ids, n_folds=5, seed=seed)
        holding = [i for i, fold in enumerate(folds) if ids[0] in fold["val"]]
        assert len(holding) == 1
        assert ids[1] in folds[holding[0]]["val"]
        assert ids[1] not in folds[holding[0]]["train"]
        assert leaking_patients(folds) == []


def test_every_case_in_exactly_one_validation_fold_and_train_is_the_rest() -> None:
    ids = _case_ids(23, [1, 2, 1, 3])
    folds = grouped_folds(ids, n_folds=5, seed=3)
    assert len(folds) == 5
    counts = Counter(case for fold in folds for case in fold["val"])
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    for fold in folds:
        assert fold["val"] == sorted(fold["val"])
        assert fold["train"] == sorted(fold["train"])
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)


def test_deterministic_and_independent_of_input_order() -> None:
    ids = _case_ids(17, [1, 2])
    first = grouped_folds(ids, seed=7)
    assert grouped_folds(list(reversed(ids)), seed=7) == first
    assert any(grouped_folds(ids, seed=other) != first for other in range(8, 12))


def test_folds_are_balanced_by_number_of_studies() -> None:
    ids = _case_ids(40, [1, 1, 2, 1, 3])
    folds = grouped_folds(ids, n_folds=5, seed=0)
    sizes = [len(fold["val"]) for fold in folds]
    # Greedy filling keeps folds within the largest patient group (3 studies) of each other.
    assert max(sizes) - min(sizes) <= 3
    assert sum(sizes) == len(ids)


@settings(max_examples=40, deadline=None)
@given(
    studies=st.lists(st.integers(min_value=1, max_value=4), min_size=5, max_size=40),
    n_folds=st.integers(min_value=2, max_value=5),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_grouping_and_coverage_hold_for_any_dataset(studies: list[int], n_folds: int, seed: int) -> None:
    ids = [f"psma_{p:016x}_2019-01-{1 + s:02d}" for p, count in enumerate(studies) for s in range(count)]
    folds = grouped_folds(ids, n_folds=n_folds, seed=seed)
    assert leaking_patients(folds) == []
    assert sorted(case for fold in folds for case in fold["val"]) == sorted(ids)
    assert all(fold["val"] for fold in folds)
    sizes = [len(fold["val"]) for fold in folds]
    assert max(sizes) - min(sizes) <= max(studies)


def test_fewer_patients_than_folds_is_an_error() -> None:
    ids = ["fdg_0000000001_01-01-2001", "fdg_0000000001_02-02-2002", "fdg_0000000002_01-01-2001"]
    with pytest.raises(ValueError, match="2 patients"):
        grouped_folds(ids, n_folds=5)


@pytest.mark.parametrize(
    ("ids", "n_folds", "error", "match"),
    [
        (["a", "b", "a"], 2, ValueError, "duplicate"),
        (["a", "b", "c"], 1, ValueError, "n_folds"),
        ("fdg_0000000001_01-01-2001", 2, TypeError, "single string"),
    ],
)
def test_invalid_arguments(ids: list[str], n_folds: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        grouped_folds(ids, n_folds=n_folds)


def test_round_trip(tmp_path: Path) -> None:
    ids = _case_ids(11, [1, 2])
    folds = grouped_folds(ids, seed=1)
    path = write_splits(tmp_path / "nested" / "splits_final.json", folds)
    assert json.loads(path.read_text()) == folds
    assert read_splits(path) == folds
    assert read_splits(path, case_ids=ids) == folds
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_write_rejects_malformed_folds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fold 0"):
        write_splits(tmp_path / "splits.json", [{"train": ["a"]}])
    assert not (tmp_path / "splits.json").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("{}", "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"train": ["a"]}]', "fold 0 is not an object"),
        ('[{"train": "a", "val": []}]', "'train' is not a list"),
        ('[{"train": ["a"], "val": [1]}]', "'val' is not a list"),
        ('[{"train": ["a", "b"], "val": ["b"]}]', "both train and val"),
    ],
)
def test_read_rejects_malformed_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        read_splits(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("case_ids", "match"),
    [
        (["a", "b"], "not in the dataset"),
        (["a", "b", "c", "d"], "in no validation fold"),
    ],
)
def test_read_checks_coverage_of_the_dataset(tmp_path: Path, case_ids: list[str], match: str) -> None:
    folds = [{"train": ["b"], "val": ["a", "c"]}, {"train": ["a", "c"], "val": ["b"]}]
    path = write_splits(tmp_path / "splits_final.json", folds)
    assert read_splits(path, case_ids=["a", "b", "c"]) == folds
    with pytest.raises(InputError, match=match):
        read_splits(path, case_ids=case_ids)


def test_read_rejects_a_case_in_two_validation_folds(tmp_path: Path) -> None:
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": [], "val": ["a", "b"]}, {"train": ["b"], "val": ["a"]}]))
    with pytest.raises(InputError, match="more than one validation fold"):
        read_splits(path, case_ids=["a", "b"])


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_splits(tmp_path / "absent.json")
