"""Stage 1 and the last stage: finding, reading and validating a case's images, and writing results.

`files` holds the images' reading, validation and atomic writing; `cases` finds the cases of a folder
(Grand-Challenge and nnU-Net layouts); `probability` the saved lesion probability; `splits` a dataset's
patient-grouped folds. The names most callers need are re-exported here.
"""

from petseg.io.files import (
    CT_FOLDER,
    DATA_CENTRIC_JSON,
    IMAGE_SUFFIXES,
    MASK_FOLDER,
    PET_FOLDER,
    CaseFiles,
    check_pet_units,
    find_case,
    find_image,
    image_stem,
    is_image_file,
    json_safe,
    read_case,
    read_image,
    write_atomically,
    write_image,
    write_json,
    write_outputs,
    write_text,
)

__all__ = [
    "CT_FOLDER",
    "DATA_CENTRIC_JSON",
    "IMAGE_SUFFIXES",
    "MASK_FOLDER",
    "PET_FOLDER",
    "CaseFiles",
    "check_pet_units",
    "find_case",
    "find_image",
    "image_stem",
    "is_image_file",
    "json_safe",
    "read_case",
    "read_image",
    "write_atomically",
    "write_image",
    "write_json",
    "write_outputs",
    "write_text",
]
