"""The model card (`model.json`): the one description of a trained ensemble.

Architecture, preprocessing, fold weight files, sliding-window settings and provenance live here and
nowhere else; training writes a card, inference reads it, so the two cannot drift apart. The card is
validated field by field before anything else is loaded, and every problem is reported as one line that
names the file and the field.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from petseg.errors import ModelError
from petseg.io.files import check_link_inside
from petseg.model.components import ALL_TRACERS, ComponentFilter, ComponentModel
from petseg.model.components import FEATURES as COMPONENT_FEATURES
from petseg.model.input_range import InputRange
from petseg.model.logistic import LogisticWeights
from petseg.model.settings import (
    AVERAGING,
    BACK_INTERPOLATIONS,
    BLEND_MODES,
    CARD_NAME,
    CHANNELS,
    Architecture,
    EnsembleSettings,
    Fold,
    PreprocessSettings,
    check_relative_path,
)
from petseg.model.tracer import CLASSES as TRACERS
from petseg.model.tracer import TracerClassifier

CARD_FORMAT = "petseg-model-card"
CARD_VERSION = 2  # 2 adds `training`, the settings the folds were trained with
READ_VERSIONS = (1, 2)  # cards of version 1 still load
# Bounds on what a card may ask for, checked at load: beyond them a card would end in the allocator (or in
# a float overflow) at load or at the first case instead of being refused as a bad card.
MAX_INT_DIGITS = 30
ROI_SIDE_RANGE = (16, 512)
MAX_SW_BATCH_SIZE = 64
ARCHITECTURE_NUMBER_RANGE = (0, 4096)
MAX_ARCHITECTURE_ITEMS = 16
SPACING_MM_RANGE = (0.1, 20.0)
MAX_BODY_MARGIN_MM = 500.0


@dataclass(frozen=True)
class ModelCard:
    name: str
    architecture: Architecture
    preprocessing: PreprocessSettings
    folds: tuple[Fold, ...]
    ensemble: EnsembleSettings
    provenance: dict[str, Any]
    # Names the tracer of a case for cards with one ensemble per tracer (folds with `tracer`).
    tracer_classifier: TracerClassifier | None = None
    # Removes predicted components that are unlikely lesions (`petseg.model.components`); None: keeps all.
    component_filter: ComponentFilter | None = None
    # The training settings every fold shared (`training.config.TrainConfig`, less what differs per fold),
    # written by `training export`: the card alone says how its folds were made. None: not recorded.
    training: dict[str, Any] | None = None
    # The PET grids the folds were trained on (written by `training export`); None: not recorded.
    input_range: InputRange | None = None
    path: Path | None = None

    @property
    def trained(self) -> bool:
        return bool(self.provenance.get("trained", False))

    @property
    def tracers(self) -> tuple[str, ...]:
        """The tracers the folds are split by; empty when every fold serves every case."""
        return tuple(t for t in TRACERS if any(fold.tracer == t for fold in self.folds))

    def describe_ensemble(self) -> str:
        """E.g. "5-fold resunet-tiny ensemble", or "5-fold resunet-tiny ensembles for FDG and PSMA"."""
        name = self.architecture.name
        if not self.tracers:
            return f"{len(self.folds)}-fold {name} ensemble"
        sizes = {sum(f.tracer == t for f in self.folds) for t in self.tracers}
        folds = f"{sizes.pop()}-fold" if len(sizes) == 1 else f"{len(self.folds)} folds in"
        return f"{folds} {name} ensembles for {' and '.join(t.upper() for t in self.tracers)}"

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": CARD_FORMAT,
            "version": CARD_VERSION,
            "name": self.name,
            "architecture": {
                key: value
                for key, value in asdict(self.architecture).items()
                if key != "organ_classes" or value  # written only for a network with an organ head
            },
            "preprocessing": asdict(self.preprocessing),
            "folds": [fold.to_json() for fold in self.folds],
            "ensemble": asdict(self.ensemble),
            "provenance": dict(self.provenance),
        }
        if self.tracer_classifier is not None:
            data["tracer_classifier"] = self.tracer_classifier.to_json()
        if self.component_filter is not None:
            data["component_filter"] = self.component_filter.to_json()
        if self.training is not None:
            data["training"] = dict(self.training)
        if self.input_range is not None:
            data["input_range"] = self.input_range.to_json()
        return json.loads(json.dumps(data))  # tuples -> lists


class _Reader:
    """Typed access to one JSON object, with errors that name file and field."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ModelError(f"{source}: {where or 'card'} must be a JSON object")
        self.data = data
        self.where = where
        self.source = source

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.source}: {self._name(key)} {problem}")

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise self.fail(key, f"must be {_kind_names(kinds)}, got {_shown(value)}")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {_kind_names(kinds)}, got {_shown(value)}")
        return value

    def number(
        self, key: str, default: Any = ..., low: float | None = None, high: float | None = None
    ) -> float:
        """A finite number: NaN compares false with every bound, so it would pass the range check."""
        raw = self.get(key, (int, float), default)
        value = _finite(raw)
        if value is None:
            raise self.fail(key, f"must be a finite number, got {_shown(raw)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"must be in [{low}, {high}], got {value}")
        return value

    def numbers(self, key: str, length: int, default: Any = ..., positive: bool = False) -> tuple:
        """A list of `length` finite numbers (see `number`)."""
        value = self.get(key, list, list(default) if isinstance(default, tuple) else default)
        if len(value) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise self.fail(key, f"must be a list of {length} numbers, got {_shown(value)}")
        if any(_finite(v) is None for v in value):
            raise self.fail(key, f"must hold finite numbers, got {_shown(value)}")
        if positive and any(v <= 0 for v in value):
            raise self.fail(key, f"must be positive, got {_shown(value)}")
        return tuple(value)

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def unknown_keys(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise ModelError(f"{self.source}: unknown field(s) {', '.join(self._name(k) for k in extra)}")


def _finite(value: Any) -> float | None:
    """`value` as a finite float; None for NaN, infinities and integers beyond float range."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> str:
    """A value for an error message: repr, shortened, and never Python's refusal to print an integer
    of more than 4300 digits."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too long to print"
    return text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"


class _LongInteger:
    """An integer literal of more than `MAX_INT_DIGITS` digits, kept unconverted: Python refuses to
    convert one of more than 4300 digits, and one of more than 308 overflows every float."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"a {self.digits}-digit integer"


def _parse_int(text: str) -> int | _LongInteger:
    return _LongInteger(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _number_problem(value: Any) -> str | None:
    if isinstance(value, _LongInteger):
        return f"is {value!r}; a card's integers have at most {MAX_INT_DIGITS} digits"
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
        return f"is an integer of more than {MAX_INT_DIGITS} digits; a card's integers have at most that"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None


def _walk(name: str, data: Any) -> Iterator[tuple[str, Any]]:
    """Every value under `data` with its field name (`a.b[2]`), containers before what they hold, in
    reading order. Iterative, so that no nesting depth can crash it; a container met twice is walked once."""
    stack: list[tuple[str, Any]] = [(name, data)]
    seen: set[int] = set()
    while stack:
        name, value = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, dict):
                items = [(f"{name}.{key}" if name else str(key), item) for key, item in value.items()]
            else:
                items = [(f"{name}[{index}]", item) for index, item in enumerate(value)]
            stack.extend(reversed(items))
        yield name, value


def check_numbers(data: Any, source: str, where: str = "") -> None:
    """Refuse NaN, infinities and overlong integers anywhere in `data`, naming the field.

    NaN compares false with every bound, so a NaN threshold, spacing or overlap would pass the range
    checks and fail every case (or give empty masks) instead. The first problem in reading order is the
    one reported.
    """
    for name, value in _walk(where, data):
        if not isinstance(value, (dict, list, tuple)) and (problem := _number_problem(value)) is not None:
            raise ModelError(f"{source}: {name or 'card'} {problem}")


def read_card_json(path: Path) -> Any:
    """The JSON of a card file, every problem a `ModelError` naming the file (and the field, if any).

    A card holds small, finite numbers in shallow nesting; anything else (100,000 nested arrays, 1e400,
    NaN, a 5,001-digit integer) is a bad card, not a crash in the JSON reader or in a float conversion.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: cannot read model card: {error}") from None
    try:
        # NaN and the infinities are read as floats so that `check_numbers` can name their field.
        data = json.loads(text, parse_constant=float, parse_float=float, parse_int=_parse_int)
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: not valid JSON: {error.msg} at line {error.lineno}") from None
    except RecursionError:
        raise ModelError(f"{path}: not a model card: its JSON is nested too deeply to read") from None
    except (ValueError, OverflowError) as error:
        raise ModelError(f"{path}: not valid JSON: {' '.join(str(error).split())[:200]}") from None
    check_numbers(data, str(path))
    return data


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    names[dict] = "an object"
    names[type(None)] = "null"
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_card(data: Any, source: str = CARD_NAME) -> ModelCard:
    """Validate a card's JSON and build the typed card."""
    root = _Reader(data, "", source)
    check_numbers(data, source)
    root.unknown_keys(
        {
            "format",
            "version",
            "name",
            "architecture",
            "preprocessing",
            "folds",
            "ensemble",
            "provenance",
            "tracer_classifier",
            "component_filter",
            "training",
            "input_range",
        }
    )
    if root.get("format", str) != CARD_FORMAT:
        raise root.fail("format", f"must be {CARD_FORMAT!r}")
    version = root.get("version", int)
    if version not in READ_VERSIONS:
        raise root.fail(
            "version", f"is {version}; this petseg reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    training = root.get("training", (dict, type(None)), None)
    if training is not None and version < 2:
        raise root.fail("training", "needs a card of version 2")

    arch = _Reader(root.get("architecture", dict), "architecture", source)
    arch.unknown_keys({"name", "args", "organ_classes"})
    organ_classes = arch.get("organ_classes", int, 0)
    if not 0 <= organ_classes <= MAX_ORGAN_CLASSES or organ_classes == 1:
        raise arch.fail(
            "organ_classes", f"must be 0 (no organ head) or 2 to {MAX_ORGAN_CLASSES}, got {organ_classes}"
        )
    architecture = Architecture(
        name=arch.get("name", str), args=dict(arch.get("args", dict, {})), organ_classes=organ_classes
    )
    _check_architecture_args(architecture.args, source)

    defaults = PreprocessSettings()
    pre = _Reader(root.get("preprocessing", dict, {}), "preprocessing", source)
    pre.unknown_keys(set(asdict(defaults)))
    channels = tuple(pre.get("channels", list, list(defaults.channels)))
    if channels != CHANNELS:
        raise pre.fail("channels", f"must be {list(CHANNELS)} (CT first, then PET), got {list(channels)}")
    window = pre.numbers("ct_window_hu", 2, defaults.ct_window_hu)
    if window[0] >= window[1]:
        raise pre.fail("ct_window_hu", f"must be [low, high] with low < high, got {list(window)}")
    spacing = pre.numbers("spacing_mm", 3, defaults.spacing_mm, positive=True)
    low, high = SPACING_MM_RANGE
    if not all(low <= v <= high for v in spacing):
        raise pre.fail("spacing_mm", f"must hold spacings in [{low}, {high}] mm, got {list(spacing)}")
    preprocessing = PreprocessSettings(
        channels=channels,
        orientation=pre.choice("orientation", ("RAS",), defaults.orientation),
        spacing_mm=spacing,
        ct_window_hu=window,
        ct_fill_hu=pre.number("ct_fill_hu", defaults.ct_fill_hu),
        body_threshold_hu=pre.number("body_threshold_hu", defaults.body_threshold_hu),
        body_margin_mm=pre.number(
            "body_margin_mm", defaults.body_margin_mm, low=0.0, high=MAX_BODY_MARGIN_MM
        ),
    )

    raw_folds = root.get("folds", list)
    if not raw_folds:
        raise root.fail("folds", "must list at least one fold")
    folds = []
    for index, raw in enumerate(raw_folds):
        reader = _Reader(raw, f"folds[{index}]", source)
        reader.unknown_keys({"fold", "weights", "sha256", "tracer"})
        weights = reader.get("weights", str)
        check_relative_path(weights, f"{source}: folds[{index}].weights")
        folds.append(
            Fold(
                fold=reader.get("fold", int),
                weights=weights,
                sha256=reader.get("sha256", (str, type(None)), None),
                tracer=None if raw.get("tracer") is None else reader.choice("tracer", TRACERS),
            )
        )
    if len({(f.tracer, f.fold) for f in folds}) != len(folds):
        raise root.fail("folds", "must not repeat a fold number (per tracer)")
    _check_distinct_weights(folds, source)
    tagged = {f.tracer is not None for f in folds}
    if tagged == {True, False}:
        raise root.fail("folds", "must name a tracer in every fold or in none")
    classifier = None
    if "tracer_classifier" in root.data:
        classifier = _parse_tracer_classifier(root.get("tracer_classifier", dict), source)
    if tagged == {True} and classifier is None:
        raise root.fail("tracer_classifier", "is missing: the folds are split by tracer")
    if tagged == {True} and {f.tracer for f in folds} != set(TRACERS):
        raise root.fail("folds", f"split by tracer must hold folds of every tracer ({', '.join(TRACERS)})")

    ensemble = parse_ensemble(root.get("ensemble", dict, {}), source)
    component_filter = None
    if "component_filter" in root.data:
        expected = {f.tracer for f in folds} if tagged == {True} else {ALL_TRACERS}
        component_filter = _parse_component_filter(root.get("component_filter", dict), expected, source)

    card = ModelCard(
        name=root.get("name", str),
        architecture=architecture,
        preprocessing=preprocessing,
        folds=tuple(folds),
        ensemble=ensemble,
        provenance=dict(root.get("provenance", dict, {})),
        tracer_classifier=classifier,
        component_filter=component_filter,
        training=None if training is None else dict(training),
        input_range=None
        if "input_range" not in root.data
        else InputRange.from_json(root.data["input_range"], source),
    )
    _check_roi_fits_network(card, source)
    return card


def _check_architecture_args(args: dict[str, Any], source: str) -> None:
    """Every number in `architecture.args` (channels, strides, filters, ...) in [0, 4096] and every list
    at most 16 long: a card asking for 10**9 channels must be refused here, not end in the allocator."""
    low, high = ARCHITECTURE_NUMBER_RANGE
    for name, value in _walk("architecture.args", args):
        if isinstance(value, (dict, list, tuple)):
            if len(value) > MAX_ARCHITECTURE_ITEMS and name != "architecture.args":
                raise ModelError(
                    f"{source}: {name} must hold at most {MAX_ARCHITECTURE_ITEMS} entries, got {len(value)}"
                )
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            finite = _finite(value)
            if finite is None or not low <= finite <= high:
                raise ModelError(f"{source}: {name} must be in [{low}, {high}], got {_shown(value)}")


def _check_distinct_weights(folds: list[Fold], source: str) -> None:
    """No two folds hold one weights file: `fold0.safetensors` and `./fold0.safetensors` are one file
    (compared as normalised paths), and two folds with one sha256 are one network. Either would make an
    ensemble of fewer networks than the card claims, or run one tracer's weights for the other."""
    names: dict[str, int] = {}
    checksums: dict[str, int] = {}
    for index, fold in enumerate(folds):
        name = os.path.normpath(fold.weights)
        if name in names:
            first = names[name]
            raise ModelError(
                f"{source}: folds[{first}] and folds[{index}] hold the same weights: "
                f"{folds[first].weights!r} and {fold.weights!r} name one file"
            )
        names[name] = index
        if fold.sha256 is not None:
            checksum = fold.sha256.strip().lower()
            if checksum in checksums:
                raise ModelError(
                    f"{source}: folds[{checksums[checksum]}] and folds[{index}] hold the same weights: "
                    f"both have sha256 {fold.sha256!r}"
                )
            checksums[checksum] = index


def _parse_tracer_classifier(data: dict[str, Any], source: str) -> TracerClassifier:
    reader = _Reader(data, "tracer_classifier", source)
    reader.unknown_keys(
        {
            "feature",
            "suv_edges",
            "superior_share",
            "mean",
            "scale",
            "coefficients",
            "intercept",
            "training_cases",
            "cross_validated_accuracy",
        }
    )
    edges = reader.get("suv_edges", list)
    count = len(edges)
    edges = reader.numbers("suv_edges", count, positive=True)
    if count < 1 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise reader.fail("suv_edges", "must be a rising list of positive numbers")
    features = 2 * (count + 1)  # bins below, between and above the edges, in two regions
    mean = reader.numbers("mean", features)
    scale = reader.numbers("scale", features, positive=True)
    coefficients = reader.numbers("coefficients", features)
    accuracy = reader.get("cross_validated_accuracy", (int, float, type(None)), None)
    return TracerClassifier(
        suv_edges=tuple(float(v) for v in edges),
        superior_share=reader.number("superior_share", low=0.05, high=0.95),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coefficients=tuple(float(v) for v in coefficients),
        intercept=reader.number("intercept"),
        training_cases=reader.get("training_cases", int, 0),
        cross_validated_accuracy=None if accuracy is None else float(accuracy),
    )


def _parse_component_filter(data: dict[str, Any], expected: set[str], source: str) -> ComponentFilter:
    """The filter's features must be this petseg's, and it needs one model per tracer of the folds."""
    reader = _Reader(data, "component_filter", source)
    reader.unknown_keys({"features", "minimum_probability", "models"})
    features = reader.get("features", list)
    if features != list(COMPONENT_FEATURES):
        raise reader.fail("features", f"must be {list(COMPONENT_FEATURES)} (this petseg's), got {features}")
    raw_models = reader.get("models", dict)
    if set(raw_models) != expected:
        raise reader.fail(
            "models", f"must have one entry each for {sorted(expected)}, got {sorted(raw_models)}"
        )
    count = len(COMPONENT_FEATURES)
    models = {}
    for key in sorted(raw_models):
        model = _Reader(raw_models[key], f"component_filter.models.{key}", source)
        model.unknown_keys({"mean", "scale", "coefficients", "intercept", "components", "lesions"})
        weights = LogisticWeights(
            mean=tuple(float(v) for v in model.numbers("mean", count)),
            scale=tuple(float(v) for v in model.numbers("scale", count, positive=True)),
            coefficients=tuple(float(v) for v in model.numbers("coefficients", count)),
            intercept=model.number("intercept"),
        )
        models[key] = ComponentModel(
            weights, components=model.get("components", int, 0), lesions=model.get("lesions", int, 0)
        )
    return ComponentFilter(
        minimum_probability=reader.number("minimum_probability", low=0.0, high=1.0), models=models
    )


def parse_ensemble(data: Any, source: str = CARD_NAME) -> EnsembleSettings:
    """A card's `ensemble` object, checked field by field (what `export` also checks its settings with)."""
    ens_defaults = EnsembleSettings()
    ens = _Reader(data, "ensemble", source)
    check_numbers(data, source, "ensemble")
    ens.unknown_keys(set(asdict(ens_defaults)))
    roi = ens.numbers("roi_size", 3, ens_defaults.roi_size, positive=True)
    if not all(isinstance(v, int) for v in roi):
        raise ens.fail("roi_size", f"must be whole numbers, got {list(roi)}")
    low, high = ROI_SIDE_RANGE
    if not all(low <= v <= high for v in roi):
        raise ens.fail("roi_size", f"must hold sides in [{low}, {high}], got {list(roi)}")
    sw_batch = ens.get("sw_batch_size", int, ens_defaults.sw_batch_size)
    if not 1 <= sw_batch <= MAX_SW_BATCH_SIZE:
        raise ens.fail("sw_batch_size", f"must be at least 1 and at most {MAX_SW_BATCH_SIZE}, got {sw_batch}")
    return EnsembleSettings(
        roi_size=roi,
        overlap=ens.number("overlap", ens_defaults.overlap, low=0.0, high=0.95),
        blend_mode=ens.choice("blend_mode", BLEND_MODES, ens_defaults.blend_mode),
        sw_batch_size=sw_batch,
        average=ens.choice("average", AVERAGING, ens_defaults.average),
        threshold=ens.number("threshold", ens_defaults.threshold, low=0.0, high=1.0),
        back_interpolation=ens.choice(
            "back_interpolation", BACK_INTERPOLATIONS, ens_defaults.back_interpolation
        ),
        grow_to_suvmax_fraction=_optional_fraction(ens, "grow_to_suvmax_fraction"),
        grow_within_mm=ens.number("grow_within_mm", ens_defaults.grow_within_mm, low=0.0, high=100.0),
        suv_floor=_suv_floor(ens),
        mirror_axes=_mirror_axes(ens),
    )


def _mirror_axes(reader: _Reader) -> tuple[tuple[int, ...], ...] | None:
    """null (all seven mirrors) or a list of distinct, non-empty sets of axes 0-2."""
    value = reader.get("mirror_axes", (list, type(None)), None)
    if value is None:
        return None
    mirrors = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or not entry
            or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 2 for a in entry)
            or len(set(entry)) != len(entry)
        ):
            raise reader.fail("mirror_axes", f"must list non-empty lists of distinct axes 0-2, got {value!r}")
        mirrors.append(tuple(sorted(entry)))
    if len(set(mirrors)) != len(mirrors):
        raise reader.fail("mirror_axes", f"must not repeat a mirror, got {value!r}")
    return tuple(mirrors)


MAX_ORGAN_CLASSES = 255  # organ label maps are uint8
SUV_FLOOR_KEYS = (*TRACERS, ALL_TRACERS)
MAX_SUV_FLOOR = 20.0  # a floor above this would remove most lesions: a typing error, not a choice


def _suv_floor(reader: _Reader) -> dict[str, float] | None:
    """null (off), or an object of SUV floors in [0, MAX_SUV_FLOOR] keyed by tracer or "all"."""
    value = reader.get("suv_floor", (dict, type(None)), None)
    if value is None:
        return None
    if not value or set(value) - set(SUV_FLOOR_KEYS):
        raise reader.fail(
            "suv_floor",
            f"must be null or an object keyed by {', '.join(SUV_FLOOR_KEYS)}, got {_shown(value)}",
        )
    floors = _Reader(value, f"{reader.where}.suv_floor", reader.source)
    return {key: floors.number(key, low=0.0, high=MAX_SUV_FLOOR) for key in SUV_FLOOR_KEYS if key in value}


def _optional_fraction(reader: _Reader, key: str) -> float | None:
    """null (off) or a number in (0, 1]."""
    value = reader.get(key, (int, float, type(None)), None)
    if value is None:
        return None
    fraction = _finite(value)
    if fraction is None or not 0.0 < fraction <= 1.0:
        raise reader.fail(key, f"must be null or in (0, 1], got {_shown(value)}")
    return fraction


def _check_roi_fits_network(card: ModelCard, source: str) -> None:
    # Imported here: networks imports torch/monai, which card validation alone should not need.
    from petseg.model.networks import input_divisor

    try:
        divisor = input_divisor(card.architecture)
    except ModelError as error:
        raise ModelError(f"{source}: {error}") from None
    except (TypeError, ValueError) as error:  # e.g. "strides": 2 or ["a"]
        raise ModelError(
            f"{source}: architecture.args {_shown(card.architecture.args)} do not fit "
            f"{card.architecture.name!r}: {error}"
        ) from None
    if any(size % divisor for size in card.ensemble.roi_size):
        raise ModelError(
            f"{source}: ensemble.roi_size {list(card.ensemble.roi_size)} must be a multiple of {divisor} "
            f"for architecture {card.architecture.name!r}"
        )


def _check_fold_files_inside(card: ModelCard, model_dir: Path, source: str) -> None:
    """Fold weights are files inside the model folder also after following symbolic links, and no two
    folds lead to one file (by resolved path, or by inode for hard links), checked for every fold before
    any weights are read."""
    root = Path(model_dir).resolve()
    targets: dict[Path | tuple[int, int], int] = {}
    for index, fold in enumerate(card.folds):
        try:
            check_link_inside(root / fold.weights, root, "model", ModelError)
        except ModelError as error:
            raise ModelError(f"{source}: folds[{index}].weights {fold.weights!r}: {error}") from None
        target = (root / fold.weights).resolve()
        keys: list[Path | tuple[int, int]] = [target]
        try:
            status = target.stat()
            keys.append((status.st_dev, status.st_ino))
        except OSError:  # not there (yet): reported where the weights are read
            pass
        for key in keys:
            if key in targets:
                first = targets[key]
                raise ModelError(
                    f"{source}: folds[{first}] and folds[{index}] hold the same weights: "
                    f"{card.folds[first].weights!r} and {fold.weights!r} both lead to {target}"
                )
            targets[key] = index


def load_card(model_dir: Path) -> ModelCard:
    """Read and validate `model_dir/model.json`, fold weight paths included (nothing else is read)."""
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise ModelError(f"{path}: model card not found (is {model_dir} a petseg model folder?)")
    check_link_inside(path, model_dir, "model", ModelError)  # the input folder's rule for links
    card = replace(parse_card(read_card_json(path), str(path)), path=path)
    _check_fold_files_inside(card, Path(model_dir), str(path))
    return card


def save_card(card: ModelCard, model_dir: Path) -> Path:
    from petseg.io import write_json

    return write_json(card.to_json(), Path(model_dir) / CARD_NAME)
