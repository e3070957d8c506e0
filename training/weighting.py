"""How a loss weights voxels by difficulty (the L1DFL paper, section 2.5 and figure 7).

For a trained ensemble, each case goes through the inference preprocessing and one sliding-window pass
that keeps the folds' mean logits. The loss is evaluated on the whole case (one "batch" of one volume) and
differentiated with respect to those logits: the per-voxel gradient norm over the two channels is the weight
the loss gives that voxel. Its difficulty is |p - t|, the distance of the lesion probability from the label.
The Pearson correlation of the two, over every voxel of every case, is the paper's difficulty-weight
correlation (its values: L1DFL 0.34, DFL 0.96, DL 0.10); the mean gradient norm per difficulty bin is the
curve worth looking at. Losses average over voxels, so each case's gradients are multiplied by its voxel
count before pooling: cases of different sizes then weigh alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from petseg.inference.predict import select_device
from petseg.io.splits import tracer_of
from petseg.model.card import load_card
from petseg.model.networks import load_fold
from petseg.model.tracer_choice import choose_tracer

log = logging.getLogger("petseg.training")

DIFFICULTY_BINS = 20


class MeanLogits(nn.Module):
    """The folds' mean logits (both channels): what the loss sees, unlike the ensemble's probability."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return torch.stack([network(window).float() for network in self.networks]).mean(dim=0)


def difficulty_and_weight(
    logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module
) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel |p - t| and |d loss / d logits| (x voxel count) for logits (1, 2, *spatial)."""
    leaf = logits.detach().float().clone().requires_grad_(True)
    loss = loss_fn(leaf, labels)
    (gradient,) = torch.autograd.grad(loss, leaf)
    voxels = math.prod(leaf.shape[2:])
    weight = gradient[0].norm(dim=0) * voxels
    probability = torch.softmax(leaf.detach(), dim=1)[0, 1]
    difficulty = (probability - labels[0, 0].float()).abs()
    return difficulty.numpy().ravel(), weight.numpy().ravel()


@dataclass
class WeightingStats:
    """Running sums for the Pearson correlation and the binned curve (no voxel arrays kept)."""

    n: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(5))  # x, y, xx, yy, xy
    bin_counts: np.ndarray = field(default_factory=lambda: np.zeros(DIFFICULTY_BINS, np.int64))
    bin_weight_sums: np.ndarray = field(default_factory=lambda: np.zeros(DIFFICULTY_BINS))

    def add(self, difficulty: np.ndarray, weight: np.ndarray) -> None:
        x, y = difficulty.astype(np.float64), weight.astype(np.float64)
        self.n += x.size
        self.sums += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
        bins = np.clip((x * DIFFICULTY_BINS).astype(np.int64), 0, DIFFICULTY_BINS - 1)
        self.bin_counts += np.bincount(bins, minlength=DIFFICULTY_BINS)
        self.bin_weight_sums += np.bincount(bins, weights=y, minlength=DIFFICULTY_BINS)

    @property
    def pearson(self) -> float:
        if self.n < 2:
            return math.nan
        sx, sy, sxx, syy, sxy = self.sums
        covariance = sxy - sx * sy / self.n
        spread = math.sqrt(max(sxx - sx * sx / self.n, 0.0) * max(syy - sy * sy / self.n, 0.0))
        return covariance / spread if spread > 0 else math.nan

    def curve(self) -> list[dict[str, Any]]:
        edges = np.linspace(0.0, 1.0, DIFFICULTY_BINS + 1)
        return [
            {
                "difficulty": [float(edges[k]), float(edges[k + 1])],
                "voxels": int(self.bin_counts[k]),
                "mean_weight": float(self.bin_weight_sums[k] / self.bin_counts[k])
                if self.bin_counts[k]
                else None,
            }
            for k in range(DIFFICULTY_BINS)
        ]


def analyse_weighting(
    model_dir: Path,
    data: Path,
    loss: str,
    out_dir: Path,
    cases: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the analysis over the dataset's cases; write weighting.json and weighting.png into `out_dir`."""
    from tqdm import tqdm

    from petseg.evaluation.plots import weighting_png, write_png
    from petseg.io import json_safe, write_json
    from training.data import _read_and_preprocess, discover_dataset
    from training.losses import build_loss

    card = load_card(Path(model_dir))
    compute = select_device(device, precision="fp32")  # the logits as trained, unrounded
    networks = [load_fold(card, Path(model_dir), fold.weights, fold.sha256) for fold in card.folds]
    # A card split by tracer: each case through its tracer's folds (named by its id, else the classifier).
    ensembles = {
        tracer: MeanLogits([n for n, f in zip(networks, card.folds, strict=True) if f.tracer == tracer])
        .to(compute.device)
        .eval()
        for tracer in (card.tracers or (None,))
    }
    loss_fn = build_loss(loss)
    records = discover_dataset(Path(data))[:cases]
    stats = WeightingStats()
    per_case = []
    settings = card.ensemble
    for record in tqdm(records, desc=f"weighting {loss}", unit="case", disable=not progress):
        image, label, _ = _read_and_preprocess(record, card.preprocessing)
        ensemble = ensembles[choose_tracer(card, image, given=tracer_of(record.case_id)).tracer]
        with torch.inference_mode():
            logits = sliding_window_inference(
                torch.from_numpy(image)[None].to(compute.device),
                roi_size=settings.roi_size,
                sw_batch_size=settings.sw_batch_size,
                predictor=ensemble,
                overlap=settings.overlap,
                mode=settings.blend_mode,
            ).cpu()
        labels = torch.from_numpy(np.asarray(label)).long()[None]
        difficulty, weight = difficulty_and_weight(logits.clone(), labels, loss_fn)
        stats.add(difficulty, weight)
        case_stats = WeightingStats()
        case_stats.add(difficulty, weight)
        per_case.append({"case": record.case_id, "voxels": case_stats.n, "pearson": case_stats.pearson})
    result = {
        "model": card.name,
        "loss": loss,
        "cases": len(records),
        "voxels": stats.n,
        "pearson": stats.pearson,
        "curve": stats.curve(),
        "per_case": per_case,
    }
    out_dir = Path(out_dir)
    write_png(weighting_png(result), out_dir / "weighting.png")
    write_json(json_safe(result), out_dir / "weighting.json")
    return result
