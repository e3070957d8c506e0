"""Writing phantoms to disk in the Grand-Challenge input layout or the nnU-Net raw-dataset layout."""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from petseg.geometry import Grid
from petseg.io import write_image, write_json
from petseg.io.nnunet_layout import (
    CT_CHANNEL,
    IMAGES_FOLDER,
    PET_CHANNEL,
    channel_name,
    label_path,
    organ_map_path,
)
from petseg.io.splits import grouped_folds, write_splits
from petseg.synthetic.case import Phantom

log = logging.getLogger(__name__)

LAYOUTS = ("gc", "nnunet")
N_FOLDS = 5


def write_gc(phantom: Phantom, out_dir: Path) -> dict[str, str]:
    """`<case>/input/images/{ct,pet}/<uuid>.mha`, `<case>/ground-truth/<pet uuid>.mha`, and the organ label
    map as `<case>/organs/<pet uuid>.mha`."""
    info = phantom.info
    case = Path(out_dir) / phantom.case_id
    files = {
        "ct": case / "input" / "images" / "ct" / f"{info['ct_uuid']}.mha",
        "pet": case / "input" / "images" / "pet" / f"{info['pet_uuid']}.mha",
        "label": case / "ground-truth" / f"{info['pet_uuid']}.mha",
    }
    if phantom.organs is not None:
        files["organs"] = case / "organs" / f"{info['pet_uuid']}.mha"
    write_image(phantom.ct, files["ct"], compress=True)
    write_image(phantom.pet, files["pet"], compress=True)
    write_image(phantom.label, files["label"], compress=True)
    if phantom.organs is not None:
        write_image(phantom.organs, files["organs"], compress=True)
    return {key: path.relative_to(out_dir).as_posix() for key, path in files.items()}


def ct_on_pet_grid(phantom: Phantom) -> sitk.Image:
    """The CT resampled onto the PET grid (linear; -1024 HU outside the CT's field of view), as int16."""
    grid = Grid.of(phantom.pet)
    if Grid.of(phantom.ct).matches(grid):
        return phantom.ct
    resampled = grid.resample(phantom.ct, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(resampled), sitk.sitkInt16)


def write_nnunet(phantom: Phantom, out_dir: Path) -> dict[str, str]:
    """`imagesTr/<case>_0000.nii.gz` (CT on the PET grid), `_0001` (PET), `labelsTr/<case>.nii.gz` and the
    organ label map `organsTr/<case>.nii.gz`."""
    out_dir = Path(out_dir)
    files = {
        "ct": out_dir / IMAGES_FOLDER / channel_name(phantom.case_id, CT_CHANNEL),
        "pet": out_dir / IMAGES_FOLDER / channel_name(phantom.case_id, PET_CHANNEL),
        "label": label_path(out_dir, phantom.case_id),
    }
    if phantom.organs is not None:
        files["organs"] = organ_map_path(out_dir, phantom.case_id)
    write_image(ct_on_pet_grid(phantom), files["ct"], compress=True)
    write_image(phantom.pet, files["pet"], compress=True)
    write_image(phantom.label, files["label"], compress=True)
    if phantom.organs is not None:
        write_image(phantom.organs, files["organs"], compress=True)
    return {key: path.relative_to(out_dir).as_posix() for key, path in files.items()}


def finish_nnunet(out_dir: Path, case_ids: list[str], seed: int) -> dict[str, str]:
    """`dataset.json`, and `splits_final.json` with patient-grouped folds (skipped for under 5 patients)."""
    out_dir = Path(out_dir)
    dataset = {
        "name": "petseg-phantoms",
        "description": "Synthetic whole-body PET/CT phantoms (petseg)",
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
    }
    written = {"dataset": write_json(dataset, out_dir / "dataset.json").name}
    try:
        folds = grouped_folds(case_ids, n_folds=N_FOLDS, seed=seed)
    except ValueError as error:
        log.warning("splits_final.json not written: %s", error)
        return written
    written["splits"] = write_splits(out_dir / "splits_final.json", folds).name
    return written
