"""Networks named by the model card, and their fold weights.

`resunet` is exactly the network of the autoPET III seed entry (MONAI 3D Residual UNet, 19,223,525
parameters); `resunet-tiny` is the same design at a fraction of the width and depth, for demos and tests.
Fold weights are safetensors files holding the network's state dict and nothing else: loading them can
never run code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from petseg.card import Architecture, ModelCard, check_relative_path
from petseg.errors import ModelError

IN_CHANNELS = 2  # [CT, PET]
OUT_CHANNELS = 2  # [background, lesion]


def _resunet(**overrides: Any) -> torch.nn.Module:
    args: dict[str, Any] = {
        "channels": (32, 64, 128, 256, 512),
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
        "norm": Norm.BATCH,
    }
    args.update(overrides)
    return UNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **args)


def _resunet_tiny(**overrides: Any) -> torch.nn.Module:
    args: dict[str, Any] = {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1}
    args.update(overrides)
    return _resunet(**args)


# name -> (constructor, default strides); training adds its comparison architectures here.
PRESETS: dict[str, Callable[..., torch.nn.Module]] = {
    "resunet": _resunet,
    "resunet-tiny": _resunet_tiny,
}
_DEFAULT_STRIDES = {"resunet": (2, 2, 2, 2), "resunet-tiny": (2, 2, 2)}


def build_network(architecture: Architecture) -> torch.nn.Module:
    """Instantiate the card's network (random weights)."""
    if architecture.name not in PRESETS:
        raise ModelError(f"unknown architecture {architecture.name!r}; known: {', '.join(sorted(PRESETS))}")
    try:
        return PRESETS[architecture.name](**architecture.args)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelError(
            f"architecture {architecture.name!r} with args {architecture.args}: {error}"
        ) from None


def input_divisor(architecture: Architecture) -> int:
    """Window sizes must be multiples of this (the product of the encoder strides)."""
    if architecture.name not in PRESETS:
        raise ModelError(f"unknown architecture {architecture.name!r}; known: {', '.join(sorted(PRESETS))}")
    strides = architecture.args.get("strides", _DEFAULT_STRIDES[architecture.name])
    return math.prod(int(s) for s in strides)


def count_parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(card: ModelCard, model_dir: Path, weights: str) -> Path:
    check_relative_path(weights, f"{model_dir}/model.json: fold weights")
    root = Path(model_dir).resolve()
    path = (root / weights).resolve()
    if root not in path.parents:
        raise ModelError(f"{model_dir}/model.json: fold weights {weights!r} point outside the model folder")
    return path


def save_weights(network: torch.nn.Module, path: Path) -> str:
    """Write a network's state dict as safetensors (atomically); returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(partial))
    partial.replace(path)
    return file_sha256(path)


def load_fold(card: ModelCard, model_dir: Path, weights: str, sha256: str | None) -> torch.nn.Module:
    """Build the card's network and load one fold's weights into it, in eval mode."""
    path = weights_path(card, model_dir, weights)
    if not path.is_file():
        raise ModelError(
            f"{path}: fold weights not found; train the folds (see README, 'Training') or, for a "
            "demo, create an untrained ensemble with `petseg random-model --out DIR`"
        )
    if sha256 is not None and file_sha256(path) != sha256:
        raise ModelError(f"{path}: sha256 does not match the model card (corrupted or replaced file)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable safetensors file: {error}") from None
    network = build_network(card.architecture)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(
            f"{path}: weights do not fit architecture {card.architecture.name!r}: {first}"
        ) from None
    return network.eval()
