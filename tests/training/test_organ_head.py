"""Organ supervision: organ maps through the one preprocessing path, in the cache and the patches, the
organ head's loss, a training run with it, and the refusal of bad organ files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.errors import InputError
from petseg.inference.preprocess import preprocess
from petseg.io import write_image
from petseg.io.nnunet_layout import ORGANS_FOLDER
from petseg.model.organs import ORGAN_CLASSES, ORGAN_NAMES
from petseg.model.settings import PreprocessSettings
from petseg.synthetic import generate, make_case
from training.config import TrainConfig
from training.data import ORGANS, PreprocessedCache, discover_dataset, train_transforms
from training.losses import OrganSupervised, build_loss

LIVER, LUNGS = ORGAN_NAMES.index("liver"), ORGAN_NAMES.index("lungs")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate(root, cases=6, seed=8, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    return root


def test_phantoms_write_organ_maps_on_the_pet_grid(dataset: Path) -> None:
    phantom = make_case(seed=2, index=0, tracer="fdg", size="tiny", lesion_free=False)
    assert phantom.organs is not None
    assert phantom.organs.GetSize() == phantom.pet.GetSize()
    assert phantom.organs.GetOrigin() == phantom.pet.GetOrigin()
    values = set(np.unique(sitk.GetArrayViewFromImage(phantom.organs)).tolist())
    assert {0, LIVER, LUNGS} <= values <= set(range(ORGAN_CLASSES))
    records = discover_dataset(dataset, dataset / ORGANS_FOLDER)
    assert all(r.organs is not None and r.organs.parent.name == ORGANS_FOLDER for r in records)


def test_organ_maps_stay_aligned_through_the_one_preprocessing_path() -> None:
    """The organ map reaches the network grid by the lesion label's own nearest-neighbour path (a binary map
    of one organ gives the same voxels as a label), and there it covers the organ's own image: the phantom's
    liver SUV and lung density, which a map shifted by a few voxels no longer does."""
    phantom = make_case(seed=4, index=1, tracer="fdg", size="tiny", lesion_free=True)
    settings = PreprocessSettings(spacing_mm=(3.0, 3.0, 3.0))
    liver_only = sitk.Cast(phantom.organs == LIVER, sitk.sitkUInt8)
    case = preprocess(phantom.ct, phantom.pet, settings, label=liver_only, organs=phantom.organs)
    assert case.organs is not None
    assert case.organs.shape == (1, *case.image.shape[1:])
    np.testing.assert_array_equal(case.organs[0] == LIVER, case.label[0] > 0)
    liver, lungs = case.organs[0] == LIVER, case.organs[0] == LUNGS
    suv = phantom.info["uptake_suv"]["liver"]
    assert abs(float(np.median(case.image[1][liver])) - suv) < 0.25 * suv
    lung_ct = settings.scaled_ct(-500.0)  # lung parenchyma lies far below -500 HU
    assert float(np.median(case.image[0][lungs])) < lung_ct
    shifted = np.roll(liver, 4, axis=0)
    assert abs(float(np.median(case.image[1][shifted & ~liver])) - suv) > 0.25 * suv
    with pytest.raises(InputError, match="organ map is not on the PET grid"):
        preprocess(phantom.ct, phantom.pet, settings, organs=sitk.Shrink(phantom.organs, [2, 2, 2]))


def test_cached_entries_and_patches_carry_the_organ_map(dataset: Path, tmp_path: Path) -> None:
    records = discover_dataset(dataset, dataset / ORGANS_FOLDER)
    cache = PreprocessedCache(tmp_path / "cache", PreprocessSettings(spacing_mm=(3.0, 3.0, 3.0)))
    whole, mapped = cache.get(records[0]), cache.open(records[0])
    assert isinstance(mapped[ORGANS], np.memmap)
    np.testing.assert_array_equal(whole[ORGANS], mapped[ORGANS])
    assert whole[ORGANS].shape == whole["label"].shape
    without = cache.get(discover_dataset(dataset)[0])  # the same case without organs: another entry
    assert ORGANS not in without
    for augment in (False, True):
        a = train_transforms((16, 16, 16), 0.8, augment, seed=3, organs=True)
        b = train_transforms((16, 16, 16), 0.8, augment, seed=3, organs=True)
        for _ in range(4):
            p, q = a(cache.get(records[1])), b(cache.open(records[1]))
            assert torch.equal(p[ORGANS], q[ORGANS])
            assert torch.equal(p["image"], q["image"])
            assert p[ORGANS].shape == (1, 16, 16, 16)
            assert set(torch.unique(p[ORGANS]).tolist()) <= set(range(ORGAN_CLASSES))


def test_entries_with_and_without_organs_live_side_by_side(dataset: Path, tmp_path: Path) -> None:
    """Runs with and without an organ head share a cache: filling one kind of entry keeps the other."""
    with_organs = discover_dataset(dataset, dataset / ORGANS_FOLDER)[0]
    plain = discover_dataset(dataset)[0]
    cache = PreprocessedCache(tmp_path / "cache", PreprocessSettings(spacing_mm=(3.0, 3.0, 3.0)))
    cache.get(with_organs)
    cache.get(plain)
    assert cache.path(with_organs) != cache.path(plain)
    assert cache.path(with_organs).is_file()
    assert cache.path(plain).is_file()
    assert sorted(p.name for p in cache.directory.glob("*.npz")) == sorted(
        [cache.path(with_organs).name, cache.path(plain).name]
    )


def test_bad_organ_files_are_refused_naming_them_and_nothing_is_cached(dataset: Path, tmp_path: Path) -> None:
    organs = tmp_path / "organs"
    organs.mkdir()
    records = discover_dataset(dataset)
    first = records[0]
    good = sitk.ReadImage(str(dataset / ORGANS_FOLDER / f"{first.case_id}.nii.gz"))
    with pytest.raises(InputError, match=rf"organ map of case '{first.case_id}' not found"):
        discover_dataset(dataset, organs)
    cases = {
        "grid": sitk.Shrink(good, [2, 1, 1]),
        "labels": sitk.Cast(sitk.Cast(good, sitk.sitkUInt8) + 40, sitk.sitkUInt8),
    }
    for problem, image in cases.items():
        for record in records:
            write_image(good, organs / f"{record.case_id}.nii.gz")
        write_image(image, organs / f"{first.case_id}.nii.gz")
        cache = PreprocessedCache(tmp_path / f"cache-{problem}", PreprocessSettings(spacing_mm=(3.0,) * 3))
        record = discover_dataset(dataset, organs)[0]
        expected = "not on the grid of its PET" if problem == "grid" else r"unknown organ label\(s\) 40"
        with pytest.raises(InputError, match=rf"{organs / first.case_id}.nii.gz: {expected}"):
            cache.get(record)
        assert not list(cache.directory.glob("*.npz"))


def test_organ_supervision_adds_the_organ_term_to_the_lesion_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2 + ORGAN_CLASSES, 8, 8, 8, requires_grad=True)
    lesion = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    organs = torch.randint(0, ORGAN_CLASSES, (2, 1, 8, 8, 8)).float()
    targets = torch.cat([lesion, organs], dim=1)
    lesion_loss = build_loss("dfl")
    alone = lesion_loss(logits[:, :2], lesion)
    for weight in (0.0, 0.5, 2.0):
        total = OrganSupervised(build_loss("dfl"), weight)(logits, targets)
        from monai.losses import DiceCELoss

        organ_term = DiceCELoss(to_onehot_y=True, softmax=True)(logits[:, 2:], organs)
        torch.testing.assert_close(total, alone + weight * organ_term)
    total.backward()
    assert logits.grad is not None
    assert float(logits.grad[:, 2:].abs().sum()) > 0  # the organ outputs learn
    with pytest.raises(ValueError, match="expected lesion and organ targets"):
        OrganSupervised(build_loss("dfl"), 1.0)(logits, lesion)


@pytest.mark.slow
def test_a_run_with_organs_trains_an_organ_head_that_inference_ignores(dataset: Path, tmp_path: Path) -> None:
    from petseg.inference.predict import Predictor
    from petseg.model.card import load_card
    from training.export import export
    from training.trainer import train

    config = TrainConfig(
        data=dataset,
        fold=0,
        out=tmp_path / "run",
        loss="dfl",
        arch="resunet-tiny",
        epochs=1,
        batch_size=2,
        patch_size=32,
        samples_per_epoch=2,
        val_every=1,
        window=32,
        overlap=0.25,
        sw_batch_size=2,
        num_workers=0,
        device="cpu",
        spacing_mm=(4.0, 4.0, 4.0),
        organs=dataset / ORGANS_FOLDER,
        organ_weight=0.5,
        progress=False,
    )
    train(config)
    card = export([tmp_path / "run"], tmp_path / "model", checkpoint="last")
    assert card.architecture.organ_classes == ORGAN_CLASSES
    assert card.provenance["sampling"]["organ_weight"] == 0.5
    assert load_card(tmp_path / "model").architecture.organ_classes == ORGAN_CLASSES
    predictor = Predictor.load(tmp_path / "model", device="cpu")
    image = np.random.default_rng(0).random((2, 32, 32, 32)).astype(np.float32)
    probability = predictor(image)
    assert probability.shape == (32, 32, 32)
    assert 0.0 <= float(probability.min()) <= float(probability.max()) <= 1.0
