"""Fold runs -> a model folder: safetensors weights plus the card that inference reads.

The card is filled in from the runs themselves (architecture, window, loss, epochs, validation score,
dataset fingerprint, commit), so it cannot claim anything the runs did not do. Runs whose settings disagree
(another architecture, loss, patch or window, dataset) cannot form one ensemble and are refused.

Each fold contributes its best checkpoint (highest validation score) or its last one (the weights at the
end of a finished run). With a handful of validation cases the best of many noisy validations is partly
luck: a demo fold picked epoch 40 of 100 on a spike of its 8-case score and then scored 0.46 on fresh
phantoms, where its final weights scored 0.59. nnU-Net likewise ships its final checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from petseg.errors import ModelError, PetsegError
from petseg.io import json_safe
from petseg.io.splits import tracer_of
from petseg.model.card import (
    Architecture,
    EnsembleSettings,
    Fold,
    ModelCard,
    PreprocessSettings,
    parse_ensemble,
    save_card,
)
from petseg.model.fold_files import file_sha256
from petseg.model.input_range import InputRange
from petseg.model.networks import build_network, save_state
from petseg.model.tracer import CLASSES as TRACERS
from petseg.model.tracer import TracerClassifier, fit_tracer_classifier, uptake_features
from petseg.synthetic.generate import manifest_arguments
from training.components import check_minimum, fit_components
from training.config import TrainConfig
from training.data import CACHE_FOLDER, PreprocessedCache, discover_dataset
from training.trainer import (
    BEST_WEIGHTS,
    RUN_CONFIG,
    TrainingError,
    load_checkpoint,
)

log = logging.getLogger("petseg.training")

CHECKPOINTS = ("best", "last")
_FOLD_FILE = re.compile(r"(?:(?:fdg|psma)-)?fold\d+\.safetensors")

# Settings that must be equal in every fold of an ensemble.
SHARED = (
    "arch",
    "arch_args",
    "loss",
    "loss_options",
    "patch_size",
    "window",
    "overlap",
    "epochs",
    "learning_rate",
    "augment",
    "lesion_probability",
    "lesion_sampling",
    "hot_probability",
    "hot_suv",
    "flip_probability",
    "organ_classes",
    "organ_weight",
    "misalign_probability",
    "misalign_rotation_deg",
    "misalign_shift_voxels",
    "spacing_mm",
)


def _read_run(run_dir: Path, checkpoint: str) -> dict[str, Any]:
    """The run's settings plus `chosen` (epoch and validation score of the exported weights); for the
    last checkpoint also `state`, the final weights."""
    run_json, best = run_dir / RUN_CONFIG, run_dir / BEST_WEIGHTS
    if not run_json.is_file():
        raise TrainingError(f"{run_dir}: not a training run (no {RUN_CONFIG})")
    run = json.loads(run_json.read_text())
    run["dir"] = run_dir
    run["settings"] = TrainConfig.from_json(run["config"])  # typed; older runs: missing keys at defaults
    if checkpoint == "best":
        if not best.is_file():
            raise TrainingError(f"{run_dir}: no {BEST_WEIGHTS} yet (the run has not validated once)")
        run["chosen"] = json.loads((run_dir / "best.json").read_text())
        if run["chosen"].get("val_score") is None:  # null: no validation case had a score
            run["chosen"]["val_score"] = math.nan
        return run
    state = load_checkpoint(run_dir)
    epochs, done = run["settings"].epochs, int(state["epoch"]) + 1
    if done != epochs:
        raise TrainingError(
            f"{run_dir}: stopped after epoch {done} of {epochs}; finish it with --resume, or export its best"
        )
    final = state["history"][-1]  # the last epoch always validates
    run["chosen"] = {"epoch": done, "val_score": float(final["val_score"])}
    run["state"] = state["model"]
    return run


def export(
    run_dirs: list[Path],
    out_dir: Path,
    name: str | None = None,
    synthetic: bool = False,
    threshold: float = EnsembleSettings.threshold,
    grow_to_suvmax_fraction: float | None = None,
    grow_within_mm: float = EnsembleSettings.grow_within_mm,
    checkpoint: str = "best",
    component_filter: float | None = None,
    suv_floor: dict[str, float] | None = None,
) -> ModelCard:
    """Write each run's `checkpoint` ("best" or "last") weights to `out_dir/fold<K>.safetensors` and
    `out_dir/model.json`.

    `threshold` and `grow_to_suvmax_fraction` (growth of predicted lesions to their uptake contour,
    `petseg.inference.postprocess.grow_to_uptake_contour`) and `suv_floor` (SUV under which predicted voxels
    are removed, by tracer or "all") are inference settings the runs cannot know. With
    `component_filter`, the exported folds then fit a component filter at that minimum probability
    (`training.components`) on their runs' dataset.
    """
    if component_filter is not None:
        check_minimum(component_filter)
    settings = {
        "threshold": threshold,
        "grow_to_suvmax_fraction": grow_to_suvmax_fraction,
        "grow_within_mm": grow_within_mm,
        "suv_floor": suv_floor,
    }
    try:  # the card's own checks, before anything is written: a card export writes must load
        inference = parse_ensemble(settings, "export")
    except ModelError as error:
        raise TrainingError(str(error)) from None
    if checkpoint not in CHECKPOINTS:
        raise TrainingError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    runs = [_read_run(Path(d), checkpoint) for d in run_dirs]
    if not runs:
        raise TrainingError("no runs given")
    first = runs[0]

    def setting(run: dict[str, Any], key: str) -> Any:
        return getattr(run["settings"], key)

    for run in runs[1:]:
        differ = [k for k in SHARED if setting(run, k) != setting(first, k)]
        if run["dataset_fingerprint"] != first["dataset_fingerprint"]:
            differ.append("dataset")
        if differ:
            raise TrainingError(
                f"{run['dir']}: settings differ from {first['dir']}: {', '.join(differ)}; not one ensemble"
            )
    tracers = _tracers_of(runs)
    folds = sorted((run["settings"].tracer or "", run["settings"].fold) for run in runs)
    if len(set(folds)) != len(folds):
        shown = [f"{t} {k}".strip() for t, k in folds]
        raise TrainingError(f"the runs repeat a fold: {shown}")

    config: TrainConfig = first["settings"]
    architecture, settings, ensemble = card_settings(config, inference)
    classifier = _fit_tracer_classifier(config.data, settings) if tracers else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    runs = sorted(runs, key=lambda r: (r["settings"].tracer or "", r["settings"].fold))
    for run in runs:
        fold, tracer = run["settings"].fold, run["settings"].tracer
        target = out_dir / f"{_fold_name(run)}.safetensors"
        if checkpoint == "best":
            shutil.copyfile(run["dir"] / BEST_WEIGHTS, target)
            sha256 = file_sha256(target)
        else:
            sha256 = save_state(run["state"], target)
        entries.append(Fold(fold=fold, weights=target.name, sha256=sha256, tracer=tracer))
    scores = [float(run["chosen"]["val_score"]) for run in runs]
    phantoms = next((run["phantoms"] for run in runs if run.get("phantoms")), None)
    phantoms = phantoms or manifest_arguments(config.data)
    if phantoms is not None and not synthetic:
        log.warning(
            "the runs trained on petseg phantoms (their run.json says so): the card is marked synthetic"
        )
        synthetic = True
    _warn_about_folds(runs, scores)
    provenance: dict[str, Any] = {
        "trained": True,
        "synthetic": synthetic,
        "data": "synthetic phantoms (petseg phantoms)" if synthetic else str(config.data),
    }
    if phantoms is not None:
        provenance["phantoms"] = card_phantoms(phantoms)  # so an evaluation can prove it uses new cases
    card = ModelCard(
        name=name or f"petseg-{config.arch}-{config.loss}",
        architecture=architecture,
        preprocessing=settings,
        folds=tuple(entries),
        ensemble=ensemble,
        provenance={
            **provenance,
            "dataset_fingerprint": first["dataset_fingerprint"],
            "cases": first.get("cases"),
            "loss": config.loss,
            "loss_options": config.loss_options,
            "epochs": config.epochs,
            "patch_size": config.patch_size,
            "sampling": {
                "lesion_probability": config.lesion_probability,
                "lesion_sampling": config.lesion_sampling,
                "hot_probability": config.hot_probability,
                "hot_suv": config.hot_suv,
                "flip_probability": config.flip_probability,
                "organ_classes": config.organ_classes,
                "organ_weight": config.organ_weight,
                "misalign_probability": config.misalign_probability,
                "misalign_rotation_deg": config.misalign_rotation_deg,
                "misalign_shift_voxels": config.misalign_shift_voxels,
                "augment": config.augment,
            },
            # null where a fold had no validation score (NaN): a card holds finite numbers only
            "validation_score": {_fold_name(r): json_safe(s) for r, s in zip(runs, scores, strict=True)},
            "validation_score_mean": _finite_mean(scores),
            "checkpoint": checkpoint,
            "checkpoint_epochs": {_fold_name(r): r["chosen"]["epoch"] for r in runs},
            "commit": first.get("commit"),
            "trained_on": sorted({str(run.get("device")) for run in runs if run.get("device")}),
        },
        tracer_classifier=classifier,
        training=shared_training_settings(config),
        input_range=_input_range(config.data),
    )
    save_card(card, out_dir)
    _remove_stale_weights(out_dir, {entry.weights for entry in entries})
    if component_filter is None:
        return card
    try:
        return fit_components(out_dir, config.data, component_filter, progress=False)
    except TrainingError as error:
        raise TrainingError(f"{error} ({out_dir} was written without a component filter)") from None


def card_phantoms(arguments: dict[str, Any]) -> dict[str, Any]:
    """The phantoms' generator arguments as a card records them: the organ maps by their folder's name, since
    the card travels and where the maps lay on the training machine means nothing elsewhere."""
    organs_dir = arguments.get("organs_dir")
    return {**arguments, **({"organs_dir": Path(organs_dir).name} if organs_dir else {})}


def card_settings(
    config: TrainConfig, inference: EnsembleSettings | None = None
) -> tuple[Architecture, PreprocessSettings, EnsembleSettings]:
    """The network, preprocessing and ensemble a card of runs trained with `config` describes: the
    sliding window as validation used it, and the inference settings (`threshold`, growth) of `inference`.
    The network is built once, so a card that describes none is refused before anything is written.
    """
    ensemble = replace(
        inference or EnsembleSettings(),
        roi_size=(config.window,) * 3,
        overlap=config.overlap,
        # Test-time mirrors only where training mirrored: left-right patches, or none.
        mirror_axes=((0,),) if config.flip_probability > 0 else (),
    )
    architecture = Architecture(config.arch, dict(config.arch_args), organ_classes=config.organ_classes)
    build_network(architecture, ensemble.roi_size)
    return architecture, PreprocessSettings(spacing_mm=config.spacing_mm), ensemble


def recipe_card(config: TrainConfig, folds: int = 5, name: str | None = None) -> ModelCard:
    """The card a recipe's `folds` runs will be exported with, before there are weights: a model folder
    to fill (`trained` false, each fold's `fold<K>.safetensors` still to come)."""
    architecture, settings, ensemble = card_settings(config)
    return ModelCard(
        name=name or f"petseg-{config.arch}-{config.loss}",
        architecture=architecture,
        preprocessing=settings,
        folds=tuple(Fold(fold=k, weights=f"fold{k}.safetensors", sha256=None) for k in range(folds)),
        ensemble=ensemble,
        provenance={
            "trained": False,
            "note": "fold weights not trained yet: train them with `python -m training` and export them "
            "into this folder (docs/training.md)",
            "loss": config.loss,
            "epochs": config.epochs,
            "commit": None,
        },
        training=shared_training_settings(config),
    )


# A fold validated below this score is barely better than an empty mask: worth a word before it ships.
LOW_VALIDATION_SCORE = 0.05


def _warn_about_folds(runs: list[dict[str, Any]], scores: list[float]) -> None:
    """Say where the ensemble lacks folds of its cross-validation, or holds a fold that hardly learned."""
    groups: dict[str | None, list[int]] = {}
    for run in runs:
        groups.setdefault(run["settings"].tracer, []).append(run["settings"].fold)
    expected = max(int(run.get("folds") or 0) for run in runs) or 5  # older runs: the recipe's five
    for tracer, folds in groups.items():
        missing = sorted(set(range(expected)) - set(folds))
        if missing:
            whose = f"{tracer} " if tracer else ""
            log.warning(
                "the %sensemble has %d of the %d folds of its cross-validation (missing: %s): its folds "
                "never validated on those cases' held-out share, and it averages fewer networks",
                whose,
                len(folds),
                expected,
                ", ".join(map(str, missing)),
            )
    for run, score in zip(runs, scores, strict=True):
        if math.isfinite(score) and score < LOW_VALIDATION_SCORE:
            log.warning(
                "%s: validation score %.4g, barely better than an empty mask; check the run (log.csv, "
                "curves.png) before shipping it",
                run["dir"],
                score,
            )


def _remove_stale_weights(out_dir: Path, kept: set[str]) -> None:
    """Fold weights an earlier export left that this card does not list (a split by tracer renames them)."""
    for path in sorted(out_dir.glob("*.safetensors")):
        if path.name not in kept and _FOLD_FILE.fullmatch(path.name):
            path.unlink()
            log.info("removed %s: an earlier export's weights, not in the new card", path)


def _fold_name(run: dict[str, Any]) -> str:
    tracer = run["settings"].tracer
    return f"{tracer}-fold{run['config']['fold']}" if tracer else f"fold{run['config']['fold']}"


def _tracers_of(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The tracers the runs were split by: none, or every tracer (a case of any tracer needs an ensemble)."""
    given = {run["settings"].tracer for run in runs}
    if given == {None}:
        return ()
    if None in given:
        raise TrainingError(
            "some runs trained on one tracer (--tracer) and some on every case; not one ensemble"
        )
    if set(TRACERS) - given:
        raise TrainingError(
            f"the runs trained on {', '.join(sorted(given))} only: a model split by tracer needs folds of "
            f"every tracer ({', '.join(TRACERS)})"
        )
    return TRACERS


def _fit_tracer_classifier(data: Path, settings: PreprocessSettings) -> TracerClassifier:
    """The classifier that names each case's tracer at inference, fitted on every training case whose id
    names its tracer, from the same preprocessed volumes the folds trained on."""
    records = [r for r in discover_dataset(data) if tracer_of(r.case_id) is not None]
    cache = PreprocessedCache(data / CACHE_FOLDER, settings)
    features = np.stack([uptake_features(cache.get(r)["image"], settings) for r in records])
    try:
        classifier = fit_tracer_classifier(features, [str(tracer_of(r.case_id)) for r in records])
    except ValueError as error:
        raise TrainingError(f"{data}: {error}") from None
    log.info(
        "tracer classifier: %d cases, leave-one-out accuracy %.3f",
        classifier.training_cases,
        classifier.cross_validated_accuracy,
    )
    return classifier


def _input_range(data: Path) -> InputRange | None:
    """The PET grids of the training cases, from their headers (no voxels read): the card's record of what
    the folds know, against which inference checks each case. None where the data are no longer there."""
    import SimpleITK as sitk

    try:
        records = discover_dataset(Path(data))
    except PetsegError as error:
        log.warning("input range not recorded in the card: %s", error)
        return None
    spacings, sizes = [], []
    reader = sitk.ImageFileReader()
    for record in records:
        reader.SetFileName(str(record.pet))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise TrainingError(f"{record.pet}: cannot read the PET header: {error}") from None
        spacings.append(reader.GetSpacing())
        sizes.append(reader.GetSize())
    return InputRange.of(spacings, sizes)


def _finite_mean(values: list[float]) -> float | None:
    """The mean of the finite values; None where there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


# Settings of a run that differ from fold to fold (or name its own folders): not the ensemble's recipe.
PER_FOLD = ("data", "out", "fold", "tracer", "seed")


def shared_training_settings(config: TrainConfig) -> dict[str, Any]:
    """What every fold of the ensemble was trained with: the card's `training` section."""
    return {k: v for k, v in config.comparable().items() if k not in PER_FOLD}
