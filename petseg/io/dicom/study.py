"""Finding the PET/CT studies under a folder, and the one PET and one CT series of each.

`petseg predict --dicom` takes study folders as exported from a PACS or downloaded from an archive, whose
layout varies: one flat folder of files, a folder per series, a folder per patient with a folder per study.
So the layout is not assumed; the headers say what belongs together:

- Every file below the folder is looked at once (header only). Hidden files and folders are passed over, and
  so are files that are not DICOM; a damaged DICOM file is an error, as in `read_series`. Symbolic links to
  files are followed where they stay inside the folder (one leading out is an error); links to folders are
  not followed.
- Files are grouped by StudyInstanceUID. A folder whose files all belong to one study is that study, named
  after the folder. A folder holding several is a folder of studies: each is named after the path, below the
  given folder, of the deepest folder that holds all its files. A study whose files lie side by side with
  another study's (in one folder, or in sibling folders) has no folder of its own and is refused.
- Within a study, files are grouped by SeriesInstanceUID. Series whose Modality is `PT` are PET series,
  `CT` ones CT series, except localizers (ImageType LOCALIZER); any other series (SEG, RTSTRUCT, SR, ...)
  is passed over. A study needs exactly one of each; none, or two PET series (attenuation-corrected and not,
  two reconstructions), is refused rather than guessed at. Each series' files must lie in one folder.

A refused study does not stop the others: `find_studies` returns each study with its problem, and
`study_series` raises it as an `InputError` when that study's turn comes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from petseg.errors import InputError
from petseg.io.dicom.series import Series, read_header, series_of
from petseg.io.dicom.values import element_text, element_texts, tag_label
from petseg.io.files import check_link_inside, check_readable_name, is_regular_file

log = logging.getLogger(__name__)

__all__ = ["Study", "find_studies", "study_series"]

STUDY_UID = tag_label("StudyInstanceUID", 0x0020000D)
SERIES_UID = tag_label("SeriesInstanceUID", 0x0020000E)


@dataclass(frozen=True)
class Study:
    """One study found under a folder: its files by series, or the reason it cannot be read."""

    name: str  # where its outputs go, below the output folder (a relative POSIX path)
    folder: Path  # the deepest folder holding all its files
    uid: str
    series: dict[str, dict[Path, Dataset]] = field(default_factory=dict)  # SeriesInstanceUID -> headers
    problem: str | None = None  # why it is refused, one line naming the folder or file


def _files(root: Path) -> list[Path]:
    """Every regular, visible file below `root`, in a stable order."""
    found = []
    for folder, folders, names in os.walk(root, followlinks=False):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.is_symlink():
                check_link_inside(path, root, "input")
            if is_regular_file(path):
                found.append(path)
    return found


def _headers(root: Path) -> tuple[dict[Path, Dataset], list[tuple[Path, str]]]:
    """The DICOM headers below `root`, and the damaged DICOM files with their problem."""
    headers: dict[Path, Dataset] = {}
    damaged: list[tuple[Path, str]] = []
    for path in _files(root):
        try:
            header = read_header(path, "DICOM")
        except InputError as error:
            damaged.append((path, str(error)))
            continue
        if header is not None:
            headers[path] = header
    return headers, damaged


def find_studies(root: Path) -> list[Study]:
    """The studies under `root`, sorted by name. A missing folder, one without DICOM files, a file without a
    StudyInstanceUID, or a damaged file that lies in no study's folder is an error for the whole folder."""
    root = Path(root)
    check_readable_name(root, "DICOM")
    if not root.is_dir():
        raise InputError(f"{root}: DICOM folder not found")
    headers, damaged = _headers(root)
    if not headers:
        if damaged:
            raise InputError(damaged[0][1])
        raise InputError(f"{root}: no DICOM files in the folder or below it")
    by_study: dict[str, dict[Path, Dataset]] = {}
    for path, header in headers.items():
        uid = element_text(header, 0x0020000D)
        if uid is None:
            raise InputError(f"{path}: no {STUDY_UID}: cannot tell which study the file belongs to")
        by_study.setdefault(uid, {})[path] = header
    if len(by_study) == 1:
        ((uid, files),) = by_study.items()
        studies = [_study(root.resolve().name or "study", root, uid, files)]
    else:
        studies = _several(root, by_study)
    for path, problem in damaged:  # a study missing a damaged slice must not be read as if whole
        owners = {s.uid for s in studies if s.folder == root or s.folder in path.parents}
        if not owners:
            raise InputError(problem)
        studies = [
            Study(s.name, s.folder, s.uid, problem=s.problem or problem) if s.uid in owners else s
            for s in studies
        ]
    return sorted(studies, key=lambda study: study.name)


