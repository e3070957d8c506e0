"""The names of the nnU-Net raw-data layout, which petseg reads for inference, training and evaluation
and which the phantom generator writes.

`imagesTr/<case>_0000.nii.gz` is the CT (resampled onto the PET grid), `imagesTr/<case>_0001.nii.gz` the
PET, and `labelsTr/<case>.nii.gz` the lesion mask; test images sit in `imagesTs/`. petseg adds
`organsTr/<case>.nii.gz`, an organ label map on the PET grid (`petseg.model.organs` values), which training
with an organ head reads (`train --organs DATASET/organsTr`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CHANNELS",
    "CT_CHANNEL",
    "FILE_ENDING",
    "IMAGES_FOLDER",
    "LABELS_FOLDER",
    "ORGANS_FOLDER",
    "PET_CHANNEL",
    "TEST_IMAGES_FOLDER",
    "channel_name",
    "label_path",
    "organ_map_path",
]

IMAGES_FOLDER = "imagesTr"
TEST_IMAGES_FOLDER = "imagesTs"
LABELS_FOLDER = "labelsTr"
ORGANS_FOLDER = "organsTr"
FILE_ENDING = ".nii.gz"
CT_CHANNEL = "0000"
PET_CHANNEL = "0001"
CHANNELS = {CT_CHANNEL: "CT", PET_CHANNEL: "PET"}


def channel_name(case_id: str, channel: str) -> str:
    """`<case>_<channel>.nii.gz`, the file name of one input channel."""
    return f"{case_id}_{channel}{FILE_ENDING}"


def label_path(dataset: Path, case_id: str) -> Path:
    """`labelsTr/<case>.nii.gz` of a dataset folder."""
    return Path(dataset) / LABELS_FOLDER / f"{case_id}{FILE_ENDING}"


def organ_map_path(dataset: Path, case_id: str) -> Path:
    """`organsTr/<case>.nii.gz` of a dataset folder."""
    return Path(dataset) / ORGANS_FOLDER / f"{case_id}{FILE_ENDING}"
