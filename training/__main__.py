"""`python -m training train|export|prepare ...` (train also under torchrun for several GPUs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from petseg.app.arguments import add_output, command_parser, parse_arguments, subcommands
from petseg.app.console import setup_logging
from petseg.app.runtime import guarded


def _loss_options(args: argparse.Namespace, loss: str) -> dict[str, float | bool]:
    options: dict[str, float | bool] = {}
    if loss == "l1dfl":
        options = {"eps": args.l1dfl_eps, "gamma": args.focal_gamma}
        if args.l1dfl_global_histogram:
            options["distributed"] = True
    if args.batch_dice:
        if loss not in ("dl", "dfl"):
            from training.config import TrainingError

            raise TrainingError(f"--batch-dice applies to the dl and dfl losses, not {loss}")
        options["batch"] = True
    return options


def _train(args: argparse.Namespace) -> int:
    from training.config import config_from_args, read_recipe
    from training.trainer import train

    loss = getattr(args, "loss", None) or read_recipe(args.recipe)["loss"]
    config = config_from_args(args, _loss_options(args, loss))
    result = train(config)
    print(f"best validation score {result.best_score:.4f} at epoch {result.best_epoch} ({config.out})")
    print(
        "next: train the other folds (--fold 0-4), then make the model folder with\n"
        f"  python -m training export {config.out.parent / '<run of each fold>'} ... --output MODEL_DIR"
    )
    return 0


def _suv_floor(text: str) -> tuple[str, float]:
    """One TRACER=SUV pair of `--suv-floor`."""
    tracer, _, value = text.partition("=")
    try:
        return tracer.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRACER=SUV (e.g. fdg=1.5), got {text!r}") from None


def _optional_probability(text: str) -> float | None:
    """`--component-filter`'s value: a probability, or none."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or none, got {text!r}") from None


def _optional_ml(text: str) -> float | None:
    """`--tune-lesion-free-fpv-ml`'s value: a volume in ml, or none."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a volume in ml or none, got {text!r}") from None


def _export(args: argparse.Namespace) -> int:
    from training.export import export

    if args.suv_floor is not None:
        args.suv_floor = dict(args.suv_floor)

    options = (
        "name",
        "synthetic",
        "threshold",
        "grow_to_suvmax_fraction",
        "grow_within_mm",
        "checkpoint",
        "component_filter",
        "suv_floor",
    )
    card = export(args.runs, args.out, **{option: getattr(args, option) for option in options})
    mean = card.provenance["validation_score_mean"]
    folds = len(card.folds)
    shown = "none" if mean is None else f"{mean:.4f}"
    print(f"exported {folds} fold(s) of {card.architecture.name} to {args.out} (mean validation {shown})")
    return 0


def _card(args: argparse.Namespace) -> int:
    from petseg.model.card import CARD_NAME, save_card
    from training.config import TrainConfig, TrainingError, read_recipe
    from training.export import recipe_card

    if args.folds < 1:
        raise TrainingError(f"--folds must be at least 1, got {args.folds}")
    config = TrainConfig.from_json(read_recipe(args.recipe))
    card_path = args.out / CARD_NAME
    if card_path.exists():
        raise TrainingError(f"{card_path}: a model card is already there; choose an empty --output")
    args.out.mkdir(parents=True, exist_ok=True)
    save_card(recipe_card(config, folds=args.folds, name=args.name), args.out)
    print(f"wrote {card_path}: the card of {args.recipe.name}, {args.folds} fold(s) to train")
    return 0


def _fit_components(args: argparse.Namespace) -> int:
    from training.components import fit_components

    card = fit_components(
        args.model,
        args.data,
        minimum_probability=args.minimum_probability,
        threshold=args.threshold,
        device=args.device,
        progress=not args.quiet,
    )
    assert card.component_filter is not None
    counts = ", ".join(
        f"{key}: {model.components} components, {model.lesions} lesions"
        for key, model in card.component_filter.models.items()
    )
    print(f"component filter fitted at threshold {card.ensemble.threshold:g} ({counts}); wrote {args.model}")
    return 0


def _growth(text: str) -> tuple[float | None, float]:
    """One `--growths` value: none, or FRACTION@MM."""
    if text.strip().lower() == "none":
        return None, 0.0
    fraction, _, within = text.partition("@")
    try:
        value = (float(fraction), float(within or 6.0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none or FRACTION@MM (e.g. 0.4@6), got {text!r}") from None
    if not (0.0 < value[0] <= 1.0 and 0.0 <= value[1] <= 100.0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the fraction must be in (0, 1] and the distance 0-100 mm"
        )
    return value


def _growth_text(growth: tuple[float | None, float]) -> str:
    """A growth as `--growths` reads it (the inverse of `_growth`), for the help's defaults."""
    fraction, within_mm = growth
    return "none" if fraction is None else f"{fraction:g}@{within_mm:g}"


