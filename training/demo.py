"""The demo ensemble: synthetic phantoms -> five resunet-tiny folds trained on the CPU -> a model folder.

It shows the whole training path working end to end without data or a GPU, and its card says plainly that
the weights were trained on synthetic phantoms (`provenance.synthetic`), which every entry point reports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from petseg.card import ModelCard
from training.export import export
from training.trainer import TrainConfig, train

log = logging.getLogger("petseg.training")


@dataclass(frozen=True)
class DemoRecipe:
    """Small enough for a 2-core CPU: tiny phantoms, small patches, a tiny network."""

    cases: int = 40
    seed: int = 100
    folds: int = 5
    epochs: int = 80
    loss: str = "dfl"
    learning_rate: float = 5e-3
    patch_size: int = 48
    batch_size: int = 4
    samples_per_epoch: int = 64
    val_every: int = 4
    window: int = 64
    overlap: float = 0.25
    workers: int = 2


def run_training_demo(
    work_dir: Path, model_dir: Path, recipe: DemoRecipe, progress: bool = True
) -> ModelCard:
    """Generate the phantoms, train every fold, export them; returns the written card."""
    from petseg.phantoms import generate

    started = time.perf_counter()
    data = Path(work_dir) / "phantoms"
    if not (data / "dataset.json").exists():
        log.info("generating %d tiny phantom cases in %s", recipe.cases, data)
        generate(
            data,
            cases=recipe.cases,
            seed=recipe.seed,
            tracer="mixed",
            size="tiny",
            layout="nnunet",
            progress=progress,
        )
    runs = []
    for fold in range(recipe.folds):
        run = Path(work_dir) / f"fold{fold}"
        config = TrainConfig(
            data=data,
            fold=fold,
            out=run,
            loss=recipe.loss,
            arch="resunet-tiny",
            epochs=recipe.epochs,
            learning_rate=recipe.learning_rate,
            batch_size=recipe.batch_size,
            patch_size=recipe.patch_size,
            samples_per_epoch=recipe.samples_per_epoch,
            val_every=recipe.val_every,
            window=recipe.window,
            overlap=recipe.overlap,
            sw_batch_size=4,
            seed=recipe.seed + fold,
            num_workers=recipe.workers,
            device="cpu",
            resume=(run / "checkpoint-last.pt").exists(),
            progress=progress,
        )
        result = train(config)
        log.info(
            "fold %d: best validation score %.4f at epoch %d", fold, result.best_score, result.best_epoch
        )
        runs.append(run)
    card = export(runs, model_dir, name="petseg-demo-resunet-tiny-phantoms", synthetic=True)
    minutes = (time.perf_counter() - started) / 60
    log.info("demo ensemble written to %s in %.1f min", model_dir, minutes)
    return card
