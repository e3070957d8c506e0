"""One case from input files to written mask: read -> preprocess -> predict -> postprocess -> write."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.card import ModelCard
from petseg.console import StageTimer
from petseg.io import CaseFiles, find_case, read_case, write_image, write_outputs
from petseg.postprocess import (
    grow_to_uptake_contour,
    mask_image,
    probability_on_pet_grid,
    probability_to_mask,
)
from petseg.predict import Predictor
from petseg.preprocess import preprocess
from petseg.probability import write_probability
from petseg.tta import MirrorTTA, TtaReport

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """A case's mask on its PET grid and, when asked for, the lesion probability it was thresholded from
    (before any growth to the uptake contour that the card asks for)."""

    mask: sitk.Image
    probability: np.ndarray | None = None  # (z, y, x) float32 on the PET grid
    tta: TtaReport | None = None  # what the mirrored passes did, when a plan was given


def segment_case(
    files: CaseFiles,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    keep_probability: bool = False,
    tta: MirrorTTA | None = None,
) -> Segmentation:
    """Read, preprocess, predict and map back one case; `keep_probability` also returns the probability.

    With `tta`, the prediction adds mirrored passes while its time budget allows; without, it is the
    one plain pass.
    """
    prepared_from = tta.budget.clock() if tta is not None else 0.0
    with timer.stage("read"):
        ct, pet = read_case(files)
    log.debug(
        "CT %s at %s mm; PET %s at %s mm", ct.GetSize(), ct.GetSpacing(), pet.GetSize(), pet.GetSpacing()
    )
    with timer.stage("preprocess"):
        case = preprocess(ct, pet, predictor.card.preprocessing, source=str(files.pet))
        # One ensemble per tracer: run the case's (None for cards with one ensemble for every case).
        tracer = predictor.choose_tracer(case.image) if predictor.card.tracers else None
    settings = predictor.card.ensemble
    # The uptake contour needs the PET on its own grid; otherwise it is freed before the network runs.
    uptake = sitk.GetArrayFromImage(pet) if settings.grow_to_suvmax_fraction is not None else None
    del ct, pet
    log.debug("network grid %s at %s mm", case.back_map.network_grid.size, case.back_map.network_grid.spacing)
    report = None
    with timer.stage("predict"):
        if tta is None:
            probability = predictor(case.image, progress=progress)
        else:
            after_s = tta.after_prediction_s(tta.budget.clock() - prepared_from)
            probability, report = tta.predict(
                lambda image: predictor(image, progress=progress), case.image, after_s
            )
    with timer.stage("postprocess"):
        if predictor.card.component_filter is not None:
            probability = _filter_components(probability, case.image, predictor.card, tracer)
        del case.image  # the network input is not needed any more: free it before the back-map
        on_pet = None
        if not keep_probability:  # the lean path: only the body box is resampled
            mask = probability_to_mask(
                probability, case.back_map, settings.threshold, settings.back_interpolation
            )
        else:
            on_pet = probability_on_pet_grid(probability, case.back_map, settings.back_interpolation)
            mask = mask_image(on_pet > settings.threshold, case.back_map.pet_grid)
        if uptake is not None:
            grid = case.back_map.pet_grid
            grown = grow_to_uptake_contour(
                sitk.GetArrayViewFromImage(mask),
                uptake,
                grid.spacing,
                settings.grow_to_suvmax_fraction,
                settings.grow_within_mm,
            )
            mask = mask_image(grown, grid)
        return Segmentation(mask, on_pet, tta=report)


def _filter_components(
    probability: np.ndarray, image: np.ndarray, card: ModelCard, tracer: str | None
) -> np.ndarray:
    """The card's component filter on the network grid: unlikely lesions leave the probability."""
    assert card.component_filter is not None
    filtered, kept, removed = card.component_filter.apply(
        probability, image, card.preprocessing, card.ensemble.threshold, tracer
    )
    log.info("component filter: kept %d predicted lesion(s), removed %d", kept, removed)
    return filtered


def segment(
    files: CaseFiles,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    tta: MirrorTTA | None = None,
) -> sitk.Image:
    """The lesion mask (uint8 {0,1}) of one case, on the exact grid of its PET."""
    return segment_case(files, predictor, timer, progress, tta=tta).mask


def run_grand_challenge(
    input_dir: Path,
    output_dir: Path,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    *,
    tta: MirrorTTA | None = None,
) -> Path:
    """Segment the case in a Grand-Challenge `/input` folder and write the `/output` contract.

    `tta`: mirrored passes within its time budget (`petseg.tta`); by default the one plain pass.
    """
    files = find_case(input_dir)
    mask = segment(files, predictor, timer, progress, tta=tta)
    with timer.stage("write"):
        return write_outputs(mask, output_dir, files.pet_uuid)


def run_to_file(
    files: CaseFiles,
    destination: Path,
    predictor: Predictor,
    timer: StageTimer,
    probability_to: Path | None = None,
) -> Path:
    """Segment one case and write its mask to `destination` (any SimpleITK format).

    With `probability_to`, the lesion probability goes there too (float16, PET grid; `petseg.probability`).
    """
    result = segment_case(files, predictor, timer, keep_probability=probability_to is not None)
    with timer.stage("write"):
        if probability_to is not None and result.probability is not None:
            write_probability(result.probability, result.mask, probability_to)
        return write_image(result.mask, destination, compress=True)


def run_to_folder(
    files: CaseFiles,
    output_dir: Path,
    predictor: Predictor,
    timer: StageTimer,
    probability_to: Path | None = None,
) -> Path:
    """Segment one case into a Grand-Challenge output folder: the mask and its JSON, both or neither.

    With `probability_to`, the lesion probability is written first, so a complete pair implies it.
    """
    result = segment_case(files, predictor, timer, keep_probability=probability_to is not None)
    with timer.stage("write"):
        if probability_to is not None and result.probability is not None:
            write_probability(result.probability, result.mask, probability_to)
        return write_outputs(result.mask, output_dir, files.pet_uuid)
