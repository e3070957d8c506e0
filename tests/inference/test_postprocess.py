"""Growth of predicted lesions to their uptake contour, against a brute-force reading of its definition."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from petseg.inference.pipeline import segment, segment_case
from petseg.inference.postprocess import grow_to_uptake_contour
from petseg.inference.predict import Predictor
from petseg.inference.timing import StageTimer
from petseg.io import CaseFiles, write_image
from petseg.model.card import load_card, save_card
from petseg.synthetic import make_case

FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def brute_force(mask, pet, spacing_xyz, fraction, within_mm):
    """The definition, voxel by voxel: all pairwise distances, scipy's labelling, no bounding boxes."""
    spacing = np.array(spacing_xyz[::-1], dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1) * spacing
    components, count = ndimage.label(mask, structure=FULL)
    grown = mask.copy()
    for k in range(1, count + 1):
        inside = components == k
        points = grid[inside]
        distance = np.sqrt(((grid[..., None, :] - points) ** 2).sum(-1)).min(-1)
        candidate = inside | ((distance <= within_mm) & (pet >= fraction * pet[inside].max()))
        pieces, _ = ndimage.label(candidate, structure=FULL)
        grown |= np.isin(pieces, np.unique(pieces[inside])) & (pieces > 0)
    return grown


def blobs(shape, spacing_xyz, centres_mm, peaks, sigma_mm, rng):
    spacing = np.array(spacing_xyz[::-1], dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) * spacing
    pet = 0.5 + 0.1 * rng.random(shape)
    for centre, peak in zip(centres_mm, peaks, strict=True):
        pet += peak * np.exp(-(((grid - np.array(centre)) ** 2).sum(-1)) / (2 * sigma_mm**2))
    return pet.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_growth_is_its_definition(seed):
    rng = np.random.default_rng(seed)
    spacing = (2.0, 2.5, 3.0)  # x, y, z: anisotropic, as PET grids are
    shape = (14, 16, 18)
    centres = [rng.uniform(8, 30, 3) for _ in range(3)]
    pet = blobs(shape, spacing, centres, rng.uniform(3, 20, 3), sigma_mm=4.0, rng=rng)
    mask = pet > np.quantile(pet, 0.997)  # cores of the brightest blobs: the network's under-segmentation
    for fraction, within_mm in ((0.4, 6.0), (0.6, 3.0), (0.25, 10.0)):
        expected = brute_force(mask, pet, spacing, fraction, within_mm)
        grown = grow_to_uptake_contour(mask, pet, spacing, fraction, within_mm)
        np.testing.assert_array_equal(grown, expected)
        assert grown.sum() > mask.sum()  # the blobs' rims do lie above the contour
        assert not (mask & ~grown).any()  # nothing predicted is removed


def test_growth_keeps_to_its_own_lesion():
    spacing = (2.0, 2.0, 2.0)
    pet = np.full((9, 9, 30), 1.0, dtype=np.float32)
    pet[3:6, 3:6, 3:6] = 10.0  # the lesion: its core is predicted, its rim is not
    mask = np.zeros(pet.shape, dtype=bool)
    mask[4, 4, 4] = True
    pet[3:6, 3:6, 20:23] = 50.0  # a hot organ 30 mm away: beyond reach
    pet[4, 4, 9] = 9.0  # within 10 mm but cut off from the lesion by cold voxels
    grown = grow_to_uptake_contour(mask, pet, spacing, 0.4, 10.0)
    expected = np.zeros_like(mask)
    expected[3:6, 3:6, 3:6] = True
    np.testing.assert_array_equal(grown, expected)
    # a brighter lesion raises its own contour only: 40 % of 30 leaves the rim at 10 outside
    pet[4, 4, 4] = 30.0
    grown = grow_to_uptake_contour(mask, pet, spacing, 0.4, 10.0)
    assert grown.sum() == 1


