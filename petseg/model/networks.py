"""Networks named by the model card, and their fold weights.

`resunet` is exactly the network of the autoPET III entry (MONAI 3D Residual UNet, 19,223,525
parameters); `resunet-tiny` is the same design at a fraction of the width and depth, for demos and tests.
Fold weights are safetensors files holding the network's state dict and nothing else: loading them can
never run code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from monai.networks.layers import Norm
from monai.networks.nets import UNETR, AttentionUnet, SegResNet, UNet
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.utils.fusion import fuse_conv_bn_eval

from petseg.errors import ModelError
from petseg.io.files import check_link_inside
from petseg.model.fold_files import file_sha256, fold_weights_problem
from petseg.model.settings import Architecture, EnsembleSettings, check_relative_path

IN_CHANNELS = 2  # [CT, PET]
OUT_CHANNELS = 2  # [background, lesion]; a network with an organ head adds its organ classes after these


class FoldSource(Protocol):
    """What loading a fold needs of a model card: the card itself, which this module cannot import (the
    card's validation asks this module which window sizes a network takes)."""

    architecture: Architecture
    ensemble: EnsembleSettings


def _resunet(out_channels: int = OUT_CHANNELS, **overrides: Any) -> torch.nn.Module:
    args: dict[str, Any] = {
        "channels": (32, 64, 128, 256, 512),
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
        "norm": Norm.BATCH,
    }
    args.update(overrides)
    return UNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=out_channels, **args)


def _resunet_tiny(out_channels: int = OUT_CHANNELS, **overrides: Any) -> torch.nn.Module:
    args: dict[str, Any] = {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1}
    args.update(overrides)
    return _resunet(out_channels, **args)


def _segresnet(out_channels: int = OUT_CHANNELS, **overrides: Any) -> torch.nn.Module:
    """The L1DFL paper: encoder blocks (1, 2, 2, 4), 16 initial filters doubling per level, GroupNorm,
    ReLU."""
    args: dict[str, Any] = {
        "blocks_down": (1, 2, 2, 4),
        "init_filters": 16,
        "norm": ("group", {"num_groups": 8}),
    }
    args.update(overrides)
    return SegResNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=out_channels, act="RELU", **args)


def _attention_unet(out_channels: int = OUT_CHANNELS, **overrides: Any) -> torch.nn.Module:
    """The L1DFL paper: five levels of 16-256 channels, batch norm, attention gates."""
    args: dict[str, Any] = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)}
    args.update(overrides)
    return AttentionUnet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=out_channels, **args)


def _unet(out_channels: int = OUT_CHANNELS, **overrides: Any) -> torch.nn.Module:
    """The L1DFL paper: six levels of 16-512 channels, residual units, batch norm, transposed-conv decoder."""
    args: dict[str, Any] = {
        "channels": (16, 32, 64, 128, 256, 512),
        "strides": (2, 2, 2, 2, 2),
        "num_res_units": 2,
        "norm": Norm.BATCH,
    }
    args.update(overrides)
    return UNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=out_channels, **args)


def _unetr(
    out_channels: int = OUT_CHANNELS, roi_size: tuple[int, int, int] = (128, 128, 128), **overrides: Any
) -> torch.nn.Module:
    """The L1DFL paper: ViT encoder, hidden size 256, MLP 1024, 4 heads, convolutional patch embedding.

    A transformer's input size is fixed: it is the card's sliding-window size.
    """
    args: dict[str, Any] = {"hidden_size": 256, "mlp_dim": 1024, "num_heads": 4, "proj_type": "conv"}
    args.update(overrides)
    return UNETR(
        in_channels=IN_CHANNELS, out_channels=out_channels, img_size=tuple(roi_size), spatial_dims=3, **args
    )


# name -> constructor. Every architecture a card can name is here, so inference can build any trained model.
PRESETS: dict[str, Callable[..., torch.nn.Module]] = {
    "resunet": _resunet,
    "resunet-tiny": _resunet_tiny,
    "segresnet": _segresnet,
    "attention-unet": _attention_unet,
    "unet": _unet,
    "unetr": _unetr,
}
_NEEDS_ROI = {"unetr"}


def _divisor_from_args(name: str, args: dict[str, Any]) -> int:
    if name in ("resunet", "resunet-tiny", "attention-unet", "unet"):
        defaults = {"resunet": (2, 2, 2, 2), "resunet-tiny": (2, 2, 2), "attention-unet": (2, 2, 2, 2)}
        strides = args.get("strides", defaults.get(name, (2, 2, 2, 2, 2)))
        return math.prod(int(s) for s in strides)
    if name == "segresnet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    return 16  # unetr: the ViT's 16^3 patches


