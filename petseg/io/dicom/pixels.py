"""Each slice's voxel values, rescaled slice by slice, stacked into one volume on the series' grid.

PET scanners often store a different RescaleSlope in every slice (to use the full 16-bit range of each).
A reader that takes the first slice's slope, or its pixel type, for the whole volume is wrong by that
ratio in every other slice: here each slice is read on its own and its own slope and intercept are
applied before stacking. pydicom decodes the pixel data; where it has no decoder for the file's transfer
syntax (JPEG lossless, for one), SimpleITK (GDCM) reads that slice, applying the same slice's slope and
intercept itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.io.dicom.series import Series

__all__ = ["read_rescaled", "to_image"]


def _pydicom_slice(path: Path, slope: float, intercept: float) -> np.ndarray | None:
    """slope x stored + intercept in float64, or None when pydicom cannot decode the pixel data."""
    try:
        dataset = pydicom.dcmread(path)
        stored = dataset.pixel_array
    except Exception:  # no decoder for the transfer syntax, or data pydicom cannot make sense of
        return None
    return stored.astype(np.float64) * slope + intercept


def _sitk_slice(path: Path) -> np.ndarray:
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat64)
    except RuntimeError as error:
        raise InputError(f"{path}: cannot decode the pixel data: {str(error).splitlines()[0]}") from None
    array = sitk.GetArrayFromImage(image)
    return array.reshape(array.shape[-2:])


def read_rescaled(
    series: Series, slopes: Sequence[float], intercepts: Sequence[float], factors: Sequence[float] = ()
) -> np.ndarray:
    """The series as a (z, y, x) float32 array: each slice's stored values x its slope + its intercept,
    then x its factor (1 when `factors` is empty)."""
    width, height, depth = series.geometry.size
    volume = np.empty((depth, height, width), dtype=np.float32)
    for index, path in enumerate(series.files):
        values = _pydicom_slice(path, slopes[index], intercepts[index])
        if values is None:
            values = _sitk_slice(path)
        if values.shape != (height, width):
            raise InputError(f"{path}: pixel data of {values.shape} where the header says {(height, width)}")
        if factors:
            values = values * factors[index]
        if not np.all(np.isfinite(values)):
            raise InputError(f"{path}: the rescaled values are not all finite numbers")
        volume[index] = values
    return volume


def to_image(volume: np.ndarray, series: Series) -> sitk.Image:
    """The volume as a SimpleITK image on the series' grid."""
    return series.geometry.apply(sitk.GetImageFromArray(volume))
