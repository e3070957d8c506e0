"""One typed training configuration: its defaults come from a recipe file, its command-line options are
built from its fields, and a run's `run.json` is read back into it.

A recipe is a data file (`training/recipes/*.json`, format "petseg-training-recipe"): the `train` object
holds values for the fields below. `autopet3-resunet-gdfl.json` is the default recipe, so the dataclass
defaults, the `python -m training train` defaults shown by `--help` and the autoPET III recipe are one set
of numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from petseg.errors import PetsegError
from petseg.model.settings import EnsembleSettings

RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = RECIPES / "autopet3-resunet-gdfl.json"
RECIPE_FORMAT = "petseg-training-recipe"
# Settings that may change when a run is resumed; everything else must match the stored run.
# Where and how a run computes, not what it learns: free to change on resume, and not compared by export.
RESUMABLE = {"resume", "num_workers", "device", "augment_on", "cache_dir", "progress"}
# What runs made before a setting existed did, where that differs from the setting's default today: a run.json
# without the field was trained so (resuming and exporting it must not assume today's default).
BEFORE_THE_FIELD = {"misalign_probability": 0.0}


class TrainingError(PetsegError):
    exit_code = 6


def read_recipe(path: Path) -> dict[str, Any]:
    """The `train` settings of a recipe file, checked to be fields of `TrainConfig`; one-line errors."""
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingError(f"{path}: cannot read the recipe: {error}") from None
    except json.JSONDecodeError as error:
        raise TrainingError(f"{path}: not valid JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise TrainingError(f"{path}: not a training recipe (format {RECIPE_FORMAT!r})")
    settings = recipe.get("train")
    if not isinstance(settings, dict):
        raise TrainingError(f"{path}: the recipe has no 'train' object")
    known = {f.name for f in fields(TrainConfig)} if "TrainConfig" in globals() else None
    unknown = sorted(set(settings) - known) if known is not None else []
    if unknown:
        raise TrainingError(f"{path}: unknown training setting(s) {', '.join(unknown)}")
    return settings


_RECIPE = read_recipe(DEFAULT_RECIPE)


def _default(name: str, **cli: Any) -> Any:
    """A field whose default is the default recipe's value; `cli` describes its command-line option."""
    value = _RECIPE[name]
    if isinstance(value, (dict, list)):
        frozen = tuple(value) if isinstance(value, list) else None
        if frozen is not None:
            return field(default=frozen, metadata={"cli": cli})
        return field(default_factory=lambda: dict(value), metadata={"cli": cli})
    return field(default=value, metadata={"cli": cli})


