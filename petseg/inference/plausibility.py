"""Warnings for results and inputs that deserve a second look before anyone reads the mask.

A model that marks the brain, the bladder and both kidneys still writes a valid mask. A lesion mask of a
whole-body scan is a set of small components: an autoPET case's total tumour volume is rarely above a
litre, and one lesion the size of an organ is more often physiological uptake than disease. These checks
never change the mask; they say, in the log, where a reader should look at the preview first.
"""

from __future__ import annotations

import math

import cc3d
import numpy as np
import SimpleITK as sitk

from petseg.model.input_range import InputRange

__all__ = ["IMPLAUSIBLE_COMPONENT_ML", "IMPLAUSIBLE_TOTAL_ML", "input_warnings", "mask_warnings"]

# Organ volumes in adults: kidney about 150 ml, full bladder up to 500 ml, liver 1,500 ml, brain 1,300 ml.
IMPLAUSIBLE_COMPONENT_ML = 400.0  # one predicted lesion this large: organ-sized
IMPLAUSIBLE_TOTAL_ML = 1500.0  # all predicted lesions together
assert IMPLAUSIBLE_TOTAL_ML >= IMPLAUSIBLE_COMPONENT_ML  # mask_warnings' early return relies on it


def mask_warnings(mask: sitk.Image) -> list[str]:
    """What is implausible about a lesion mask on its PET grid (empty when nothing is)."""
    voxels = sitk.GetArrayViewFromImage(mask)
    voxel_ml = math.prod(mask.GetSpacing()) / 1000.0
    total = int(np.count_nonzero(voxels)) * voxel_ml
    # Below the component limit (itself below the total one) nothing can be named: the usual mask of a
    # case is then never labelled, which on a whole-body grid would cost a pass over 100 M voxels.
    if total <= IMPLAUSIBLE_COMPONENT_ML:
        return []
    labels = cc3d.connected_components(np.ascontiguousarray(voxels > 0), connectivity=18)
    sizes_ml = np.bincount(labels.ravel())[1:] * voxel_ml
    found = []
    if total > IMPLAUSIBLE_TOTAL_ML:
        found.append(
            f"the predicted lesions total {total:,.0f} ml (above {IMPLAUSIBLE_TOTAL_ML:,.0f} ml is rare even "
            "in bulky lymphoma)"
        )
    large = sorted(sizes_ml[sizes_ml > IMPLAUSIBLE_COMPONENT_ML], reverse=True)
    if large:
        shown = ", ".join(f"{v:,.0f} ml" for v in large[:5])
        found.append(
            f"{len(large)} predicted lesion(s) the size of an organ ({shown}; a kidney is about 150 ml, the "
            "brain 1,300 ml): physiological uptake marked as disease?"
        )
    return found


def input_warnings(input_range: InputRange | None, pet: sitk.Image) -> list[str]:
    """Where the PET's grid lies well outside what the model was trained on (empty when inside, or when
    the card does not record its training range)."""
    if input_range is None:
        return []
    return input_range.outside(pet.GetSpacing(), pet.GetSize())
