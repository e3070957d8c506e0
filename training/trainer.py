"""Training one fold: the autoPET III entry's recipe (AdamW, cosine to zero, patch sampling and augmentation),
with validation by the autoPET metrics through the very sliding window that inference uses.

Exact resumption: all randomness of an epoch (sampling order, crops, augmentation, worker seeds) is derived
from (seed, epoch) when the epoch starts, so restoring model, optimizer, scheduler, gradient scaler and the
epoch counter continues a run as if it had never stopped.

Validation score used to pick the best checkpoint: the mean over validation cases of Dice for cases with
lesions and, for lesion-free cases, 1 when nothing is predicted and 0 otherwise, so that false positives on
negative cases count (the autoPET III entry averaged Dice over lesion cases only). Mean Dice, FPV and FNV are
logged too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from petseg.evaluation.metrics import case_scores
from petseg.inference.predict import ComputeDevice, FoldEnsemble, sliding_window_probability, training_device
from petseg.io import json_safe
from petseg.io.splits import TRACERS, tracer_of
from petseg.model.networks import build_network, input_divisor, save_state
from petseg.model.settings import Architecture, EnsembleSettings, PreprocessSettings
from petseg.synthetic.generate import manifest_arguments
from training.config import (
    BEFORE_THE_FIELD,
    TrainConfig,
    TrainingError,
    comparable_defaults,
    network_spacing,
)
from training.data import (
    CACHE_FOLDER,
    LESION_SAMPLING,
    ORGANS,
    BatchAugmentation,
    CaseRecord,
    CTMisalignment,
    PatchDataset,
    PreprocessedCache,
    augmentation_on,
    discover_dataset,
    load_folds,
    train_transforms,
)
from training.distributed import Distributed, init_distributed
from training.losses import OrganSupervised, build_loss

log = logging.getLogger("petseg.training")

CHECKPOINT = "checkpoint-last.pt"
PREVIOUS_CHECKPOINT = "checkpoint-previous.pt"
BEST_WEIGHTS = "best.safetensors"
RUN_CONFIG = "run.json"
LOG_CSV = "log.csv"
CSV_FIELDS = (
    "epoch",
    "train_loss",
    "learning_rate",
    "val_score",
    "val_dice",
    "val_fpv_ml",
    "val_fnv_ml",
    "seconds",
)


@dataclass
class TrainResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]


def _derived_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The epoch's seed; DDP ranks other than 0 get their own, so they do not repeat rank 0's augmentation."""
    key = f"{seed}:{epoch}" if rank == 0 else f"{seed}:{epoch}:{rank}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state that third-party code draws from
    torch.manual_seed(seed)


def git_commit(directory: Path | None = None) -> str | None:
    """The commit the code runs from, with "+modified" when tracked files differ from it; None outside git.

    A run trained from an edited tree must not claim the commit's exact code.
    """
    where = directory or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=where
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    if not commit:
        return None
    return f"{commit}+modified" if modified else commit


