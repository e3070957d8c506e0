"""Command-line entry points: `petseg <command>` and the Grand-Challenge `process.py`.

Both are thin: they parse arguments, set up logging and call the library. User errors (`PetsegError`)
end as one line on stderr and a non-zero exit code; nothing else is printed as a traceback unless
PETSEG_DEBUG=1 is set.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from petseg import __version__
from petseg.errors import InputError, PetsegError

if TYPE_CHECKING:  # heavy imports (torch) stay out of `petseg --help`
    from petseg.cases import Case
    from petseg.console import StageTimer
    from petseg.predict import Predictor

log = logging.getLogger("petseg")

CONTAINER_MODEL_DIR = Path("/opt/ml/model")
REPO_MODEL_DIR = Path(__file__).resolve().parents[1] / "model"


class Terminated(BaseException):
    """SIGTERM (docker stop, a platform time-out) raised as an exception, so that cleanup runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; turn every failure into one line and an exit code.

    SIGTERM unwinds like Ctrl-C: staging folders are removed and a half-written output pair is taken
    back, so a stopped container leaves a complete output or none.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _report_failures(run, args)
    finally:
        # A SIGTERM after this point (the caches' cleanup, the interpreter's exit) gets the handler that was
        # there before, by default the plain exit 143: outside this function no one would catch Terminated.
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _report_failures(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return run(args)
    except PetsegError as error:
        print(f"petseg: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("petseg: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("petseg: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except MemoryError:
        print("petseg: error: out of memory", file=sys.stderr)
        return 137
    except Exception as error:
        if os.environ.get("PETSEG_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(
            f"petseg: internal error: {type(error).__name__}: {message} (PETSEG_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def default_model_dir(script_dir: Path | None = None) -> Path:
    """`/opt/ml/model` when the platform provides a model there, else `model/` beside the code."""
    candidates = [CONTAINER_MODEL_DIR]
    if script_dir is not None:
        candidates.append(Path(script_dir) / "model")
    candidates.append(REPO_MODEL_DIR)
    for candidate in candidates:
        if (candidate / "model.json").is_file():
            return candidate
    return candidates[1] if script_dir is not None else REPO_MODEL_DIR


def _load_predictor(
    model_dir: Path,
    device: str,
    timer: StageTimer,
    precision: str = "auto",
    compile: bool = False,
    tracer: str = "auto",
) -> Predictor:
    from petseg.predict import Predictor

    with timer.stage("load model"):
        predictor = Predictor.load(model_dir, device, precision=precision, compile=compile)
    card = predictor.card
    log.info(
        "model %s: %s, %d fold(s)%s, window %s, overlap %s, on %s",
        card.name,
        card.architecture.name,
        len(card.folds),
        f" ({' and '.join(card.tracers)} ensembles)" if card.tracers else "",
        "x".join(map(str, card.ensemble.roi_size)),
        card.ensemble.overlap,
        predictor.compute.describe() + (", compiled" if predictor.compiled else ""),
    )
    if tracer != "auto":
        if card.tracers:
            predictor.given_tracer = tracer
        else:
            log.info("--tracer %s: the model is one ensemble for every tracer, so it changes nothing", tracer)
    if not card.trained:
        log.warning("UNTRAINED model (%s): its masks are meaningless", model_dir)
    elif card.provenance.get("synthetic"):
        log.warning(
            "model %s was trained on SYNTHETIC phantoms only: a demonstration, not for real scans", card.name
        )
    return predictor


# ---------------------------------------------------------------- process.py (Grand Challenge)


def _positive_seconds(text: str) -> float:
    """argparse type of --time-budget: a finite number of seconds above zero."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --precision and --compile: where and how the networks run."""
    from petseg.precision import PRECISIONS

    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): autocast where it pays (fp16 on GPUs below compute capability 8, bf16 from "
        "8 on and on CPUs with native bf16); fp32: none, for bit-exact comparisons",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the networks through torch.compile (compiles on the first window; off by default: "
        "see bench/README.md for when it pays)",
    )
    parser.add_argument(
        "--tracer",
        choices=("auto", "fdg", "psma"),
        default="auto",
        help="for models with one ensemble per tracer: which to run (default auto: the card's classifier "
        "names it from the PET's uptake histogram)",
    )


def add_container_arguments(parser: argparse.ArgumentParser, default_model: Path) -> None:
    """--input, --output, --model and the compute options, as process.py and app.py both take them."""
    parser.add_argument("--input", type=Path, default=Path("/input"), help="input folder (default /input)")
    parser.add_argument(
        "--output", type=Path, default=Path("/output"), help="output folder (default /output)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=default_model,
        help=f"model folder with model.json (default {default_model})",
    )
    add_compute_arguments(parser)


def process_parser(default_model: Path) -> argparse.ArgumentParser:
    from petseg.tta import DEFAULT_TIME_BUDGET_S

    parser = argparse.ArgumentParser(
        prog="process.py",
        description="Segment the PET/CT case in a Grand-Challenge input folder (autoPET contract).",
    )
    add_container_arguments(parser, default_model)
    parser.add_argument("--progress", action="store_true", help="show the sliding-window progress bar")
    parser.add_argument(
        "--time-budget",
        type=_positive_seconds,
        default=DEFAULT_TIME_BUDGET_S,
        metavar="SECONDS",
        help="seconds allowed for the case, counted from the start of process.py, model loading included "
        f"(default {DEFAULT_TIME_BUDGET_S:g}, the autoPET III limit); --tta auto spends what the first "
        "pass leaves of it, less a safety margin",
    )
    parser.add_argument(
        "--tta",
        choices=("off", "auto"),
        default="off",
        help="mirroring test-time augmentation: off (default: one pass), or auto: as many of the "
        "card's mirrored passes (ensemble.mirror_axes; all 7 where it has none) as fit in --time-budget, "
        "averaged with the first",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _process(args: argparse.Namespace, started: float | None = None) -> int:
    """Load the ensemble and segment the case; the time budget counts from `started` (perf_counter)."""
    from petseg.console import StageTimer
    from petseg.pipeline import run_grand_challenge
    from petseg.tta import MirrorTTA, TimeBudget

    budget = TimeBudget(args.time_budget, start=started)
    timer = StageTimer()
    predictor = _load_predictor(args.model, args.device, timer, args.precision, args.compile, args.tracer)
    tta = None
    if args.tta == "auto":
        mirrors = predictor.card.ensemble.mirror_axes
        tta = MirrorTTA(budget) if mirrors is None else MirrorTTA(budget, axes=mirrors)
        if not tta.axes:
            log.info("--tta auto: the card lists no mirror its networks were trained with; one plain pass")
    mask_path = run_grand_challenge(
        args.input, args.output, predictor, timer, progress=args.progress, tta=tta
    )
    log.info("wrote %s (total %.2f s)", mask_path, timer.total)
    if budget.remaining() < 0:
        log.warning("the case took %.1f s, over the time budget of %g s", budget.elapsed(), budget.seconds)
    return 0


def process_main(argv: Sequence[str] | None = None, script_dir: Path | None = None) -> int:
    """The Grand-Challenge entry point (`process.py`).

    The time budget counts from here, so the heavy imports (torch) and model loading are inside it: the
    platform's limit covers the whole run, and counting more is the safe side. Container and interpreter
    start-up (about 0.1 s before this line) are left to the safety margin.
    """
    import functools
    import time

    from petseg.console import setup_logging

    started = time.perf_counter()
    args = process_parser(default_model_dir(script_dir)).parse_args(argv)
    setup_logging(args.verbose)
    with private_caches():
        return _guarded(functools.partial(_process, started=started), args)


@contextlib.contextmanager
def private_caches() -> Iterator[None]:
    """Point library caches at a temporary folder, removed afterwards: the container writes only /output.

    MONAI imports matplotlib whenever it is installed, and matplotlib would build its font cache in $HOME.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="petseg-cache-") as scratch:
        previous = os.environ.get("MPLCONFIGDIR")
        os.environ["MPLCONFIGDIR"] = previous or scratch
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("MPLCONFIGDIR", None)


# ---------------------------------------------------------------- petseg <command>


def _phantoms(args: argparse.Namespace) -> int:
    from petseg.phantoms import generate

    try:
        generate(
            args.out,
            cases=args.cases,
            seed=args.seed,
            tracer=args.tracer,
            size=args.size,
            layout=args.layout,
            organs_dir=args.organs,
            progress=not args.quiet,
            fdg_share=args.fdg_share,
        )
    except ValueError as error:
        raise PetsegError(str(error)) from None
    return 0


def _samples(args: argparse.Namespace) -> int:
    from petseg.phantoms.samples import write_expected, write_samples

    rows = write_samples(args.out)
    log.info("wrote %d sample case(s) to %s: %s", len(rows), args.out, ", ".join(r["case_id"] for r in rows))
    if args.expected:
        paths = write_expected(args.out, args.model, args.device)
        log.info("wrote %d expected mask(s) of the model in %s", len(paths), args.model)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from petseg.evaluate import evaluate_folder, format_summary, match_cases, read_meta

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
        args.out,
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
    print(f"wrote {args.out / 'cases.csv'}, lesions.csv, summary.json{extra}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from petseg.cases import discover_cases
    from petseg.console import StageTimer
    from petseg.io import DATA_CENTRIC_JSON
    from petseg.pipeline import run_to_file, run_to_folder
    from petseg.probability import probability_path

    cases = discover_cases(args.input)
    log.info("%d case(s) in %s", len(cases), args.input)
    timer = StageTimer()
    predictor = _load_predictor(args.model, args.device, timer, args.precision, args.compile, args.tracer)
    failed: dict[str, int] = {}  # case -> exit code of its error
    skipped = 0
    for case in tqdm(cases, desc="cases", unit="case", disable=args.quiet or len(cases) < 2):
        destination = case.output_path(args.output)
        # A Grand-Challenge output counts as done only as the pair: a mask without its JSON is redone.
        done = [destination] + ([args.output / case.name / DATA_CENTRIC_JSON] if case.layout == "gc" else [])
        if all(p.exists() for p in done) and not args.overwrite:
            skipped += 1
            continue
        try:
            probability_to = probability_path(destination) if args.save_probabilities else None
            timer = StageTimer(prefix=f"{case.name}: ")
            if case.layout == "gc":  # both files or neither, as process.py writes them
                run_to_folder(case.files, args.output / case.name, predictor, timer, probability_to)
            else:
                run_to_file(case.files, destination, predictor, timer, probability_to)
            if args.preview:
                _write_case_preview(case, destination, args.output / "preview" / f"{case.name}.png")
        except PetsegError as error:
            log.error("%s: %s", case.name, error)
            failed[case.name] = error.exit_code
    if skipped:
        log.info("skipped %d case(s) whose output exists (use --overwrite to redo them)", skipped)
    done = len(cases) - len(failed) - skipped
    log.info("segmented %d case(s) into %s", done, args.output)
    if failed:
        print(
            f"petseg: error: {len(failed)} of {len(cases)} case(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        # the most serious kind among the failures: an output that cannot be written (5) over bad input (3)
        return max(failed.values())
    return 0


def _write_case_preview(case: Case, mask_path: Path, destination: Path) -> None:
    import SimpleITK as sitk

    from petseg.io import read_image
    from petseg.preview import write_preview

    write_preview(read_image(case.files.pet, "PET"), sitk.ReadImage(str(mask_path)), None, destination)


def _random_model(args: argparse.Namespace) -> int:
    from petseg.untrained import create_untrained_model

    card = create_untrained_model(args.out, architecture=args.arch, folds=args.folds, seed=args.seed)
    log.info(
        "wrote an UNTRAINED %s ensemble of %d folds to %s", card.architecture.name, len(card.folds), args.out
    )
    return 0


def _check_model(args: argparse.Namespace) -> int:
    from petseg.networks import build_network, count_parameters
    from petseg.predict import Predictor

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
    from petseg.demo import SAMPLE_CASES, SHIPPED_MODEL, run_demo

    return run_demo(
        args.out,
        model_dir=args.model or SHIPPED_MODEL,
        cases_dir=args.cases or SAMPLE_CASES,
        phantoms=args.phantoms,
        seed=args.seed,
        device=args.device,
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
    from petseg.phantoms import LAYOUTS, SIZES, TRACERS
    from petseg.phantoms.generate import FDG_SHARE

    parser = argparse.ArgumentParser(prog="petseg", description="Whole-body PET/CT lesion segmentation.")
    parser.add_argument("--version", action="version", version=f"petseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the shipped model on the sample cases, as the container does"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for all demo files")
    demo.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model/)")
    demo.add_argument(
        "--cases", type=Path, default=None, help="case folder (default: the sample cases, test/)"
    )
    demo.add_argument("--phantoms", type=int, default=0, help="instead, generate N fresh tiny phantom cases")
    demo.add_argument("--seed", type=int, default=0, help="seed of --phantoms")
    demo.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    demo.set_defaults(run=_demo)

    phantoms = commands.add_parser("phantoms", help="generate synthetic whole-body PET/CT cases")
    phantoms.add_argument("--out", type=Path, required=True)
    phantoms.add_argument("--cases", type=int, default=10)
    phantoms.add_argument("--seed", type=int, default=0)
    phantoms.add_argument("--tracer", choices=TRACERS, default="mixed")
    phantoms.add_argument(
        "--fdg-share",
        type=float,
        default=FDG_SHARE,
        help=f"with --tracer mixed, the share of patients given FDG (default {FDG_SHARE:g}), the rest PSMA",
    )
    phantoms.add_argument("--size", choices=SIZES, default="tiny")
    phantoms.add_argument("--layout", choices=LAYOUTS, default="gc")
    phantoms.add_argument("--organs", type=Path, default=None, help="folder of organ label maps (NIfTI)")
    phantoms.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    phantoms.set_defaults(run=_phantoms)

    samples = commands.add_parser("samples", help="write the two sample cases of test/ (for test.sh)")
    samples.add_argument("--out", type=Path, default=Path("test"))
    samples.add_argument(
        "--expected",
        action="store_true",
        help="also write <case>/expected/<pet-uuid>.mha: the masks --model produces, which test.sh checks",
    )
    samples.add_argument(
        "--model", type=Path, default=None, help="model of --expected (default: as process.py, model/)"
    )
    samples.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    samples.set_defaults(run=_samples)

    predict = commands.add_parser("predict", help="segment every case in a folder (gc or nnU-Net layout)")
    predict.add_argument("--input", type=Path, required=True)
    predict.add_argument("--output", type=Path, required=True)
    predict.add_argument("--model", type=Path, default=None, help="model folder (default: as process.py)")
    add_compute_arguments(predict)
    predict.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    predict.add_argument(
        "--preview", action="store_true", help="also write OUTPUT/preview/<case>.png (PET MIP)"
    )
    predict.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write the lesion probability beside each mask: <mask name>_probability.npz "
        "(float16, PET grid, uncompressed; for `petseg evaluate --probabilities`)",
    )
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument(
        "--missing-as-empty", action="store_true", help="score a missing prediction as an empty mask"
    )
    evaluate.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=_evaluate)

    random_model = commands.add_parser("random-model", help="write an untrained ensemble (demos, tests)")
    random_model.add_argument("--out", type=Path, required=True)
    random_model.add_argument("--arch", default="resunet-tiny")
    random_model.add_argument("--folds", type=int, default=5)
    random_model.add_argument("--seed", type=int, default=0)
    random_model.set_defaults(run=_random_model)

    check = commands.add_parser("check-model", help="validate a model folder: card, weights, checksums")
    check.add_argument("model", type=Path, nargs="?", default=None)
    check.set_defaults(run=_check_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from petseg.console import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if getattr(args, "model", "unset") is None:
        args.model = default_model_dir()
    return _guarded(args.run, args)
