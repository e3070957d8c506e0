"""`process.py`: the Grand-Challenge "exec" entry point, one case from /input to /output."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from petseg.app.arguments import command_parser, parse_arguments
from petseg.app.runtime import (
    add_container_arguments,
    default_model_dir,
    guarded,
    load_predictor,
    positive_seconds,
    private_caches,
)

log = logging.getLogger("petseg")


def process_parser(default_model: Path) -> argparse.ArgumentParser:
    from petseg.inference.tta import DEFAULT_TIME_BUDGET_S

    parser = command_parser(
        "process.py", "Segment the PET/CT case in a Grand-Challenge input folder (autoPET contract)."
    )
    add_container_arguments(parser, default_model)
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show the sliding-window progress bar (off by default: in the container the log is a file)",
    )
    parser.add_argument(
        "--time-budget",
        type=positive_seconds,
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
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    return parser


def _process(args: argparse.Namespace, started: float | None = None) -> int:
    """Load the ensemble and segment the case; the time budget counts from `started` (perf_counter)."""
    from petseg.inference.pipeline import run_grand_challenge
    from petseg.inference.timing import StageTimer
    from petseg.inference.tta import MirrorTTA, TimeBudget

    budget = TimeBudget(args.time_budget, start=started)
    timer = StageTimer()
    predictor = load_predictor(args.model, args.device, timer, args.precision, args.compile)
    tta = None
    if args.tta == "auto":
        mirrors = predictor.card.ensemble.mirror_axes
        tta = MirrorTTA(budget) if mirrors is None else MirrorTTA(budget, axes=mirrors)
        if not tta.axes:
            log.info("--tta auto: the card lists no mirror its networks were trained with; one plain pass")
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
