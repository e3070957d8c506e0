"""Patient-grouped cross-validation folds in nnU-Net's `splits_final.json` format.

autoPET holds several studies of some patients. A fold split by case would put one study of a patient in
training and another in validation, and the validation Dice would then measure recall of that patient rather
than generalisation; folds are therefore built over patients, never over cases.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from petseg.errors import InputError
from petseg.io import write_json

Folds = list[dict[str, list[str]]]

# `fdg_0c13e4df10_10-11-2003...` (MM-DD-YYYY) and `psma_95b833d46f153cd2_2018-04-16` (YYYY-MM-DD); FDG ids
# carry a free-text study description after the date, with spaces (sometimes two in a row).
_CASE_ID = re.compile(r"^([A-Za-z0-9]+_[0-9A-Fa-f]+)_(?:\d{2}-\d{2}-\d{4}|\d{4}-\d{2}-\d{2})(?!\d)")


# The tracers of autoPET, as their case ids name them: the model package reads them from here.
TRACERS = ("fdg", "psma")


def patient_id(case_id: str) -> str:
    """The patient part of an autoPET case id; ids of another form are their own patient."""
    match = _CASE_ID.match(case_id)
    return match.group(1) if match else case_id


def tracer_of(case_id: str) -> str | None:
    """The tracer an autoPET case id names (`fdg_...`, `psma_...`), or None for ids of another form."""
    prefix = case_id.split("_", 1)[0].lower()
    return prefix if prefix in TRACERS and "_" in case_id else None


def grouped_folds(case_ids: Sequence[str], n_folds: int = 5, seed: int = 0) -> Folds:
    """Folds whose validation sets partition the cases, with all studies of a patient in the same fold.

    Patients are shuffled with `seed`, then assigned largest group first to the fold holding the fewest cases,
    so fold sizes differ by at most the size of the largest patient group.
    """
    if isinstance(case_ids, str):
        raise TypeError("case_ids must be a sequence of case ids, not a single string")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    duplicates = sorted(case for case, count in Counter(case_ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate case ids: {', '.join(duplicates[:5])}")
    groups: dict[str, list[str]] = defaultdict(list)
    for case in case_ids:
        groups[patient_id(case)].append(case)
    if len(groups) < n_folds:
        raise ValueError(
            f"{len(case_ids)} cases from {len(groups)} patients cannot fill {n_folds} patient-grouped folds;"
            f" need at least {n_folds} patients"
        )
    patients = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    # A stable sort keeps the seeded order among groups of equal size.
    shuffled.sort(key=lambda patient: -len(groups[patient]))
    members: list[list[str]] = [[] for _ in range(n_folds)]
    for patient in shuffled:
        smallest = min(range(n_folds), key=lambda fold: (len(members[fold]), fold))
        members[smallest].extend(groups[patient])
    everything = sorted(case_ids)
    folds: Folds = []
    for fold_cases in members:
        val = sorted(fold_cases)
        in_val = set(val)
        folds.append({"train": [case for case in everything if case not in in_val], "val": val})
    return folds


def leaking_patients(folds: Folds) -> list[str]:
    """Patients whose studies appear in more than one validation fold (empty for a grouped split)."""
    seen: dict[str, set[int]] = defaultdict(set)
    for index, fold in enumerate(folds):
        for case in fold["val"]:
            seen[patient_id(case)].add(index)
    return sorted(patient for patient, fold_indices in seen.items() if len(fold_indices) > 1)


def write_splits(path: Path, folds: Folds) -> Path:
    """Write `splits_final.json` atomically, after checking its structure."""
    problem = _structure_problem(folds)
    if problem:
        raise ValueError(f"invalid folds: {problem}")
    return write_json(folds, Path(path))


def read_splits(path: Path, case_ids: Iterable[str] | None = None) -> Folds:
    """Read and validate `splits_final.json`; with `case_ids`, also check it covers exactly those cases."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: splits file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read splits file: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: splits file is not valid JSON: {error}") from None
    problem = _structure_problem(data)
    if problem is None and case_ids is not None:
        problem = _coverage_problem(data, list(case_ids))
    if problem:
        raise InputError(f"{path}: {problem}")
    return data


def _structure_problem(data: object) -> str | None:
    """Why `data` is not a list of {"train": [...], "val": [...]} folds, or None."""
    if not isinstance(data, list) or not data:
        return "expected a non-empty JSON list of folds"
    for index, fold in enumerate(data):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            return f"fold {index} is not an object with 'train' and 'val' lists"
        for key in ("train", "val"):
            values = fold[key]
            if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
                return f"fold {index} '{key}' is not a list of case-id strings"
        overlap = set(fold["train"]) & set(fold["val"])
        if overlap:
            return f"fold {index} has {len(overlap)} cases in both train and val (e.g. {min(overlap)!r})"
    return None


def _coverage_problem(folds: Folds, case_ids: list[str]) -> str | None:
    """Why the folds do not fit the dataset's cases, or None."""
    known = set(case_ids)
    listed = {case for fold in folds for key in ("train", "val") for case in fold[key]}
    unknown = sorted(listed - known)
    if unknown:
        return f"{len(unknown)} listed cases are not in the dataset (e.g. {unknown[0]!r})"
    val_counts = Counter(case for fold in folds for case in fold["val"])
    missing = sorted(known - set(val_counts))
    if missing:
        return f"{len(missing)} cases are in no validation fold (e.g. {missing[0]!r})"
    repeated = sorted(case for case, count in val_counts.items() if count > 1)
    if repeated:
        return f"{len(repeated)} cases are in more than one validation fold (e.g. {repeated[0]!r})"
    return None