@dataclass
class TrainConfig:
    """Everything that defines a training run of one fold."""

    data: Path = field(metadata={"cli": {"help": "nnU-Net-layout dataset (imagesTr, labelsTr)"}})
    fold: int = field(metadata={"cli": {"help": "the fold to train (its validation cases are held out)"}})
    out: Path = field(metadata={"cli": {"help": "run folder"}})
    loss: str = _default("loss", choices="losses", help="the loss")
    arch: str = _default("arch", choices="architectures", help="the network")
    # constructor overrides, e.g. channels
    arch_args: dict[str, Any] = _default(  # noqa: RUF009 (a default_factory of the recipe's value)
        "arch_args", kind="json", help="JSON object of network constructor overrides, e.g. "
        "'{\"channels\": [12, 24, 48, 96]}'",
    )  # fmt: skip
    # The network grid (x, y, z in mm); the exported card's `preprocessing.spacing_mm`.
    spacing_mm: tuple[float, float, float] = _default(
        "spacing_mm", kind="spacing", help="the network grid: one value (isotropic) or x y z, in mm; "
        "written to the card's preprocessing",
    )  # fmt: skip
    # Train and validate on this tracer's cases only (by the autoPET case-id prefix); None: every case.
    tracer: str | None = _default(
        "tracer", choices="tracers", help="train and validate on this tracer's cases only (case ids "
        "fdg_... / psma_...); none: all",
    )  # fmt: skip
    epochs: int = _default("epochs", help="epochs of the cosine schedule")
    learning_rate: float = _default("learning_rate", flag="--lr", help="AdamW learning rate")
    weight_decay: float = _default("weight_decay", help="AdamW weight decay")
    batch_size: int = _default("batch_size", help="patches per step, per GPU / process")
    patch_size: int = _default("patch_size", help="patch side in network-grid voxels")
    samples_per_epoch: int | None = _default(
        "samples_per_epoch", help="patches per epoch; default: one per training case"
    )
    lesion_probability: float = _default("lesion_probability", help="share of lesion-centred patches")
    # how a lesion-centred patch picks its lesion (training.data.LESION_SAMPLING)
    lesion_sampling: str = _default(
        "lesion_sampling", choices="lesion_sampling", help="centre a lesion patch on any lesion voxel alike "
        "(voxel), or on one lesion drawn first, each alike (lesion)",
    )  # fmt: skip
    # share of patches centred on hot non-lesion uptake (training.data)
    hot_probability: float = _default(
        "hot_probability", help="share of patches centred on hot uptake outside the lesions (glands, "
        "kidneys, ...)",
    )  # fmt: skip
    hot_suv: float = _default("hot_suv", help="SUV above which uptake is hot")
    # left-right mirrored patches (training.data)
    flip_probability: float = _default("flip_probability", help="probability of a left-right mirrored patch")
    # the CT channel alone rotated and shifted against the PET (training.data.CTMisalignment)
    misalign_probability: float = _default(
        "misalign_probability", help="probability of a CT rotation, and separately of a CT shift, against "
        "the PET (0: off)",
    )  # fmt: skip
    misalign_rotation_deg: float = _default("misalign_rotation_deg", help="largest CT rotation per axis")
    misalign_shift_voxels: int = _default("misalign_shift_voxels", help="largest CT shift (x, y), voxels")
    # Organ supervision: organ label maps <case>.nii.gz (petseg.model.organs values); None: no organ head.
    # Off in the code; a recipe names a folder relative to the dataset (the autoPET III recipe: organsTr),
    # which `config_from_args` resolves once the dataset is known.
    organs: Path | None = field(
        default=None,
        metadata={"cli": {"help": "folder of organ label maps <case>.nii.gz (the autoPET III files, or a "
                                  "phantom dataset's organsTr): adds an organ head; a recipe's folder is "
                                  "relative to --data; none: no organ head"}},
    )  # fmt: skip
    organ_weight: float = _default("organ_weight", help="weight of the organ head's loss (lesion loss: 1)")
    augment: bool = _default("augment", kind="negated", flag="--no-augment", help="no augmentation")
    # where the patches are augmented (training.data.augmentation_on)
    augment_on: str = _default(
        "augment_on", choices="augmentation_places", help="augment the patches in the loader's workers or "
        "on the training device after the batch has moved there; auto: the loader (faster on a GPU too)",
    )  # fmt: skip
    # set by the loss's own options (--batch-dice, --l1dfl-eps, ...), not one option of its own
    loss_options: dict[str, float | bool] = _default("loss_options", kind="loss_options")  # noqa: RUF009
    val_every: int = _default("val_every", help="validate every N epochs")
    window: int = _default("window", help="validation sliding window side (as inference)")
    overlap: float = _default("overlap", help="validation sliding-window overlap")
    sw_batch_size: int = _default("sw_batch_size", help="windows per batch in validation")
    seed: int = _default("seed", help="the seed all randomness of an epoch derives from")
    num_workers: int = _default("num_workers", flag="--workers", help="data-loading processes")
    device: str = _default("device", choices="devices", help="where to train")
    cache_dir: Path | None = field(
        default=None, metadata={"cli": {"flag": "--cache", "help": "preprocessed-case cache (default "
                                        "DATA/.petseg-cache)"}},
    )  # fmt: skip
    resume: bool = field(
        default=False, metadata={"cli": {"kind": "flag", "help": "continue the run in --out exactly"}}
    )
    progress: bool = field(
        default=True, metadata={"cli": {"kind": "negated", "flag": "--quiet", "help": "no progress bars"}}
    )

    def comparable(self) -> dict[str, Any]:
        """The settings that define the run (what resume and export compare)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RESUMABLE}
        return json.loads(json.dumps(data, default=str))

    @property
    def ensemble(self) -> EnsembleSettings:
        window = (self.window,) * 3
        return EnsembleSettings(roi_size=window, overlap=self.overlap, sw_batch_size=self.sw_batch_size)

    @property
    def organ_classes(self) -> int:
        """Outputs of the organ head: the autoPET III organ classes with `organs`, else none."""
        from petseg.model.organs import ORGAN_CLASSES

        return ORGAN_CLASSES if self.organs is not None else 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """A run's settings as `run.json` holds them (`comparable()` plus the run's own), typed again; a
        setting an older run.json lacks was at its default then."""
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values = {**{k: v for k, v in BEFORE_THE_FIELD.items() if k not in values}, **values}
        for name in ("data", "out", "cache_dir", "organs"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        if "spacing_mm" in values:
            values["spacing_mm"] = network_spacing(values["spacing_mm"])
        missing = [f.name for f in known.values() if f.default is MISSING and f.name not in values]
        for name in missing:  # the run's folder settings: not part of what defines it
            values[name] = Path(".") if name in ("data", "out") else 0
        return cls(**values)


def comparable_defaults() -> dict[str, Any]:
    """The defaults of the settings that have one, as `TrainConfig.comparable` writes them."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    defaults |= {f.name: f.default_factory() for f in fields(TrainConfig) if f.default_factory is not MISSING}
    return json.loads(json.dumps({k: v for k, v in defaults.items() if k not in RESUMABLE}, default=str))


