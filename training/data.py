"""Training data: the nnU-Net dataset on disk, its folds, a preprocessed cache, and patch sampling.

Every training case goes through `petseg.io.read_case` and `petseg.inference.preprocess.preprocess`, the very
functions inference calls, so the network is trained on exactly the grid and intensities it will see in the
container. Preprocessing a whole-body case takes seconds; `PreprocessedCache` does it once per case and
settings and keeps the result on disk, so an epoch costs only a file read and the random patch augmentation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import re
import warnings
import zipfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import scipy.ndimage
import SimpleITK as sitk
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    MapTransform,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    SpatialPadd,
)
from monai.transforms.croppad.array import SpatialCrop
from monai.transforms.transform import apply_transform
from monai.utils import convert_to_tensor, fall_back_tuple
from tqdm import tqdm

import petseg.inference.preprocess
from petseg.errors import InputError, OutputError
from petseg.geometry import Grid
from petseg.io import CaseFiles, read_case, read_image, write_atomically
from petseg.io import nnunet_layout as nnunet
from petseg.io.splits import Folds, grouped_folds, read_splits, write_splits
from petseg.model.organs import ORGAN_CLASSES, ORGAN_NAMES
from petseg.model.settings import PreprocessSettings

log = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
CACHE_FOLDER = ".petseg-cache"  # inside the dataset, unless a run names another (`--cache`)

# Bumped whenever the layout of a cache entry changes, so old entries are never misread.
# 2: each entry also holds its lesion voxels' flat indices (`LESION_INDICES`).
# 3: and the lesion (26-connected component, numbered from 1) each of those voxels belongs to.
CACHE_FORMAT = 3
# The flat indices of the label's lesion voxels, computed once when the entry is written (as nnU-Net stores
# its class locations): a lesion-centred crop then draws its centre without scanning the whole label.
LESION_INDICES = "lesion_indices"
# For each of those voxels, its lesion: a per-lesion draw picks a lesion first without labelling components.
LESION_COMPONENTS = "lesion_components"
ENTRY_KEYS = ("image", "label", LESION_INDICES, LESION_COMPONENTS)
ORGANS = "organs"  # an entry's organ label map (1, X, Y, Z) uint8, where its case has one
# How a lesion-centred patch picks its centre: any lesion voxel alike ("voxel", so a 40 ml lesion is drawn
# 400 times as often as a 0.1 ml one), or a lesion first, each alike, then a voxel of it ("lesion").
LESION_SAMPLING = ("voxel", "lesion")
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SAFE_LENGTH = 120
# Preprocessing workers run only SimpleITK (whose default "Platform" threader keeps no thread pool to break)
# and numpy, so forking is safe, as it is for DataLoader workers; a spawned worker would first spend seconds
# importing torch and MONAI.
_POOL_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class CaseRecord:
    """The three files of one training case, and its organ label map when training with an organ head."""

    case_id: str
    ct: Path
    pet: Path
    label: Path
    organs: Path | None = None


# ----------------------------------------------------------------------------------------------- discovery


def discover_dataset(root: Path, organs_dir: Path | None = None) -> list[CaseRecord]:
    """All cases of an nnU-Net raw dataset, sorted by case id; with `organs_dir`, each with its organ label
    map `<case>.nii.gz` (or `.mha`) from there.

    A dataset with a missing file is refused as a whole rather than silently trained on a subset: a lost PET
    or label is almost always a broken copy, and a model trained without those cases would be hard to trace.
    """
    root = Path(root)
    images, labels = root / nnunet.IMAGES_FOLDER, root / nnunet.LABELS_FOLDER
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    for folder in (images, labels):
        if not folder.is_dir():
            raise InputError(
                f"{folder}: folder not found (expected the nnU-Net layout imagesTr/ + labelsTr/)"
            )

    file_name = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(nnunet.FILE_ENDING)}$")
    channels: dict[str, dict[str, Path]] = {}
    for path in sorted(_dataset_files(images)):
        match = file_name.match(path.name)
        if match is None:
            raise InputError(
                f"{path}: not named <case>_<channel>{nnunet.FILE_ENDING} (channel 0000 = CT, 0001 = PET)"
            )
        if match["channel"] not in nnunet.CHANNELS:
            raise InputError(
                f"{path}: unexpected channel {match['channel']}; expected 0000 (CT) and 0001 (PET)"
            )
        channels.setdefault(match["case"], {})[match["channel"]] = path
    label_files = {path.name[: -len(nnunet.FILE_ENDING)]: path for path in _dataset_files(labels)}

    records = []
    for case_id in sorted(channels):
        found = channels[case_id]
        for channel, role in nnunet.CHANNELS.items():
            if channel not in found:
                missing = images / nnunet.channel_name(case_id, channel)
                present = next(iter(found.values()))
                raise InputError(f"{missing}: {role} of case {case_id!r} not found (beside {present.name})")
        if case_id not in label_files:
            raise InputError(f"{nnunet.label_path(root, case_id)}: label of case {case_id!r} not found")
        ct, pet = found[nnunet.CT_CHANNEL], found[nnunet.PET_CHANNEL]
        organs = None if organs_dir is None else organ_map_of(Path(organs_dir), case_id)
        records.append(CaseRecord(case_id, ct=ct, pet=pet, label=label_files[case_id], organs=organs))
    orphans = sorted(set(label_files) - set(channels))
    if orphans:
        raise InputError(f"{label_files[orphans[0]]}: label without images ({len(orphans)} such labels)")
    if not records:
        pattern = nnunet.channel_name("*", nnunet.CT_CHANNEL)
        raise InputError(f"{images}: no training cases (no {pattern} files)")
    return records


def organ_map_of(organs_dir: Path, case_id: str) -> Path:
    """`organs_dir/<case>.nii.gz` or `.mha`; a one-line error naming the file when there is none."""
    if not organs_dir.is_dir():
        raise InputError(f"{organs_dir}: organ map folder not found")
    for ending in (nnunet.FILE_ENDING, ".mha"):
        path = organs_dir / f"{case_id}{ending}"
        if path.is_file():
            return path
    expected = organs_dir / f"{case_id}{nnunet.FILE_ENDING}"
    raise InputError(f"{expected}: organ map of case {case_id!r} not found")


def _dataset_files(folder: Path) -> Iterator[Path]:
    """Image files of one dataset folder; hidden files (macOS `._*`, editor backups) are not cases."""
    for path in folder.iterdir():
        if not path.name.startswith(".") and path.name.endswith(nnunet.FILE_ENDING) and path.is_file():
            yield path


# ----------------------------------------------------------------------------------------------- folds


def load_folds(root: Path, case_ids: Sequence[str], n_folds: int = 5, seed: int = 0) -> Folds:
    """The dataset's own `splits_final.json` when it has one, else new patient-grouped folds.

    New folds are written beside the data so that every later run (and every fold trained on another
    machine) uses the same split; a read-only dataset only costs that guarantee, with a warning.
    """
    path = Path(root) / SPLITS_FILE
    case_ids = list(case_ids)
    if path.is_file():
        folds = read_splits(path, case_ids)
        if len(folds) != n_folds:
            log.warning("%s holds %d folds, not %d: using the file's folds", path, len(folds), n_folds)
        return folds
    try:
        folds = grouped_folds(case_ids, n_folds=n_folds, seed=seed)
    except ValueError as error:
        raise InputError(f"{root}: cannot build folds: {error}") from None
    try:
        write_splits(path, folds)
        log.info("wrote %d patient-grouped folds to %s", n_folds, path)
    except (OutputError, OSError) as error:
        log.warning("%s not written (%s): the folds hold for this run only", path, error)
    return folds


# ----------------------------------------------------------------------------------------------- cache


def _read_and_preprocess(
    record: CaseRecord, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Exactly the inference path (`read_case` + `preprocess`), plus the label and the organ map (checked:
    on the PET grid, and only the organ labels an organ head knows)."""
    ct, pet = read_case(CaseFiles(ct=record.ct, pet=record.pet))
    label = read_image(record.label, "label")
    organs = None
    if record.organs is not None:
        organs = read_image(record.organs, "organ map")
        if not Grid.of(organs).matches(Grid.of(pet)):
            raise InputError(
                f"{record.organs}: not on the grid of its PET {Path(record.pet).name} (size, spacing, origin "
                "or direction differ)"
            )
        values = np.unique(sitk.GetArrayViewFromImage(organs))
        unknown = values[(values < 0) | (values >= ORGAN_CLASSES)]
        if unknown.size:
            shown = ", ".join(str(v) for v in unknown[:5].tolist())
            raise InputError(
                f"{record.organs}: unknown organ label(s) {shown}; an organ map holds 0-{ORGAN_CLASSES - 1} "
                f"({', '.join(ORGAN_NAMES[1:])})"
            )
        organs = sitk.Cast(organs, sitk.sitkUInt8)
    case = petseg.inference.preprocess.preprocess(ct, pet, settings, label=label, organs=organs)
    return case.image, case.label, case.organs


