"""`petseg predict --dicom`: PET/CT studies in DICOM to a DICOM SEG (and RTSTRUCT), the mask, the lesion
figures and a preview, one folder per study.

Each study's PET and CT series are found by their headers (`petseg.io.dicom.study`), converted in memory (PET
to body-weight SUV by the rules of `petseg from-dicom`, CT to HU), checked and segmented as `process.py` would
segment them, and measured (`petseg.quantify`). Everything a study gets is made in memory first and then
written as one folder, `OUTPUT/<study>/`, in one rename: a study that fails anywhere leaves nothing, and the
others still run.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import SimpleITK as sitk

from petseg import __version__
from petseg.errors import OutputError, PetsegError
from petseg.io.dicom.study import Study, find_studies

if TYPE_CHECKING:
    from petseg.inference.predict import Predictor

log = logging.getLogger("petseg")

SEG_FILE = "seg.dcm"
RTSTRUCT_FILE = "rtstruct.dcm"
MASK_FILE = "mask.mha"
LESIONS_FILE = "lesions.csv"
SUMMARY_FILE = "summary.json"
PREVIEW_FILE = "preview.png"


@dataclass(frozen=True)
class StudyOptions:
    """How each study is segmented and what it gets."""

    tracer: str | None
    tta: str
    time_budget: float
    rtstruct: bool
    progress: bool
    overwrite: bool


def _dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def study_preview(pet: sitk.Image, mask: sitk.Image, title: str) -> bytes | None:
    """The coronal MIP preview of `predict --preview`; None (with a warning) where matplotlib is missing."""
    from petseg.evaluation.preview import PREVIEW_LEGEND, annotated_png, preview_panels

    try:
        return annotated_png(preview_panels(pet, mask, None), title, PREVIEW_LEGEND[1:2])
    except PetsegError as error:  # matplotlib is not installed: the study's other outputs still count
        log.warning("%s: no %s: %s", title, PREVIEW_FILE, error)
        return None


def segment_study(
    study: Study, destination: Path, predictor: Predictor, options: StudyOptions, root: Path
) -> None:
    """Read, segment and measure one study, and write its folder `destination` (inside `root`)."""
    from petseg.app.runtime import tta_plan
    from petseg.evaluation.preview import preview_title
    from petseg.inference.pipeline import segment_images
    from petseg.inference.timing import StageTimer
    from petseg.inference.tta import TimeBudget
    from petseg.io.dicom.convert import ct_image, describe_series, json_text, pet_image
    from petseg.io.dicom.outputs import write_study_folder
    from petseg.io.dicom.seg import lesion_seg
    from petseg.io.dicom.source import check_referable
    from petseg.io.dicom.study import study_series
    from petseg.io.files import check_image, check_overlap, check_pet_units
    from petseg.quantify import lesions_csv, quantify, summary_record

    budget = TimeBudget(options.time_budget)
    timer = StageTimer(prefix=f"{study.name}: ")
    with timer.stage("read"):
        pet_series, ct_series = study_series(study)
        check_referable(pet_series)  # before the model runs: a SEG must be able to refer to the PET
        _, pet, suv = pet_image(pet_series)
        _, ct = ct_image(ct_series)
        for warning in suv.warnings:
            log.warning("%s: %s", pet_series.folder, warning)
        pet = check_image(pet, "PET", str(pet_series.folder))
        ct = check_image(ct, "CT", str(ct_series.folder))
        check_pet_units(pet, pet_series.folder)
        check_overlap(ct, pet, ct_series.folder, pet_series.folder)
    result = segment_images(
        ct,
        pet,
        predictor,
        timer,
        progress=options.progress,
        tta=tta_plan(options.tta, predictor, budget),
        tracer=options.tracer,
        source=str(pet_series.folder),
        started=budget.start,
    )
    mask = result.mask
    with timer.stage("quantify"):
        report = quantify(mask, pet)
    model = predictor.card.name
    with timer.stage("DICOM"):
        voxels = sitk.GetArrayFromImage(mask)
        files = {SEG_FILE: _dicom_bytes(lesion_seg(pet_series, voxels, model, __version__))}
        if options.rtstruct:
            from petseg.io.dicom.rtstruct import lesion_rtstruct

            files[RTSTRUCT_FILE] = _dicom_bytes(lesion_rtstruct(pet_series, voxels, model, __version__))
    summary: dict[str, Any] = summary_record(
        report,
        study=study.name,
        study_instance_uid=study.uid,
        model=model,
        petseg_version=__version__,
        pet=describe_series(pet_series, pet, None),
        ct=describe_series(ct_series, ct, None),
        suv=suv.as_json(),
    )
    files[LESIONS_FILE] = lesions_csv(report).encode()
    files[SUMMARY_FILE] = json_text(summary).encode()
    with timer.stage("preview"):
        png = study_preview(pet, mask, preview_title(study.name, model, options.tracer))
    if png is not None:
        files[PREVIEW_FILE] = png
    with timer.stage("write"):
        write_study_folder(destination, files, {MASK_FILE: mask}, root, replace=options.overwrite)
    log.info(
        "%s: %d lesion(s), TMTV %.2f ml, written to %s (total %.2f s)",
        study.name,
        report.count,
        report.tmtv_ml,
        destination,
        timer.total,
    )


def _unique(studies: list[Study], failed: dict[str, int]) -> list[Study]:
    """The studies whose output folder no other study claims; the others are reported and dropped."""
    counts = Counter(study.name for study in studies)
    kept = []
    for study in studies:
        if counts[study.name] > 1:
            folders = ", ".join(str(s.folder) for s in studies if s.name == study.name)
            log.error(
                "%s: several studies would be written there (%s); rename their folders", study.name, folders
            )
            failed[f"{study.name} ({study.folder})"] = 3
        else:
            kept.append(study)
    return kept


def predict_studies(args: argparse.Namespace) -> int:
    """`petseg predict --dicom`: every study of every folder given; the exit code of the worst failure."""
    from tqdm import tqdm

    from petseg.app.runtime import load_predictor
    from petseg.inference.timing import StageTimer

    failed: dict[str, int] = {}
    studies: list[Study] = []
    for folder in args.dicom:
        try:
            studies.extend(find_studies(folder))
        except PetsegError as error:
            log.error("%s", error)
            failed[str(folder)] = error.exit_code
    studies = _unique(studies, failed)
    refused = len(failed)  # folders that could not be read, and studies without a folder of their own
    log.info("%d study(ies) in %s", len(studies), ", ".join(map(str, args.dicom)))
    pending, skipped = [], 0
    for study in studies:
        destination = args.output / study.name
        if destination.exists() and not destination.is_dir():  # before the model runs, not after
            log.error("%s: %s: exists and is not a folder", study.name, destination)
            failed[study.name] = OutputError.exit_code
        elif destination.is_dir() and any(destination.iterdir()) and not args.overwrite:
            skipped += 1
        else:
            pending.append(study)
    if pending:
        predictor = load_predictor(
            args.model, args.device, StageTimer(), args.precision, args.compile, args.threshold
        )
        options = StudyOptions(
            tracer=None if args.tracer == "auto" else args.tracer,
            tta=args.tta,
            time_budget=args.time_budget,
            rtstruct=args.rtstruct,
            progress=not args.quiet and sys.stderr.isatty(),
            overwrite=args.overwrite,
        )
        for study in tqdm(pending, desc="studies", unit="study", disable=args.quiet or len(pending) < 2):
            try:
                segment_study(study, args.output / study.name, predictor, options, args.output)
            except PetsegError as error:
                log.error("%s: %s", study.name, error)
                failed[study.name] = error.exit_code
    if skipped:
        log.info("skipped %d study(ies) whose output folder exists (use --overwrite to redo them)", skipped)
    done = len(pending) - sum(1 for study in pending if study.name in failed)
    log.info("segmented %d study(ies) into %s", done, args.output)
    if failed:
        total = len(studies) + refused
        print(
            f"petseg: error: {len(failed)} of {total} study(ies) failed: {', '.join(failed)}", file=sys.stderr
        )
        return max(failed.values())
    return 0
