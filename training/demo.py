"""The demo ensembles: synthetic phantoms -> five resunet-tiny folds per tracer -> a model folder.

It shows the whole training path working end to end without data or a GPU (the default recipe fits a 2-core
CPU), and its card says plainly that the weights were trained on synthetic phantoms (`provenance.synthetic`),
which every entry point reports. On a GPU the same recipe takes more cases and epochs, and the folds can train
side by side (`parallel`): one fold of a tiny network keeps neither the GPU nor the loader cores busy.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petseg.model.card import ModelCard, PreprocessSettings
from petseg.synthetic.generate import FDG_SHARE
from training.export import export
from training.trainer import CHECKPOINT, TrainConfig, TrainingError, TrainResult, network_spacing, train

log = logging.getLogger("petseg.training")

# Fresh phantoms for judging a demo ensemble: a seed no demo dataset uses, alternating FDG and PSMA, every
# case with lesions (Dice is undefined without). The per-case Dice spreads widely (SD about 0.27), so the
# mean of 12 cases was uncertain by about 0.08: the ensemble of e84cd26 scored 0.649 on the first 12 of
# these cases and 0.591 on all 24.
EVALUATION_SEED = 20261122
EVALUATION_CASES = 24


@dataclass(frozen=True)
class DemoRecipe:
    """Small enough for a 2-core CPU: tiny phantoms, small patches, a tiny network."""

    cases: int = 80
    seed: int = 100
    fdg_share: float = 0.5  # FDG patients among the phantoms; the rest PSMA
    # One five-fold ensemble per tracer, each trained on that tracer's cases only; inference runs the one the
    # card's tracer classifier names. A hot blob in the neck is a salivary gland in PSMA and may be a node in
    # FDG: one network for both had to guess the tracer from its patch. Fold 0 trained on PSMA phantoms only
    # scored a mean Dice of 0.660 on the 12 PSMA selection phantoms, against 0.495 for fold 0 of one network
    # for both tracers (README, "Training"). Empty: one ensemble for every case.
    tracers: tuple[str, ...] = ("fdg", "psma")
    # Options this recipe leaves off, measured on 24 fresh phantoms of seeds 555 and 777 (mean Dice of the
    # five-fold ensemble at the settings below): channels (12, 24, 48, 96) with the last checkpoints 0.665,
    # the same plus hot_probability 0.2 0.640; hot_probability 0.3 + batch_dice + flip_probability 0.5
    # with the last checkpoints 0.687, but 0.546 against 0.554 on seeds 888 and 999; this recipe 0.662
    # (README, "Training").
    channels: tuple[int, ...] | None = None  # resunet-tiny's own (8, 16, 32, 64)
    # The network grid. A 4 mm grid with 64^3 patches (nearly a whole tiny body in one patch) nearly ended
    # the false positives on paired organs but lost the lesions of under 15 voxels: three folds, last
    # checkpoints, 0.584 on the selection phantoms at the best growth setting (README, "Training").
    spacing_mm: tuple[float, float, float] = PreprocessSettings.spacing_mm
    hot_probability: float = 0.0
    flip_probability: float = 0.0
    batch_dice: bool = False  # the dfl loss's Dice pooled over the batch (`--batch-dice` of train)
    checkpoint: str = "last"
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
    device: str = "cpu"
    parallel: int = 1  # folds trained at once, each in its own process with `workers` loaders
    # The network marks the core of the blurred phantom lesions: each lesion is grown to its 40 %-of-SUVmax
    # contour within 6 mm. Without a filter, threshold 0.7 scored best (0.662 on 24 fresh phantoms of
    # seeds 555 and 777, against 0.621 at 0.5). After export, a component filter fitted on the folds'
    # out-of-fold predictions removes predicted lesions it finds less likely than `component_filter`
    # (`training.components`; None: no filter). With it, threshold 0.5 keeps the lesions the networks are
    # unsure of: on the 48 fresh phantoms of seeds 555, 777, 888 and 999 the shipped folds scored 0.711
    # (0.652 at 0.5 and 0.640 at 0.7 without the filter; README, "Training").
    threshold: float = 0.5
    grow_to_suvmax_fraction: float | None = 0.4
    grow_within_mm: float = 6.0
    component_filter: float | None = 0.2
    evaluation_cases: int = EVALUATION_CASES


def run_training_demo(
    work_dir: Path, model_dir: Path, recipe: DemoRecipe, progress: bool = True
) -> ModelCard:
    """Generate the phantoms, train every fold, export them; returns the written card."""
    from petseg.synthetic import generate

    if recipe.parallel < 1:
        raise TrainingError(f"parallel must be 1 or more, got {recipe.parallel}")
    spacing = network_spacing(recipe.spacing_mm)  # refused before any phantom is generated
    started = time.perf_counter()
    data = Path(work_dir) / "phantoms"
    if (data / "dataset.json").exists():
        _check_phantoms(data, recipe)
    else:
        log.info("generating %d tiny phantom cases in %s", recipe.cases, data)
        generate(data, **_generator_arguments(recipe), progress=progress)
    _prepare_shared_state(data, spacing)
    runs = [
        (tracer, fold, Path(work_dir) / (f"{tracer}-fold{fold}" if tracer else f"fold{fold}"))
        for tracer in (recipe.tracers or (None,))
        for fold in range(recipe.folds)
    ]
    run_dirs = [run_dir for _, _, run_dir in runs]
    configs = [
        TrainConfig(
            data=data,
            fold=fold,
            out=run_dir,
            tracer=tracer,
            loss=recipe.loss,
            loss_options={"batch": True} if recipe.batch_dice else {},
            arch="resunet-tiny",
            arch_args={} if recipe.channels is None else {"channels": list(recipe.channels)},
            spacing_mm=spacing,
            epochs=recipe.epochs,
            learning_rate=recipe.learning_rate,
            batch_size=recipe.batch_size,
            patch_size=recipe.patch_size,
            samples_per_epoch=recipe.samples_per_epoch,
            hot_probability=recipe.hot_probability,
            flip_probability=recipe.flip_probability,
            val_every=recipe.val_every,
            window=recipe.window,
            overlap=recipe.overlap,
            sw_batch_size=4,
            seed=recipe.seed + fold,
            num_workers=recipe.workers,
            device=recipe.device,
            resume=(run_dir / CHECKPOINT).exists(),
            progress=progress and recipe.parallel <= 1,
        )
        for tracer, fold, run_dir in runs
    ]
    results = _train_folds(configs, recipe.parallel)
    for config, result in zip(configs, results, strict=True):
        log.info(
            "%sfold %d: best validation score %.4f at epoch %d",
            f"{config.tracer} " if config.tracer else "",
            config.fold,
            result.best_score,
            result.best_epoch,
        )
    card = export(
        run_dirs,
        model_dir,
        name="petseg-demo-resunet-tiny-phantoms",
        synthetic=True,
        threshold=recipe.threshold,
        grow_to_suvmax_fraction=recipe.grow_to_suvmax_fraction,
        grow_within_mm=recipe.grow_within_mm,
        checkpoint=recipe.checkpoint,
    )
    if recipe.component_filter is not None:
        card = _fit_component_filter(model_dir, data, recipe.component_filter, recipe.device, progress)
    minutes = (time.perf_counter() - started) / 60
    log.info("demo ensemble written to %s in %.1f min", model_dir, minutes)
    scores = dice_on_fresh_phantoms(model_dir, cases=recipe.evaluation_cases, device=recipe.device)
    log.info(
        "mean Dice on %d fresh phantoms (seed %d): %.3f",
        len(scores),
        EVALUATION_SEED,
        sum(scores) / len(scores),
    )
    return card


def _fit_component_filter(
    model_dir: Path, data: Path, minimum_probability: float, device: str, progress: bool
) -> ModelCard:
    """The recipe's component filter, or, where the folds' predictions cannot teach one (a short run that
    marks nothing, or nothing but lesions), the card without it and a warning that says why."""
    from petseg.model.card import load_card
    from training.components import fit_components

    try:
        return fit_components(model_dir, data, minimum_probability, device=device, progress=progress)
    except TrainingError as error:
        log.warning("the demo model has no component filter: %s", error)
        return load_card(model_dir)


def _generator_arguments(recipe: DemoRecipe) -> dict[str, Any]:
    """What `generate` makes the recipe's phantoms with, as its manifest records them."""
    return {
        "cases": recipe.cases,
        "seed": recipe.seed,
        "tracer": "mixed",
        "fdg_share": recipe.fdg_share,
        "size": "tiny",
        "layout": "nnunet",
    }


