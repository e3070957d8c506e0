"""The demo ensembles: synthetic phantoms -> five resunet-tiny folds per tracer -> a model folder.

It shows the whole training path working end to end without data or a GPU (the default recipe fits a 2-core
CPU), and its card says plainly that the weights were trained on synthetic phantoms (`provenance.synthetic`),
which every entry point reports. On a GPU the same recipe takes more cases and epochs, and the folds can train
side by side (`parallel`): one fold of a tiny network keeps neither the GPU nor the loader cores busy.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petseg.io import write_json
from petseg.model.card import ModelCard, PreprocessSettings
from petseg.synthetic.generate import FDG_SHARE, usable_cores
from training.config import RECIPES
from training.export import export
from training.phantom_scores import EVALUATION_SEED, score_demo_model
from training.trainer import CHECKPOINT, TrainConfig, TrainingError, TrainResult, network_spacing, train

log = logging.getLogger("petseg.training")

DEMO_RECIPE = RECIPES / "demo.json"
SCORES_FILE = "phantom-scores.json"  # in the work folder: every evaluation case's figures


def _demo_settings(path: Path = DEMO_RECIPE) -> dict[str, Any]:
    recipe = json.loads(Path(path).read_text())
    if recipe.get("format") != "petseg-demo-recipe" or not isinstance(recipe.get("demo"), dict):
        raise TrainingError(f"{path}: not a demo recipe (format 'petseg-demo-recipe' with a 'demo' object)")
    return recipe["demo"]


_DEMO = _demo_settings()
MODEL_NAME: str = _DEMO["model_name"]
EVALUATION_CASES: int = _DEMO["evaluation_cases"]


def _from_recipe(name: str) -> Any:
    value = _DEMO[name]
    return field(default=tuple(value) if isinstance(value, list) else value)


@dataclass(frozen=True)
class DemoRecipe:
    """Small enough for a 2-core CPU: tiny phantoms, small patches, a tiny network.

    The values are the data file `training/recipes/demo.json`; docs/experiments/demo-recipe.md says how
    each was chosen.
    """

    cases: int = _from_recipe("cases")
    seed: int = _from_recipe("seed")
    size: str = _from_recipe("size")  # the phantom size: "full" (real autoPET grids); "tiny" for unit tests
    # A folder of organ label maps: the first cases are built around the maps of the split's "train" side;
    # the "held-out" side is scored after training. None: analytic phantoms only.
    organs: Path | None = None
    fdg_share: float = _from_recipe("fdg_share")  # FDG patients among the phantoms; the rest PSMA
    # One five-fold ensemble per tracer, each trained on that tracer's cases only; inference runs the one the
    # card's tracer classifier names. Empty: one ensemble for every case.
    tracers: tuple[str, ...] = _from_recipe("tracers")
    channels: tuple[int, ...] | None = _from_recipe("channels")  # None: resunet-tiny's own (8, 16, 32, 64)
    spacing_mm: tuple[float, float, float] = _from_recipe("spacing_mm")  # the network grid
    hot_probability: float = _from_recipe("hot_probability")
    lesion_sampling: str = _from_recipe("lesion_sampling")
    flip_probability: float = _from_recipe("flip_probability")
    misalign_probability: float = _from_recipe("misalign_probability")  # the CT moved against the PET
    misalign_rotation_deg: float = _from_recipe("misalign_rotation_deg")
    misalign_shift_voxels: int = _from_recipe("misalign_shift_voxels")
    # An organ head trained on the phantoms' own organ maps (organsTr), its loss weighted so; 0: none.
    organ_weight: float = _from_recipe("organ_weight")
    batch_dice: bool = _from_recipe("batch_dice")  # the dfl loss's Dice pooled over the batch
    checkpoint: str = _from_recipe("checkpoint")
    folds: int = _from_recipe("folds")
    epochs: int = _from_recipe("epochs")
    loss: str = _from_recipe("loss")
    learning_rate: float = _from_recipe("learning_rate")
    patch_size: int = _from_recipe("patch_size")
    batch_size: int = _from_recipe("batch_size")
    samples_per_epoch: int = _from_recipe("samples_per_epoch")
    val_every: int = _from_recipe("val_every")
    window: int = _from_recipe("window")
    overlap: float = _from_recipe("overlap")
    workers: int = _from_recipe("workers")
    device: str = _from_recipe("device")
    parallel: int = _from_recipe("parallel")  # folds trained at once, each in its own process
    # Each predicted lesion is grown to its 40 %-of-SUVmax contour within 6 mm (the networks mark the cores
    # of the blurred phantom lesions); after export a component filter removes predicted lesions it finds
    # less likely than `component_filter` (None: no filter).
    threshold: float = _from_recipe("threshold")
    grow_to_suvmax_fraction: float | None = _from_recipe("grow_to_suvmax_fraction")
    grow_within_mm: float = _from_recipe("grow_within_mm")
    component_filter: float | None = _from_recipe("component_filter")
    # SUV floors by tracer or "all" (None: off); read-only, like every recipe value
    suv_floor: dict[str, float] | None = _from_recipe("suv_floor")  # noqa: RUF009
    # Then the threshold, growth and filter cut-off are chosen (`training.tune`) on selection phantoms of
    # their own seed (fresh analytic ones with lesions, and lesion-free ones), keeping every lesion-free one
    # at or below this many ml of false positives; None: the values above are kept.
    tune_lesion_free_fpv_ml: float | None = _from_recipe("tune_lesion_free_fpv_ml")
    selection_seed: int = _from_recipe("selection_seed")
    selection_cases: int = _from_recipe("selection_cases")
    selection_negatives: int = _from_recipe("selection_negatives")
    evaluation_cases: int = EVALUATION_CASES
    evaluation_negatives: int = _from_recipe("evaluation_negatives")  # lesion-free phantoms for the FPV


def run_training_demo(
    work_dir: Path, model_dir: Path, recipe: DemoRecipe, progress: bool = True
) -> ModelCard:
    """Generate the phantoms, train every fold, export them; returns the written card."""
    from petseg.synthetic import generate

    if recipe.parallel < 1:
        raise TrainingError(f"parallel must be 1 or more, got {recipe.parallel}")
    spacing = network_spacing(recipe.spacing_mm)  # refused before any phantom is generated
    if not recipe.organ_weight >= 0:
        raise TrainingError(f"the organ head's weight must be 0 (none) or more, got {recipe.organ_weight}")
    _check_postprocessing(recipe)  # refused before the hours of training, not at the export after them
    started = time.perf_counter()
    data = Path(work_dir) / "phantoms"
    if (data / "dataset.json").exists():
        _check_phantoms(data, recipe)
    elif data.exists():
        raise TrainingError(
            f"{data}: holds no dataset.json, so not a finished phantom set; "
            "delete it or use another --work folder"
        )
    else:
        # Generated under a scratch name and renamed when complete: an interrupted run starts the
        # generation again rather than finding a folder of half the cases.
        partial = data.with_name(data.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        log.info("generating %d %s phantom cases in %s", recipe.cases, recipe.size, data)
        generate(partial, **_generator_arguments(recipe), progress=progress, workers=usable_cores())
        partial.rename(data)
    organs = _organ_maps(data) if recipe.organ_weight > 0 else None
    _prepare_shared_state(data, spacing, organs)
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
            lesion_sampling=recipe.lesion_sampling,
            flip_probability=recipe.flip_probability,
            misalign_probability=recipe.misalign_probability,
            misalign_rotation_deg=recipe.misalign_rotation_deg,
            misalign_shift_voxels=recipe.misalign_shift_voxels,
            organs=organs,
            **({"organ_weight": recipe.organ_weight} if organs is not None else {}),
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
        name=MODEL_NAME,
        synthetic=True,
        threshold=recipe.threshold,
        grow_to_suvmax_fraction=recipe.grow_to_suvmax_fraction,
        grow_within_mm=recipe.grow_within_mm,
        checkpoint=recipe.checkpoint,
        suv_floor=recipe.suv_floor,
    )
    if recipe.component_filter is not None:
        card = _fit_component_filter(model_dir, data, recipe.component_filter, recipe.device, progress)
    if recipe.tune_lesion_free_fpv_ml is not None:
        card = _tune_postprocessing(model_dir, Path(work_dir), recipe, progress)
    minutes = (time.perf_counter() - started) / 60
    log.info("demo ensemble written to %s in %.1f min", model_dir, minutes)
    scores = score_demo_model(
        model_dir,
        cases=recipe.evaluation_cases,
        negatives=recipe.evaluation_negatives,
        organs_dir=recipe.organs,
        device=recipe.device,
    )
    write_json(
        {"seed": EVALUATION_SEED, "training_minutes": round(minutes, 1), **scores.to_json()},
        Path(work_dir) / SCORES_FILE,
    )
    summary = scores.summary()
    log.info(
        "on phantoms of seed %d: mean Dice %s on %d fresh, %s on %d around held-out organ maps; "
        "false-positive volume %s ml a lesion-free case (%d cases, at most %s ml); scores in %s",
        EVALUATION_SEED,
        summary["fresh_mean_dice"],
        len(scores.fresh),
        summary["held_out_mean_dice"],
        len(scores.held_out),
        summary["negatives_mean_fpv_ml"],
        len(scores.negatives),
        summary["negatives_max_fpv_ml"],
        Path(work_dir) / SCORES_FILE,
    )
    return card


def _check_postprocessing(recipe: DemoRecipe) -> None:
    """The card settings the export and the filter fit will write, checked as the card reader checks them."""
    from petseg.errors import ModelError
    from petseg.model.card import parse_ensemble
    from training.components import check_minimum

    if recipe.component_filter is not None:
        check_minimum(recipe.component_filter)
    if recipe.tune_lesion_free_fpv_ml is not None:
        if not recipe.tune_lesion_free_fpv_ml >= 0:
            raise TrainingError(
                f"the tuning's FPV bound must be 0 ml or more, got {recipe.tune_lesion_free_fpv_ml}"
            )
        if recipe.selection_seed in (recipe.seed, EVALUATION_SEED):
            raise TrainingError(
                f"selection seed {recipe.selection_seed} is the training or the evaluation seed: pick another"
            )
        if recipe.selection_cases < 1 or recipe.selection_negatives < 0:
            raise TrainingError(
                "the selection set needs at least one case with lesions and no negative count of lesion-free "
                f"ones, got {recipe.selection_cases} and {recipe.selection_negatives}"
            )
    try:
        parse_ensemble({"threshold": recipe.threshold, "suv_floor": recipe.suv_floor}, "demo")
    except ModelError as error:
        raise TrainingError(str(error)) from None


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


def _tune_postprocessing(model_dir: Path, work_dir: Path, recipe: DemoRecipe, progress: bool) -> ModelCard:
    """The recipe's selection phantoms (written once into the work folder, under a name that says which),
    then the postprocessing chosen on them written into the card; where no setting keeps the lesion-free
    phantoms within the bound, the card as it was and a warning that says so."""
    from petseg.model.card import load_card
    from training.evaluation_set import write_evaluation_set
    from training.tune import run_tuning

    selection = work_dir / (
        f"selection-seed{recipe.selection_seed}-{recipe.selection_cases}-{recipe.selection_negatives}"
    )
    if not selection.is_dir():
        log.info(
            "writing %d selection phantoms to %s",
            recipe.selection_cases + recipe.selection_negatives,
            selection,
        )
        write_evaluation_set(
            selection,
            recipe.selection_cases,
            recipe.selection_negatives,
            seed=recipe.selection_seed,
            size=recipe.size,
            progress=False,
            workers=usable_cores(),
        )
    try:
        chosen, current = run_tuning(
            model_dir,
            selection,
            device=recipe.device,
            output=work_dir / "tuning",
            write=True,
            progress=progress,
            lesion_free_fpv_ml=recipe.tune_lesion_free_fpv_ml,
        )
    except TrainingError as error:
        log.warning("the demo model keeps the recipe's postprocessing: %s", error)
        return load_card(model_dir)
    log.info(
        "postprocessing chosen on the selection phantoms: %s (mean Dice %.3f, lesion-free FPV at most "
        "%.2f ml; the recipe's: %.3f, %.2f ml)",
        chosen.setting.describe(),
        chosen.mean_dice,
        chosen.largest_lesion_free_fpv_ml,
        current.mean_dice,
        current.largest_lesion_free_fpv_ml,
    )
    return load_card(model_dir)


def _generator_arguments(recipe: DemoRecipe) -> dict[str, Any]:
    """What `generate` makes the recipe's phantoms with, as its manifest records them."""
    return {
        "cases": recipe.cases,
        "seed": recipe.seed,
        "tracer": "mixed",
        "fdg_share": recipe.fdg_share,
        "size": recipe.size,
        "layout": "nnunet",
        "organs_dir": None if recipe.organs is None else str(recipe.organs),
        "organ_maps": "train" if recipe.organs is not None else "all",
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
    made.setdefault("organs_dir", None)
    made.setdefault("organ_maps", "all")
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


def _organ_maps(data: Path) -> Path:
    """The phantoms' own organ maps, which every phantom set written since organ maps existed has."""
    from petseg.io.nnunet_layout import ORGANS_FOLDER

    folder = data / ORGANS_FOLDER
    if not folder.is_dir():
        raise TrainingError(
            f"{folder}: not found; these phantoms predate organ maps, so the organ head has nothing to "
            "learn from: use another --work folder (or --organ-weight 0)"
        )
    return folder


def _prepare_shared_state(
    data: Path, spacing_mm: tuple[float, float, float], organs: Path | None = None
) -> None:
    """Write the folds file and fill the preprocessing cache once, before any fold starts.

    Folds trained side by side would otherwise each preprocess every case and race to write the splits.
    """
    from training.data import CACHE_FOLDER, PreprocessedCache, discover_dataset, load_folds

    records = discover_dataset(data, organs)
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
