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
from training.trainer import TrainConfig, TrainingError, train

log = logging.getLogger("petseg.training")

# Fresh phantoms for judging a demo ensemble: a seed no demo dataset uses, alternating FDG and PSMA, every
# case with lesions (Dice is undefined without).
EVALUATION_SEED = 20261122
EVALUATION_CASES = 12


@dataclass(frozen=True)
class DemoRecipe:
    """Small enough for a 2-core CPU: tiny phantoms, small patches, a tiny network."""

    cases: int = 40
    seed: int = 100
    folds: int = 5
    epochs: int = 100
    loss: str = "dfl"
    learning_rate: float = 5e-3
    patch_size: int = 48
    batch_size: int = 4
    samples_per_epoch: int = 64
    val_every: int = 4
    window: int = 64
    overlap: float = 0.25
    workers: int = 2
    evaluation_cases: int = EVALUATION_CASES


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
    scores = dice_on_fresh_phantoms(model_dir, cases=recipe.evaluation_cases)
    log.info(
        "mean Dice on %d fresh phantoms (seed %d): %.3f",
        len(scores),
        EVALUATION_SEED,
        sum(scores) / len(scores),
    )
    return card


def dice_on_fresh_phantoms(
    model_dir: Path, seed: int = EVALUATION_SEED, cases: int = EVALUATION_CASES, device: str = "cpu"
) -> list[float]:
    """Per-case Dice of the model in `model_dir` on phantoms generated now, scored on the PET grid.

    Whole cases go through `petseg.pipeline.segment`, the container's own path. The phantoms have the size
    the model was trained on (its card's `provenance.phantoms`), and `seed` must not be the training seed.
    """
    import tempfile

    import SimpleITK as sitk

    from petseg.card import load_card
    from petseg.console import StageTimer
    from petseg.io import CaseFiles, write_image
    from petseg.metrics import dice
    from petseg.phantoms import make_case
    from petseg.pipeline import segment
    from petseg.predict import Predictor

    card = load_card(Path(model_dir))
    trained_on = card.provenance.get("phantoms") or {}
    if trained_on.get("seed") == seed:
        raise TrainingError(f"seed {seed} generated the training phantoms of {model_dir}: pick another")
    predictor = Predictor.load(Path(model_dir), device=device)
    scores = []
    with tempfile.TemporaryDirectory(prefix="petseg-fresh-") as scratch:
        for index in range(cases):
            phantom = make_case(
                seed=seed,
                index=index,
                tracer="fdg" if index % 2 == 0 else "psma",
                size=trained_on.get("size", "tiny"),
                lesion_free=False,
            )
            files = CaseFiles(
                ct=write_image(phantom.ct, Path(scratch) / f"{index}_ct.mha"),
                pet=write_image(phantom.pet, Path(scratch) / f"{index}_pet.mha"),
            )
            mask = sitk.GetArrayFromImage(segment(files, predictor, StageTimer(quiet=True))).astype(bool)
            scores.append(dice(mask, sitk.GetArrayFromImage(phantom.label).astype(bool)))
    return scores