def _check_known(architecture: Architecture) -> None:
    if architecture.name not in PRESETS:
        raise ModelError(f"unknown architecture {architecture.name!r}; known: {', '.join(sorted(PRESETS))}")


def build_network(
    architecture: Architecture, roi_size: tuple[int, int, int] | None = None
) -> torch.nn.Module:
    """Instantiate the card's network (random weights). `roi_size` sizes transformers (UNETR)."""
    _check_known(architecture)
    args = dict(architecture.args)
    if architecture.name in _NEEDS_ROI and roi_size is not None:
        args.setdefault("roi_size", tuple(roi_size))
    try:
        return PRESETS[architecture.name](OUT_CHANNELS + architecture.organ_classes, **args)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelError(
            f"architecture {architecture.name!r} with args {architecture.args}: {error}"
        ) from None


def fuse_batch_norms(network: torch.nn.Module) -> int:
    """Fold every inference-mode batch norm into the convolution before it; returns how many were folded.

    Only MONAI `Convolution` blocks whose norm comes first after the convolution (ordering "N..") are
    touched: there `norm(conv(x))` is one affine map per channel, which the convolution's weights and bias
    absorb. It saves one full pass over every activation (measured in docs/inference.md). The network must
    be in eval mode and stay there: folded weights cannot be trained.
    """
    if network.training:
        raise ValueError("batch norms fold only into a network in eval mode")
    folded = 0
    for block in network.modules():
        conv, adn = getattr(block, "conv", None), getattr(block, "adn", None)
        if not isinstance(conv, torch.nn.modules.conv._ConvNd) or not isinstance(adn, torch.nn.Sequential):
            continue
        first = next(iter(adn.named_children()), None)
        if first is None or not isinstance(first[1], torch.nn.modules.batchnorm._BatchNorm):
            continue
        name, norm = first
        if not norm.track_running_stats or norm.running_mean is None:
            continue
        block.conv = fuse_conv_bn_eval(
            conv, norm, transpose=isinstance(conv, torch.nn.modules.conv._ConvTransposeNd)
        )
        setattr(adn, name, torch.nn.Identity())
        folded += 1
    return folded


def input_divisor(architecture: Architecture) -> int:
    """Window sizes must be multiples of this (the network's total downsampling)."""
    _check_known(architecture)
    return _divisor_from_args(architecture.name, architecture.args)


def count_parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def weights_path(card: FoldSource, model_dir: Path, weights: str) -> Path:
    check_relative_path(weights, f"{model_dir}/model.json: fold weights")
    path = Path(model_dir) / weights
    check_link_inside(path, Path(model_dir), "model", ModelError)
    return path.resolve()


def save_weights(network: torch.nn.Module, path: Path) -> str:
    """Write a network's state dict as safetensors (atomically); returns its sha256."""
    return save_state(network.state_dict(), path)


def save_state(state: Mapping[str, torch.Tensor], path: Path) -> str:
    """Write a state dict as safetensors (atomically, contiguous CPU tensors); returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(partial))
    partial.replace(path)
    return file_sha256(path)


def load_fold(card: FoldSource, model_dir: Path, weights: str, sha256: str | None) -> torch.nn.Module:
    """Build the card's network and load one fold's weights into it, in eval mode."""
    path = weights_path(card, model_dir, weights)
    if (problem := fold_weights_problem(path, sha256)) is not None:
        if not path.is_file():
            problem = (
                "not found: this card's folds have no weights yet; train them (`python -m training`, see "
                "docs/training.md) and export them here, or run the shipped demonstration model in model/"
            )
        raise ModelError(f"{path}: fold weights {problem}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable safetensors file: {error}") from None
    network = build_network(card.architecture, card.ensemble.roi_size)
    # load_state_dict would cast integer weights (int8, say) to float without a word: a file of another
    # kind than the network's tensors is refused instead.
    expected = network.state_dict()
    for key, tensor in state.items():
        if key in expected and tensor.is_floating_point() != expected[key].is_floating_point():
            stored, wanted = (str(t.dtype).removeprefix("torch.") for t in (tensor, expected[key]))
            raise ModelError(
                f"{path}: tensor {key!r} is stored as {stored}; the network holds {wanted} there "
                "(not weights of this network)"
            )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(
            f"{path}: weights do not fit architecture {card.architecture.name!r}: {first}"
        ) from None
    return network.eval()
