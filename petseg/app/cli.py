"""The `petseg` command line.

It is thin: they parse arguments, set up logging and call the library. User errors (`PetsegError`)
end as one line on stderr and a non-zero exit code; nothing else is printed as a traceback unless
PETSEG_DEBUG=1 is set.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from petseg import __version__
from petseg.app.arguments import add_output, command_parser, parse_arguments, subcommands
from petseg.app.runtime import (
    add_case_arguments,
    add_compute_arguments,
    default_model_dir,
    guarded,
    load_predictor,
    tta_plan,
)
from petseg.errors import InputError, PetsegError
from petseg.inference.compute_choices import DEVICES

if TYPE_CHECKING:  # heavy imports (torch) stay out of `petseg --help`
    import torch

    from petseg.app.cohort import StatusLog
    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer
    from petseg.io.cases import Case

log = logging.getLogger("petseg")

# ---------------------------------------------------------------- petseg <command>


def _phantoms(args: argparse.Namespace) -> int:
    from petseg.synthetic import generate

    try:
        generate(
            args.output,
            cases=args.cases,
            seed=args.seed,
            tracer=args.tracer,
            size=args.size,
            layout=args.layout,
            organs_dir=args.organs,
            progress=not args.quiet,
            fdg_share=args.fdg_share,
            negatives=args.negatives,
            autopet_ids=args.autopet_ids,
            organ_maps=args.organ_maps,
            workers=args.workers,
        )
    except ValueError as error:
        raise PetsegError(str(error)) from None
    return 0


def _samples(args: argparse.Namespace) -> int:
    from petseg.synthetic.samples import write_expected, write_samples

    rows = write_samples(args.output, size=args.size)
    log.info(
        "wrote %d sample case(s) to %s: %s", len(rows), args.output, ", ".join(r["case_id"] for r in rows)
    )
    if args.expected:
        paths = write_expected(args.output, args.model, args.device)
        log.info("wrote %d expected mask(s) of the model in %s", len(paths), args.model)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from petseg.evaluation.evaluate import evaluate_folder, format_summary, match_cases, read_meta

    cases = match_cases(
        args.gt,
        args.pred,
        args.pet,
        missing_as_empty=args.missing_as_empty,
        probability_dir=args.probabilities,
    )
    meta = read_meta(args.meta, [case.name for case in cases]) if args.meta is not None else None
    name = args.pred.resolve().name
    compare = {}
    for folder in args.compare:
        other = folder.resolve().name
        if other == name or other in compare:
            raise InputError(f"{folder}: two prediction folders are named {other!r}; rename one")
        compare[other] = match_cases(args.gt, folder, args.pet, missing_as_empty=args.missing_as_empty)
    summary = evaluate_folder(
        cases,
        args.output,
        meta,
        workers=args.workers,
        progress=not args.quiet,
        compare=compare,
        name=name,
        report_cases=None if args.no_report else args.report_cases,
    )
    print(format_summary(summary))
    extra = ", calibration.png" if args.probabilities is not None else ""
    extra += "" if args.no_report else ", report.html"
    print(f"wrote {args.output / 'cases.csv'}, lesions.csv, summary.json{extra}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines go above the progress bars instead of through them
        if args.dicom is not None:
            from petseg.app.dicom_predict import predict_studies

            return predict_studies(args)
        return _predict_cases(args)


def _check_predict_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that belong to one kind of input only are refused with the other, not silently ignored."""
    if args.dicom is not None and args.save_probabilities:
        parser.error("--save-probabilities: with --input only (--dicom writes a DICOM SEG)")
    if args.dicom is None and args.rtstruct:
        parser.error("--rtstruct: with --dicom only (an RTSTRUCT refers to the PET's DICOM series)")