def _several(root: Path, by_study: dict[str, dict[Path, Dataset]]) -> list[Study]:
    """The studies of a folder of studies, each named after the deepest folder holding all its files."""
    homes = {
        uid: Path(os.path.commonpath([path.parent for path in files])) for uid, files in by_study.items()
    }
    studies = []
    for uid, files in by_study.items():
        home = homes[uid]
        neighbours = sorted(other for other, folder in homes.items() if other != uid and folder == home)
        if home == root or neighbours:
            others = f" (beside StudyInstanceUID {', '.join(neighbours)})" if neighbours else ""
            problem = (
                f"{home}: the files of study {uid} lie side by side with another study's{others}; give each "
                "study a folder of its own"
            )
            studies.append(Study(f"{root.resolve().name}/{uid}", home, uid, problem=problem))
            continue
        studies.append(_study(home.relative_to(root).as_posix(), home, uid, files))
    return studies


def _study(name: str, folder: Path, uid: str, files: dict[Path, Dataset]) -> Study:
    series: dict[str, dict[Path, Dataset]] = {}
    for path, header in files.items():
        series_uid = element_text(header, 0x0020000E)
        if series_uid is None:
            return Study(name, folder, uid, problem=f"{path}: no {SERIES_UID}: cannot tell its series")
        series.setdefault(series_uid, {})[path] = header
    return Study(name, folder, uid, series)


def _describe(uid: str, files: dict[Path, Dataset]) -> str:
    first = next(iter(files))
    return f"{uid} ({len(files)} files in {first.parent})"


def _is_localizer(header: Dataset) -> bool:
    return "LOCALIZER" in (text.upper() for text in element_texts(header, 0x00080008))


def _pick(study: Study, modality: str, role: str) -> tuple[str, dict[Path, Dataset]]:
    candidates = {}
    for uid, files in study.series.items():
        header = next(iter(files.values()))
        if element_text(header, 0x00080060) != modality:
            continue
        if modality == "CT" and _is_localizer(header):
            log.info("%s: CT series %s is a localizer, passed over", study.folder, uid)
            continue
        candidates[uid] = files
    if not candidates:
        found = sorted(
            f"{element_text(next(iter(f.values())), 0x00080060) or '?'} {_describe(u, f)}"
            for u, f in study.series.items()
        )
        raise InputError(
            f"{study.folder}: no {role} series (Modality {modality}) in the study; found: {'; '.join(found)}"
        )
    if len(candidates) > 1:
        listed = "; ".join(_describe(uid, files) for uid, files in candidates.items())
        raise InputError(
            f"{study.folder}: {len(candidates)} {role} series in the study ({listed}); which one to segment "
            f"is not guessed: give a folder with one {role} series"
        )
    ((uid, files),) = candidates.items()
    folders = sorted({str(path.parent) for path in files})
    if len(folders) > 1:
        raise InputError(
            f"{study.folder}: the {role} series {uid} is spread over {len(folders)} folders "
            f"({', '.join(folders[:3])}); put its files in one folder"
        )
    return uid, files


def study_series(study: Study) -> tuple[Series, Series]:
    """The study's PET and CT series, validated as `read_series` validates a series folder."""
    if study.problem is not None:
        raise InputError(study.problem)
    pet_uid, pet_files = _pick(study, "PT", "PET")
    ct_uid, ct_files = _pick(study, "CT", "CT")
    pet = series_of(next(iter(pet_files)).parent, pet_uid, pet_files, "PT", "PET")
    ct = series_of(next(iter(ct_files)).parent, ct_uid, ct_files, "CT", "CT")
    return pet, ct
