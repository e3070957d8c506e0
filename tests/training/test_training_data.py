"""Training data: dataset discovery, folds, the preprocessed cache, patch sampling and augmentation."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import RandAffined

import petseg.inference.preprocess
import training.data
from petseg.errors import InputError, OutputError
from petseg.io import read_image, write_image
from petseg.io.splits import grouped_folds, leaking_patients, read_splits
from petseg.model.settings import PreprocessSettings
from petseg.synthetic import generate
from training.data import (
    CaseRecord,
    PatchDataset,
    PreprocessedCache,
    RandCTGammad,
    RandElasticd,
    discover_dataset,
    displace,
    load_folds,
    train_transforms,
    validation_items,
)

PATCH = (48, 48, 48)
SPACED_ID = "fdg_0123456789_05-22-2005-NA-PET-CT Ganzkoerper  primaer mit KM-12345"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Eight tiny phantoms (nnU-Net layout): cases with and without lesions, patients with two studies."""
    root = tmp_path_factory.mktemp("phantoms")
    rows = generate(root, cases=8, seed=3, tracer="mixed", size="tiny", layout="nnunet", progress=False)
    return root, rows


@pytest.fixture(scope="module")
def records(phantoms: tuple[Path, list[dict]]) -> list[CaseRecord]:
    return discover_dataset(phantoms[0])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, records: list[CaseRecord]) -> PreprocessedCache:
    cache = PreprocessedCache(tmp_path_factory.mktemp("cache"), PreprocessSettings())
    cache.prepare(records, progress=False, workers=2)
    return cache


@pytest.fixture(scope="module")
def lesion_records(phantoms: tuple[Path, list[dict]], records: list[CaseRecord]) -> list[CaseRecord]:
    with_lesions = {row["case_id"] for row in phantoms[1] if not row["lesion_free"]}
    chosen = [record for record in records if record.case_id in with_lesions]
    assert len(chosen) >= 2
    return chosen


@pytest.fixture(scope="module")
def lesion_free_record(phantoms: tuple[Path, list[dict]], records: list[CaseRecord]) -> CaseRecord:
    free = {row["case_id"] for row in phantoms[1] if row["lesion_free"]}
    return next(record for record in records if record.case_id in free)


def direct(record: CaseRecord, settings: PreprocessSettings) -> petseg.inference.preprocess.PreprocessedCase:
    """The inference path, called directly on the record's files."""
    ct, pet = read_image(record.ct, "CT"), read_image(record.pet, "PET")
    return petseg.inference.preprocess.preprocess(ct, pet, settings, label=read_image(record.label, "label"))


def touch_dataset(root: Path, images: list[str], labels: list[str]) -> Path:
    """An nnU-Net folder of empty files: discovery looks at names only."""
    for folder, names in (("imagesTr", images), ("labelsTr", labels)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).touch()
    return root


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


# ----------------------------------------------------------------------------------------------- discovery


def test_discover_dataset_sorted_with_all_three_files(
    phantoms: tuple[Path, list[dict]], records: list[CaseRecord]
) -> None:
    root, rows = phantoms
    assert [r.case_id for r in records] == sorted(row["case_id"] for row in rows)
    for record in records:
        assert record.ct == root / "imagesTr" / f"{record.case_id}_0000.nii.gz"
        assert record.pet == root / "imagesTr" / f"{record.case_id}_0001.nii.gz"
        assert record.label == root / "labelsTr" / f"{record.case_id}.nii.gz"


def test_discover_dataset_keeps_ids_with_spaces(tmp_path: Path) -> None:
    ids = [SPACED_ID, "psma_0123456789abcdef_2019-01-02", "fdg_0123456789_05-22-2005"]
    images = [f"{case}_{channel}.nii.gz" for case in ids for channel in ("0000", "0001")]
    labels = [f"{case}.nii.gz" for case in ids]
    root = touch_dataset(tmp_path, [*images, ".hidden_0000.nii.gz", "notes.txt"], labels)
    found = discover_dataset(root)
    assert [r.case_id for r in found] == sorted(ids)
    spaced = next(r for r in found if r.case_id == SPACED_ID)
    assert spaced.pet.name == f"{SPACED_ID}_0001.nii.gz"
    assert spaced.label.name == f"{SPACED_ID}.nii.gz"


