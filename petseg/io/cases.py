"""Discovering the cases of a folder for batch prediction.

Two layouts are understood:

- Grand Challenge: a folder with `images/ct/` and `images/pet/` (one case), or a folder of such case
  folders, each optionally wrapped in `input/` (as `petseg phantoms --layout gc` writes them). Each case's
  output is a complete Grand-Challenge `/output` folder:
  `OUT/<case>/images/automated-petct-lesion-segmentation/<pet-uuid>.mha`.
- nnU-Net: `<case>_0000.nii.gz` (CT) and `<case>_0001.nii.gz` (PET), directly in the folder or in its
  `imagesTr/` or `imagesTs/`. Each case's output is `OUT/<case>.nii.gz`, named like its label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from petseg.errors import InputError
from petseg.io import CT_FOLDER, MASK_FOLDER, PET_FOLDER, CaseFiles, find_case
from petseg.io.nnunet_layout import CT_CHANNEL, IMAGES_FOLDER, PET_CHANNEL, TEST_IMAGES_FOLDER, channel_name

NNUNET_CT = channel_name("", CT_CHANNEL)  # "_0000.nii.gz"
NNUNET_PET = channel_name("", PET_CHANNEL)  # "_0001.nii.gz"


@dataclass(frozen=True)
class Case:
    name: str
    files: CaseFiles
    layout: str  # "gc" or "nnunet"

    def output_path(self, output_dir: Path) -> Path:
        if self.layout == "nnunet":
            return Path(output_dir) / f"{self.name}.nii.gz"
        return Path(output_dir) / self.name / MASK_FOLDER / f"{self.files.pet_uuid}.mha"


def _gc_root(folder: Path) -> Path | None:
    for root in (folder, folder / "input"):
        if (root / CT_FOLDER).is_dir() or (root / PET_FOLDER).is_dir():
            return root
    return None


def _nnunet_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / IMAGES_FOLDER, folder / TEST_IMAGES_FOLDER):
        if candidate.is_dir() and any(candidate.glob(f"*{NNUNET_CT}")):
            return candidate
    return None


def _nnunet_cases(folder: Path) -> list[Case]:
    cases = []
    for ct in sorted(folder.glob(f"*{NNUNET_CT}")):
        name = ct.name[: -len(NNUNET_CT)]
        pet = folder / f"{name}{NNUNET_PET}"
        if not pet.is_file():
            raise InputError(f"{ct}: no matching PET {pet.name} beside it")
        cases.append(Case(name, CaseFiles(ct=ct, pet=pet), "nnunet"))
    orphans = sorted(
        p.name
        for p in folder.glob(f"*{NNUNET_PET}")
        if not (folder / (p.name[: -len(NNUNET_PET)] + NNUNET_CT)).is_file()
    )
    if orphans:
        raise InputError(f"{folder}: PET without CT (_{CT_CHANNEL}): {', '.join(orphans)}")
    return cases


def discover_cases(input_dir: Path) -> list[Case]:
    """All cases under `input_dir`, sorted by name; an error if there are none."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    root = _gc_root(input_dir)
    if root is not None:
        return [Case(input_dir.resolve().name, find_case(root), "gc")]
    nnunet = _nnunet_folder(input_dir)
    if nnunet is not None:
        return _nnunet_cases(nnunet)
    cases = []
    for child in sorted(p for p in input_dir.iterdir() if p.is_dir()):
        root = _gc_root(child)
        if root is not None:
            cases.append(Case(child.name, find_case(root), "gc"))
    if not cases:
        raise InputError(
            f"{input_dir}: no cases found (expected images/ct + images/pet folders, case folders holding "
            f"them, or nnU-Net files *{NNUNET_CT} + *{NNUNET_PET})"
        )
    return cases
