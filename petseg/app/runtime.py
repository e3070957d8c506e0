"""What every entry point shares at run time: loading the ensemble, turning failures into one line and an
exit code, SIGTERM as an exception while a run is guarded, private caches, and the container's arguments.

`process.py` (`petseg.app.process`), `app.py` (`petseg.app.server`), the `petseg` command line and
`python -m training` all run through `guarded`, so a failure looks the same from each of them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from petseg.app.arguments import add_output
from petseg.errors import PetsegError

if TYPE_CHECKING:  # torch is imported with the ensemble, not with the argument parsers
    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer
    from petseg.inference.tta import MirrorTTA, TimeBudget

log = logging.getLogger("petseg")

CONTAINER_MODEL_DIR = Path("/opt/ml/model")
REPO_MODEL_DIR = Path(__file__).resolve().parents[2] / "model"


class Terminated(BaseException):
    """SIGTERM (docker stop, a platform time-out) raised as an exception, so that cleanup runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
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


def load_predictor(
    model_dir: Path,
    device: str,
    timer: StageTimer,
    precision: str = "auto",
    compile: bool = False,
    threshold: float | None = None,
) -> Predictor:
    """The model folder's ensemble on its device, described in the log; `threshold` overrides the card's."""
    from petseg.inference.predict import Predictor

    with timer.stage("load model"):
        predictor = Predictor.load(model_dir, device, precision=precision, compile=compile)
    if threshold is not None:
        card = predictor.card
        predictor.card = replace(card, ensemble=replace(card.ensemble, threshold=threshold))
        log.info("threshold %g (the card's: %g)", threshold, card.ensemble.threshold)
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
    if not card.trained:
        log.warning("UNTRAINED model (%s): its masks are meaningless", model_dir)
    elif card.provenance.get("synthetic"):
        log.warning(
            "model %s was trained on SYNTHETIC phantoms only: a demonstration, not for real scans", card.name
        )
    return predictor


def positive_seconds(text: str) -> float:
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
    from petseg.inference.compute_choices import PRECISIONS, device_argument

    parser.add_argument(
        "--device",
        type=device_argument,
        default="auto",
        metavar="auto|cuda|cuda:N|cpu",
        help="auto: the GPU where there is one, else the CPU; cuda:N: GPU N (under torchrun, auto and cuda "
        "mean each rank's cuda:LOCAL_RANK)",
    )
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


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """--time-budget, --tta and --threshold: how each case is segmented, as process.py and predict take
    them."""
    from petseg.inference.tta import DEFAULT_TIME_BUDGET_S

    parser.add_argument(
        "--time-budget",
        type=positive_seconds,
        default=DEFAULT_TIME_BUDGET_S,
        metavar="SECONDS",
        help="seconds allowed for a case, counted from its start (for process.py, from the start of the "
        f"program, model loading included) (default {DEFAULT_TIME_BUDGET_S:g}, the autoPET III limit); "
        "--tta auto spends what the first pass leaves of it, less a safety margin",
    )
    parser.add_argument(
        "--tta",
        choices=("off", "auto"),
        default="off",
        help="mirroring test-time augmentation: off (default: one pass), or auto: as many of the "
        "card's mirrored passes (ensemble.mirror_axes; all 7 where it has none) as fit in --time-budget, "
        "averaged with the first",
    )
    parser.add_argument(
        "--threshold",
        type=probability,
        default=None,
        metavar="P",
        help="lesion probability above which a voxel is lesion (default: the card's ensemble.threshold)",
    )


def probability(text: str) -> float:
    """argparse type of --threshold: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def tta_plan(choice: str, predictor: Predictor, budget: TimeBudget) -> MirrorTTA | None:
    """The mirrored passes `--tta` asks for within `budget`; None for one plain pass."""
    from petseg.inference.tta import MirrorTTA

    if choice != "auto":
        return None
    mirrors = predictor.card.ensemble.mirror_axes
    tta = MirrorTTA(budget) if mirrors is None else MirrorTTA(budget, axes=mirrors)
    if not tta.axes:
        log.info("--tta auto: the card lists no mirror its networks were trained with; one plain pass")
    return tta


def add_container_arguments(parser: argparse.ArgumentParser, default_model: Path) -> None:
    """--input, --output, --model and the compute options, as process.py and app.py both take them."""
    parser.add_argument("--input", type=Path, default=Path("/input"), help="input folder (default /input)")
    add_output(parser, type=Path, default=Path("/output"), help="output folder (default /output)")
    parser.add_argument(
        "--model",
        type=Path,
        default=default_model,
        help=f"model folder with model.json (default {default_model})",
    )
    add_compute_arguments(parser)


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