def dataset_fingerprint(records: list[CaseRecord]) -> str:
    """Case ids and file sizes: two runs on the same data have the same fingerprint."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.case_id.encode())
        for path in (record.ct, record.pet, record.label):
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    """Atomically replace the last checkpoint, keeping the one before it as a fallback."""
    path = run_dir / CHECKPOINT
    partial = run_dir / f".{CHECKPOINT}.partial"
    torch.save(state, partial)
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT)
    os.replace(partial, path)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest readable checkpoint (tensors and plain data only: never unpickles code)."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or corrupt file: fall back to the previous one
            problems.append(f"{name}: {' '.join(str(error).split())[:200]}")
            log.error("%s: unreadable checkpoint (%s); trying the previous one", path, problems[-1])
            continue
        if problems:
            log.warning("resuming from %s", path)
        return state
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise TrainingError(f"{run_dir}: no readable checkpoint to resume from{detail}")


# ------------------------------------------------------------------------------------------ validation


def validate(
    network: torch.nn.Module,
    records: list[CaseRecord],
    cache: PreprocessedCache,
    settings: EnsembleSettings,
    compute: ComputeDevice,
    dist: Distributed,
) -> dict[str, float]:
    """autoPET metrics of the validation cases: each rank scores every world_size-th case, then the sums are
    all-reduced, so every rank returns the same numbers (the autoPET III entry scored rank 0's shard only)."""
    network.eval()
    ensemble = FoldEnsemble([network])
    voxel_ml = float(np.prod(cache.settings.spacing_mm)) / 1000.0
    # dice sum, lesion cases, fnv sum, fpv sum over negatives, negatives, score sum, cases, lesion cases with
    # any voxel marked
    totals = [0.0] * 8
    for record in records[dist.rank :: dist.world_size]:
        arrays = cache.get(record)
        probability = sliding_window_probability(arrays["image"], ensemble, settings, compute)
        marked = probability > settings.threshold
        scores = case_scores(marked, arrays["label"][0] > 0, voxel_ml)
        if not scores.lesion_free and marked.any():
            totals[7] += 1
        if scores.lesion_free:
            totals[3] += scores.fpv_ml
            totals[4] += 1
            totals[5] += 1.0 if scores.fpv_ml == 0 else 0.0
        else:
            totals[0] += scores.dice
            totals[1] += 1
            totals[2] += scores.fnv_ml
            totals[5] += scores.dice
        totals[6] += 1
    dice, positives, fnv, fpv, negatives, score, cases, marked_cases = dist.sum(totals)
    network.train()
    return {
        "val_score": score / cases if cases else math.nan,
        "val_dice": dice / positives if positives else math.nan,
        "val_fnv_ml": fnv / positives if positives else math.nan,
        "val_fpv_ml": fpv / negatives if negatives else math.nan,
        # the network marks nothing in any case with lesions: collapsed (`collapse_warning`)
        "val_marks_nothing": float(positives > 0 and marked_cases == 0),
    }


def collapse_warning(loss: str, loss_options: dict[str, object]) -> str:
    """What to say when validation finds a network that marks nothing where there are lesions.

    A per-sample Dice with the background included (`dl`, `dfl`) scores a lesion-free patch near 1 only when
    the lesion probability summed over the whole patch falls to the order of the smoothing term (1e-5), so
    a network can lower its loss by pushing every lesion probability towards 0; long runs end there, every
    case empty. The autoPET validation score then rises, since every lesion-free validation case scores 1,
    so such an epoch is never taken as the best one.
    """
    remedy = (
        "train with --batch-dice, which pools the Dice over the batch so an empty output earns nothing"
        if loss in ("dl", "dfl") and not loss_options.get("batch")
        else "check the labels, the learning rate and the loss"
    )
    return (
        "the network marks no voxel in any validation case with lesions (collapsed to an empty output); "
        f"this epoch is not taken as the best one; {remedy}"
    )


# --------------------------------------------------------------------------------------------- the run


def _check_config(config: TrainConfig, architecture: Architecture) -> None:
    divisor = input_divisor(architecture)
    for name in ("patch_size", "window"):
        if getattr(config, name) % divisor:
            raise TrainingError(
                f"--{name.replace('_', '-')} {getattr(config, name)} must be a multiple of {divisor}"
            )
    if config.fold < 0:
        raise TrainingError(f"--fold must be 0 or more, got {config.fold}")
    if config.epochs < 1 or config.val_every < 1 or config.batch_size < 1:
        raise TrainingError("--epochs, --val-every and --batch-size must be at least 1")
    for name in ("lesion_probability", "hot_probability", "flip_probability"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise TrainingError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(config, name)}")
    if config.lesion_sampling not in LESION_SAMPLING:
        raise TrainingError(
            f"--lesion-sampling must be one of {', '.join(LESION_SAMPLING)}, got {config.lesion_sampling}"
        )
    ct_misalignment(config)
    if not (math.isfinite(config.organ_weight) and config.organ_weight >= 0):
        raise TrainingError(
            f"--organ-weight must be a finite number of at least 0, got {config.organ_weight}"
        )
    network_spacing(config.spacing_mm)
    if config.tracer is not None and config.tracer not in TRACERS:
        raise TrainingError(f"--tracer must be one of {', '.join(TRACERS)}, got {config.tracer}")


def ct_misalignment(config: TrainConfig) -> CTMisalignment:
    """The run's CT misalignment settings, checked (a one-line error naming the option)."""
    try:
        return CTMisalignment(
            config.misalign_probability, config.misalign_rotation_deg, config.misalign_shift_voxels
        )
    except ValueError as error:
        raise TrainingError(f"--{str(error).replace('_', '-')}") from None


def _compute_device(config: TrainConfig, dist: Distributed) -> ComputeDevice:
    """Under DDP each rank runs on its own GPU (LOCAL_RANK)."""
    return training_device(config.device, cuda_index=dist.local_rank if dist.enabled else None)


def _trains_on(config: TrainConfig, case_id: str) -> bool:
    return config.tracer is None or tracer_of(case_id) == config.tracer


def _start_run_dir(config: TrainConfig, dist: Distributed, extra: dict[str, Any]) -> None:
    """Write run.json for a new run; on --resume, refuse settings that differ from the stored run."""
    run_json = config.out / RUN_CONFIG
    if config.resume:
        if not run_json.exists():
            raise TrainingError(
                f"{config.out}: --resume given but there is no {RUN_CONFIG} (no run to resume)"
            )
        stored = json.loads(run_json.read_text())["config"]
        current = config.comparable()
        # A setting added since the run was started is taken as the run trained with it: its default, or
        # what runs did before the setting existed where that differs (`BEFORE_THE_FIELD`).
        stored = {**comparable_defaults(), **BEFORE_THE_FIELD, **stored}
        differ = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        if differ:
            raise TrainingError(
                f"{config.out}: settings differ from the run being resumed: {', '.join(differ)}"
            )
        return
    if (config.out / CHECKPOINT).exists():
        raise TrainingError(
            f"{config.out}: holds a run already; use --resume to continue it or another --out"
        )
    if dist.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
        run_json.write_text(json.dumps({"config": config.comparable(), **extra}, indent=2) + "\n")


class _RunLog:
    """CSV, TensorBoard and the curves PNG, written by the main rank only."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def rewrite(self, history: list[dict[str, float]]) -> None:
        """On resume: the CSV becomes exactly the checkpoint's history (a kill may have come between them)."""
        if not self.enabled:
            return
        partial = self.out / f".{LOG_CSV}.partial"
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(_csv_row(row) for row in history)
        os.replace(partial, self.out / LOG_CSV)

    def epoch(self, row: dict[str, float], history: list[dict[str, float]], plot: bool = True) -> None:
        if not self.enabled:
            return
        path = self.out / LOG_CSV
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(_csv_row(row))
        for key, value in row.items():
            if key != "epoch" and value == value:  # skip NaN
                self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()
        if plot:
            plot_curves(history, self.out / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training loss and validation scores against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [row["train_loss"] for row in history], color="tab:blue")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    validated = [row for row in history if row.get("val_score", math.nan) == row.get("val_score", math.nan)]
    for key, colour in (("val_score", "tab:green"), ("val_dice", "tab:orange")):
        right.plot(
            [r["epoch"] for r in validated],
            [r.get(key, math.nan) for r in validated],
            "o-",
            color=colour,
            label=key,
        )
    right.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    right.legend(loc="lower right")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)


