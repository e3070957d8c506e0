"""Forward+backward time of the training losses against MONAI's DiceFocalLoss on one training-sized batch.

The paper warns that L1DFL costs more than standard losses (binning, densities, weights); this measures by
how much. One batch of logits (B, 2, S, S, S) with sparse random lesion labels; every loss runs forward and
backward on it, in alternating order, for several repetitions after a warm-up; the table gives the median,
fastest and slowest time of each, and the headline is median(l1dfl) / median(MONAI DiceFocalLoss).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from petseg.inference.compute_choices import DEVICES
from training.losses import LOSSES, build_loss

REFERENCE = "monai-dfl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=128, help="cubic patch edge S (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="batch size B (default 2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per loss (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per loss (default 2)")
    parser.add_argument("--lesion", type=float, default=0.03, help="lesion voxel fraction (default 0.03)")
    parser.add_argument("--eps", type=float, default=0.1, help="l1dfl bin width (default 0.1)")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: the CPU, then CUDA as well when available (default auto)",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=LOSSES,
        default=list(LOSSES),
        help="project losses to time beside the reference (default: all)",
    )
    parser.add_argument("--max-ratio", type=float, default=1.5, help="target for the ratio (default 1.5)")
    parser.add_argument("--seed", type=int, default=0)


def _reference() -> nn.Module:
    from monai.losses import DiceFocalLoss

    return DiceFocalLoss(to_onehot_y=True, softmax=True)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(loss: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> float:
    logits.grad = None
    _synchronise(logits.device)
    start = time.perf_counter()
    loss(logits, labels).backward()
    _synchronise(logits.device)
    return time.perf_counter() - start


def measure(
    losses: dict[str, nn.Module], logits: torch.Tensor, labels: torch.Tensor, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per forward+backward; the order alternates so that no loss always runs on a warm cache."""
    names = list(losses)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(warmup + repeats):
        for name in names if repetition % 2 == 0 else reversed(names):
            seconds = _step(losses[name], logits, labels)
            if repetition >= warmup:
                times[name].append(seconds)
    return times


def _batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, 1, args.size, args.size, args.size)
    labels = (torch.rand(shape, generator=generator) < args.lesion).long()
    logits = torch.randn((args.batch, 2, *shape[2:]), generator=generator)
    return logits.to(device).requires_grad_(True), labels.to(device)


def _report(device: torch.device, times: dict[str, list[float]], max_ratio: float, write: Callable) -> bool:
    reference = statistics.median(times[REFERENCE])
    write(f"{'loss':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'x monai-dfl':>12}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        write(
            f"{name:<10} {1e3 * median:>10.1f} {1e3 * min(seconds):>8.1f} {1e3 * max(seconds):>8.1f} "
            f"{median / reference:>12.2f}"
        )
    if "l1dfl" not in times:
        return True
    ratio = statistics.median(times["l1dfl"]) / reference
    verdict = "ok" if ratio <= max_ratio else "ABOVE TARGET"
    target = f"target <= {max_ratio:g}"
    write(f"ratio l1dfl / MONAI DiceFocalLoss on {device.type}: {ratio:.2f} ({target}): {verdict}")
    return ratio <= max_ratio


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA was requested but is not available")
        return 2
    devices = [torch.device(args.device)] if args.device != "auto" else [torch.device("cpu")]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    import monai

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, monai {monai.__version__}, "
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, {platform.machine()}, "
        f"1-min load average {os.getloadavg()[0]:.1f} at the start"
    )
    print(
        f"logits {args.batch} x 2 x {args.size}^3 float32, {args.lesion:.0%} lesion voxels, "
        f"l1dfl eps {args.eps:g}, {args.warmup} warm-up + {args.repeats} timed forward+backward per loss"
    )
    passed = True
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"\n{device.type}: {name}")
        losses = {REFERENCE: _reference()}
        for loss in args.losses:
            losses[loss] = build_loss(loss, eps=args.eps) if loss == "l1dfl" else build_loss(loss)
        logits, labels = _batch(args, device)
        losses = {key: value.to(device) for key, value in losses.items()}
        times = measure(losses, logits, labels, args.repeats, args.warmup)
        passed &= _report(device, times, args.max_ratio, print)
    return 0 if passed else 1