def _check_phantoms(data: Path, recipe: DemoRecipe) -> None:
    """Phantoms left in a work folder by an earlier demo are reused only if this recipe would make them.

    Otherwise a changed `--cases` or `--fdg-share` would silently train on the old dataset, and the card
    would record the old one. A manifest without `fdg_share` predates the option: it used the default.
    """
    from petseg.synthetic.generate import MANIFEST, manifest_arguments

    made = manifest_arguments(data)
    if made is None:
        raise TrainingError(
            f"{data / MANIFEST}: cannot read the manifest of the phantoms in {data}; "
            "use another --work folder"
        )
    made.setdefault("fdg_share", FDG_SHARE)
    differ = [
        f"{key} {made.get(key)!r} (recipe: {value!r})"
        for key, value in _generator_arguments(recipe).items()
        if made.get(key) != value
    ]
    if differ:
        raise TrainingError(
            f"{data}: these phantoms were generated with other settings ({', '.join(differ)}); "
            "use another --work folder or delete it"
        )


def _prepare_shared_state(data: Path, spacing_mm: tuple[float, float, float]) -> None:
    """Write the folds file and fill the preprocessing cache once, before any fold starts.

    Folds trained side by side would otherwise each preprocess every case and race to write the splits.
    """
    from training.data import CACHE_FOLDER, PreprocessedCache, discover_dataset, load_folds

    records = discover_dataset(data)
    load_folds(data, [r.case_id for r in records])
    settings = PreprocessSettings(spacing_mm=spacing_mm)
    PreprocessedCache(data / CACHE_FOLDER, settings).prepare(records, progress=False)