@pytest.mark.parametrize(
    ("images", "labels", "named"),
    [
        (["a_0000.nii.gz"], ["a.nii.gz"], "a_0001.nii.gz"),
        (["a_0001.nii.gz"], ["a.nii.gz"], "a_0000.nii.gz"),
        (["a_0000.nii.gz", "a_0001.nii.gz"], [], "a.nii.gz"),
        (["a_0000.nii.gz", "a_0001.nii.gz"], ["a.nii.gz", "b  c.nii.gz"], "b  c.nii.gz"),
        (["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"], ["a.nii.gz"], "a_0002.nii.gz"),
        (["a.nii.gz"], [], "a.nii.gz"),
    ],
    ids=["missing-pet", "missing-ct", "missing-label", "orphan-label", "third-channel", "no-channel"],
)
def test_discover_dataset_refuses_incomplete_cases(
    tmp_path: Path, images: list[str], labels: list[str], named: str
) -> None:
    root = touch_dataset(tmp_path, images, labels)
    with pytest.raises(InputError) as raised:
        discover_dataset(root)
    message = str(raised.value)
    assert named in message  # exactly, double spaces included
    assert "\n" not in message


def test_discover_dataset_refuses_empty_or_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no training cases"):
        discover_dataset(touch_dataset(tmp_path / "empty", [], []))
    with pytest.raises(InputError, match="not found"):
        discover_dataset(tmp_path / "nowhere")
    (tmp_path / "no-labels" / "imagesTr").mkdir(parents=True)
    with pytest.raises(InputError, match="labelsTr"):
        discover_dataset(tmp_path / "no-labels")


# ----------------------------------------------------------------------------------------------- folds

# Seven patients, three of them with two studies.
FOLD_IDS = [
    f"{patient}_{date}"
    for patient, dates in [
        ("fdg_00000000a1", ["01-02-2003", "05-06-2004"]),
        ("fdg_00000000a2", ["01-02-2003"]),
        ("fdg_00000000a3", ["01-02-2003", "03-04-2005"]),
        ("psma_00000000000000b1", ["2019-01-02"]),
        ("psma_00000000000000b2", ["2019-01-02", "2020-02-03"]),
        ("psma_00000000000000b3", ["2019-01-02"]),
        ("psma_00000000000000b4", ["2019-01-02"]),
    ]
    for date in dates
]


def test_load_folds_uses_the_dataset_splits_file(tmp_path: Path) -> None:
    own = grouped_folds(FOLD_IDS, n_folds=3, seed=42)
    (tmp_path / "splits_final.json").write_text(json.dumps(own))
    assert load_folds(tmp_path, FOLD_IDS, n_folds=5, seed=0) == own


def test_load_folds_writes_patient_grouped_folds(tmp_path: Path) -> None:
    folds = load_folds(tmp_path, list(reversed(FOLD_IDS)), n_folds=5, seed=1)
    assert len(folds) == 5
    assert read_splits(tmp_path / "splits_final.json", FOLD_IDS) == folds
    assert leaking_patients(folds) == []
    assert sorted(case for fold in folds for case in fold["val"]) == sorted(FOLD_IDS)
    # Written once, the file wins over a later seed.
    assert load_folds(tmp_path, FOLD_IDS, n_folds=5, seed=99) == folds


def test_load_folds_survives_a_read_only_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(path: Path, folds: object) -> Path:
        raise OutputError(f"{path}: cannot write: Read-only file system")

    monkeypatch.setattr(training.data, "write_splits", refuse)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        folds = load_folds(tmp_path, FOLD_IDS, n_folds=5)
    assert folds == grouped_folds(FOLD_IDS, 5, 0)
    assert not (tmp_path / "splits_final.json").exists()
    assert "not written" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        json.dumps([{"train": FOLD_IDS[1:], "val": [FOLD_IDS[0], "fdg_ffffffffff_01-01-2001"]}]),
        json.dumps([{"train": FOLD_IDS[2:], "val": FOLD_IDS[1:2]}]),
        "[{",
    ],
    ids=["unknown-case", "case-in-no-val-fold", "broken-json"],
)
def test_load_folds_refuses_an_invalid_splits_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "splits_final.json").write_text(content)
    with pytest.raises(InputError, match=r"splits_final\.json"):
        load_folds(tmp_path, FOLD_IDS)


