"""Finding the studies under a folder and each study's PET and CT series: grouping by StudyInstanceUID and
SeriesInstanceUID whatever the layout, and the refusals, each one line naming the folder or file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dicom_studies import study_tags, write_ct, write_pet, write_study

from petseg.errors import InputError
from petseg.io.dicom.study import find_studies, study_series


def test_one_study_in_series_folders_is_named_after_its_folder(tmp_path: Path) -> None:
    tags = write_study(tmp_path / "PETCT 2003-03-23")
    (tmp_path / "PETCT 2003-03-23" / "README.txt").write_text("exported by a PACS")  # not DICOM: passed over
    (study,) = find_studies(tmp_path / "PETCT 2003-03-23")
    assert (study.name, study.uid) == ("PETCT 2003-03-23", tags["StudyInstanceUID"])
    pet, ct = study_series(study)
    assert (pet.modality, ct.modality) == ("PT", "CT")
    assert pet.folder == tmp_path / "PETCT 2003-03-23" / "PET"
    assert len(pet.files) == 8
    assert len(ct.files) == 12


def test_a_folder_of_studies_names_each_by_its_path(tmp_path: Path) -> None:
    write_study(tmp_path / "p1" / "baseline")
    write_study(tmp_path / "p1" / "follow-up")
    write_study(tmp_path / "p2")
    assert [s.name for s in find_studies(tmp_path)] == ["p1/baseline", "p1/follow-up", "p2"]
    assert [s.name for s in find_studies(tmp_path / "p1")] == ["baseline", "follow-up"]


def test_studies_side_by_side_in_one_folder_are_refused(tmp_path: Path) -> None:
    for index in range(2):
        tags = study_tags()
        write_pet(tmp_path / "mixed", tags, names=lambda k, i=index: f"pet{i}_{k:03d}.dcm")
        write_ct(tmp_path / "mixed", tags, names=lambda k, i=index: f"ct{i}_{k:03d}.dcm")
    write_study(tmp_path / "fine")
    studies = find_studies(tmp_path)
    assert [s.problem is None for s in studies] == [True, False, False]
    for study in studies[1:]:
        with pytest.raises(InputError, match="side by side with another study's") as raised:
            study_series(study)
        assert str(tmp_path / "mixed") in str(raised.value)


def test_a_localizer_is_passed_over(tmp_path: Path) -> None:
    tags = write_study(tmp_path / "study")
    write_ct(tmp_path / "study" / "scout", {**tags, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    _, ct = study_series(find_studies(tmp_path / "study")[0])
    assert ct.folder == tmp_path / "study" / "CT"


def test_two_ct_series_are_refused(tmp_path: Path) -> None:
    tags = write_study(tmp_path / "study")
    write_ct(tmp_path / "study" / "CT-diagnostic", tags)
    (study,) = find_studies(tmp_path / "study")
    with pytest.raises(InputError, match=r"2 CT series in the study .*is not guessed"):
        study_series(study)


def test_a_series_spread_over_folders_is_refused(tmp_path: Path) -> None:
    write_study(tmp_path / "study")
    (tmp_path / "study" / "PET-2").mkdir()
    moved = sorted((tmp_path / "study" / "PET").iterdir())[:3]
    for path in moved:
        path.rename(tmp_path / "study" / "PET-2" / path.name)
    (study,) = find_studies(tmp_path / "study")
    with pytest.raises(InputError, match="spread over 2 folders"):
        study_series(study)


def test_a_damaged_file_refuses_its_study_only(tmp_path: Path) -> None:
    write_study(tmp_path / "a")
    write_study(tmp_path / "b")
    victim = sorted((tmp_path / "a" / "PET").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:140])  # the preamble and a few bytes: truncated
    a, b = find_studies(tmp_path)
    with pytest.raises(InputError, match="damaged DICOM file") as raised:
        study_series(a)
    assert str(victim) in str(raised.value)
    study_series(b)  # the other study is whole


def test_a_link_leading_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    write_study(tmp_path / "study")
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x")
    os.symlink(outside, tmp_path / "study" / "PET" / "link.dcm")
    with pytest.raises(InputError, match="symbolic link leads outside"):
        find_studies(tmp_path / "study")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_folder_or_no_dicom_files(tmp_path: Path, make: str) -> None:
    if make == "empty":
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="DICOM folder not found" if make == "missing" else "no DICOM files"):
        find_studies(tmp_path / "x")