def training_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    compute: ComputeDevice,
) -> float:
    """One optimisation step (autocast forward, float32 loss, scaled backward); returns the loss."""
    with torch.autocast(
        compute.device.type, dtype=compute.amp_dtype or torch.float32, enabled=compute.amp_dtype is not None
    ):
        logits = model(images)
    loss = loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def train(config: TrainConfig) -> TrainResult:
    """Train one fold; returns the best validation score and its epoch."""
    dist = init_distributed()
    try:
        return _train(config, dist)
    finally:
        dist.close()


def _train(config: TrainConfig, dist: Distributed) -> TrainResult:
    config.out = Path(config.out)
    architecture = Architecture(config.arch, dict(config.arch_args), organ_classes=config.organ_classes)
    _check_config(config, architecture)
    compute = _compute_device(config, dist)
    settings = PreprocessSettings(spacing_mm=network_spacing(config.spacing_mm))

    records = discover_dataset(config.data, config.organs)
    folds = load_folds(config.data, [r.case_id for r in records])
    if config.fold >= len(folds):
        raise TrainingError(f"--fold {config.fold}: the dataset has {len(folds)} folds (0..{len(folds) - 1})")
    by_id = {r.case_id: r for r in records}
    train_records = [by_id[c] for c in folds[config.fold]["train"] if _trains_on(config, c)]
    val_records = [by_id[c] for c in folds[config.fold]["val"] if _trains_on(config, c)]
    if config.tracer is not None and not (train_records and val_records):
        raise TrainingError(
            f"{config.data}: fold {config.fold} has {len(train_records)} training and {len(val_records)} "
            f"validation cases of tracer {config.tracer} (case ids fdg_... / psma_...)"
        )
    _start_run_dir(
        config,
        dist,
        {
            "dataset_fingerprint": dataset_fingerprint(records),
            "commit": git_commit(),
            "cases": len(records),
            "folds": len(folds),
            "device": compute.describe(),
            # the phantom generator's arguments where the data are petseg phantoms: export marks the card
            "phantoms": manifest_arguments(config.data),
        },
    )
    cache = PreprocessedCache(config.cache_dir or Path(config.data) / CACHE_FOLDER, settings)
    if dist.is_main:
        cache.prepare(train_records + val_records, progress=config.progress)
    dist.barrier()

    _seed_everything(config.seed)
    # Channels-last 3D convolutions: 30 % faster steps for resunet-tiny on a 2-core CPU (fp32), and the
    # layout autocast prefers on GPUs. Weights are written contiguous, so files do not change.
    network = build_network(architecture, (config.window,) * 3).to(
        compute.device, memory_format=torch.channels_last_3d
    )
    model: torch.nn.Module = network
    if dist.enabled:
        device_ids = [compute.device.index] if compute.device.type == "cuda" else None
        model = DistributedDataParallel(network, device_ids=device_ids)
    loss_fn = build_loss(config.loss, **config.loss_options)
    if config.organs is not None:
        loss_fn = OrganSupervised(loss_fn, config.organ_weight)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.0)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.amp_dtype == torch.float16)

    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    if config.resume:
        state = load_checkpoint(config.out)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        history = list(state["history"])
        if dist.is_main:
            log.info(
                "resuming %s at epoch %d (best %.4f at epoch %d)",
                config.out,
                start_epoch,
                best_score,
                best_epoch,
            )

    run_log = _RunLog(config.out, dist.is_main)
    if config.resume:
        run_log.rewrite(history)
    patch = (config.patch_size,) * 3
    augment_place = augmentation_on(config.augment_on, compute.device)
    misalignment = ct_misalignment(config)
    if config.augment:
        log.info(
            "augmentation %s", "on the training device" if augment_place == "device" else "in the loader"
        )
    explained: set[str] = set()  # reasons for a missing figure, said once
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            epoch_seed = _derived_seed(config.seed, epoch, dist.rank)
            _seed_everything(epoch_seed)
            on_device = config.augment and augment_place == "device"
            device_augmentation = (
                BatchAugmentation(
                    config.flip_probability,
                    seed=(epoch_seed + 1) % 2**31,
                    misalignment=misalignment,
                    organs=config.organs is not None,
                    device=compute.device,
                )
                if on_device
                else None
            )
            dataset = PatchDataset(
                train_records,
                cache,
                train_transforms(
                    patch,
                    config.lesion_probability,
                    config.augment and not on_device,
                    seed=epoch_seed % 2**31,
                    hot_probability=config.hot_probability,
                    hot_suv=config.hot_suv,
                    flip_probability=config.flip_probability,
                    lesion_sampling=config.lesion_sampling,
                    misalignment=misalignment,
                    organs=config.organs is not None,
                ),
                config.samples_per_epoch,
            )
            if dist.enabled:
                sampler = torch.utils.data.DistributedSampler(
                    dataset, dist.world_size, dist.rank, shuffle=True, seed=config.seed, drop_last=False
                )
                sampler.set_epoch(epoch)
            else:
                sampler = torch.utils.data.RandomSampler(
                    dataset, generator=torch.Generator().manual_seed(epoch_seed)
                )
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=config.batch_size,
                sampler=sampler,
                num_workers=config.num_workers,
                generator=torch.Generator().manual_seed(epoch_seed),
                pin_memory=compute.device.type == "cuda",
            )
            loss_sum, batches = 0.0, 0
            model.train()
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                leave=False,
                disable=not (config.progress and dist.is_main),
            )
            for batch in bar:
                images = batch["image"].to(
                    compute.device, non_blocking=True, memory_format=torch.channels_last_3d
                )
                labels = batch["label"].to(compute.device, non_blocking=True)
                organs = batch[ORGANS].to(compute.device, non_blocking=True) if ORGANS in batch else None
                if device_augmentation is not None:
                    images, labels, *rest = device_augmentation(images, labels, organs)
                    organs = rest[0] if rest else None
                    images = images.contiguous(memory_format=torch.channels_last_3d)
                if organs is not None:  # the targets of OrganSupervised: lesion label, then organ map
                    labels = torch.cat([labels, organs], dim=1)
                loss_sum += training_step(model, loss_fn, optimizer, scaler, images, labels, compute)
                batches += 1
                bar.set_postfix(loss=f"{loss_sum / batches:.4f}")
            learning_rate = scheduler.get_last_lr()[0]
            scheduler.step()
            total_loss, total_batches = dist.sum([loss_sum, float(batches)])
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "train_loss": total_loss / max(total_batches, 1.0),
                "learning_rate": learning_rate,
            }
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                row.update(validate(network, val_records, cache, config.ensemble, compute, dist))
                if dist.enabled:  # every rank reports: the all-reduced score must be the same on all of them
                    log.info("rank %d: epoch %d val_score %.6f", dist.rank, epoch + 1, row["val_score"])
                collapsed = bool(row.pop("val_marks_nothing"))
                if collapsed and dist.is_main:
                    log.warning("epoch %d: %s", epoch + 1, collapse_warning(config.loss, config.loss_options))
                if row["val_score"] > best_score and not collapsed:
                    best_score, best_epoch = row["val_score"], epoch + 1
                    if dist.is_main:
                        _save_best(network, config.out, best_epoch, row)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            if dist.is_main:
                save_checkpoint(
                    {
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "history": history,
                    },
                    config.out,
                )
                # The curves are redrawn when they gain a point (0.2 s each: a fifth of a GPU epoch).
                run_log.epoch(row, history, plot="val_score" in row or epoch + 1 == config.epochs)
                scores, why = describe_validation(row)
                if why and why not in explained:
                    explained.add(why)
                    log.info("%s", why)
                log.info(
                    "epoch %d/%d  loss %.4f  %s  %.1f s",
                    epoch + 1,
                    config.epochs,
                    row["train_loss"],
                    scores,
                    row["seconds"],
                )
            dist.barrier()
    finally:
        run_log.close()
    return TrainResult(
        best_score=best_score, best_epoch=best_epoch, epochs_run=config.epochs - start_epoch, history=history
    )


