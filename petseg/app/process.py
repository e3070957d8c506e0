"""`process.py`: the Grand-Challenge "exec" entry point, one case from /input to /output."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from petseg.app.arguments import command_parser, parse_arguments
from petseg.app.runtime import (
    add_case_arguments,
    add_container_arguments,
    default_model_dir,
    guarded,
    load_predictor,
    private_caches,
    tta_plan,
)

log = logging.getLogger("petseg")


def process_parser(default_model: Path) -> argparse.ArgumentParser:

    parser = command_parser(
        "process.py", "Segment the PET/CT case in a Grand-Challenge input folder (autoPET contract)."
    )
    add_container_arguments(parser, default_model)
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show the sliding-window progress bar (off by default: in the container the log is a file)",
    )
    add_case_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    return parser


def _process(args: argparse.Namespace, started: float | None = None) -> int:
    """Load the ensemble and segment the case; the time budget counts from `started` (perf_counter)."""
    from petseg.inference.pipeline import run_grand_challenge
    from petseg.inference.timing import StageTimer
    from petseg.inference.tta import TimeBudget

    budget = TimeBudget(args.time_budget, start=started)
    timer = StageTimer()
    predictor = load_predictor(args.model, args.device, timer, args.precision, args.compile, args.threshold)
    tta = tta_plan(args.tta, predictor, budget)
    tracer = None if args.tracer == "auto" else args.tracer
    mask_path = run_grand_challenge(
        args.input, args.output, predictor, timer, progress=args.progress, tta=tta, tracer=tracer
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

    from petseg.app.console import setup_logging

    started = time.perf_counter()
    args = parse_arguments(process_parser(default_model_dir(script_dir)), argv)
    setup_logging(args.verbose)
    with private_caches():
        return guarded(functools.partial(_process, started=started), args)
