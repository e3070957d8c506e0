"""One case from input files to written mask: read -> preprocess -> predict -> postprocess -> write."""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from petseg.console import StageTimer
from petseg.io import CaseFiles, find_case, read_case, write_image, write_outputs
from petseg.postprocess import probability_to_mask
from petseg.predict import Predictor
from petseg.preprocess import preprocess

log = logging.getLogger(__name__)


def segment(files: CaseFiles, predictor: Predictor, timer: StageTimer, progress: bool = False) -> sitk.Image:
    """The lesion mask (uint8 {0,1}) of one case, on the exact grid of its PET."""
    with timer.stage("read"):
        ct, pet = read_case(files)
    log.debug(
        "CT %s at %s mm; PET %s at %s mm", ct.GetSize(), ct.GetSpacing(), pet.GetSize(), pet.GetSpacing()
    )
    with timer.stage("preprocess"):
        case = preprocess(ct, pet, predictor.card.preprocessing)
    del ct, pet
    log.debug("network grid %s at %s mm", case.back_map.network_grid.size, case.back_map.network_grid.spacing)
    with timer.stage("predict"):
        probability = predictor(case.image, progress=progress)
    del case.image  # the network input is not needed any more: free it before the back-map
    with timer.stage("postprocess"):
        settings = predictor.card.ensemble
        return probability_to_mask(
            probability, case.back_map, settings.threshold, settings.back_interpolation
        )


def run_grand_challenge(
    input_dir: Path, output_dir: Path, predictor: Predictor, timer: StageTimer, progress: bool = False
) -> Path:
    """Segment the case in a Grand-Challenge `/input` folder and write the `/output` contract."""
    files = find_case(input_dir)
    mask = segment(files, predictor, timer, progress)
    with timer.stage("write"):
        return write_outputs(mask, output_dir, files.pet_uuid)


def run_to_file(files: CaseFiles, destination: Path, predictor: Predictor, timer: StageTimer) -> Path:
    """Segment one case and write its mask to `destination` (any SimpleITK format)."""
    mask = segment(files, predictor, timer)
    with timer.stage("write"):
        return write_image(mask, destination, compress=True)