def _csv_row(row: dict[str, float]) -> dict[str, object]:
    """A log.csv row: a figure without a value (NaN) is an empty cell, as one not measured that epoch."""
    values = {k: row.get(k, "") for k in CSV_FIELDS}
    return {k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def _save_best(network: torch.nn.Module, out: Path, epoch: int, row: dict[str, float]) -> None:
    """The best weights as safetensors (what export ships) and what they scored (valid JSON: a figure
    without a value is null)."""
    save_state(network.state_dict(), out / BEST_WEIGHTS)
    (out / "best.json").write_text(json.dumps(json_safe({"epoch": epoch, **row}), indent=2) + "\n")


# Why a validation figure can have no value: said once per run, beside the "-" of the epoch lines.
_MISSING_WHY = {
    "val_fpv_ml": "val_fpv_ml has no value: this fold's validation cases include no lesion-free case, and "
    "FPV is scored on lesion-free cases only (autoPET)",
    "val_dice": "val_dice has no value: every validation case of this fold is lesion-free, and Dice is "
    "scored on cases with lesions only (autoPET)",
}


def describe_validation(row: dict[str, float]) -> tuple[str, str]:
    """The validation figures of an epoch line ("-" where one has no value), and why any is missing."""
    keys = [k for k in ("val_score", "val_dice", "val_fpv_ml") if k in row]
    shown = "  ".join(f"{k} {row[k]:.4f}" if math.isfinite(row[k]) else f"{k} -" for k in keys)
    why = "; ".join(_MISSING_WHY[k] for k in keys if not math.isfinite(row[k]) and k in _MISSING_WHY)
    return shown, why