def _predict_cases(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from petseg.app.cohort import StatusLog, Tally, cases_of, device_of
    from petseg.inference.timing import StageTimer
    from petseg.io.parts import Launch

    launch = Launch.from_environment()
    cases = cases_of(args, launch)
    part = (args.parts, args.part) if args.parts is not None else None
    status = StatusLog(args.output, launch, part)  # an output folder that cannot be written fails first
    device = device_of(args.device, launch)
    try:
        predictor = load_predictor(
            args.model, device, StageTimer(), args.precision, args.compile, args.threshold
        )
    except BaseException:
        status.close()
        raise
    tally = Tally()
    failed: dict[str, int] = {}  # case -> exit code of its error
    try:
        for case in tqdm(cases, desc="cases", unit="case", disable=args.quiet or len(cases) < 2):
            outcome, code = _predict_case(case, args, predictor, status)
            tally.add(outcome)
            if code:
                failed[case.name] = code
    finally:
        status.close()
    if tally.counts["skipped"]:
        log.info(
            "skipped %d case(s) whose output exists (use --overwrite to redo them)", tally.counts["skipped"]
        )
    log.info("segmented %d case(s) into %s", tally.counts["done"], args.output)
    log.info("summary: %s (status per case in %s)", tally.summary(), status.path)
    if failed and launch.world_size > 1:
        # torchrun stops every other rank as soon as one exits non-zero: a rank that met a bad case would
        # cut the others' work short. Its failures are in status.jsonl and on stderr.
        print(
            f"petseg: warning: rank {launch.rank}: {len(failed)} of {len(cases)} case(s) failed: "
            f"{', '.join(failed)} (exit 0 under torchrun, so that the other ranks finish; see {status.path})",
            file=sys.stderr,
        )
    elif failed:
        print(
            f"petseg: error: {len(failed)} of {len(cases)} case(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        # the most serious kind among the failures: an output that cannot be written (5) over bad input (3)
        return max(failed.values())
    return 0


def _predict_case(
    case: Case, args: argparse.Namespace, predictor: Predictor, status: StatusLog
) -> tuple[str, int]:
    """Segment one case unless its output is complete; its status line; (outcome, exit code or 0).

    A case interrupted by Ctrl-C or SIGTERM gets no line: its output was never renamed into place, so the
    next run redoes it. A bug (anything but a `PetsegError`) gets its failed line before it stops the run.
    """
    import time

    from petseg.app.cohort import peak_memory, reset_gpu_peak, stage_seconds
    from petseg.app.lesion_tables import lesion_table_paths, write_lesion_tables
    from petseg.inference.pipeline import run_to_file, run_to_folder
    from petseg.inference.timing import StageTimer
    from petseg.inference.tta import TimeBudget
    from petseg.io import DATA_CENTRIC_JSON
    from petseg.io.probability import probability_path

    destination = case.output_path(args.output)
    # A Grand-Challenge output counts as done only as the pair: a mask without its JSON is redone.
    done = [destination] + ([args.output / case.name / DATA_CENTRIC_JSON] if case.layout == "gc" else [])
    if args.quantify:  # a mask without its lesion figures is redone as well
        done += list(lesion_table_paths(case, args.output))
    if all(p.exists() for p in done) and not args.overwrite:
        status.append(case.name, "skipped", seconds=0.0)
        return "skipped", 0
    started = time.perf_counter()
    timer = StageTimer(prefix=f"{case.name}: ", quiet=args.quiet)  # the times stay in status.jsonl
    device = predictor.compute.device
    reset_gpu_peak(device)
    try:
        probability_to = probability_path(destination) if args.save_probabilities else None
        tracer = None if args.tracer == "auto" else args.tracer
        # Each case has its own time budget for --tta; the window bar shows how far a long case is.
        bar = not args.quiet and sys.stderr.isatty()
        options = {"tta": tta_plan(args.tta, predictor, TimeBudget(args.time_budget)), "progress": bar}
        if case.layout == "gc":  # both files or neither, as process.py writes them
            output = args.output / case.name
            run_to_folder(case.files, output, predictor, timer, probability_to, tracer, **options)
        else:
            run_to_file(case.files, destination, predictor, timer, probability_to, tracer, **options)
        if args.quantify:
            write_lesion_tables(case, destination, args.output, predictor.card.name)
        if args.preview:
            from petseg.evaluation.preview import preview_title
            from petseg.io.splits import tracer_of

            title = preview_title(case.name, predictor.card.name, tracer or tracer_of(case.name))
            _write_case_preview(case, destination, args.output / "preview" / f"{case.name}.png", title)
    except PetsegError as error:
        log.error("%s: %s", case.name, error)
        _failed_line(status, case, started, timer, device, str(error), error.exit_code)
        return "failed", error.exit_code
    except Exception as error:
        message = " ".join(str(error).split()) or type(error).__name__
        _failed_line(
            status, case, started, timer, device, f"internal error: {type(error).__name__}: {message}", 1
        )
        raise
    seconds = round(time.perf_counter() - started, 3)
    status.append(
        case.name, "done", seconds=seconds, stages=stage_seconds(timer.seconds), **peak_memory(device)
    )
    return "done", 0


def _failed_line(
    status: StatusLog,
    case: Case,
    started: float,
    timer: StageTimer,
    device: torch.device,
    error: str,
    code: int,
) -> None:
    import time

    from petseg.app.cohort import peak_memory, stage_seconds

    seconds = round(time.perf_counter() - started, 3)
    stages = stage_seconds(timer.seconds)
    status.append(
        case.name,
        "failed",
        seconds=seconds,
        stages=stages,
        error=error,
        exit_code=code,
        **peak_memory(device),
    )


def _write_case_preview(case: Case, mask_path: Path, destination: Path, title: str) -> None:
    import SimpleITK as sitk

    from petseg.evaluation.preview import write_preview
    from petseg.io import read_image

    pet = read_image(case.files.pet, "PET")
    write_preview(pet, sitk.ReadImage(str(mask_path)), None, destination, title=title)


def _from_dicom(args: argparse.Namespace) -> int:
    from petseg.io.dicom import convert_dicom

    result = convert_dicom(args.pet, args.output, ct_dir=args.ct)
    print(f"wrote {result.case_dir} (PET in SUV, {result.suv.units} series; record in suv.json)")
    return 0


def _random_model(args: argparse.Namespace) -> int:
    from petseg.model.untrained import create_untrained_model

    card = create_untrained_model(args.output, architecture=args.arch, folds=args.folds, seed=args.seed)
    log.info(
        "wrote an UNTRAINED %s ensemble of %d folds to %s",
        card.architecture.name,
        len(card.folds),
        args.output,
    )
    return 0


def _check_model(args: argparse.Namespace) -> int:
    from petseg.inference.predict import Predictor
    from petseg.model.networks import build_network, count_parameters

    predictor = Predictor.load(args.model, device="cpu")
    card = predictor.card
    # The loaded folds have their batch norms folded away: count the network as trained and stored.
    parameters = count_parameters(build_network(card.architecture, card.ensemble.roi_size))
    print(f"{args.model}: {card.name}")
    print(f"  architecture  {card.architecture.name} ({parameters:,} parameters per fold)")
    print(f"  folds         {len(card.folds)} ({', '.join(f.weights for f in card.folds)})")
    window = "x".join(map(str, card.ensemble.roi_size))
    print(f"  window        {window}, overlap {card.ensemble.overlap}, {card.ensemble.blend_mode} blending")
    print(f"  averaging     mean of {card.ensemble.average}, threshold {card.ensemble.threshold}")
    print(f"  trained       {'yes' if card.trained else 'NO (untrained)'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from petseg.app.demo import SAMPLE_CASES, SHIPPED_MODEL, run_demo

    return run_demo(
        args.output,
        model_dir=args.model or SHIPPED_MODEL,
        cases_dir=args.input or SAMPLE_CASES,
        phantoms=args.phantoms,
        seed=args.seed,
        device=args.device,
        size=args.size,
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from petseg.synthetic import LAYOUTS, SIZES, TRACERS
    from petseg.synthetic.generate import FDG_SHARE, usable_cores
    from petseg.synthetic.organs import MAP_SETS

    parser = command_parser("petseg", "Whole-body PET/CT lesion segmentation.")
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    commands = subcommands(parser)

    demo = commands.add_parser(
        "demo", help="run the shipped model on the sample cases, as the container does"
    )
    add_output(demo, type=Path, default=Path("demo-output"), help="folder for all demo files")
    demo.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model/)")
    demo.add_argument(
        "--input", type=Path, default=None, help="folder of cases (default: the sample cases, test/)"
    )
    demo.add_argument("--phantoms", type=int, default=0, help="instead, generate N fresh phantom cases")
    demo.add_argument("--seed", type=int, default=0, help="seed of --phantoms")
    demo.add_argument(
        "--size",
        choices=SIZES,
        default=None,
        help="size of the --phantoms (default: the size the model was trained on, else full)",
    )
    demo.add_argument("--device", choices=DEVICES, default="auto", help="where the networks run")
    demo.set_defaults(run=_demo)

    phantoms = commands.add_parser("phantoms", help="generate synthetic whole-body PET/CT cases")
    add_output(phantoms, type=Path, required=True, help="folder to write the cases into")
    phantoms.add_argument("--cases", type=int, default=10, help="number of cases")
    phantoms.add_argument("--seed", type=int, default=0, help="seed of the generator (same seed, same cases)")
    phantoms.add_argument("--tracer", choices=TRACERS, default="mixed", help="tracer of the cases")
    phantoms.add_argument(
        "--fdg-share",
        type=float,
        default=FDG_SHARE,
        help=f"with --tracer mixed, the share of patients given FDG (default {FDG_SHARE:g}), the rest PSMA",
    )
    phantoms.add_argument(
        "--size",
        choices=SIZES,
        default="full",
        help="full: whole bodies on the real autoPET grids; tiny (a body shrunk to 0.16) for quick tests",
    )
    phantoms.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="gc",
        help="gc: Grand-Challenge folders; nnunet: imagesTr/labelsTr",
    )
    phantoms.add_argument(
        "--organs",
        type=Path,
        default=None,
        help="folder of organ label maps (NIfTI): the first cases are built around them, one per map, the "
        "rest are analytic",
    )
    phantoms.add_argument(
        "--organ-maps",
        choices=MAP_SETS,
        default="all",
        help="which of the --organs maps: all, or one side of the fixed split by file name (about one in "
        "four held out for evaluation)",
    )
    phantoms.add_argument(
        "--no-negatives",
        dest="negatives",
        action="store_false",
        help="give every case lesions (by default about one in ten is lesion-free, as in autoPET)",
    )
    phantoms.add_argument(
        "--autopet-ids",
        action="store_true",
        help="case ids with autoPET's free-text study descriptions, spaces included (default: plain ids "
        "fdg_<hex>_<date>)",
    )
    phantoms.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help="processes building cases side by side, about 1.5 GB of memory each at full size (default: "
        f"the {usable_cores()} cores this process may use); the cases are the same for any number",
    )
    phantoms.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    phantoms.set_defaults(run=_phantoms)

    samples = commands.add_parser("samples", help="write the two sample cases of test/ (for test.sh)")
    add_output(samples, type=Path, default=Path("test"), help="folder to write the sample cases into")
    samples.add_argument(
        "--expected",
        action="store_true",
        help="also write <case>/expected/<pet-uuid>.mha: the masks --model produces, which test.sh checks",
    )
    samples.add_argument(
        "--model", type=Path, default=None, help="model of --expected (default: as process.py, model/)"
    )
    samples.add_argument("--device", choices=DEVICES, default="auto", help="where the networks run")
    samples.add_argument(
        "--size",
        choices=("full", "tiny"),
        default="full",
        help="full: the whole-body cases of test/; tiny: the same cases in miniature, for quick tests",
    )
    samples.set_defaults(run=_samples)

    predict = commands.add_parser(
        "predict", help="segment every case in a folder (gc or nnU-Net layout), or PET/CT DICOM studies"
    )
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", type=Path, default=None, help="folder of cases")
    given.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV with the columns case_id,ct,pet (paths absolute or relative to the CSV's folder): each "
        "case is written as OUTPUT/<case_id>.nii.gz",
    )
    given.add_argument(
        "--dicom",
        type=Path,
        nargs="+",
        default=None,
        metavar="STUDY_DIR",
        help="DICOM study folders, or folders of studies: each study's PET and CT series are found by their "
        "headers and segmented into OUTPUT/<study>/ (DICOM SEG, mask, lesions.csv, summary.json, preview)",
    )
    add_output(predict, type=Path, required=True, help="folder for the masks")
    predict.add_argument("--model", type=Path, default=None, help="model folder (default: as process.py)")
    add_compute_arguments(predict)
    add_case_arguments(predict)
    predict.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    predict.add_argument(
        "--parts",
        type=int,
        default=None,
        metavar="N",
        help="split the cases into N parts (sorted case ids dealt out round-robin) and run only --part",
    )
    predict.add_argument(
        "--part", type=int, default=None, metavar="K", help="the part this run takes, 0 to N-1 (with --parts)"
    )
    predict.add_argument(
        "--preview", action="store_true", help="also write OUTPUT/preview/<case>.png (PET MIP)"
    )
    predict.add_argument(
        "--rtstruct",
        action="store_true",
        help="with --dicom: also write OUTPUT/<study>/rtstruct.dcm, the lesions as RTSTRUCT contours",
    )
    predict.add_argument(
        "--quantify",
        action="store_true",
        help="with --input: also write <case>_lesions.csv and <case>_summary.json beside each mask (lesion "
        "SUVmax, SUVpeak, SUVmean, MTV, TLG, centroid; TMTV, total TLG, Dmax); --dicom always writes them",
    )
    predict.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write the lesion probability beside each mask: <mask name>_probability.npz "
        "(float16, PET grid, uncompressed; for `petseg evaluate --probabilities`)",
    )
    predict.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no line per stage of each case (their times stay in status.jsonl)",
    )
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="score predictions against ground truths (autoPET, lesions)"
    )
    evaluate.add_argument("--gt", type=Path, required=True, help="ground-truth masks (.mha or .nii.gz)")
    evaluate.add_argument("--pred", type=Path, required=True, help="predicted masks, same file names")
    evaluate.add_argument("--pet", type=Path, default=None, help="PET images: lesion-level metrics")
    evaluate.add_argument("--meta", type=Path, default=None, help="CSV with case, tracer, centre: subsets")
    evaluate.add_argument(
        "--probabilities",
        type=Path,
        default=None,
        help="folder of <case>_probability.npz (petseg predict --save-probabilities): voxel calibration, "
        "entropy and confidence of correct and incorrect voxels, calibration.png",
    )
    evaluate.add_argument(
        "--report-cases",
        type=_non_negative_int,
        default=60,
        help="cases shown in report.html, worst Dice first (default 60)",
    )
    evaluate.add_argument("--no-report", action="store_true", help="do not write report.html")
    evaluate.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=(),
        help="other prediction folders: ranking, Wilcoxon tests",
    )
    add_output(evaluate, type=Path, required=True, help="folder for cases.csv, summary.json, report.html")
    evaluate.add_argument(
        "--missing-as-empty", action="store_true", help="score a missing prediction as an empty mask"
    )
    evaluate.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=_evaluate)

    from_dicom = commands.add_parser(
        "from-dicom", help="convert a PET (and CT) DICOM series into a case folder, PET in body-weight SUV"
    )
    from_dicom.add_argument("--pet", type=Path, required=True, metavar="DIR", help="folder of one PET series")
    from_dicom.add_argument("--ct", type=Path, default=None, metavar="DIR", help="folder of one CT series")
    add_output(
        from_dicom,
        type=Path,
        required=True,
        help="case folder to write (images/pet, images/ct, suv.json); must not exist or be empty",
    )
    from_dicom.set_defaults(run=_from_dicom)

    random_model = commands.add_parser("random-model", help="write an untrained ensemble (demos, tests)")
    add_output(random_model, type=Path, required=True, help="model folder to write")
    random_model.add_argument("--arch", default="resunet-tiny", help="network preset")
    random_model.add_argument("--folds", type=int, default=5, help="number of folds")
    random_model.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    random_model.set_defaults(run=_random_model)

    check = commands.add_parser("check-model", help="validate a model folder: card, weights, checksums")
    check.add_argument(
        "model", type=Path, nargs="?", default=None, help="model folder (default: as process.py, model/)"
    )
    check.set_defaults(run=_check_model)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise LookupError(command)


def main(argv: Sequence[str] | None = None) -> int:
    from petseg.app.console import setup_logging

    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.command == "predict":
        from petseg.app.cohort import check_launch
        from petseg.io.parts import Launch

        predict = _subparser(parser, "predict")
        _check_predict_options(predict, args)
        try:
            launch = Launch.from_environment()
        except PetsegError as error:
            predict.error(str(error))
        check_launch(predict, args, launch)
    setup_logging(args.verbose)
    if getattr(args, "model", "unset") is None:
        args.model = default_model_dir()
    return guarded(args.run, args)
