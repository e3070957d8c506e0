"""Data loading against training: can the patch loader keep the model busy?

Measures, in one run: (1) patches per second delivered by the training DataLoader (cached phantom cases,
lesion-centred crops, full augmentation, `--workers` processes) and (2) patches per second the model
consumes in the trainer's own step (`training.trainer.training_step`) on random batches of the same shape.
A ratio above 1 means loading is not the bottleneck. Without `--data`, tiny phantom cases are generated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from petseg.inference.compute_choices import DEVICES
from petseg.inference.predict import training_device
from petseg.model.networks import build_network
from petseg.model.settings import Architecture, PreprocessSettings
from training.data import (
    BatchAugmentation,
    PatchDataset,
    PreprocessedCache,
    discover_dataset,
    train_transforms,
)
from training.losses import build_loss
from training.trainer import training_step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, default=None, help="nnU-Net dataset (default: generated phantoms)"
    )
    parser.add_argument("--cases", type=int, default=8, help="phantom cases to generate without --data")
    parser.add_argument("--arch", default="resunet", help="network of the training steps")
    parser.add_argument("--loss", default="gdfl")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12, help="loader batches timed (after 2 warm-up)")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (after 1 warm-up)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--augment-on",
        choices=("loader", "device"),
        default="loader",
        help="augment in the loader's workers, or on the training device inside the timed step",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def loader_rate(
    data: Path, patch: int, batch: int, workers: int, batches: int, augment: bool = True
) -> float:
    records = discover_dataset(data)
    cache = PreprocessedCache(data / ".petseg-cache", PreprocessSettings())
    cache.prepare(records, progress=False)
    transforms = train_transforms((patch,) * 3, augment=augment, seed=0)
    dataset = PatchDataset(records, cache, transforms, batch * (batches + 2))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=True)
    iterator = iter(loader)
    for _ in range(2):  # warm-up: worker start-up and first cache reads
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def model_rate(
    arch: str, loss_name: str, patch: int, batch: int, steps: int, device: str, augment: bool = False
) -> tuple[float, str]:
    """Patches per second of the trainer's step; with `augment`, each step first augments its batch on the
    device (`BatchAugmentation`), as a run with `augment_on device` does."""
    compute = training_device(device)
    network = build_network(Architecture(arch), (patch,) * 3).to(compute.device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-4)
    loss_fn = build_loss(loss_name)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.amp_dtype == torch.float16)
    images = torch.rand(batch, 2, patch, patch, patch, device=compute.device)
    labels = (torch.rand(batch, 1, patch, patch, patch, device=compute.device) > 0.97).float()
    augmentation = BatchAugmentation(seed=0, device=compute.device) if augment else None
    times = []
    for step in range(steps + 1):
        if compute.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if augmentation is not None:
            inputs, targets = augmentation(images, labels)
            training_step(network, loss_fn, optimizer, scaler, inputs, targets, compute)
        else:
            training_step(network, loss_fn, optimizer, scaler, images, labels, compute)
        if compute.device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times), compute.describe()


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            from petseg.synthetic import generate

            data = Path(scratch) / "phantoms"
            generate(
                data, cases=args.cases, seed=7, tracer="mixed", size="tiny", layout="nnunet", progress=False
            )
        on_device = args.augment_on == "device"
        loading = loader_rate(data, args.patch, args.batch, args.workers, args.batches, augment=not on_device)
    training, device = model_rate(
        args.arch, args.loss, args.patch, args.batch, args.steps, args.device, augment=on_device
    )
    print(
        f"patch {args.patch}^3, batch {args.batch}, {args.workers} loader workers, {args.arch} + "
        f"{args.loss}, augmentation in the {'training step on the device' if on_device else 'loader'}"
    )
    print(f"  data loader    {loading:8.2f} patches/s")
    print(f"  training steps {training:8.2f} patches/s  ({training / args.batch:.3f} steps/s on {device})")
    verdict = "loading keeps up" if loading >= training else "LOADER-BOUND"
    print(f"  loader / model {loading / training:8.2f}  ({verdict})")
    if args.json is not None:
        figures = {
            "patch": args.patch,
            "batch": args.batch,
            "workers": args.workers,
            "arch": args.arch,
            "loss": args.loss,
            "device": device,
            "augment_on": args.augment_on,
            "loader_patches_per_s": loading,
            "model_patches_per_s": training,
            "cpu_ms_per_patch_per_worker": 1000.0 * max(args.workers, 1) / loading,
            "loader_over_model": loading / training,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
