"""A cohort listed in a CSV file (`case_id,ct,pet`) instead of a folder layout.

Large cohorts rarely sit in one folder in one layout: a manifest names each case's CT and PET wherever
they are, relative to the CSV's own folder or absolute. Every row is checked before anything runs, so a
typo in row 9,000 is found at once rather than hours into the run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from petseg.errors import InputError
from petseg.io.cases import Case
from petseg.io.files import CaseFiles

COLUMNS = ("case_id", "ct", "pet")


def read_manifest(path: Path) -> list[Case]:
    """The manifest's cases in its row order, each written as `OUT/<case_id>.nii.gz` (the nnU-Net layout's
    output); a bad file or row is one line naming the CSV and the row (the header is row 1)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read the manifest: {error}") from None
    if not rows or [c.strip() for c in rows[0]] != list(COLUMNS):
        header = ",".join(rows[0]) if rows else "nothing"
        raise InputError(f"{path}: row 1: expected the header {','.join(COLUMNS)}, found {header}")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line, often the last one
        cases.append(_case(path, number, row, seen))
    if not cases:
        raise InputError(f"{path}: the manifest lists no cases")
    return cases


def _case(path: Path, number: int, row: list[str], seen: dict[str, int]) -> Case:
    where = f"{path}: row {number}"
    if len(row) != len(COLUMNS):
        raise InputError(f"{where}: expected {len(COLUMNS)} columns ({','.join(COLUMNS)}), found {len(row)}")
    case_id, ct, pet = (cell.strip() for cell in row)
    if not case_id or case_id in (".", "..") or "/" in case_id or "\\" in case_id or "\0" in case_id:
        raise InputError(f"{where}: case_id {case_id!r} cannot name an output file")
    if case_id in seen:
        raise InputError(f"{where}: case_id {case_id!r} already in row {seen[case_id]}")
    seen[case_id] = number
    files = {}
    for role, given in (("ct", ct), ("pet", pet)):
        if not given:
            raise InputError(f"{where}: no {role} file given")
        file = Path(given) if Path(given).is_absolute() else path.parent / given
        if not file.is_file():
            raise InputError(f"{where}: {role} file {file} not found")
        files[role] = file
    return Case(case_id, CaseFiles(ct=files["ct"], pet=files["pet"]), "nnunet")