def test_load_folds_refuses_too_few_patients(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="patients"):
        load_folds(tmp_path, FOLD_IDS[:3], n_folds=5)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_equals_direct_preprocessing(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    for record in records:
        cached, expected = cache.get(record), direct(record, cache.settings)
        assert cached["image"].dtype == np.float32
        assert cached["label"].dtype == np.uint8
        assert cached["image"].shape == expected.image.shape
        # Bit for bit the float16 rounding of the inference path's array: one code path, one rounding.
        np.testing.assert_array_equal(cached["image"], expected.image.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(cached["image"], expected.image, rtol=2**-11, atol=2**-25)
        np.testing.assert_array_equal(cached["label"], expected.label)


def test_cache_hit_reads_disk_without_preprocessing(
    cache: PreprocessedCache, records: list[CaseRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cache.get(records[0])

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("preprocess called on a cache hit")

    monkeypatch.setattr(petseg.inference.preprocess, "preprocess", fail)
    after = cache.get(records[0])
    np.testing.assert_array_equal(after["image"], before["image"])
    np.testing.assert_array_equal(after["label"], before["label"])


def test_changed_setting_gives_a_new_entry(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    coarse = dataclasses.replace(cache.settings, spacing_mm=(3.0, 3.0, 3.0))
    assert PreprocessedCache.settings_hash(PreprocessSettings()) == PreprocessedCache.settings_hash(
        cache.settings
    )
    assert PreprocessedCache.settings_hash(coarse) != PreprocessedCache.settings_hash(cache.settings)
    other = PreprocessedCache(cache.cache_dir, coarse)
    assert other.path(records[0]) != cache.path(records[0])
    recomputed = other.get(records[0])
    np.testing.assert_array_equal(recomputed["label"], direct(records[0], coarse).label)
    assert recomputed["image"].shape != cache.get(records[0])["image"].shape
    assert cache.path(records[0]).is_file()


def test_modified_source_invalidates_its_entry(
    tmp_path: Path, records: list[CaseRecord], lesion_records: list[CaseRecord]
) -> None:
    source = lesion_records[0]
    copy = CaseRecord(
        SPACED_ID,
        ct=tmp_path / "data" / f"{SPACED_ID}_0000.nii.gz",
        pet=tmp_path / "data" / f"{SPACED_ID}_0001.nii.gz",
        label=tmp_path / "data" / f"{SPACED_ID}.nii.gz",
    )
    copy.ct.parent.mkdir()
    for src, dst in ((source.ct, copy.ct), (source.pet, copy.pet), (source.label, copy.label)):
        shutil.copy2(src, dst)
    cache = PreprocessedCache(tmp_path / "cache", PreprocessSettings())
    first_path = cache.path(copy)
    assert cache.get(copy)["label"].any()

    label = read_image(copy.label, "label")
    emptied = sitk.Image(label.GetSize(), label.GetPixelID())
    emptied.CopyInformation(label)
    write_image(emptied, copy.label)
    stat = copy.label.stat()
    os.utime(copy.label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))

    assert cache.path(copy) != first_path
    assert not cache.get(copy)["label"].any()
    names = sorted(p.name for p in cache.directory.iterdir())
    assert names == sorted([cache.path(copy).name, "settings.json"])  # old entry gone, no temporary files
    assert " " not in cache.path(copy).name


def test_cache_leaves_no_temporary_files(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    names = sorted(p.name for p in cache.directory.iterdir())
    assert names == sorted([cache.path(r).name for r in records] + ["settings.json"])


def test_damaged_entry_is_rebuilt(
    tmp_path: Path, records: list[CaseRecord], caplog: pytest.LogCaptureFixture
) -> None:
    cache = PreprocessedCache(tmp_path, PreprocessSettings())
    good = cache.get(records[1])
    cache.path(records[1]).write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        rebuilt = cache.get(records[1])
    assert "unreadable cache entry" in caplog.text
    np.testing.assert_array_equal(rebuilt["image"], good["image"])


def test_validation_items_are_whole_cached_cases(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    items = list(validation_items(records[:2], cache))
    assert [item["case_id"] for item in items] == [r.case_id for r in records[:2]]
    for item, record in zip(items, records[:2], strict=True):
        assert item["voxel_ml"] == pytest.approx(0.008)  # 2 mm isotropic
        np.testing.assert_array_equal(item["image"], cache.get(record)["image"])
        assert item["label"].dtype == np.uint8


# ----------------------------------------------------------------------------------------------- transforms


def test_patches_have_patch_size_and_binary_labels(
    cache: PreprocessedCache, lesion_records: list[CaseRecord], lesion_free_record: CaseRecord
) -> None:
    transforms = train_transforms(PATCH, augment=True, seed=0)
    for draw in range(16):
        record = [*lesion_records, lesion_free_record][draw % (len(lesion_records) + 1)]
        patch = transforms(cache.get(record))
        assert patch["image"].shape == (2, *PATCH)
        assert patch["label"].shape == (1, *PATCH)
        assert patch["image"].dtype == patch["label"].dtype == torch.float32
        assert set(torch.unique(patch["label"]).tolist()) <= {0.0, 1.0}
        assert torch.isfinite(patch["image"]).all()


def test_augmentation_keeps_label_aligned_with_image() -> None:
    """The label is PET > 5 before augmentation, so it must stay (augmented PET) > 5 after it."""
    grid = np.stack(np.meshgrid(*[np.arange(48.0)] * 3, indexing="ij"))
    pet = np.zeros(PATCH, np.float32)
    for centre in ((15, 16, 17), (32, 30, 30), (16, 33, 32)):
        distance2 = ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(axis=0)
        pet += 10.0 * np.exp(-distance2 / (2 * 8.0**2))
    ct = np.random.default_rng(0).random(PATCH, dtype=np.float32)
    data = {"image": np.stack([ct, pet]), "label": (pet > 5.0)[None].astype(np.uint8)}
    moved = 0
    for seed in range(12):
        patch = train_transforms(PATCH, augment=True, seed=seed)(data)
        truth = patch["image"][1:] > 5.0
        # Aligned, only boundary voxels differ (nearest label, linear PET): Dice 0.96-0.99 here.
        assert dice(patch["label"], truth) >= 0.94, f"seed {seed}"
        # A label three voxels off would fail the check (Dice about 0.85).
        assert dice(torch.roll(patch["label"], 3, dims=1), truth) < 0.9
        moved += int(not np.array_equal(patch["label"].numpy(), data["label"]))
    assert moved >= 5  # most draws did move the label (affine or elastic, p 0.75)


def test_labels_are_always_resampled_nearest_neighbour() -> None:
    """The final threshold would hide a linearly interpolated label; check the modes themselves."""
    spatial = [t for t in train_transforms(PATCH).transforms if isinstance(t, (RandAffined, RandElasticd))]
    assert len(spatial) == 2
    for transform in spatial:
        modes = dict(zip(transform.keys, transform.mode, strict=True))
        assert modes == {"image": "bilinear", "label": "nearest"}


def test_gamma_changes_the_ct_channel_only() -> None:
    ct, suv = torch.linspace(0.0, 1.0, 1000), torch.linspace(0.0, 30.0, 1000)
    image = torch.stack([ct, suv]).reshape(2, 10, 10, 10)
    out = RandCTGammad("image", prob=1.0, gamma=(2.0, 2.0))({"image": image})["image"]
    torch.testing.assert_close(out[0], image[0] ** 2)
    torch.testing.assert_close(out[1], image[1], atol=0, rtol=0)


def test_displace_moves_content_along_the_right_axes() -> None:
    image = torch.rand(2, 9, 10, 11)
    for axis in range(3):
        field = np.zeros((3, 9, 10, 11), np.float32)
        field[axis] = 2.0
        moved = displace(image, field, "bilinear")
        # out[p] = image[p + 2 along `axis`]; the last two slices come from outside the volume.
        kept = [slice(None)] * 4
        kept[axis + 1] = slice(0, -2)
        source = [slice(None)] * 4
        source[axis + 1] = slice(2, None)
        torch.testing.assert_close(moved[tuple(kept)], image[tuple(source)], atol=1e-5, rtol=0)
        outside = [slice(None)] * 4
        outside[axis + 1] = slice(-2, None)
        assert not moved[tuple(outside)].any()
    nearest = displace(image, np.full((3, 9, 10, 11), 0.3, np.float32), "nearest")
    torch.testing.assert_close(nearest[:, :-1, :-1, :-1], image[:, :-1, :-1, :-1], atol=0, rtol=0)


def test_lesion_probability_one_always_shows_lesion(
    cache: PreprocessedCache, lesion_records: list[CaseRecord]
) -> None:
    transforms = train_transforms(PATCH, lesion_probability=1.0, augment=False, seed=1)
    for record in lesion_records:
        for _ in range(5):
            assert transforms(cache.get(record))["label"].sum() > 0, record.case_id


def test_lesion_free_case_still_yields_patches(
    cache: PreprocessedCache, lesion_free_record: CaseRecord
) -> None:
    transforms = train_transforms(PATCH, lesion_probability=1.0, augment=True, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patches = [transforms(cache.get(lesion_free_record)) for _ in range(4)]
    assert not [w for w in caught if "Num foregrounds" in str(w.message)]
    for patch in patches:
        assert patch["image"].shape == (2, *PATCH)
        assert patch["label"].sum() == 0
        assert patch["image"][0].max() > 0  # body in view, not just padding


def test_transforms_are_reproducible_with_a_seed(
    cache: PreprocessedCache, lesion_records: list[CaseRecord]
) -> None:
    data = cache.get(lesion_records[0])

    def draws(seed: int) -> list[torch.Tensor]:
        transforms = train_transforms(PATCH, augment=True, seed=seed)
        return [transforms(data)["image"] for _ in range(3)]

    first, again, other = draws(5), draws(5), draws(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_flip_mirrors_image_and_label_left_right_only() -> None:
    """With the same seed, a flipped patch is the unflipped one mirrored along axis 0 (left-right)."""
    rng = np.random.default_rng(4)
    image = rng.random((2, *PATCH), dtype=np.float32)
    label = (image[1:] > 0.9).astype(np.uint8)
    data = {"image": image, "label": label}
    for seed in range(4):
        plain = train_transforms(PATCH, augment=True, seed=seed)(data)
        flipped = train_transforms(PATCH, augment=True, seed=seed, flip_probability=1.0)(data)
        assert torch.equal(flipped["image"], torch.flip(plain["image"], dims=[1])), f"seed {seed}"
        assert torch.equal(flipped["label"], torch.flip(plain["label"], dims=[1]))
        assert not torch.equal(flipped["image"], plain["image"])
        assert not torch.equal(flipped["image"], torch.flip(plain["image"], dims=[2]))
    never = train_transforms(PATCH, augment=True, seed=0, flip_probability=0.0)(data)
    assert torch.equal(never["image"], train_transforms(PATCH, augment=True, seed=0)(data)["image"])


def test_train_transforms_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        train_transforms((64, 64))
    with pytest.raises(ValueError, match="lesion_probability"):
        train_transforms(PATCH, lesion_probability=1.5)
    with pytest.raises(ValueError, match="flip_probability"):
        train_transforms(PATCH, flip_probability=-0.1)


# ----------------------------------------------------------------------------------------------- dataset


def test_patch_dataset_through_two_dataloader_workers(
    cache: PreprocessedCache, lesion_records: list[CaseRecord]
) -> None:
    dataset = PatchDataset(lesion_records[:2], cache, train_transforms(PATCH, seed=0), samples_per_epoch=8)
    assert len(dataset) == 8
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].shape == (2, 2, *PATCH)
        assert batch["label"].shape == (2, 1, *PATCH)
        assert batch["image"].dtype == batch["label"].dtype == torch.float32
        assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    # Batches 0 and 1 hold the same cases, drawn by different workers: the workers must not repeat each other.
    assert not torch.equal(batches[0]["image"], batches[1]["image"])


def test_patch_dataset_cycles_records_in_process(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    dataset = PatchDataset(records[:3], cache, train_transforms(PATCH, augment=False, seed=0))
    assert len(dataset) == 3
    with pytest.raises(IndexError):
        dataset[3]
    longer = PatchDataset(
        records[:3], cache, train_transforms(PATCH, augment=False, seed=0), samples_per_epoch=7
    )
    sample = longer[6]  # record 0 again
    assert sample["image"].shape == (2, *PATCH)
    assert sample["label"].dtype == torch.float32


def _hot_gland_case() -> dict[str, np.ndarray]:
    """A 96^3 case: a lesion near one corner, a hot 'gland' (no lesion) near the opposite one, and hot
    specks too small to be an organ; both channels are their voxel coordinates' fingerprint elsewhere."""
    shape = (96, 96, 96)
    pet = np.full(shape, 0.5, np.float32)
    label = np.zeros((1, *shape), np.uint8)
    pet[10:16, 10:16, 10:16] = 12.0
    label[0, 10:16, 10:16, 10:16] = 1
    pet[78:84, 70:76, 80:86] = 9.0  # the gland: 216 voxels above 4 SUV
    pet[50, 50, 50] = pet[20, 80, 40] = 30.0  # single-voxel specks
    ct = (np.arange(np.prod(shape), dtype=np.float32) / np.prod(shape)).reshape(shape)
    return {"image": np.stack([ct, pet]), "label": label}


def test_hot_crops_centre_on_uptake_outside_the_lesions() -> None:
    case = _hot_gland_case()
    transforms = train_transforms(PATCH, augment=False, seed=3, hot_probability=1.0)
    for _ in range(8):
        patch = transforms(case)
        assert patch["image"].shape == (2, *PATCH)
        gland = patch["image"][1] == 9.0
        assert gland.any()  # every patch holds the gland, never only a speck
        assert patch["label"].sum() == 0  # 48^3 around the gland cannot reach the lesion
        # Image and label come from the same window: the CT fingerprint names the corner voxel.
        corner = round(float(patch["image"][0, 0, 0, 0]) * 96**3)
        start = np.unravel_index(corner, (96, 96, 96))
        assert all(0 <= s <= 96 - 48 for s in start)
        np.testing.assert_array_equal(
            patch["image"][1].numpy(), case["image"][1][tuple(slice(s, s + 48) for s in start)]
        )


def test_hot_crops_leave_the_other_draws_to_the_lesion_sampler() -> None:
    case = _hot_gland_case()
    never = train_transforms(PATCH, augment=False, seed=5, hot_probability=0.0)
    assert all(never(case)["label"].sum() > 0 for _ in range(6))  # lesion_probability 0.8: mostly lesion
    half = train_transforms(PATCH, augment=False, seed=5, lesion_probability=1.0, hot_probability=0.5)
    kinds = [bool((half(case)["image"][1] == 9.0).any()) for _ in range(40)]
    assert 8 <= sum(kinds) <= 32  # about half on the gland, the rest on the lesion
    again = train_transforms(PATCH, augment=False, seed=5, lesion_probability=1.0, hot_probability=0.5)
    assert [bool((again(case)["image"][1] == 9.0).any()) for _ in range(40)] == kinds  # seeded

    cold = {**case, "image": np.stack([case["image"][0], np.minimum(case["image"][1], 3.0)])}
    only_hot = train_transforms(PATCH, augment=False, seed=5, lesion_probability=1.0, hot_probability=1.0)
    assert only_hot(cold)["label"].sum() > 0  # nothing hot outside the lesion: the lesion sampler decides
    with pytest.raises(ValueError, match="hot_probability must be in"):
        train_transforms(PATCH, hot_probability=1.5)


def test_entries_hold_their_lesion_indices_and_the_crop_draws_from_them(
    cache: PreprocessedCache, records: list[CaseRecord]
) -> None:
    """Each entry stores the flat indices of its lesion voxels once; the mapped crop takes its lesion
    centres from them, not from a scan of the label."""
    for record in records:
        mapped = cache.open(record)
        label = np.asarray(mapped["label"])
        np.testing.assert_array_equal(mapped["lesion_indices"], np.flatnonzero(label[0]))
        np.testing.assert_array_equal(cache.get(record)["lesion_indices"], mapped["lesion_indices"])
    record = next(r for r in records if np.asarray(cache.open(r)["label"]).any())
    mapped = dict(cache.open(record))
    shape = mapped["label"].shape[1:]
    # Stored indices that name one voxel far from every lesion: every lesion-centred patch now holds it.
    corner = np.ravel_multi_index((0, 0, 0), shape)
    mapped["lesion_indices"] = np.array([corner], dtype=np.int64)
    crop = train_transforms((16, 16, 16), lesion_probability=1.0, augment=False, seed=1).transforms[1]
    for _ in range(4):
        (_patch,) = crop.crop_mapped(mapped)
        assert crop.cropper.centers is not None
        assert all(int(c) <= 8 for c in crop.cropper.centers[0])


def test_entries_hold_each_lesion_voxels_lesion(cache: PreprocessedCache, records: list[CaseRecord]) -> None:
    """Beside the lesion voxels' indices, an entry stores which lesion (26-connected component) each is in,
    numbered as cc3d numbers the label's components."""
    import cc3d

    from training.data import lesion_components, lesion_indices

    for record in records:
        entry = cache.open(record)
        label = np.asarray(entry["label"])
        components = cc3d.connected_components(label[0] > 0, connectivity=26)
        expected = components.reshape(-1)[entry["lesion_indices"]]
        np.testing.assert_array_equal(entry["lesion_components"], expected)
        assert entry["lesion_components"].dtype == np.int32
    two = _large_and_small_lesion_case()["label"]
    lesion = lesion_indices(two)
    numbers, sizes = np.unique(lesion_components(two, lesion), return_counts=True)
    assert numbers.tolist() == [1, 2]
    assert sorted(sizes.tolist()) == [2, 8000]


def _large_and_small_lesion_case() -> dict[str, np.ndarray]:
    """A 96^3 case with a 20^3-voxel lesion near one corner and a 2-voxel one near the opposite corner."""
    shape = (96, 96, 96)
    label = np.zeros((1, *shape), np.uint8)
    label[0, 4:24, 4:24, 4:24] = 1
    label[0, 88, 88, 88:90] = 1
    pet = np.where(label[0] > 0, 10.0, 0.5).astype(np.float32)
    return {"image": np.stack([np.zeros(shape, np.float32), pet]), "label": label}


@pytest.mark.parametrize("mapped", [False, True])
def test_per_lesion_sampling_draws_each_lesion_alike(mapped: bool, tmp_path: Path) -> None:
    """Drawn voxel by voxel, a 2-voxel lesion beside an 8000-voxel one is almost never a patch's centre;
    drawn lesion by lesion, it is about half of them. The same holds on memory-mapped volumes."""
    from training.data import LESION_COMPONENTS, LESION_INDICES, lesion_components, lesion_indices

    case = _large_and_small_lesion_case()
    if mapped:
        lesion = lesion_indices(case["label"])
        arrays = {**case, LESION_INDICES: lesion, LESION_COMPONENTS: lesion_components(case["label"], lesion)}
        case = {}
        for key, array in arrays.items():
            np.save(tmp_path / f"{key}.npy", array)
            case[key] = np.load(tmp_path / f"{key}.npy", mmap_mode="r")
        assert isinstance(case["image"], np.memmap)

    def small_share(sampling: str) -> float:
        transforms = train_transforms((32, 32, 32), 1.0, augment=False, seed=11, lesion_sampling=sampling)
        # a patch centred on the small lesion holds under 8 lesion voxels in its octant beyond the centre
        small = [bool(transforms(case)["label"][0, 16:, 16:, 16:].sum() < 8) for _ in range(60)]
        return float(np.mean(small))

    assert small_share("voxel") < 0.05
    assert 0.3 < small_share("lesion") < 0.7
    with pytest.raises(ValueError, match="lesion_sampling must be one of voxel, lesion"):
        train_transforms(PATCH, lesion_sampling="component")


def test_mapped_entries_give_the_same_patches_reading_only_the_patch(
    cache: PreprocessedCache, records: list[CaseRecord], tmp_path: Path
) -> None:
    """`open` maps the stored arrays in place; a patch from them is the very patch `get` gives, draw for
    draw (augmentation included), where the volume is at least the patch; smaller volumes are read whole
    and padded as before; an entry that cannot be mapped falls back to `get`."""
    mapped = cache.open(records[0])
    assert isinstance(mapped["image"], np.memmap)
    assert isinstance(mapped["label"], np.memmap)
    whole = cache.get(records[0])
    np.testing.assert_array_equal(np.asarray(mapped["image"], dtype=np.float32), whole["image"])
    np.testing.assert_array_equal(mapped["label"], whole["label"])
    for patch in ((16, 16, 16), PATCH):  # the tiny volumes hold a 16³ patch; 48³ needs padding
        for augment, sampling in ((False, "voxel"), (True, "voxel"), (True, "lesion")):
            whole = train_transforms(patch, 0.8, augment, seed=5, lesion_sampling=sampling)
            lazy = train_transforms(patch, 0.8, augment, seed=5, lesion_sampling=sampling)
            for index in range(12):
                record = records[index % len(records)]
                a, b = whole(cache.get(record)), lazy(cache.open(record))
                assert torch.equal(a["image"], b["image"]), (patch, augment, sampling, index)
                assert torch.equal(a["label"], b["label"]), (patch, augment, sampling, index)
    # A compressed entry (written by hand) cannot be mapped: the arrays are read whole instead.
    entry = cache.path(records[1])
    arrays = cache.get(records[1])
    backup = tmp_path / "entry.npz"
    shutil.copyfile(entry, backup)
    try:
        np.savez_compressed(
            entry,
            image=arrays["image"].astype(np.float16),
            label=arrays["label"],
            lesion_indices=arrays["lesion_indices"],
            lesion_components=arrays["lesion_components"],
        )
        fallback = cache.open(records[1])
        assert not isinstance(fallback["image"], np.memmap)
        np.testing.assert_array_equal(fallback["image"], arrays["image"])
    finally:
        shutil.copyfile(backup, entry)


def test_elastic_smoothing_on_a_device_is_scipys() -> None:
    """The device path of `RandElasticd` smooths its field with `gaussian_smooth`: scipy's kernel, truncation
    and zero border, to float precision (checked here on the CPU)."""
    import scipy.ndimage

    from training.data import gaussian_smooth

    rng = np.random.default_rng(0)
    for shape, sigma in (((3, 20, 17, 9), 5.3), ((3, 32, 32, 32), 8.0), ((3, 5, 6, 7), 2.0)):
        noise = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        expected = scipy.ndimage.gaussian_filter(
            noise, (0, sigma, sigma, sigma), truncate=3.0, mode="constant"
        )
        smoothed = gaussian_smooth(torch.from_numpy(noise), sigma).numpy()
        np.testing.assert_allclose(smoothed, expected, atol=1e-7)


def test_batch_augmentation_on_the_device_is_the_loaders_augmentation() -> None:
    """`BatchAugmentation` runs step 3 of `train_transforms` on a batch where it lies: with the same random
    stream a patch gets exactly what the loader's transforms would give it; labels stay {0, 1}."""
    from monai.transforms import Compose

    from training.data import AsTrainingTensorsd, BatchAugmentation, augmentation_on, augmentation_steps

    generator = torch.Generator().manual_seed(0)
    images = torch.rand((3, 2, 24, 24, 24), generator=generator)
    labels = (torch.rand((3, 1, 24, 24, 24), generator=generator) > 0.9).float()
    on_device = BatchAugmentation(flip_probability=0.5, seed=7)
    augmented, augmented_labels = on_device(images, labels)
    assert augmented.shape == images.shape
    assert augmented_labels.shape == labels.shape
    assert set(torch.unique(augmented_labels).tolist()) <= {0.0, 1.0}
    loader = Compose([*augmentation_steps(0.5), AsTrainingTensorsd()])
    loader.set_random_state(seed=7)
    for index in range(3):
        expected = loader({"image": images[index], "label": labels[index]})
        assert torch.equal(expected["image"], augmented[index])
        assert torch.equal(expected["label"], augmented_labels[index])
    assert not torch.equal(augmented, images)  # some patch was augmented
    assert augmentation_on("auto", torch.device("cpu")) == "loader"
    assert augmentation_on("auto", torch.device("cuda")) == "loader"  # the faster place, as measured
    assert augmentation_on("device", torch.device("cpu")) == "device"
    with pytest.raises(ValueError, match="augment_on must be one of"):
        augmentation_on("gpu", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_augmentation_on_a_gpu_stays_there_and_repeats_with_its_seed() -> None:
    """On a GPU the elastic field is drawn and the sampling grids are built there; the same seed gives the
    same batch, and the labels stay {0, 1}."""
    from training.data import BatchAugmentation, CTMisalignment

    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand((4, 2, 32, 32, 32), generator=generator, device=device)
    labels = (torch.rand((4, 1, 32, 32, 32), generator=generator, device=device) > 0.9).float()
    misalignment = CTMisalignment(probability=0.5)
    runs = [
        BatchAugmentation(0.5, seed=7, misalignment=misalignment, device=device)(images, labels)
        for _ in range(2)
    ]
    (augmented, augmented_labels), (again, again_labels) = runs
    assert augmented.device.type == "cuda"
    assert augmented_labels.device.type == "cuda"
    assert torch.equal(augmented, again)
    assert torch.equal(augmented_labels, again_labels)
    assert set(torch.unique(augmented_labels).tolist()) <= {0.0, 1.0}
    assert not torch.equal(augmented, images)


def test_ct_misalignment_moves_the_ct_channel_alone() -> None:
    """`misalign_ct` shifts (whole voxels: exactly) and rotates the CT channel; the PET channel is the same
    tensor values, and a zero move is the identity."""
    from training.data import misalign_ct

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 20, 18, 12)).astype(np.float32))
    image[0] = 0.0
    image[0, 6:10, 5:9, 4:7] = 1.0
    shifted = misalign_ct(image, (0.0, 0.0, 0.0), (2, -1, 0))
    expected = torch.zeros_like(image[0])
    expected[8:12, 4:8, 4:7] = 1.0
    torch.testing.assert_close(shifted[0], expected, atol=1e-5, rtol=0)
    assert torch.equal(shifted[1], image[1])
    torch.testing.assert_close(misalign_ct(image, (0.0, 0.0, 0.0), (0, 0, 0)), image, atol=1e-5, rtol=0)
    rotated = misalign_ct(image, (0.0, 0.0, math.radians(5.0)), (0, 0, 0))
    assert not torch.allclose(rotated[0], image[0], atol=1e-3)
    assert torch.equal(rotated[1], image[1])
    assert abs(float(rotated[0].sum()) - float(image[0].sum())) < 0.1 * float(image[0].sum())  # moved, kept


def test_random_ct_misalignment_draws_within_its_ranges_and_leaves_pet_and_label() -> None:
    """The recipe's probability and ranges bound every draw (no shift along the body's axis); PET and
    label never change; probability 0 changes nothing; a seed repeats the draws."""
    from training.data import CTMisalignment, RandCTMisalignd

    case = _hot_gland_case()
    data = {
        "image": torch.from_numpy(case["image"][:, :32, :32, :32].copy()),
        "label": torch.from_numpy(case["label"][:, :32, :32, :32].copy()),
    }
    never = RandCTMisalignd("image", CTMisalignment(probability=0.0))
    assert all(torch.equal(never(data)["image"], data["image"]) for _ in range(5))
    always = RandCTMisalignd("image", CTMisalignment(probability=1.0, rotation_deg=5.0, shift_voxels=2))
    always.set_random_state(3)
    draws = []
    for _ in range(20):
        out = always(data)
        assert torch.equal(out["image"][1], data["image"][1])
        assert out["label"] is data["label"]
        assert not torch.equal(out["image"][0], data["image"][0])
        draws.append((always.angles_rad, always.shift_voxels))
    assert all(abs(a) <= math.radians(5.0) for angles, _ in draws for a in angles)
    assert all(abs(s) <= 2 and shift[2] == 0 for _, shift in draws for s in shift)
    assert len({shift for _, shift in draws}) > 3  # the shifts do vary
    again = RandCTMisalignd("image", CTMisalignment(probability=1.0))
    again.set_random_state(3)
    assert [(again(data), (again.angles_rad, again.shift_voxels))[1] for _ in range(20)] == draws
    some = RandCTMisalignd("image", CTMisalignment(probability=0.1))
    some.set_random_state(1)
    moved = sum(not torch.equal(some(data)["image"][0], data["image"][0]) for _ in range(200))
    assert 20 <= moved <= 56  # 1 - 0.9^2 = 19 % of the patches: rotation or shift or both
    with pytest.raises(ValueError, match="misalign_probability must be in"):
        CTMisalignment(probability=1.5)
