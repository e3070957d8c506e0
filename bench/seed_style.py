"""The autoPET III entry's inference, written with MONAI the way the entry wrote it: the reference to beat.

The entry (spec section 2) converted the Grand-Challenge .mha inputs to NIfTI with SimpleITK and ran MONAI
dictionary transforms: LoadImaged of CT and PET, EnsureChannelFirstd, ScaleIntensityRanged of the CT from
[-1024, 1024] HU to [0, 1] with clipping, CropForegroundd on that scaled CT (its default `> 0`: every voxel
above -1024 HU, no margin), Orientationd to RAS, Spacingd to 2 mm (bilinear), ConcatItemsd to [CT, PET].
Every fold then ran its own `sliding_window_inference` pass (constant blending, fp32), MeanEnsembled
averaged the folds' logits, Activationsd took their sigmoid, Invertd took them back to the PET grid
(bilinear: `nearest_interp=False`) and AsDiscreted's argmax made the mask, which SaveImaged wrote as NIfTI
and SimpleITK converted to .mha.

`segment_seed_style` does the same, with the safetensors fold weights that petseg loads (built by
`petseg.model.networks.load_fold` from the model card), so that `python -m bench inference` can time both
on one case and compare their masks. Its `geometry` decides where the network looks:

- "seed": the entry's own crop (CT above -1024 HU) and its Spacingd grid (anchored at the crop's first
  voxel). The windows then fall elsewhere than petseg's, so the masks can only be compared loosely.
- "matched": the same chain with petseg's crop rule (CT above the card's body threshold, plus its margin)
  and Spacingd replaced by ResampleToMatchd onto petseg's 2 mm grid, so that both pipelines see the same
  voxels through the same windows: their masks must agree, and the times compare implementations only.

Two things the entry left to the challenge data are explicit: a CT on another grid is first resampled onto
the PET grid as the spec says (linear, -1024 HU outside its field of view), and the NIfTI copies are written
uncompressed unless `nifti_gzip` asks for the entry's `.nii.gz`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    MeanEnsembled,
    Orientationd,
    ResampleToMatchd,
    SaveImage,
    ScaleIntensityRanged,
    Spacingd,
)

from petseg.geometry import Grid
from petseg.inference.preprocess import body_box, network_grid
from petseg.inference.timing import StageTimer
from petseg.model.card import load_card
from petseg.model.networks import load_fold

KEYS = ("CT", "PT")
GEOMETRIES = ("seed", "matched")
# The stages every benchmarked pipeline reports, in order.
STAGES = ("read", "preprocess", "network", "back-map", "write")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# ITK's nearest neighbour (petseg's back-map) takes the upper voxel for a point exactly half-way between
# two; PyTorch's grid_sample (MONAI's Invertd) rounds half to even, or either way where float rounding moved
# the point. petseg's grid is centred on the body box, which puts whole planes of PET voxels exactly
# half-way (without a correction, 277 of the 661 slices of the largest FDG case came from the other network
# slice), so the "matched" grid is moved by this fraction of a voxel towards lower indices: ties then go the
# same way in both, and the forward resampling moves by 20 nm.
TIE_SHIFT_VOXELS = 1e-5


@dataclass(frozen=True)
class SeedSettings:
    """The knobs of the autoPET III entry's inference; the defaults are the entry's own, except the window
    size."""

    roi_size: tuple[int, int, int] = (192, 192, 192)
    overlap: float = 0.5
    sw_batch_size: int = 1
    blend_mode: str = "constant"
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    ct_window_hu: tuple[float, float] = (-1024.0, 1024.0)
    ct_fill_hu: float = -1024.0
    nearest_interp: bool = False  # the entry's Invertd interpolated bilinearly
    nifti_gzip: bool = False
    geometry: str = "seed"
    body_threshold_hu: float = -500.0  # "matched" only
    body_margin_mm: float = 10.0  # "matched" only


def load_networks(model_dir: Path, folds: int | None, device: torch.device) -> list[torch.nn.Module]:
    """The first `folds` fold networks of a model folder (all when None), exactly as petseg loads them."""
    card = load_card(Path(model_dir))
    chosen = card.folds if folds is None else card.folds[:folds]
    return [load_fold(card, Path(model_dir), fold.weights, fold.sha256).to(device).eval() for fold in chosen]


def loading() -> Compose:
    return Compose(
        [LoadImaged(keys=KEYS, reader="NibabelReader", image_only=True), EnsureChannelFirstd(keys=KEYS)]
    )


def _scaled_hu(hu: float, settings: SeedSettings) -> float:
    low, high = settings.ct_window_hu
    return (hu - low) / (high - low)


def preprocessing(settings: SeedSettings, margin_voxels: Sequence[int] = (0, 0, 0)) -> Compose:
    """The entry's inference transforms after loading; Invertd replays their trace backwards.

    "matched" crops with `margin_voxels` (the card's margin on the PET grid) and resamples onto the grid of
    the `grid` item (a MetaTensor template) that `segment_seed_style` puts beside the images.
    """
    low, high = settings.ct_window_hu
    scale = ScaleIntensityRanged(keys=["CT"], a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    # the labels are Orientationd's default, spelled out: leaving them out is deprecated
    orient = Orientationd(keys=KEYS, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    concat = ConcatItemsd(keys=KEYS, name="image", dim=0)
    if settings.geometry == "seed":
        return Compose(
            [
                scale,
                CropForegroundd(keys=KEYS, source_key="CT"),
                orient,
                Spacingd(keys=KEYS, pixdim=settings.spacing_mm, mode=("bilinear", "bilinear")),
                concat,
            ]
        )
    threshold = _scaled_hu(settings.body_threshold_hu, settings)
    return Compose(
        [
            scale,
            CropForegroundd(
                keys=KEYS,
                source_key="CT",
                select_fn=lambda ct: ct > threshold,
                margin=tuple(int(m) for m in margin_voxels),
                allow_smaller=True,
            ),
            orient,
            ResampleToMatchd(keys=KEYS, key_dst="grid", mode="bilinear", padding_mode="zeros"),
            concat,
        ]
    )


def postprocessing(preprocess: Compose, settings: SeedSettings) -> Compose:
    return Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            Invertd(
                keys="pred",
                transform=preprocess,
                orig_keys="PT",
                nearest_interp=settings.nearest_interp,
                to_tensor=True,
            ),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5, atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def _to_nifti(
    ct_path: Path, pet_path: Path, scratch: Path, settings: SeedSettings
) -> tuple[Path, Path, sitk.Image, sitk.Image]:
    """The entry's .mha -> NIfTI copies (LoadImaged reads no .mha without ITK), the CT on the PET grid."""
    ct = sitk.ReadImage(str(ct_path))
    pet = sitk.ReadImage(str(pet_path))
    if not _same_grid(ct, pet):
        ct = sitk.Resample(ct, pet, sitk.Transform(), sitk.sitkLinear, settings.ct_fill_hu, sitk.sitkFloat32)
    suffix = ".nii.gz" if settings.nifti_gzip else ".nii"
    ct_nii, pet_nii = scratch / f"CTres{suffix}", scratch / f"SUV{suffix}"
    for image, path in ((ct, ct_nii), (pet, pet_nii)):
        sitk.WriteImage(image, str(path), settings.nifti_gzip)
    return ct_nii, pet_nii, ct, pet


def grid_template(grid: Grid, shift_voxels: float = 0.0) -> MetaTensor:
    """A MetaTensor standing for a grid (RAS affine, shape; one shared zero voxel), moved by `shift_voxels`
    of a voxel towards lower indices on every axis."""
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(grid.spacing)
    affine[:3, 3] = np.asarray(grid.origin) - affine[:3, :3] @ np.full(3, shift_voxels)
    voxels = torch.zeros(1, 1, 1, 1).expand(1, *grid.size)
    return MetaTensor(voxels, affine=torch.as_tensor(LPS_TO_RAS @ affine))


def matched_grid(ct: sitk.Image, pet: sitk.Image, settings: SeedSettings) -> tuple[list[int], MetaTensor]:
    """The card's crop margin in PET voxels and petseg's network grid for this case (geometry "matched")."""
    margin = [math.ceil(settings.body_margin_mm / s) for s in pet.GetSpacing()]
    box = body_box(ct, settings.body_threshold_hu, settings.body_margin_mm)
    return margin, grid_template(network_grid(Grid.of(pet), box, settings.spacing_mm), TIE_SHIFT_VOXELS)


def segment_seed_style(
    ct_path: Path,
    pet_path: Path,
    networks: Sequence[torch.nn.Module],
    settings: SeedSettings,
    out_path: Path,
    timer: StageTimer,
    device: torch.device | None = None,
) -> dict[str, object]:
    """Segment one case the entry's way and write the uint8 mask to `out_path` (.mha, on the PET grid).

    Returns what the benchmark reports beside the times: the network input's shape (x, y, z at 2 mm).
    """
    if settings.geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {settings.geometry!r}")
    device = device or torch.device("cpu")
    scratch = Path(tempfile.mkdtemp(prefix="seed-style-"))
    try:
        with timer.stage("read"):
            ct_nii, pet_nii, ct, pet = _to_nifti(Path(ct_path), Path(pet_path), scratch, settings)
            data = loading()({"CT": str(ct_nii), "PT": str(pet_nii)})
        with timer.stage("preprocess"):
            margin = [0, 0, 0]
            if settings.geometry == "matched":
                margin, data["grid"] = matched_grid(ct, pet, settings)
            del ct, pet
            preprocess = preprocessing(settings, margin)
            data = preprocess(data)
            data.pop("grid", None)
        shape = tuple(int(n) for n in data["image"].shape[1:])
        with timer.stage("network"):
            inputs = data["image"][None].to(device)  # the entry's DataLoader batch of one
            pred_keys = [f"pred{k}" for k in range(len(networks))]
            with torch.no_grad():
                for key, network in zip(pred_keys, networks, strict=True):
                    data[key] = sliding_window_inference(
                        inputs,
                        settings.roi_size,
                        settings.sw_batch_size,
                        network,
                        overlap=settings.overlap,
                        mode=settings.blend_mode,
                    )[0]
            del inputs
            if len(pred_keys) == 1:  # MeanEnsembled reads a single key as an already stacked ensemble
                data["pred"] = data.pop(pred_keys[0])
            else:
                data = MeanEnsembled(keys=pred_keys, output_key="pred")(data)
                for key in pred_keys:
                    del data[key]
        with timer.stage("back-map"):
            data = postprocessing(preprocess, settings)(data)
        with timer.stage("write"):
            mask = data["pred"]
            if not isinstance(mask, MetaTensor):
                raise TypeError("the inverted prediction lost its geometry")
            saver = SaveImage(
                output_dir=str(scratch),
                output_postfix="",
                output_ext=".nii.gz",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=False,
                print_log=False,
                output_name_formatter=lambda meta, saver: {"subject": "mask"},
            )
            saver(mask.cpu())
            image = sitk.ReadImage(str(scratch / "mask.nii.gz"))
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(out_path), True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"network_input_xyz": shape}