def _train_folds(configs: list[TrainConfig], parallel: int) -> list[TrainResult]:
    """Train the folds one after another, or `parallel` at a time in fresh (spawned) processes.

    Spawned, not forked: a fork would copy an initialised CUDA context. The pool's processes are not daemons,
    so each fold's DataLoader can still start its own workers.
    """
    if parallel <= 1:
        return [train(config) for config in configs]
    log.info("training %d folds, %d at a time", len(configs), parallel)
    with fold_pool(parallel) as pool:
        futures = [pool.submit(train, config) for config in configs]
        return [future.result() for future in futures]


def fold_pool(parallel: int) -> ProcessPoolExecutor:
    """Spawned fold processes whose own DataLoaders start workers as a plain training run would.

    A spawned process inherits "spawn" as its start method, and a DataLoader started that way re-imports
    torch and MONAI in every worker, every epoch: 20-28 s an epoch on a GPU machine, against 1.5-2 s forked.
    """
    return ProcessPoolExecutor(
        max_workers=parallel,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_use_start_method,
        initargs=(multiprocessing.get_start_method(),),
    )


def _use_start_method(method: str) -> None:
    multiprocessing.set_start_method(method, force=True)


def dice_on_fresh_phantoms(
    model_dir: Path, seed: int = EVALUATION_SEED, cases: int = EVALUATION_CASES, device: str = "cpu"
) -> list[float]:
    """Per-case Dice of the model in `model_dir` on phantoms generated now, scored on the PET grid.

    Whole cases go through `petseg.inference.pipeline.segment`, the container's own path. The phantoms have
    the size the model was trained on (its card's `provenance.phantoms`), and `seed` must not be the training
    seed.
    """
    import tempfile

    import SimpleITK as sitk

    from petseg.evaluation.metrics import dice
    from petseg.inference.pipeline import segment
    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer
    from petseg.io import CaseFiles, write_image
    from petseg.model.card import load_card
    from petseg.synthetic import make_case

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