def test_no_growth_without_lesions_or_reach_and_bad_settings_refused():
    pet = np.ones((4, 4, 4), dtype=np.float32)
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert not grow_to_uptake_contour(empty, pet, (1, 1, 1), 0.4, 6.0).any()
    one = empty.copy()
    one[1, 1, 1] = True
    np.testing.assert_array_equal(grow_to_uptake_contour(one, pet, (1, 1, 1), 0.4, 0.0), one)
    for fraction, within in ((0.0, 6.0), (1.2, 6.0), (0.4, -1.0)):
        with pytest.raises(ValueError, match="fraction must be in"):
            grow_to_uptake_contour(one, pet, (1, 1, 1), fraction, within)


def test_a_card_that_asks_for_growth_gets_it_on_the_pet_grid(tmp_path, tiny_model_dir):
    from dataclasses import replace

    phantom = make_case(seed=5, index=0, tracer="fdg", size="tiny", lesion_free=False)
    files = CaseFiles(
        ct=write_image(phantom.ct, tmp_path / "ct.mha"), pet=write_image(phantom.pet, tmp_path / "pet.mha")
    )
    plain_predictor = Predictor.load(tiny_model_dir, device="cpu")
    plain = sitk.GetArrayFromImage(segment(files, plain_predictor, StageTimer(quiet=True))).astype(bool)
    assert plain.any()  # the random ensemble marks something to grow

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    card = load_card(model)
    save_card(
        replace(card, ensemble=replace(card.ensemble, grow_to_suvmax_fraction=0.4, grow_within_mm=6.0)), model
    )
    growing = Predictor.load(model, device="cpu")
    result = segment_case(files, growing, StageTimer(quiet=True), keep_probability=True)
    mask = sitk.GetArrayFromImage(result.mask).astype(bool)
    pet = sitk.GetArrayFromImage(phantom.pet)
    np.testing.assert_array_equal(
        mask, grow_to_uptake_contour(plain, pet, phantom.pet.GetSpacing(), 0.4, 6.0)
    )
    assert mask.sum() > plain.sum()
    lean = sitk.GetArrayFromImage(segment(files, growing, StageTimer(quiet=True))).astype(bool)
    np.testing.assert_array_equal(lean, mask)  # the lean path and the probability path agree
    assert result.mask.GetSpacing() == phantom.pet.GetSpacing()


def test_the_suv_floor_removes_predicted_voxels_below_it_for_the_cases_tracer(tmp_path, tiny_model_dir):
    """With a card's `suv_floor`, the mask is the floorless mask less its voxels below the floor of the case's
    tracer ("all" serving every tracer); without a tracer, per-tracer floors give way to the lowest."""
    from dataclasses import replace

    from petseg.inference.postprocess import suv_floor_for

    phantom = make_case(seed=5, index=0, tracer="fdg", size="tiny", lesion_free=False)
    files = CaseFiles(
        ct=write_image(phantom.ct, tmp_path / "ct.mha"), pet=write_image(phantom.pet, tmp_path / "pet.mha")
    )
    plain = sitk.GetArrayFromImage(
        segment(files, Predictor.load(tiny_model_dir, device="cpu"), StageTimer(quiet=True))
    ).astype(bool)
    pet = sitk.GetArrayFromImage(phantom.pet)
    floor = float(np.median(pet[plain]))  # half the random ensemble's voxels lie below it
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    card = load_card(model)
    save_card(replace(card, ensemble=replace(card.ensemble, suv_floor={"all": floor})), model)
    assert load_card(model).ensemble.suv_floor == {"all": floor}
    floored = sitk.GetArrayFromImage(
        segment(files, Predictor.load(model, device="cpu"), StageTimer(quiet=True))
    ).astype(bool)
    np.testing.assert_array_equal(floored, plain & (pet >= floor))
    assert 0 < floored.sum() < plain.sum()

    assert suv_floor_for({"fdg": 1.5, "psma": 1.0}, "fdg") == 1.5
    assert suv_floor_for({"fdg": 1.5, "psma": 1.0}, "psma") == 1.0
    assert suv_floor_for({"fdg": 1.5, "psma": 1.0}, None) == 1.0
    assert suv_floor_for({"fdg": 1.5, "all": 2.0}, "psma") == 2.0