class PreprocessedCache:
    """Preprocessed cases on disk: `cache_dir/<settings hash>/<case>.<source hash>.npz`, or
    `<case>.<source hash>.organs.npz` for an entry with an organ map, so a run with an organ head and one
    without share the folder and each keeps its own entries.

    The image is stored as float16, half the disk and read time of float32, at a relative rounding error of
    at most 1/2048 (0.05%; below 6e-5 an absolute error of at most 3e-8): CT in [0, 1] to within 2.4e-4
    (0.5 HU), SUV below 2048 to within 0.5 or far better, both far below PET noise. Only above SUV 2048 do
    the steps reach 2 and more. A case beyond float16's range (65504: PET in Bq/ml, not SUV) is stored as
    float32 instead, with a warning. The label is stored as uint8. `get` returns float32 either way, and the
    same values on a cache hit as on the miss that filled it.

    The key holds a hash of the settings and of the code of `petseg.inference.preprocess` (either changing
    gives a new directory) and of the source files' path, size and modification time (a re-exported case gives
    a new entry, and its old entry is deleted). Entries are written under a temporary name and renamed, so a
    reader, a concurrent writer or an interrupted run never sees half a file.
    """

    def __init__(self, cache_dir: Path, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.directory = self.cache_dir / f"{self.settings_hash(settings)}-{_preprocess_code_hash()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(
                f"{self.directory}: cannot create the cache: {error.strerror or error}"
            ) from None
        description = self.directory / "settings.json"
        if not description.is_file():
            _atomic_write(description, lambda f: f.write(json.dumps(asdict(settings), indent=2).encode()))

    @staticmethod
    def settings_hash(settings: PreprocessSettings) -> str:
        """16 hex digits that change with any preprocessing setting (or the cache format)."""
        text = json.dumps({"format": CACHE_FORMAT, "settings": asdict(settings)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def path(self, record: CaseRecord) -> Path:
        """Where `record`'s entry lives for the current state of its source files."""
        identity = [record.case_id]
        sources = [record.ct, record.pet, record.label]
        if record.organs is not None:  # an entry with an organ map is another entry
            sources.append(record.organs)
        for source in sources:
            try:
                stat = Path(source).stat()
            except OSError as error:
                raise InputError(f"{source}: cannot read: {error.strerror or error}") from None
            identity.append(f"{Path(source).resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
        digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
        return self.directory / f"{safe_name(record.case_id)}.{digest}{_entry_suffix(record)}"

    def get(self, record: CaseRecord) -> dict[str, np.ndarray]:
        """{"image": float32 (2, X, Y, Z), "label": uint8 (1, X, Y, Z), `LESION_INDICES`: int64 (N,),
        `LESION_COMPONENTS`: int32 (N,)}, preprocessing on a miss."""
        path = self.path(record)
        if path.is_file():
            loaded = _load_entry(path)
            if loaded is not None:
                return loaded
            log.warning("%s: unreadable cache entry, preprocessing %r again", path, record.case_id)
        return self._fill(record, path)

    def open(self, record: CaseRecord) -> dict[str, np.ndarray]:
        """The entry's arrays memory-mapped, as stored (image float16, or float32 beyond its range; label
        uint8): a patch then reads only its own pages of a whole-body volume. Preprocesses on a miss, and
        falls back to `get` for an entry that cannot be mapped."""
        path = self.path(record)
        if not path.is_file():
            self.get(record)
        mapped = _map_entry(path)
        if mapped is None:
            return self.get(record)
        return mapped

    def prepare(self, records: Sequence[CaseRecord], progress: bool = True, workers: int = 2) -> None:
        """Preprocess every record not cached yet, in `workers` processes (1: in this process)."""
        missing = [record for record in records if not self.path(record).is_file()]
        if not missing:
            return
        bar = tqdm(total=len(missing), desc="preprocess", unit="case", disable=not progress)
        with bar:
            if workers <= 1 or len(missing) <= workers:
                for record in missing:
                    self._fill(record, self.path(record))
                    bar.update()
                return
            context = multiprocessing.get_context(_POOL_START_METHOD)
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(self._fill_quietly, record) for record in missing]
                try:
                    for future in as_completed(futures):
                        future.result()
                        bar.update()
                except BaseException:
                    # The first broken case stops the run; the rest would only delay the message.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    def _fill_quietly(self, record: CaseRecord) -> None:
        self._fill(record, self.path(record))

    def _fill(self, record: CaseRecord, path: Path) -> dict[str, np.ndarray]:
        image, label, organs = _read_and_preprocess(record, self.settings)
        stored = image.astype(np.float16)
        if not np.isfinite(stored).all():
            log.warning(
                "%s: values beyond float16 range (max %.0f; PET in Bq/ml?): cached as float32",
                record.pet,
                float(np.abs(image).max()),
            )
            stored = image
        label = np.ascontiguousarray(label, dtype=np.uint8)
        lesion = lesion_indices(label)
        components = lesion_components(label, lesion)
        entry = {LESION_INDICES: lesion, LESION_COMPONENTS: components}
        if organs is not None:
            entry[ORGANS] = np.ascontiguousarray(organs, dtype=np.uint8)
        _atomic_write(path, lambda f: np.savez(f, image=stored, label=label, **entry))
        self._remove_stale(record, path)
        return {"image": stored.astype(np.float32), "label": label, **entry}

    def _remove_stale(self, record: CaseRecord, current: Path) -> None:
        """Entries of this case made from earlier versions of its files can never be read again; its entries
        of the other kind (with or without an organ map) are another run's, and stay."""
        safe = safe_name(record.case_id)
        pattern = re.compile(rf"{re.escape(safe)}\.[0-9a-f]{{16}}{re.escape(_entry_suffix(record))}")
        for entry in self.directory.iterdir():
            if entry != current and pattern.fullmatch(entry.name):
                entry.unlink(missing_ok=True)


def _entry_suffix(record: CaseRecord) -> str:
    """The end of an entry's file name: entries with an organ map are named apart from those without."""
    return ".npz" if record.organs is None else ".organs.npz"


def safe_name(case_id: str) -> str:
    """A file name for a case id; a hash of the id is added whenever it had to be altered, so two ids that
    differ only in spaces or punctuation never share a name."""
    safe = _SAFE_CHARS.sub("_", case_id).strip("._") or "case"
    if safe != case_id or len(safe) > _MAX_SAFE_LENGTH:
        safe = f"{safe[:_MAX_SAFE_LENGTH]}~{hashlib.sha256(case_id.encode()).hexdigest()[:8]}"
    return safe


def _preprocess_code_hash() -> str:
    """A cache made by other preprocessing code is other data, even under the same settings."""
    return hashlib.sha256(Path(petseg.inference.preprocess.__file__).read_bytes()).hexdigest()[:8]


def _atomic_write(path: Path, write: Any) -> None:
    """`write(file)` on an open binary file, written atomically onto `path` (`petseg.io.write_atomically`)."""

    def into(partial: Path) -> None:
        with open(partial, "wb") as file:
            write(file)

    write_atomically(path, into, what="cache entry")


def lesion_indices(label: np.ndarray) -> np.ndarray:
    """Flat indices (over the spatial axes) of the voxels that are lesion in any channel of `label`."""
    return np.flatnonzero(np.asarray(label).reshape(label.shape[0], -1).any(axis=0)).astype(np.int64)


def lesion_components(label: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The lesion (26-connected component of the voxels lesion in any channel, numbered from 1) of each
    flat index in `indices` (`lesion_indices(label)`), int32."""
    if indices.size == 0:
        return np.zeros(0, dtype=np.int32)
    lesion = np.asarray(label).reshape(label.shape[0], -1).any(axis=0).reshape(label.shape[1:])
    labels = cc3d.connected_components(lesion, connectivity=26)
    return labels.reshape(-1)[indices].astype(np.int32)


def _map_entry(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an entry as read-only memory maps, or None where they cannot be mapped.

    `np.savez` stores its members uncompressed, so each `.npy` member is a contiguous run of bytes in the
    file: after the zip's local header and the array's own header, the data can be mapped in place.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
            for key in (*ENTRY_KEYS, ORGANS):
                if key == ORGANS and f"{key}.npy" not in archive.namelist():
                    continue
                info = archive.getinfo(f"{key}.npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    return None
                handle.seek(info.header_offset)
                local = handle.read(30)
                if local[:4] != b"PK\x03\x04":
                    return None
                name_length = int.from_bytes(local[26:28], "little")
                extra_length = int.from_bytes(local[28:30], "little")
                handle.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                order = "F" if fortran else "C"
                arrays[key] = np.memmap(
                    path, dtype=dtype, mode="r", shape=shape, offset=handle.tell(), order=order
                )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.debug("%s: cannot map: %s", path, error)
        return None
    return arrays if _entry_fits(arrays) else None


def _load_entry(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of one entry, or None when the file is damaged (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            arrays = {key: entry[key] for key in ENTRY_KEYS}
            if ORGANS in entry.files:
                arrays[ORGANS] = entry[ORGANS]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.debug("%s: %s", path, error)
        return None
    if not _entry_fits(arrays):
        return None
    return {
        "image": arrays["image"].astype(np.float32),
        "label": arrays["label"].astype(np.uint8, copy=False),
        LESION_INDICES: arrays[LESION_INDICES],
        LESION_COMPONENTS: arrays[LESION_COMPONENTS],
        **({ORGANS: arrays[ORGANS].astype(np.uint8, copy=False)} if ORGANS in arrays else {}),
    }


def _entry_fits(arrays: dict[str, np.ndarray]) -> bool:
    """An entry holds a [CT, PET] image (2, X, Y, Z), its label (1, X, Y, Z), and as many lesion indices
    (and their lesions) as the label has lesion voxels; anything else is damage."""
    image, label, lesion = arrays["image"], arrays["label"], arrays[LESION_INDICES]
    components = arrays[LESION_COMPONENTS]
    return (
        image.ndim == 4
        and image.shape[0] == 2
        and label.shape == (1, *image.shape[1:])
        and lesion.ndim == 1
        and lesion.dtype == np.int64
        and (lesion.size == 0 or int(lesion[-1]) < math.prod(label.shape[1:]))
        and components.shape == lesion.shape
        and components.dtype == np.int32
        and (ORGANS not in arrays or arrays[ORGANS].shape == label.shape)
    )


# ----------------------------------------------------------------------------------------------- transforms

ELASTIC_SIGMA = (5.0, 8.0)
ELASTIC_MAGNITUDE = (100.0, 200.0)
PET_CHANNEL = 1  # petseg.model.card.CHANNELS: [CT, PET]
HOT_MIN_VOXELS = 16  # hot specks of PET noise are not organs


class _AllVoxels:
    """Every flat voxel index of a volume, as a background index map that is never built (50 M voxels of
    int64 would be 400 MB a patch); not a `Sequence`, so MONAI does not turn it into an array."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return int(index)


class LesionCentredCropd(RandCropByPosNegLabeld):
    """`RandCropByPosNegLabeld` without its warning on lesion-free labels, where it falls back to background
    centres: that fallback is what a lesion-free case (a third of autoPET) should get, not a problem.

    With `per_lesion`, a lesion-centred patch first draws one lesion (26-connected component), each alike,
    then a voxel of it: drawn voxel by voxel, the small lesions that decide a case's Dice when they are its
    only ones are seldom the centre of a patch. The background draw is the same either way.
    """

    _FOREGROUND = "_lesion_centre_foreground"
    _BACKGROUND = "_lesion_centre_background"

    def __init__(self, *args: Any, per_lesion: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_lesion = per_lesion
        if per_lesion:
            self.fg_indices_key, self.bg_indices_key = self._FOREGROUND, self._BACKGROUND

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> list[dict[Hashable, Any]]:
        if self.per_lesion:
            label = np.asarray(data[self.label_key])
            lesion = lesion_indices(label)
            data = {
                **data,
                self._FOREGROUND: self.lesion_choice(lesion, lesion_components(label, lesion)),
                self._BACKGROUND: _AllVoxels(math.prod(label.shape[1:])),
            }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
            return super().__call__(data, lazy=lazy)

    def lesion_choice(self, lesion: np.ndarray, components: np.ndarray) -> np.ndarray:
        """The lesion voxels a centre may be drawn from: all of them, or with `per_lesion` those of one
        lesion drawn uniformly from the case's (`components` gives each voxel's lesion)."""
        if not self.per_lesion or lesion.size == 0:
            return lesion
        numbers = np.unique(components)
        return lesion[components == numbers[self.R.randint(len(numbers))]]

    def crop_mapped(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        """The same draw and the same patch as `__call__`, from memory-mapped volumes at least as large as
        the patch: the centre comes from the label alone (as in `__call__`, which has no image key), and
        only the patch's voxels are read and converted."""
        # The index maps `__call__` draws from, without building them: the lesion voxels, and as background
        # every voxel. That is what MONAI's map gives for the tensor label `__call__` sees after padding (its
        # torch background includes the lesion voxels; its numpy one does not), and the draw must be the same.
        label = data[self.label_key]
        stored = data.get(LESION_INDICES)
        lesion = np.asarray(stored) if stored is not None else lesion_indices(label)
        if self.per_lesion:
            numbers = data.get(LESION_COMPONENTS)
            components = np.asarray(numbers) if numbers is not None else lesion_components(label, lesion)
            lesion = self.lesion_choice(lesion, components)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
            self.randomize(label, lesion, _AllVoxels(math.prod(label.shape[1:])), None)
        assert self.cropper.centers is not None
        size = fall_back_tuple(self.cropper.spatial_size, default=label.shape[1:])
        patches = []
        for centre in self.cropper.centers:
            spatial = SpatialCrop(roi_center=centre, roi_size=size).slices
            patch = dict(data)
            for key in self.keys:
                patch[key] = convert_to_tensor(
                    np.array(data[key][(slice(None), *spatial)], dtype=np.float32), track_meta=False
                )
            patches.append(patch)
        return patches


class HotUptakeCropd(RandomizableTransform, MapTransform):
    """With probability `prob`, a patch centred on hot uptake that is not lesion; otherwise `fallback`'s.

    A lesion-centred sampler shows the network physiological uptake only by chance, and it learns that every
    hot blob is a lesion: the demo ensemble's commonest false positives were PSMA salivary glands, which a
    random crop of a whole-body case seldom contains. Hot voxels are PET above `hot_suv` outside the label;
    one of their 26-connected components of at least `min_voxels` is drawn uniformly, then a voxel in it,
    so a small gland is as likely a centre as the liver. Without such a component, `fallback` decides.
    Crops are shifted inwards at borders, as the lesion-centred ones are.
    """

    def __init__(
        self,
        keys: Sequence[str],
        label_key: str,
        spatial_size: Sequence[int],
        fallback: Any,
        prob: float,
        hot_suv: float,
        pet_channel: int = PET_CHANNEL,
        min_voxels: int = HOT_MIN_VOXELS,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.fallback = fallback
        self.hot_suv = float(hot_suv)
        self.pet_channel = pet_channel
        self.min_voxels = min_voxels

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any:
        super().set_random_state(seed, state)
        self.fallback.set_random_state(seed=int(self.R.randint(2**31)))
        return self

    def hot_centre(self, image: Any, label: Any) -> np.ndarray | None:
        """A voxel index of a randomly drawn hot non-lesion component, or None when there is none."""
        hot = np.asarray(image[self.pet_channel]) > self.hot_suv
        hot &= ~(np.asarray(label[0]) > 0)
        components, count = cc3d.connected_components(hot, connectivity=26, return_N=True)
        if count == 0:
            return None
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        eligible = np.flatnonzero(sizes >= self.min_voxels) + 1
        if eligible.size == 0:
            return None
        voxels = np.argwhere(components == eligible[self.R.randint(eligible.size)])
        return voxels[self.R.randint(len(voxels))]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        self.randomize(None)
        centre = self.hot_centre(d["image"], d[self.label_key]) if self._do_transform else None
        if centre is None:
            return self.fallback(d)
        shape = np.asarray(d[self.label_key]).shape[1:]
        starts = [
            min(max(int(c) - s // 2, 0), dim - s)
            for c, s, dim in zip(centre, self.spatial_size, shape, strict=True)
        ]
        window = (slice(None), *(slice(a, a + s) for a, s in zip(starts, self.spatial_size, strict=True)))
        for key in self.key_iterator(d):
            d[key] = d[key][window]
        return [d]


class RandCTGammad(RandomizableTransform, MapTransform):
    """Gamma correction of the CT channel only: `ct ** gamma` on its fixed [0, 1] window.

    MONAI's `RandAdjustContrastd` rescales by the patch's joint min and max, which mixes CT (0..1) with SUV
    (0..tens) and changes with the content of the patch. PET is left alone on purpose: absolute SUV carries
    meaning (lesions are judged against fixed SUV levels), and gamma would move every uptake value.
    """

    def __init__(
        self,
        keys: str = "image",
        prob: float = 0.3,
        gamma: tuple[float, float] = (0.7, 1.5),
        channel: int = 0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.gamma_range = gamma
        self.channel = channel
        self.gamma = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.gamma = float(self.R.uniform(*self.gamma_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False).clone()
            image[self.channel] = image[self.channel].clamp(0.0, 1.0) ** self.gamma
            d[key] = image
        return d


class RandElasticd(RandomizableTransform, MapTransform):
    """Elastic deformation of image and label through one displacement field, each key with its own mode.

    The field follows MONAI's `Rand3DElasticd`: uniform(-1, 1) noise per voxel and axis, smoothed with
    a Gaussian of `sigma` voxels (truncated at 3 sigma), times `magnitude`, in voxels. Only the smoothing
    differs: scipy takes 0.25-0.4 s for a 128^3 patch on one CPU thread where MONAI's conv3d takes 1.4-2.4 s,
    which made the elastic step most of the cost of a training patch.
    """

    def __init__(
        self,
        keys: Sequence[str],
        sigma_range: tuple[float, float],
        magnitude_range: tuple[float, float],
        prob: float,
        mode: Sequence[str],
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if len(mode) != len(self.keys):
            raise ValueError(f"one mode per key expected, got {mode!r} for {self.keys!r}")
        self.sigma_range = sigma_range
        self.magnitude_range = magnitude_range
        self.mode = tuple(mode)
        self.sigma = self.magnitude = 0.0
        self.noise = np.zeros((3, 0, 0, 0), np.float32)

    def randomize(self, data: Any = None) -> None:
        """`data`: (the spatial shape of the patch, the device it lies on)."""
        super().randomize(None)
        if self._do_transform:
            shape, device = data
            self.sigma = float(self.R.uniform(*self.sigma_range))
            self.magnitude = float(self.R.uniform(*self.magnitude_range))
            if device.type == "cpu":
                self.noise = self.R.uniform(-1.0, 1.0, (3, *shape)).astype(np.float32)
            else:
                # Drawn where the patch lies, from a seed of this transform's stream: numpy's 6.3 M draws
                # for a 128^3 patch took about 80 ms of the training process's CPU for every patch.
                generator = torch.Generator(device=device).manual_seed(int(self.R.randint(2**31)))
                noise = torch.rand((3, *shape), generator=generator, device=device)
                self.noise = noise.mul_(2.0).sub_(1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = convert_to_tensor(d[self.first_key(d)], track_meta=False)
        device = first.device
        self.randomize((tuple(first.shape[1:]), device))
        if not self._do_transform:
            return d
        if device.type == "cpu":
            sigma = (0.0, self.sigma, self.sigma, self.sigma)
            field: Any = scipy.ndimage.gaussian_filter(self.noise, sigma, truncate=3.0, mode="constant")
        else:  # on an accelerator the same smoothing runs where the patch lies (`augmentation_on`)
            field = gaussian_smooth(self.noise, self.sigma)
        field *= self.magnitude
        grid = _sampling_grid(field)  # one grid for all keys: image and label move together
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = _sample(d[key], grid, mode)
        return d


def displace(image: Any, field: np.ndarray, mode: str) -> torch.Tensor:
    """`image` (C, X, Y, Z) sampled at index + displacement: out[c, p] = image[c, p + field[:, p]].

    `mode` "bilinear" (trilinear) or "nearest"; outside the volume is 0.
    """
    return _sample(image, _sampling_grid(field), mode)


def gaussian_smooth(field: torch.Tensor, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter(field, (0, sigma, sigma, sigma), truncate=truncate, mode="constant")`
    for a (C, X, Y, Z) tensor, on the tensor's device: the same kernel (radius `int(truncate * sigma +
    0.5)`), one separable pass per spatial axis with zeros outside."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=field.device)
    kernel = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    kernel = (kernel / kernel.sum()).to(field.dtype)
    smoothed = field
    for axis in (1, 2, 3):
        moved = smoothed.movedim(axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        filtered = torch.nn.functional.conv1d(rows, kernel.view(1, 1, -1), padding=radius)
        smoothed = filtered.reshape(moved.shape).movedim(-1, axis)
    return smoothed.contiguous()


def _sampling_grid(field: np.ndarray | torch.Tensor) -> torch.Tensor:
    """`grid_sample`'s grid (1, X, Y, Z, 3) for a displacement field (3, X, Y, Z) in voxels, on the
    field's device."""
    values = field if isinstance(field, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(field))
    values = values.to(torch.float32)
    shape = values.shape[1:]
    axes = []
    for axis, size in enumerate(shape):
        index = torch.arange(size, dtype=torch.float32, device=values.device)
        index = index.reshape([-1 if a == axis else 1 for a in range(3)])
        position = index + values[axis]
        axes.append(position * (2.0 / max(size - 1, 1)) - 1.0)
    # grid_sample reads (N, C, D, H, W) with grid[..., 0] along W: our (X, Y, Z) is (D, H, W), so reversed.
    return torch.stack(axes[::-1], dim=-1)[None]


def _sample(image: Any, grid: torch.Tensor, mode: str) -> torch.Tensor:
    image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
    grid = grid.to(image.device)
    resampled = torch.nn.functional.grid_sample(
        image[None], grid, mode=mode, padding_mode="zeros", align_corners=True
    )
    return resampled[0]


class AsTrainingTensorsd(MapTransform):
    """Plain float32 tensors, the label thresholded back to exactly {0, 1} (and an organ map rounded to its
    whole labels)."""

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.image_key] = convert_to_tensor(d[self.image_key], dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(d[self.label_key], track_meta=False)
        d[self.label_key] = (label > 0.5).to(torch.float32)
        if ORGANS in d:  # organ labels, nearest-neighbour moved: whole numbers again after any float error
            d[ORGANS] = convert_to_tensor(d[ORGANS], dtype=torch.float32, track_meta=False).round()
        return d


class PatchCompose(Compose):
    """A `Compose` that returns the one patch as a dict, not as the crop's one-element list.

    Given memory-mapped volumes (`PreprocessedCache.open`) at least as large as the patch, the lesion-centred
    crop reads only the patch (`LesionCentredCropd.crop_mapped`: the same draw, the same voxels) and the
    later steps run on it; otherwise the volumes are read whole and every step runs as listed.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(input_, Mapping) and isinstance(input_.get("image"), np.memmap):
            crop = self.transforms[1] if len(self.transforms) > 1 else None
            shape = input_["label"].shape[1:]
            if isinstance(crop, LesionCentredCropd) and all(
                n >= p for n, p in zip(shape, fall_back_tuple(crop.cropper.spatial_size, shape), strict=True)
            ):
                output: Any = crop.crop_mapped(input_)
                for transform in self.transforms[2:]:
                    output = apply_transform(transform, output, map_items=True)
                return output[0] if isinstance(output, list) and len(output) == 1 else output
            input_ = {
                **input_,
                "image": np.asarray(input_["image"], dtype=np.float32),
                "label": np.array(input_["label"]),
                **({ORGANS: np.array(input_[ORGANS])} if ORGANS in input_ else {}),
            }
        output = super().__call__(input_, *args, **kwargs)
        if isinstance(output, list) and len(output) == 1:
            return output[0]
        return output


def train_transforms(
    patch_size: tuple[int, int, int],
    lesion_probability: float = 0.8,
    augment: bool = True,
    seed: int | None = None,
    hot_probability: float = 0.0,
    hot_suv: float = 4.0,
    flip_probability: float = 0.0,
    lesion_sampling: str = "voxel",
    misalignment: CTMisalignment | None = None,
    organs: bool = False,
) -> Compose:
    """One random patch of a cached case, {"image": (2, P, P, P), "label": (1, P, P, P)} float32 tensors.

    1. zero-pad to at least `patch_size` (0 is air in the CT's [0, 1] window, and no uptake in PET);
    2. crop `patch_size` centred on a lesion voxel with probability `lesion_probability`, else on a random
       background voxel (about uniform: lesions are a tiny share of the voxels); a lesion-free case always
       gets the background draw. Crops near a border are shifted inwards, never outside the volume, and
       still contain their centre voxel. `lesion_sampling` "lesion" draws a lesion first, each alike, then
       a voxel of it (`LesionCentredCropd`); "voxel" draws any lesion voxel alike. With `hot_probability`
       > 0, that share of the patches is centred on hot uptake (PET above `hot_suv`) outside the lesions
       instead (`HotUptakeCropd`);
    3. with `augment`: with `misalignment`, the CT channel alone rotated and shifted (`CTMisalignment`);
       affine (p 0.5: +-10 voxels, +-pi/12 about the axial z axis, scale +-0.1), elastic
       (p 0.5: smoothing sigma 5-8 voxels, magnitude 100-200: displacements with a standard deviation of
       0.3-1.8 voxels, at most about 5), both with zero padding and the label always nearest-neighbour;
       gamma 0.7-1.5 on the CT channel only (p 0.3, see `RandCTGammad`); Gaussian noise with a standard
       deviation up to 0.1 on both image channels (p 0.5); with `flip_probability` > 0, a left-right
       mirror with that probability (off by default, as in the autoPET III entry's recipe; a mirrored body is
       still
       plausible anatomy, and a network trained on it can average a mirrored pass at inference);
    4. the label thresholded back to {0, 1}.

    With `seed` the draws are reproducible; `PatchDataset` reseeds per DataLoader worker.
    """
    patch = tuple(int(s) for s in patch_size)
    if len(patch) != 3 or any(s < 1 for s in patch):
        raise ValueError(f"patch_size must be three positive integers, got {patch_size!r}")
    if not 0.0 <= lesion_probability <= 1.0:
        raise ValueError(f"lesion_probability must be in [0, 1], got {lesion_probability!r}")
    if not 0.0 <= hot_probability <= 1.0:
        raise ValueError(f"hot_probability must be in [0, 1], got {hot_probability!r}")
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability!r}")
    if lesion_sampling not in LESION_SAMPLING:
        known = ", ".join(LESION_SAMPLING)
        raise ValueError(f"lesion_sampling must be one of {known}, got {lesion_sampling!r}")
    keys: tuple[str, ...] = ("image", "label", ORGANS) if organs else ("image", "label")
    crop: Any = LesionCentredCropd(
        keys,
        label_key="label",
        spatial_size=patch,
        pos=lesion_probability,
        neg=1.0 - lesion_probability,
        num_samples=1,
        per_lesion=lesion_sampling == "lesion",
    )
    if hot_probability > 0:
        crop = HotUptakeCropd(keys, "label", patch, crop, hot_probability, hot_suv)
    steps: list[Any] = [
        SpatialPadd(keys, spatial_size=patch, mode="constant"),
        crop,
        CastToTyped(keys, dtype=(torch.float32,) * len(keys)),
    ]
    if augment:
        steps += augmentation_steps(flip_probability, misalignment, organs)
    steps.append(AsTrainingTensorsd())
    transforms = PatchCompose(steps)
    if seed is not None:
        transforms.set_random_state(seed=seed)
    return transforms


@dataclass(frozen=True)
class CTMisalignment:
    """How far the CT channel alone may be moved against the PET: PET and CT of one scan are never exactly
    registered (breathing, a patient who moved between the two), and a network that only ever saw them
    aligned learns to rely on it. With `probability` each, a patch's CT is rotated by up to `rotation_deg`
    about each axis, and shifted by up to `shift_voxels` whole voxels left-right and front-back (not along
    the body's axis); the PET and the label never move. Probability 0: off."""

    probability: float = 0.0
    rotation_deg: float = 5.0
    shift_voxels: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"misalign_probability must be in [0, 1], got {self.probability!r}")
        if not 0.0 <= self.rotation_deg <= 45.0:
            raise ValueError(f"misalign_rotation_deg must be in [0, 45], got {self.rotation_deg!r}")
        if not 0 <= self.shift_voxels <= 16:
            raise ValueError(f"misalign_shift_voxels must be in [0, 16], got {self.shift_voxels!r}")


CT_CHANNEL = 0  # petseg.model.card.CHANNELS: [CT, PET]


def misalign_ct(image: Any, angles_rad: Sequence[float], shift_voxels: Sequence[int]) -> torch.Tensor:
    """`image` (2, X, Y, Z) with its CT channel rotated by `angles_rad` about the patch centre (about the x,
    y and z axes, in that order) and then shifted by `shift_voxels`, zero (air) where it moved in from
    outside; the PET channel is returned unchanged. The deterministic twin of `RandCTMisalignd`."""
    from monai.transforms import Affine

    image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
    affine = Affine(
        rotate_params=tuple(float(a) for a in angles_rad),
        translate_params=tuple(-float(s) for s in shift_voxels),  # MONAI's maps output to input
        padding_mode="zeros",
        mode="bilinear",
        image_only=True,
        device=image.device,  # the sampling grid where the patch lies, not built on the CPU and moved
    )
    ct = convert_to_tensor(affine(image[CT_CHANNEL : CT_CHANNEL + 1]), track_meta=False)
    return torch.cat([ct.to(image), image[CT_CHANNEL + 1 :]])


class RandCTMisalignd(RandomizableTransform, MapTransform):
    """`CTMisalignment`'s random draw: with its probability a rotation (uniform in +-rotation_deg about each
    axis), independently with its probability a shift (whole voxels, uniform in +-shift_voxels along x and
    y), both applied by `misalign_ct`."""

    def __init__(self, image_key: str, misalignment: CTMisalignment) -> None:
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, 1.0)
        self.misalignment = misalignment
        self.angles_rad = (0.0, 0.0, 0.0)
        self.shift_voxels = (0, 0, 0)

    def randomize(self, data: Any = None) -> None:
        m = self.misalignment
        rotate = self.R.uniform() < m.probability
        shift = self.R.uniform() < m.probability
        limit = math.radians(m.rotation_deg)
        self.angles_rad = (
            tuple(float(self.R.uniform(-limit, limit)) for _ in range(3)) if rotate else (0.0,) * 3
        )
        steps = (
            [int(self.R.randint(-m.shift_voxels, m.shift_voxels + 1)) for _ in range(2)] if shift else [0, 0]
        )
        self.shift_voxels = (steps[0], steps[1], 0)
        self._do_transform = rotate or shift

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = misalign_ct(d[key], self.angles_rad, self.shift_voxels)
        return d


def augmentation_steps(
    flip_probability: float = 0.0,
    misalignment: CTMisalignment | None = None,
    organs: bool = False,
    device: torch.device | None = None,
) -> list[Any]:
    """Step 3 of `train_transforms`, the random augmentation of a patch, as dictionary transforms that run
    on a patch wherever its tensors lie (the CPU in a loader worker, or the training device). With `organs`
    the organ map moves with the label (nearest neighbour). `device`: where the patches will lie, if not on
    the CPU, so that the affine sampling grid is built there too (MONAI builds it on the CPU otherwise, and
    moves it for every patch)."""
    keys: tuple[str, ...] = ("image", "label", ORGANS) if organs else ("image", "label")
    modes = ("bilinear", *("nearest",) * (len(keys) - 1))
    steps: list[Any] = []
    if misalignment is not None and misalignment.probability > 0:
        steps.append(RandCTMisalignd("image", misalignment))  # first, as the scanner would: then the rest
    steps += [
        RandAffined(
            keys,
            prob=0.5,
            rotate_range=(0.0, 0.0, math.pi / 12),
            translate_range=(10.0, 10.0, 10.0),
            scale_range=(0.1, 0.1, 0.1),
            mode=modes,
            padding_mode="zeros",
            device=device,
        ),
        RandElasticd(
            keys,
            sigma_range=ELASTIC_SIGMA,
            magnitude_range=ELASTIC_MAGNITUDE,
            prob=0.5,
            mode=modes,
        ),
        RandCTGammad("image", prob=0.3, gamma=(0.7, 1.5)),
        RandGaussianNoised("image", prob=0.5, mean=0.0, std=0.1),
    ]
    if flip_probability > 0:
        # Axis 0 of the canonical (RAS) grid is left-right.
        steps.append(RandFlipd(keys, prob=flip_probability, spatial_axis=0))
    return steps


# Where a patch is augmented: in the loader's workers, or on the training device after the batch has moved
# there. "auto" is the loader on every device: on an H200 at 128^3 the batch augmented on the GPU held the
# step to 7 patches/s, while 12 loader workers delivered 18 (bench/README.md, the GPU check).
AUGMENTATION_PLACES = ("auto", "loader", "device")


def augmentation_on(place: str, device: torch.device) -> str:
    """ "loader" or "device" for a run's `augment_on` setting and training device."""
    if place not in AUGMENTATION_PLACES:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENTATION_PLACES)}, got {place!r}")
    if place == "auto":
        return "loader"
    return place


class BatchAugmentation:
    """The augmentation of `train_transforms` for a batch that already lies on the training device.

    The loader then only crops (and reads the patch from the memory-mapped cache); each patch of the batch
    goes through the same dictionary transforms, with one random stream seeded per epoch, so a resumed run
    draws the same augmentation again. `device`: where the batches lie (None: the CPU); there the random
    fields are drawn and the sampling grids built as well.
    """

    def __init__(
        self,
        flip_probability: float = 0.0,
        seed: int | None = None,
        misalignment: CTMisalignment | None = None,
        organs: bool = False,
        device: torch.device | None = None,
    ) -> None:
        steps = augmentation_steps(flip_probability, misalignment, organs, device)
        self.transforms = Compose([*steps, AsTrainingTensorsd()])
        self.organs = organs
        if seed is not None:
            self.transforms.set_random_state(seed=seed)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, organs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(B, 2, X, Y, Z) images and (B, 1, X, Y, Z) labels (and organ maps), augmented patch by patch."""
        patches = []
        for index in range(len(images)):
            patch = {"image": images[index], "label": labels[index]}
            if organs is not None:
                patch[ORGANS] = organs[index]
            patches.append(self.transforms(patch))
        stacked = torch.stack([p["image"] for p in patches]), torch.stack([p["label"] for p in patches])
        return (*stacked, torch.stack([p[ORGANS] for p in patches])) if organs is not None else stacked


# ----------------------------------------------------------------------------------------------- datasets


class PatchDataset(torch.utils.data.Dataset):
    """Random training patches, `samples_per_epoch` per epoch (default: one per case), cycling the cases.

    Each DataLoader worker starts as a copy of the same transforms, which would repeat the same random draws
    in every worker; the transforms are therefore reseeded from the worker's own seed on its first item.
    That seed follows `torch.manual_seed` in the main process and changes every epoch (persistent workers
    keep theirs, and their random streams simply go on).
    """

    def __init__(
        self,
        records: Sequence[CaseRecord],
        cache: PreprocessedCache,
        transforms: Any,
        samples_per_epoch: int | None = None,
    ) -> None:
        if not records:
            raise ValueError("PatchDataset needs at least one case")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch!r}")
        self.records = list(records)
        self.cache = cache
        self.transforms = transforms
        self.samples_per_epoch = samples_per_epoch
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        self._seed_worker()
        sample = self.transforms(self.cache.open(self.records[index % len(self.records)]))
        if isinstance(sample, list) and len(sample) == 1:
            sample = sample[0]
        image = convert_to_tensor(sample["image"], dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(sample["label"], track_meta=False)
        item = {"image": image, "label": (label > 0.5).to(torch.float32)}
        if ORGANS in sample:
            item[ORGANS] = convert_to_tensor(sample[ORGANS], dtype=torch.float32, track_meta=False).round()
        return item

    def _seed_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or info.seed == self._worker_seed:
            return
        self._worker_seed = info.seed
        if hasattr(self.transforms, "set_random_state"):
            self.transforms.set_random_state(seed=info.seed % 2**32)


def validation_items(records: Sequence[CaseRecord], cache: PreprocessedCache) -> Iterator[dict[str, Any]]:
    """Whole cached cases for sliding-window validation, one at a time (a whole-body case is large).

    `voxel_ml` converts voxel counts on the network grid into the ml of the FNV/FPV metrics.
    """
    voxel_ml = float(np.prod(cache.settings.spacing_mm)) / 1000.0
    for record in records:
        arrays = cache.get(record)
        yield {
            "case_id": record.case_id,
            "image": arrays["image"],
            "label": arrays["label"],
            "voxel_ml": voxel_ml,
        }
