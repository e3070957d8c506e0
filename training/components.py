"""Fit a model folder's component filter (`petseg.model.components`) from out-of-fold predictions.

Each fold predicts the validation cases of its own split, which it never trained on, so the filter learns
the mistakes the networks make on unseen cases: every connected component of the probability above the
card's threshold becomes one example, a lesion when it overlaps the label. The predictions run the card's
own sliding window on the same preprocessed volumes the folds trained on, and the fitted filter is written
into the model's card.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from petseg.errors import ModelError
from petseg.inference.predict import FoldEnsemble, Predictor, select_device
from petseg.io.splits import read_splits, tracer_of
from petseg.model.card import ModelCard, load_card, parse_ensemble, save_card
from petseg.model.components import (
    ALL_TRACERS,
    ComponentFilter,
    check_minimum_probability,
    component_features,
    fit_component_filter,
)
from petseg.model.networks import load_fold
from training.data import CACHE_FOLDER, SPLITS_FILE, PreprocessedCache, discover_dataset
from training.trainer import TrainingError, dataset_fingerprint, git_commit

log = logging.getLogger("petseg.training")

DEFAULT_MINIMUM_PROBABILITY = 0.2


def out_of_fold_components(
    card: ModelCard,
    model_dir: Path,
    data: Path,
    threshold: float,
    device: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(features, is_lesion) per tracer key ("all" for unsplit cards) of every predicted component of
    every fold's validation cases, at `threshold`; `card` is the card of the model in `model_dir`."""
    records = discover_dataset(data)
    trained_on, found = card.provenance.get("dataset_fingerprint"), dataset_fingerprint(records)
    if trained_on is not None and trained_on != found:
        raise TrainingError(
            f"{data}: not the dataset the model in {model_dir} was trained on (fingerprint {found}, "
            f"the card says {trained_on})"
        )
    splits = Path(data) / SPLITS_FILE
    if not splits.is_file():
        raise TrainingError(f"{splits}: missing; the folds' validation cases are needed to fit the filter")
    folds = read_splits(splits, [r.case_id for r in records])
    by_id = {r.case_id: r for r in records}
    cache = PreprocessedCache(Path(data) / CACHE_FOLDER, card.preprocessing)
    compute = select_device(device)
    jobs = []
    for fold in card.folds:
        if fold.fold >= len(folds):
            raise TrainingError(f"{splits}: has {len(folds)} folds; the card names fold {fold.fold}")
        cases = [
            by_id[c] for c in folds[fold.fold]["val"] if fold.tracer is None or tracer_of(c) == fold.tracer
        ]
        jobs.extend((fold, record) for record in cases)
    missing = sorted(
        {fold.tracer or ALL_TRACERS for fold in card.folds} - {f.tracer or ALL_TRACERS for f, _ in jobs}
    )
    if missing:
        raise TrainingError(f"{splits}: the folds' validation sets hold no case for {', '.join(missing)}")
    features: dict[str, list[np.ndarray]] = {}
    is_lesion: dict[str, list[np.ndarray]] = {}
    loaded: dict[str, Predictor] = {}
    for fold, record in tqdm(jobs, desc="out-of-fold components", unit="case", disable=not progress):
        if fold.weights not in loaded:
            network = load_fold(card, Path(model_dir), fold.weights, fold.sha256)
            loaded.clear()  # one fold's network in memory at a time: the jobs come fold by fold
            # As inference runs it (batch norms folded, the device's layout), one fold alone.
            loaded[fold.weights] = Predictor(card, FoldEnsemble([network], card.ensemble.average), compute)
        entry = cache.get(record)
        probability = loaded[fold.weights](entry["image"])
        labels, rows = component_features(probability, entry["image"], card.preprocessing, threshold)
        hit = np.zeros(len(rows), dtype=bool)
        overlapped = np.unique(labels[(entry["label"][0] > 0) & (labels > 0)])
        hit[overlapped - 1] = True
        key = fold.tracer or ALL_TRACERS
        features.setdefault(key, []).append(rows)
        is_lesion.setdefault(key, []).append(hit)
    return (
        {key: np.concatenate(rows) for key, rows in features.items()},
        {key: np.concatenate(hits) for key, hits in is_lesion.items()},
    )


def check_minimum(minimum_probability: float) -> None:
    """The filter's minimum probability, checked before any prediction runs (or export writes a file)."""
    try:
        check_minimum_probability(minimum_probability)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def fit_components(
    model_dir: Path,
    data: Path,
    minimum_probability: float = DEFAULT_MINIMUM_PROBABILITY,
    threshold: float | None = None,
    device: str = "auto",
    progress: bool = True,
) -> ModelCard:
    """Fit the filter at `threshold` (default: the card's) and write it, with that threshold, to the card.

    The filter learns the components of one threshold, so the card's threshold changes with it.
    """
    check_minimum(minimum_probability)
    card = load_card(model_dir)
    threshold = card.ensemble.threshold if threshold is None else threshold
    try:
        parse_ensemble({"threshold": threshold}, "fit-components")
    except ModelError as error:
        raise TrainingError(str(error)) from None
    features, is_lesion = out_of_fold_components(card, model_dir, data, threshold, device, progress)
    try:
        component_filter = fit_component_filter(features, is_lesion, minimum_probability)
    except ValueError as error:
        raise TrainingError(f"{data}: {error}") from None
    _log_fit(component_filter, features, is_lesion)
    fitted = replace(
        card,
        ensemble=replace(card.ensemble, threshold=threshold),
        component_filter=component_filter,
        provenance={**card.provenance, "component_filter_commit": git_commit()},
    )
    save_card(fitted, Path(model_dir))
    return fitted


def _log_fit(
    component_filter: ComponentFilter, features: dict[str, np.ndarray], is_lesion: dict[str, np.ndarray]
) -> None:
    """How the filter sorts the components it was fitted on (an optimistic view: they taught it)."""
    for key, model in component_filter.models.items():
        kept = model.weights.probability(features[key]) >= component_filter.minimum_probability
        lesions = is_lesion[key]
        log.info(
            "component filter (%s): %d components, %d lesions; keeps %d of the lesions and %d of the %d "
            "false positives it was fitted on",
            key,
            len(lesions),
            int(lesions.sum()),
            int((kept & lesions).sum()),
            int((kept & ~lesions).sum()),
            int((~lesions).sum()),
        )