def network_spacing(values: Sequence[float]) -> tuple[float, float, float]:
    """A network grid's spacing in mm, x y z, from one value (isotropic) or three; else a one-line error."""
    spacing = [float(v) for v in values]
    if len(spacing) == 1:
        spacing *= 3
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        shown = " ".join(f"{v:g}" for v in values)
        raise TrainingError(f"--spacing-mm takes one positive value or three (x y z), got {shown}")
    return (spacing[0], spacing[1], spacing[2])


# ---------------------------------------------------------------- the command line, built from the fields


def add_config_arguments(parser: argparse.ArgumentParser, choices: dict[str, Sequence[str]]) -> None:
    """One option per field of `TrainConfig`, its help and default from the field; `--recipe` as well.

    Options default to "not given" (argparse.SUPPRESS), so `config_from_args` can tell what the user set
    from what the recipe sets. `choices` names the allowed values of the fields that have some.
    """
    parser.add_argument(
        "--recipe",
        type=Path,
        default=DEFAULT_RECIPE,
        help=f"training recipe (format petseg-training-recipe) whose settings the options below override "
        f"(default "
        f"{DEFAULT_RECIPE.relative_to(RECIPES.parents[1])})",
    )
    for spec in fields(TrainConfig):
        cli = spec.metadata.get("cli")
        if cli is None or cli.get("kind") == "loss_options":
            continue
        _add_field_option(parser, spec, choices, argparse.SUPPRESS, "recipe default")


def add_field_options(
    parser: argparse.ArgumentParser,
    defaults: dict[str, Any],
    choices: dict[str, Sequence[str]],
) -> None:
    """Options for some fields of `TrainConfig`, with other defaults (the demo's): the same flags, types
    and help as `train`'s, so a setting reads the same wherever it is given."""
    by_name = {spec.name: spec for spec in fields(TrainConfig)}
    for name, default in defaults.items():
        _add_field_option(parser, by_name[name], choices, default, "default")


