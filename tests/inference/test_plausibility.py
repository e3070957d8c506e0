"""Warnings for implausible masks and for inputs outside the model's training range."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import petseg
from petseg.errors import ModelError
from petseg.inference.plausibility import IMPLAUSIBLE_COMPONENT_ML, input_warnings, mask_warnings
from petseg.model.card import load_card
from petseg.model.input_range import InputRange
from petseg.synthetic import make_case


def _mask(shape_zyx, spacing_xyz, blocks) -> sitk.Image:
    array = np.zeros(shape_zyx, np.uint8)
    for block in blocks:
        array[block] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    return image


def test_an_organ_sized_lesion_and_a_huge_total_are_named_small_lesions_are_not():
    spacing = (4.0, 4.0, 4.0)  # 0.064 ml a voxel
    small = _mask((60, 60, 60), spacing, [np.s_[5:8, 5:8, 5:8], np.s_[20:24, 20:24, 20:24]])
    assert mask_warnings(small) == []
    assert mask_warnings(small * 0) == []
    # A brain-sized blob: 20 x 20 x 20 voxels = 512 ml.
    organ = _mask((60, 60, 60), spacing, [np.s_[30:50, 30:50, 30:50], np.s_[5:8, 5:8, 5:8]])
    (warning,) = mask_warnings(organ)
    assert "1 predicted lesion(s) the size of an organ (512 ml" in warning
    assert IMPLAUSIBLE_COMPONENT_ML < 512
    # Many mid-sized components that add up: the total is named, no single one is organ-sized.
    blocks = [np.s_[z : z + 15, y : y + 15, 0:15] for z in (0, 20, 40) for y in (0, 20, 40)]
    many = _mask((60, 60, 60), spacing, blocks)  # 9 x 216 ml
    (warning,) = mask_warnings(many)
    assert "the predicted lesions total 1,944 ml" in warning


def test_segment_warns_when_the_model_marks_organs(tiny_model_dir, tmp_path, caplog):
    """A model that marks nearly the whole body (here: a card whose threshold lets every voxel through)
    still writes its mask, and the log says to look before using it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    card = json.loads((model / "model.json").read_text())
    card["ensemble"]["threshold"] = 0.0
    (model / "model.json").write_text(json.dumps(card))
    phantom = make_case(seed=3, index=0, tracer="fdg", size="small", grid="fdg-400")
    with caplog.at_level(logging.WARNING, logger="petseg"):
        mask = petseg.segment(phantom.ct, phantom.pet, petseg.load_model(model, device="cpu"))
    assert sitk.GetArrayViewFromImage(mask).any()
    assert "look at the preview before using this mask" in caplog.text
    assert "the size of an organ" in caplog.text


def test_the_input_range_names_what_lies_outside_and_round_trips_through_the_card(tiny_model_dir, tmp_path):
    trained = InputRange.of([(2.04, 2.04, 3.0), (4.07, 4.07, 3.0)], [(400, 400, 326), (200, 200, 661)])
    assert trained.pet_spacing_mm == ((2.04, 4.07), (2.04, 4.07), (3.0, 3.0))
    assert trained.cases == 2
    pet = sitk.Image([400, 400, 300], sitk.sitkFloat32)
    pet.SetSpacing((2.0, 2.0, 3.0))
    assert input_warnings(trained, pet) == []
    assert input_warnings(None, pet) == []
    head = sitk.Image([256, 256, 90], sitk.sitkFloat32)
    head.SetSpacing((1.0, 1.0, 1.0))  # a brain scan at 1 mm
    found = input_warnings(trained, head)
    assert "voxel spacing x 1 mm (trained on 2.04-4.07 mm)" in found
    assert any(f.startswith("field of view z 90 mm") for f in found)

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**data, "input_range": trained.to_json()}))
    assert load_card(model).input_range == trained
    bad = {**trained.to_json(), "pet_spacing_mm": [[2.0, 1.0], [1, 2], [1, 2]]}
    (model / "model.json").write_text(json.dumps({**data, "input_range": bad}))
    with pytest.raises(ModelError, match=r"input_range.pet_spacing_mm x must be \[low, high\]"):
        load_card(model)
