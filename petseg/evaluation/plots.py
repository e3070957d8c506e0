"""Figures of the evaluation: calibration histograms, metric box plots, the stratified curves.

Each function takes the plain numbers that `summary.json` and the CSVs hold and returns PNG bytes, so the
same figure goes to a file or into the self-contained report. matplotlib (the Agg backend, no display)
comes with the training and evaluation requirements, not with the inference container.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petseg.errors import PetsegError
from petseg.io import write_atomically

GROUP_COLOURS = {"correct": "tab:green", "incorrect": "tab:red"}


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PetsegError(
            "figures need matplotlib: pip install -r requirements-train.txt (it is not in the container)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure: Any, tight: bool = True) -> bytes:
    """A figure as PNG bytes at 100 dpi (laid out tightly unless its axes are placed by hand); closed."""
    plt = pyplot()
    buffer = io.BytesIO()
    if tight:
        figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def rgb_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 picture as PNG bytes."""
    buffer = io.BytesIO()
    pyplot().imsave(buffer, rgb, format="png")
    return buffer.getvalue()


def write_png(png: bytes, path: Path) -> Path:
    """Write PNG bytes atomically."""
    return write_atomically(path, lambda partial: partial.write_bytes(png))


def calibration_png(calibration: Mapping[str, Any]) -> bytes:
    """Entropy and confidence histograms of correct and incorrect voxels (each group normalised)."""
    plt = pyplot()
    histograms = calibration["histograms"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, quantity in zip(axes, ("entropy", "confidence"), strict=True):
        edges = np.asarray(histograms[f"{quantity}_edges"])
        for group, colour in GROUP_COLOURS.items():
            counts = np.asarray(histograms[f"{quantity}_{group}"], dtype=np.float64)
            if counts.sum() == 0:
                continue
            mean = calibration[f"{quantity}_{group}"]
            axis.stairs(
                counts / counts.sum(),
                edges,
                color=colour,
                label=f"{group}: {int(counts.sum()):,} voxels, mean {mean:.3f}",
            )
        axis.set(yscale="log", xlabel=f"{quantity}" + (" (nats)" if quantity == "entropy" else ""))
        axis.set_ylabel("fraction of the group's voxels")
        axis.legend(fontsize=8)
    gap = calibration.get("calibration_gap")
    gap_text = "-" if gap is None or (isinstance(gap, float) and math.isnan(gap)) else f"{gap:.4f}"
    figure.suptitle(f"voxel calibration (calibration gap {gap_text})")
    return figure_png(figure)


def box_plots_png(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], group_by: str | None) -> bytes:
    """One box plot per metric over the cases, one box per value of `group_by` (or all cases in one)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.6), squeeze=False)
    groups = sorted({str(r.get(group_by, "")) for r in rows}) if group_by else ["all cases"]
    for axis, metric in zip(axes[0], metrics, strict=True):
        data, labels = [], []
        for group in groups:
            members = [r for r in rows if group_by is None or str(r.get(group_by, "")) == group]
            values = [float(r[metric]) for r in members if _finite(r.get(metric))]
            data.append(values)
            labels.append(f"{group}\n(n={len(values)})")
        axis.boxplot(data, tick_labels=labels, showmeans=True)
        axis.set_title(metric)
        axis.tick_params(axis="x", labelsize=7)
    return figure_png(figure)


def stratified_png(stratified: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Median Dice over the TMTV and MTV thresholds per scenario, and per Dmax quartile (None: no data)."""
    if not any("tmtv_thresholds" in entry for entry in stratified.values()):
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("tmtv_thresholds", "tmtv_ml_at_least", "TMTV at least (ml)", "patient level: median Dice"),
        ("mtv_thresholds", "mtv_ml_at_least", "lesion MTV at least (ml)", "lesion level: median Dice"),
    )
    for axis, (key, x_key, x_label, title) in zip(axes[:2], panels, strict=True):
        for scenario, entry in stratified.items():
            points = [p for p in entry.get(key, []) if p["median_dice"] is not None]
            if points:
                axis.plot(
                    [p[x_key] for p in points], [p["median_dice"] for p in points], "o-", label=scenario
                )
        axis.set(xlabel=x_label, ylabel="median Dice", title=title, ylim=(0, 1))
        axis.legend(fontsize=8)
    quartiles = stratified.get("multiple", {}).get("dmax_quartiles", [])
    labels = [f"{q['dmax_cm'][0]:.1f}-{q['dmax_cm'][1]:.1f}\n(n={q['cases']})" for q in quartiles]
    values = [q["median_dice"] if q["median_dice"] is not None else 0.0 for q in quartiles]
    axes[2].bar(range(len(values)), values, tick_label=labels, color="tab:purple")
    axes[2].set(
        xlabel="Dmax quartile (cm)", ylabel="median Dice", title="multiple lesions: spread", ylim=(0, 1)
    )
    return figure_png(figure)


def weighting_png(result: Mapping[str, Any]) -> bytes:
    """Mean gradient norm per difficulty bin (left) and how many voxels each bin holds (right)."""
    plt = pyplot()
    curve = result["curve"]
    centres = [sum(b["difficulty"]) / 2 for b in curve]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    shown = [
        (c, b["mean_weight"]) for c, b in zip(centres, curve, strict=True) if b["mean_weight"] is not None
    ]
    left.plot([c for c, _ in shown], [w for _, w in shown], "o-", color="tab:blue")
    left.set(xlabel="difficulty |p - t|", ylabel="mean |d loss / d logits| x voxels", xlim=(0, 1))
    pearson = result["pearson"]
    pearson_text = "-" if pearson is None or pearson != pearson else f"{pearson:.3f}"
    left.set_title(f"{result['loss']}: Pearson r = {pearson_text}")
    right.bar(centres, [b["voxels"] for b in curve], width=1.0 / len(curve), color="tab:gray")
    right.set(xlabel="difficulty |p - t|", ylabel="voxels", yscale="log", xlim=(0, 1))
    right.set_title(f"{result['voxels']:,} voxels, {result['cases']} case(s)")
    return figure_png(figure)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