def _add_field_option(
    parser: argparse.ArgumentParser,
    spec: Any,
    choices: dict[str, Sequence[str]],
    default: Any,
    default_label: str,
) -> None:
    cli = spec.metadata["cli"]
    flag = cli.get("flag", "--" + spec.name.replace("_", "-"))
    kind = cli.get("kind", "value")
    required = spec.default is MISSING and spec.default_factory is MISSING
    shown = "" if required else f" ({default_label}: {_shown(spec, default)})"
    options: dict[str, Any] = {"dest": spec.name, "help": cli.get("help", "") + shown}
    if kind == "value":
        options["metavar"] = flag.lstrip("-").upper().replace("-", "_")
    if required:
        options["required"] = True
    else:
        options["default"] = default
    if kind == "flag":
        options["action"] = "store_true"
    elif kind == "negated":
        options["action"] = "store_false"
    elif kind == "json":
        options["metavar"] = "JSON"  # parsed by config_from_args, with a one-line TrainingError
    elif kind == "spacing":
        options.update(type=float, nargs="+", metavar="MM")
    else:
        options["type"] = _field_type(spec)
        if "choices" in cli:
            options["choices"] = choices[cli["choices"]]
            del options["metavar"]
    flags = {"--quiet": [flag, "-q"], "--out": ["--output", flag]}.get(flag, [flag])
    parser.add_argument(*flags, **options)


def config_from_args(args: argparse.Namespace, loss_options: dict[str, float | bool]) -> TrainConfig:
    """The recipe's settings, overridden by the options given; `loss_options` from the loss's own flags."""
    settings = read_recipe(args.recipe)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if "arch_args" in given:
        given["arch_args"] = json_object(given["arch_args"], "--arch-args")
    settings = {**settings, **given}
    settings["organs"] = _organs_folder(args.recipe, settings, from_recipe="organs" not in given)
    if "spacing_mm" in settings:
        settings["spacing_mm"] = network_spacing(settings["spacing_mm"])
    if loss_options:
        settings["loss_options"] = {**settings.get("loss_options", {}), **loss_options}
    return TrainConfig(**settings)


def _organs_folder(recipe: Path, settings: dict[str, Any], *, from_recipe: bool) -> Path | None:
    """The organ maps' folder of a run: `--organs` as given (`none`: no organ head), or the recipe's folder
    inside the dataset, which must then be there, since a recipe that trains an organ head should not
    quietly train without one."""
    organs = settings.get("organs")
    if organs is None or str(organs).lower() == "none":
        return None
    if not from_recipe:
        return Path(organs)
    folder = Path(organs) if Path(organs).is_absolute() else Path(settings["data"]) / organs
    if not folder.is_dir():
        raise TrainingError(
            f"{folder}: organ maps not found (the recipe {Path(recipe).name} trains an organ head on "
            f"DATASET/{organs}); give --organs DIR, or --organs none to train without one"
        )
    return folder


def _shown(spec: Any, value: Any = argparse.SUPPRESS) -> str:
    """A default as `--help` shows it: the field's own (the recipe's), unless another is given."""
    if value is argparse.SUPPRESS and spec.name in _RECIPE:  # organs: a folder the recipe names
        value = _RECIPE[spec.name]
    elif value is argparse.SUPPRESS:
        value = spec.default if spec.default is not MISSING else spec.default_factory()
    if isinstance(value, (tuple, list)):
        return " ".join(f"{v:g}" for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return "none" if value is None else str(value)


def _field_type(spec: Any) -> Any:
    text = str(spec.type)
    if "Path" in text:
        return Path
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def json_object(text: str, flag: str) -> dict[str, Any]:
    """An option's JSON object (e.g. `--arch-args`); anything else is a one-line TrainingError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingError(f"{flag} is not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise TrainingError(f"{flag} must be a JSON object of constructor arguments, got {text!r}")
    return value
