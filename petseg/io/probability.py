"""The ensemble's lesion probability on the PET grid, saved beside the mask for calibration analyses.

float16 keeps about three decimal digits, plenty for entropy and confidence histograms, at half the size of
float32. Neither MetaImage nor NIfTI (through SimpleITK or nibabel) stores float16, so the file is an
uncompressed NumPy archive: the (z, y, x) probability and the PET grid it lies on (spacing, origin and
direction in SimpleITK's x, y, z order). `read_probability` returns it as a float32 SimpleITK image, so the
evaluation checks its grid like any mask's.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.io import write_atomically
from petseg.io.files import image_stem

PROBABILITY_SUFFIX = "_probability.npz"
_KEYS = ("probability", "spacing", "origin", "direction")


def probability_path(mask_path: Path) -> Path:
    """`<mask stem>_probability.npz` beside the mask (`case.nii.gz` -> `case_probability.npz`)."""
    mask_path = Path(mask_path)
    return mask_path.with_name(image_stem(mask_path) + PROBABILITY_SUFFIX)


def write_probability(probability_zyx: np.ndarray, reference: sitk.Image, path: Path) -> Path:
    """Write the probability (on `reference`'s grid, as (z, y, x)) as float16, atomically."""
    path = Path(path)
    expected = tuple(reversed(reference.GetSize()))
    if tuple(probability_zyx.shape) != expected:
        raise ValueError(f"probability shape {probability_zyx.shape} != reference grid {expected} (z, y, x)")
    arrays = {
        "probability": np.clip(probability_zyx, 0.0, 1.0).astype(np.float16),
        "spacing": np.asarray(reference.GetSpacing(), dtype=np.float64),
        "origin": np.asarray(reference.GetOrigin(), dtype=np.float64),
        "direction": np.asarray(reference.GetDirection(), dtype=np.float64),
    }

    def save(partial: Path) -> None:
        with open(partial, "wb") as handle:  # a handle: np.savez would append .npz to a bare name
            np.savez(handle, **arrays)

    write_atomically(path, save)
    return path


def read_probability(path: Path) -> sitk.Image:
    """A probability file as a float32 image on its PET grid; a damaged file is an InputError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _KEYS if key not in archive.files]
            if missing:
                raise InputError(f"{path}: not a petseg probability file (no {', '.join(missing)})")
            probability = archive["probability"]
            spacing, origin, direction = (archive[key] for key in _KEYS[1:])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{path}: cannot read probability file: {error}") from None
    if probability.ndim != 3 or spacing.shape != (3,) or origin.shape != (3,) or direction.shape != (9,):
        raise InputError(f"{path}: malformed probability file (array {probability.shape})")
    values = probability.astype(np.float32)
    if not np.isfinite(values).all() or values.min(initial=0.0) < 0.0 or values.max(initial=0.0) > 1.0:
        raise InputError(f"{path}: probabilities outside [0, 1] or not finite")
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction))
    return image