def _tune(args: argparse.Namespace) -> int:
    from training.tune import run_tuning

    chosen, current = run_tuning(
        args.model,
        args.cases,
        thresholds=args.thresholds,
        minimum_probabilities=args.minimum_probabilities,
        growths=args.growths,
        device=args.device,
        output=args.out,
        write=args.write,
        progress=not args.quiet,
        lesion_free_fpv_ml=args.lesion_free_fpv_ml,
    )
    print(
        f"best: {chosen.setting.describe()}: mean Dice {chosen.mean_dice:.3f}, lesion-free FPV mean "
        f"{chosen.lesion_free_fpv_ml:.2f} ml, largest {chosen.largest_lesion_free_fpv_ml:.2f} ml (the card's "
        f"own: {current.mean_dice:.3f}, {current.lesion_free_fpv_ml:.2f} ml, "
        f"{current.largest_lesion_free_fpv_ml:.2f} ml)"
        + (f"; written to {args.model}" if args.write else "; --write puts it in the card")
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from training.demo import DemoRecipe, run_training_demo
    from training.trainer import network_spacing

    options = (
        "cases",
        "size",
        "evaluation_cases",
        "evaluation_negatives",
        "fdg_share",
        "folds",
        "epochs",
        "flip_probability",
        "hot_probability",
        "lesion_sampling",
        "misalign_probability",
        "organ_weight",
        "batch_dice",
        "val_every",
        "device",
        "parallel",
    )
    recipe = DemoRecipe(
        **{option: getattr(args, option) for option in options},
        workers=args.num_workers,
        spacing_mm=network_spacing(args.spacing_mm),
        tracers=DemoRecipe.tracers if args.split_by_tracer else (),
        organs=args.organs,
        suv_floor=dict(args.suv_floor) if args.suv_floor is not None else DemoRecipe.suv_floor,
        component_filter=args.component_filter,
        tune_lesion_free_fpv_ml=args.tune_lesion_free_fpv_ml,
    )
    card = run_training_demo(args.work, args.out, recipe, progress=not args.quiet)
    scores = card.provenance["validation_score"]
    print(f"demo ensemble in {args.out}: {len(card.folds)} fold(s), validation scores {scores}")
    return 0


def _evaluation_phantoms(args: argparse.Namespace) -> int:
    from collections import Counter

    from training.evaluation_set import META_FILE, write_evaluation_set

    rows = write_evaluation_set(
        args.out,
        args.cases,
        args.negatives,
        args.organs,
        args.seed,
        args.size,
        args.ct_shift_mm,
        progress=not args.quiet,
        workers=args.workers,
    )
    counts = ", ".join(f"{count} {name}" for name, count in Counter(row["centre"] for row in rows).items())
    print(f"{args.out}: {len(rows)} case folders ({counts}) and {META_FILE}")
    print(
        f"next: petseg predict --input {args.out} --model MODEL --output PRED, then\n"
        f"  petseg evaluate --gt {args.out} --pred PRED --meta {args.out / META_FILE} "
        "--compare OTHER_PRED ... --output REPORT"
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """Fill the preprocessing cache before training, in parallel and across machines.

    Every process (each a pool of --workers) takes its part of the sorted case ids; entries are written
    under a private name and renamed, so two processes that meet on one case both write it whole and one
    of the two identical entries stays.
    """
    import time

    from petseg.io.parts import check_part, take_part
    from petseg.model.settings import PreprocessSettings
    from training.config import TrainingError, network_spacing
    from training.data import CACHE_FOLDER, PreprocessedCache, discover_dataset

    if (args.parts is None) != (args.part is None):
        raise TrainingError("--parts and --part go together")
    parts, part = (args.parts, args.part) if args.parts is not None else (1, 0)
    try:
        check_part(parts, part)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if args.workers < 1:
        raise TrainingError(f"--workers must be at least 1, got {args.workers}")
    records = discover_dataset(args.data, args.organs)
    mine = take_part(records, parts, part, key=lambda record: record.case_id)
    settings = PreprocessSettings(spacing_mm=network_spacing(args.spacing_mm))
    cache = PreprocessedCache(args.cache_dir or args.data / CACHE_FOLDER, settings)
    started = time.perf_counter()
    missing = sum(not cache.path(record).is_file() for record in mine)
    cache.prepare(mine, progress=not args.quiet, workers=args.workers)
    minutes = (time.perf_counter() - started) / 60
    rate = f", {missing / minutes:.1f} cases per minute" if missing and minutes > 0 else ""
    shown = f" (part {part} of {parts}: {len(mine)} of {len(records)})" if parts > 1 else ""
    print(
        f"{cache.directory}: {len(mine)} case(s){shown}; {missing} preprocessed in {minutes * 60:.1f} s{rate}"
    )
    return 0


def _analyse_weighting(args: argparse.Namespace) -> int:
    from training.weighting import analyse_weighting

    out = args.out or Path(f"weighting-{args.loss}")
    result = analyse_weighting(
        args.model, args.data, args.loss, out, cases=args.cases, device=args.device, progress=not args.quiet
    )
    print(
        f"{args.loss}: Pearson r(difficulty, gradient norm) = {result['pearson']:.4f} over "
        f"{result['voxels']:,} voxels of {result['cases']} case(s); wrote {out / 'weighting.json'} and .png"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from petseg.inference.compute_choices import DEVICES
    from petseg.io.splits import TRACERS
    from petseg.model.networks import PRESETS
    from petseg.model.settings import EnsembleSettings
    from petseg.synthetic import SIZES
    from petseg.synthetic.generate import usable_cores
    from training.components import DEFAULT_MINIMUM_PROBABILITY
    from training.config import DEFAULT_RECIPE, add_config_arguments, add_field_options
    from training.data import AUGMENTATION_PLACES, LESION_SAMPLING
    from training.demo import DemoRecipe
    from training.export import CHECKPOINTS
    from training.losses import LOSSES
    from training.phantom_scores import EVALUATION_SEED
    from training.tune import DEFAULT_GROWTHS, DEFAULT_MINIMUM_PROBABILITIES, DEFAULT_THRESHOLDS, TUNING_FILE

    parser = command_parser("python -m training", "Train petseg fold ensembles.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    commands = subcommands(parser)

    train = commands.add_parser("train", help="train one fold (torchrun for several GPUs)")
    choices = {
        "losses": LOSSES,
        "architectures": sorted(PRESETS),
        "tracers": TRACERS,
        "devices": DEVICES,
        "augmentation_places": AUGMENTATION_PLACES,
        "lesion_sampling": LESION_SAMPLING,
    }
    add_config_arguments(train, choices)
    train.add_argument(
        "--batch-dice",
        action="store_true",
        help="dl/dfl: pool the Dice sums over the batch, so false positives in lesion-free patches count",
    )
    train.add_argument("--l1dfl-eps", type=float, default=0.1, help="L1DFL bin width")
    train.add_argument("--focal-gamma", type=float, default=2.0, help="L1DFL focal exponent")
    train.add_argument(
        "--l1dfl-global-histogram",
        action="store_true",
        help="under DDP, all-reduce L1DFL's difficulty histogram (default: per rank)",
    )
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="fold runs -> model folder (safetensors + model.json)")
    export.add_argument("runs", type=Path, nargs="+", help="run folders, one per fold")
    add_output(export, dest="out", type=Path, required=True, help="model folder to write")
    export.add_argument("--name", default=None, help="model name in the card")
    export.add_argument("--synthetic", action="store_true", help="mark the card as trained on synthetic data")
    export.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default="best",
        help="each fold's best-validated weights, or its final ones (the run must have finished)",
    )
    export.add_argument(
        "--threshold",
        type=float,
        default=EnsembleSettings.threshold,
        help="lesion probability above which a voxel is lesion",
    )
    export.add_argument(
        "--grow-to-suvmax-fraction",
        type=float,
        default=None,
        help="grow each predicted lesion to its contour at this fraction of its SUVmax (default: off)",
    )
    export.add_argument(
        "--grow-within-mm",
        type=float,
        default=EnsembleSettings.grow_within_mm,
        help="how far the growth may reach, in mm (default %(default)s)",
    )
    export.add_argument(
        "--suv-floor",
        type=_suv_floor,
        nargs="+",
        default=None,
        metavar="TRACER=SUV",
        help="remove predicted voxels below this SUV, per tracer (fdg=1.5 psma=1.0) or for all cases "
        "(all=1.0) (default: off)",
    )
    export.add_argument(
        "--component-filter",
        type=float,
        default=None,
        metavar="P",
        help="then fit a component filter (as fit-components) that removes predicted lesions below "
        "probability P (default: none)",
    )
    export.set_defaults(run=_export)

    card = commands.add_parser(
        "card", help="write the card a recipe's folds will be exported with, before there are weights"
    )
    card.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPE, help="training recipe (default: the autoPET III one)"
    )
    add_output(card, dest="out", type=Path, required=True, help="model folder to write model.json into")
    card.add_argument("--folds", type=int, default=5, help="number of folds (default %(default)s)")
    card.add_argument("--name", default=None, help="model name in the card")
    card.set_defaults(run=_card)

    components = commands.add_parser(
        "fit-components",
        help="fit a model's component filter from its folds' out-of-fold predictions on its training data",
    )
    components.add_argument("--model", type=Path, required=True, help="model folder (model.json + folds)")
    components.add_argument(
        "--data", type=Path, required=True, help="the dataset the folds trained on (with splits_final.json)"
    )
    components.add_argument(
        "--minimum-probability",
        type=float,
        default=DEFAULT_MINIMUM_PROBABILITY,
        help="predicted lesions the filter finds less likely than this are removed (default %(default)s)",
    )
    components.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the lesion-probability threshold to fit at and write to the card (default: the card's)",
    )
    components.add_argument("--device", choices=DEVICES, default="auto", help="where the folds run")
    components.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    components.set_defaults(run=_fit_components)

    tune = commands.add_parser(
        "tune",
        help="choose a model's threshold, lesion growth and component-filter cut-off on selection cases",
    )
    tune.add_argument("--model", type=Path, required=True, help="model folder (model.json + folds)")
    tune.add_argument(
        "--cases",
        type=Path,
        required=True,
        help="case folders with input/ and ground-truth/ that the folds never trained on (as "
        "evaluation-phantoms writes them, with another --seed than the evaluation's)",
    )
    tune.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=DEFAULT_THRESHOLDS,
        metavar="P",
        help="probability thresholds for the lesion mask",
    )
    tune.add_argument(
        "--minimum-probabilities",
        type=float,
        nargs="+",
        default=DEFAULT_MINIMUM_PROBABILITIES,
        metavar="P",
        help="component-filter cut-offs (searched where the card has a filter)",
    )
    tune.add_argument(
        "--growths",
        type=_growth,
        nargs="+",
        default=DEFAULT_GROWTHS,
        metavar="none|FRACTION@MM",
        help="growth to the contour at FRACTION of each lesion's SUVmax within MM (default: "
        + " ".join(_growth_text(g) for g in DEFAULT_GROWTHS)
        + ")",
    )
    tune.add_argument(
        "--lesion-free-fpv-ml",
        type=float,
        default=None,
        metavar="ML",
        help="choose among the settings that keep every lesion-free case at or below ML of false positives "
        "(default: a mean lesion-free FPV no larger than the card's own settings give)",
    )
    tune.add_argument("--device", choices=DEVICES, default="auto", help="where the folds run")
    add_output(
        tune, dest="out", type=Path, default=None, help=f"folder for {TUNING_FILE} (every setting's scores)"
    )
    tune.add_argument("--write", action="store_true", help="write the chosen setting into the model card")
    tune.add_argument("-q", "--quiet", action="store_true", help="no line per case written")
    tune.set_defaults(run=_tune)

    weighting = commands.add_parser(
        "analyse-weighting",
        help="difficulty |p - t| against the loss's per-voxel gradient: Pearson r and the binned curve",
    )
    weighting.add_argument("--model", type=Path, required=True, help="model folder (model.json + folds)")
    weighting.add_argument("--data", type=Path, required=True, help="nnU-Net-layout dataset with labels")
    weighting.add_argument("--loss", choices=LOSSES, required=True, help="the loss to analyse")
    weighting.add_argument("--cases", type=int, default=None, help="only the first N cases (default: all)")
    add_output(weighting, dest="out", type=Path, default=None, help="default: weighting-<loss>/")
    weighting.add_argument("--device", choices=DEVICES, default="auto", help="where the folds run")
    weighting.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    weighting.set_defaults(run=_analyse_weighting)

    prepare = commands.add_parser(
        "prepare",
        help="fill the preprocessing cache of a dataset in parallel (and in parts, across machines)",
    )
    prepare.add_argument(
        "--data", type=Path, required=True, help="nnU-Net-layout dataset (imagesTr, labelsTr)"
    )
    prepare.add_argument("--workers", type=int, default=2, help="processes of this run (1: in this process)")
    prepare.add_argument(
        "--parts", type=int, default=None, metavar="N", help="split the sorted case ids into N parts"
    )
    prepare.add_argument(
        "--part", type=int, default=None, metavar="K", help="the part this run fills (0 to N-1)"
    )
    add_field_options(prepare, {"spacing_mm": _train_defaults()["spacing_mm"]}, choices)
    prepare.add_argument(
        "--cache",
        dest="cache_dir",
        type=Path,
        default=None,
        help="preprocessed-case cache, as train's --cache (default DATA/.petseg-cache)",
    )
    prepare.add_argument(
        "--organs",
        type=Path,
        default=None,
        help="organ label maps, as train's --organs (cached with the case)",
    )
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(run=_prepare)

    defaults = DemoRecipe()
    evaluation = commands.add_parser(
        "evaluation-phantoms",
        help="write the demo's evaluation phantoms (fresh, held-out organ maps, lesion-free) as case folders",
    )
    add_output(evaluation, dest="out", type=Path, required=True, help="new folder for the case folders")
    evaluation.add_argument(
        "--cases", type=int, default=defaults.evaluation_cases, help="fresh phantoms with lesions"
    )
    evaluation.add_argument(
        "--negatives", type=int, default=defaults.evaluation_negatives, help="fresh lesion-free phantoms"
    )
    evaluation.add_argument(
        "--organs",
        type=Path,
        default=None,
        help="folder of organ label maps: one phantom around each map of its held-out side",
    )
    evaluation.add_argument(
        "--seed", type=int, default=EVALUATION_SEED, help="the phantoms' seed (not a training seed)"
    )
    evaluation.add_argument("--size", choices=SIZES, default=defaults.size, help="phantom size")
    evaluation.add_argument(
        "--ct-shift-mm",
        type=float,
        default=0.0,
        metavar="MM",
        help="move each CT against its PET by a rigid shift drawn per case, x, y and z each within +-MM, as "
        "breathing and motion do between the scans (default 0: registered perfectly)",
    )
    evaluation.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help="processes building cases side by side, about 1.5 GB of memory each at full size (default: "
        f"the {usable_cores()} cores this process may use); the cases are the same for any number",
    )
    evaluation.add_argument("-q", "--quiet", action="store_true", help="no line per case written")
    evaluation.set_defaults(run=_evaluation_phantoms)

    demo = commands.add_parser(
        "demo",
        help="phantoms -> five resunet-tiny folds per tracer (on the CPU by default) -> model folder",
    )
    add_output(
        demo,
        dest="out",
        type=Path,
        required=True,
        help="model folder to write (required: the shipped model/ is only replaced when you name it)",
    )
    demo.add_argument("--work", type=Path, default=Path("demo-training"), help="phantoms and fold runs")
    demo.add_argument("--cases", type=int, default=defaults.cases, help="number of phantom cases")
    demo.add_argument(
        "--size",
        choices=SIZES,
        default=defaults.size,
        help="phantom size: full (the real autoPET grids); tiny for quick checks of the path",
    )
    demo.add_argument(
        "--evaluation-cases",
        type=int,
        default=defaults.evaluation_cases,
        help="fresh phantoms with lesions scored after training (0: none)",
    )
    demo.add_argument(
        "--evaluation-negatives",
        type=int,
        default=defaults.evaluation_negatives,
        help="fresh lesion-free phantoms scored after training, for the false-positive volume (0: none)",
    )
    demo.add_argument(
        "--organs",
        type=Path,
        default=None,
        help="folder of organ label maps (NIfTI, e.g. the autoPET III maps): the first cases are built "
        "around the maps of its training side, and the held-out side (about one in four, fixed by file "
        "name) is scored after training; default: analytic phantoms only",
    )
    demo.add_argument(
        "--fdg-share",
        type=float,
        default=defaults.fdg_share,
        help="share of FDG patients among the phantoms, the rest PSMA",
    )
    demo.add_argument("--folds", type=int, default=defaults.folds, help="folds per ensemble")
    demo.add_argument(
        "--split-by-tracer",
        action=argparse.BooleanOptionalAction,
        default=bool(defaults.tracers),
        help="one ensemble per tracer, each trained on its tracer's phantoms (default); "
        "--no-split-by-tracer: one ensemble for every case",
    )
    fields_of_train = (
        "epochs",
        "spacing_mm",
        "hot_probability",
        "lesion_sampling",
        "flip_probability",
        "misalign_probability",
        "val_every",
    )
    add_field_options(demo, {name: getattr(defaults, name) for name in fields_of_train}, choices)
    demo.add_argument(
        "--organ-weight",
        type=float,
        default=defaults.organ_weight,
        help="train an organ head on the phantoms' own organ maps, its loss weighted so against the lesion "
        "loss (0: no organ head)",
    )
    demo.add_argument(
        "--suv-floor",
        type=_suv_floor,
        nargs="+",
        default=None,
        metavar="TRACER=SUV",
        help="the card's SUV floor, per tracer (fdg=1.5 psma=1.0) or for all cases (all=1.0) "
        f"(recipe default: {defaults.suv_floor})",
    )
    demo.add_argument(
        "--component-filter",
        type=_optional_probability,
        default=defaults.component_filter,
        metavar="P|none",
        help="fit a component filter that removes predicted lesions below probability P; none: no filter "
        "(recipe default: %(default)s)",
    )
    demo.add_argument(
        "--tune-lesion-free-fpv-ml",
        type=_optional_ml,
        default=defaults.tune_lesion_free_fpv_ml,
        metavar="ML|none",
        help="then choose the threshold, growth and filter cut-off on selection phantoms of seed "
        f"{defaults.selection_seed} (as `tune`), keeping every lesion-free one at or below ML of false "
        "positives; none: keep the recipe's (recipe default: %(default)s)",
    )
    demo.add_argument(
        "--batch-dice",
        action=argparse.BooleanOptionalAction,
        default=defaults.batch_dice,
        help="pool the Dice over the batch, so false positives in lesion-free patches count",
    )
    add_field_options(demo, {"num_workers": defaults.workers, "device": defaults.device}, choices)
    demo.add_argument(
        "--parallel",
        type=int,
        default=defaults.parallel,
        help="folds trained at once, each in its own process (a GPU has room for all five)",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    return parser


def _train_defaults() -> dict[str, object]:
    """train's defaults, from the default recipe, so that prepare fills the cache train will read."""
    from dataclasses import MISSING, fields

    from training.config import TrainConfig

    return {
        f.name: f.default if f.default_factory is MISSING else f.default_factory()
        for f in fields(TrainConfig)
        if f.default is not MISSING or f.default_factory is not MISSING
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    setup_logging(args.verbose)
    return guarded(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
