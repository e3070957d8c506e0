"""One case from input files to written mask: read -> preprocess -> predict -> postprocess -> write."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.inference.plausibility import input_warnings, mask_warnings
from petseg.inference.postprocess import postprocess
from petseg.inference.predict import Predictor
from petseg.inference.preprocess import preprocess
from petseg.inference.timing import StageTimer
from petseg.inference.tta import MirrorTTA, TtaReport
from petseg.io import CaseFiles, find_case, read_case, write_image, write_outputs
from petseg.io.probability import write_probability

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
    tracer: str | None = None,
) -> Segmentation:
    """Read, preprocess, predict and postprocess one case; `keep_probability` also returns the probability.

    `tracer` ("fdg", "psma") picks the ensemble of a card split by tracer; None lets the card's classifier
    name it. With `tta`, the prediction adds mirrored passes while its time budget allows; without, it is
    the one plain pass.
    """
    started = tta.budget.clock() if tta is not None else None  # reading counts towards TTA's allowance
    with timer.stage("read"):
        images = list(read_case(files))  # handed over whole: see _segment
    ct, pet = images
    log.debug(
        "CT %s at %s mm; PET %s at %s mm", ct.GetSize(), ct.GetSpacing(), pet.GetSize(), pet.GetSpacing()
    )
    del ct, pet
    return _segment(
        images, predictor, timer, progress, keep_probability, tta, tracer, str(files.pet), started
    )


def segment_images(
    ct: sitk.Image,
    pet: sitk.Image,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    keep_probability: bool = False,
    tta: MirrorTTA | None = None,
    tracer: str | None = None,
    source: str = "PET",
    started: float | None = None,
) -> Segmentation:
    """Preprocess, predict and postprocess a case held in memory (read and checked already).

    `source` names the PET in errors. `started` (the TTA budget's clock when the case began, by default
    now) sets what TTA allows for postprocessing and writing: as long as reading and preprocessing took.
    """
    return _segment([ct, pet], predictor, timer, progress, keep_probability, tta, tracer, source, started)


def _segment(
    images: list[sitk.Image],
    predictor: Predictor,
    timer: StageTimer,
    progress: bool,
    keep_probability: bool,
    tta: MirrorTTA | None,
    tracer: str | None,
    source: str,
    started: float | None,
) -> Segmentation:
    """`segment_images` on a list [CT, PET] that it empties, so that a caller which hands its only
    references over lets the full-resolution images go once preprocessing has made the network input
    (about 0.85 GB on the largest autoPET grid)."""
    ct, pet = images
    images.clear()
    prepared_from = (started if started is not None else tta.budget.clock()) if tta is not None else 0.0
    with timer.stage("preprocess"):
        case = preprocess(ct, pet, predictor.card.preprocessing, source=source)
        chosen = predictor.choose_tracer(case.image, given=tracer)
    if outside := input_warnings(predictor.card.input_range, pet):
        log.warning(
            "%s: the PET lies well outside the grids the model was trained on (%s): its mask rests on "
            "extrapolation",
            source or "case",
            "; ".join(outside),
        )
    # The uptake contour and the SUV floor need the PET on its own grid; otherwise it is freed before the
    # network runs.
    settings = predictor.card.ensemble
    reads_uptake = settings.grow_to_suvmax_fraction is not None or settings.suv_floor is not None
    uptake = sitk.GetArrayFromImage(pet) if reads_uptake else None
    del ct, pet
    log.debug("network grid %s at %s mm", case.back_map.network_grid.size, case.back_map.network_grid.spacing)
    report = None
    with timer.stage("predict"):
        if tta is None:
            probability = predictor(case.image, tracer=chosen, progress=progress)
        else:
            after_s = tta.after_prediction_s(tta.budget.clock() - prepared_from)
            probability, report = tta.predict(
                lambda image: predictor(image, tracer=chosen, progress=progress), case.image, after_s
            )
    with timer.stage("postprocess"):
        mask, on_pet = postprocess(probability, case, predictor.card, chosen, uptake, keep_probability)
    for warning in mask_warnings(mask):
        log.warning("%s: %s; look at the preview before using this mask", source or "case", warning)
    return Segmentation(mask, on_pet, tta=report)


def segment(
    files: CaseFiles,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    tta: MirrorTTA | None = None,
    tracer: str | None = None,
) -> sitk.Image:
    """The lesion mask (uint8 {0,1}) of one case, on the exact grid of its PET."""
    return segment_case(files, predictor, timer, progress, tta=tta, tracer=tracer).mask


def run_grand_challenge(
    input_dir: Path,
    output_dir: Path,
    predictor: Predictor,
    timer: StageTimer,
    progress: bool = False,
    *,
    tta: MirrorTTA | None = None,
    tracer: str | None = None,
) -> Path:
    """Segment the case in a Grand-Challenge `/input` folder and write the `/output` contract.

    `tta`: mirrored passes within its time budget (`petseg.inference.tta`); by default the one plain pass.
    `tracer`: the ensemble of a card split by tracer; by default the card's classifier names it.
    """
    files = find_case(input_dir)
    mask = segment(files, predictor, timer, progress, tta=tta, tracer=tracer)
    with timer.stage("write"):
        return write_outputs(mask, output_dir, files.pet_uuid)


def run_to_file(
    files: CaseFiles,
    destination: Path,
    predictor: Predictor,
    timer: StageTimer,
    probability_to: Path | None = None,
    tracer: str | None = None,
    *,
    tta: MirrorTTA | None = None,
    progress: bool = False,
) -> Path:
    """Segment one case and write its mask to `destination` (any SimpleITK format).

    With `probability_to`, the lesion probability goes there too (float16, PET grid; `petseg.io.probability`).
    """
    write = functools.partial(write_image, path=destination, compress=True)
    return _segment_and_write(files, predictor, timer, probability_to, tracer, write, tta, progress)


def run_to_folder(
    files: CaseFiles,
    output_dir: Path,
    predictor: Predictor,
    timer: StageTimer,
    probability_to: Path | None = None,
    tracer: str | None = None,
    *,
    tta: MirrorTTA | None = None,
    progress: bool = False,
) -> Path:
    """Segment one case into a Grand-Challenge output folder: the mask and its JSON, both or neither.

    With `probability_to`, the lesion probability is written first, so a complete pair implies it.
    """
    write = functools.partial(write_outputs, output_dir=output_dir, name=files.pet_uuid)
    return _segment_and_write(files, predictor, timer, probability_to, tracer, write, tta, progress)


def _segment_and_write(
    files: CaseFiles,
    predictor: Predictor,
    timer: StageTimer,
    probability_to: Path | None,
    tracer: str | None,
    write: Callable[[sitk.Image], Path],
    tta: MirrorTTA | None = None,
    progress: bool = False,
) -> Path:
    """One case segmented, its probability written first where asked for, then its mask by `write`."""
    keep = probability_to is not None
    result = segment_case(files, predictor, timer, progress, keep_probability=keep, tta=tta, tracer=tracer)
    with timer.stage("write"):
        if probability_to is not None and result.probability is not None:
            write_probability(result.probability, result.mask, probability_to)
        return write(result.mask)
