"""Postprocessing chosen by measurement: a model's threshold, lesion growth and component-filter cut-off
fitted on a selection set of cases with ground truth that its folds never trained on.

These settings change nothing the networks compute, so each case is predicted once and every setting is
applied to the same ensemble probability, by the container's own postprocessing (`postprocess` for the
filter, the back-map and the threshold; `grow_to_uptake_contour` for the growth, as `postprocess` calls
it). Settings carried over from another dataset (a recipe fitted on smaller phantoms, a public model
moved to a new scanner) are then replaced by the ones that score best on cases like the user's own.

The choice: the highest mean Dice over the cases with lesions, among the settings whose mean
false-positive volume on the lesion-free cases is no larger than the card's own settings give. A lower
threshold finds more lesions and marks more physiological uptake; the rule keeps the card from buying Dice
with false positives on scans without disease.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.trainer import TrainingError

if TYPE_CHECKING:  # imported where used, so that `python -m training --help` stays light
    from petseg.evaluation.metrics.components import Components
    from petseg.inference.preprocess import PreprocessedCase
    from petseg.model.card import ModelCard

log = logging.getLogger("petseg.training")

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
DEFAULT_MINIMUM_PROBABILITIES = (0.1, 0.2, 0.3, 0.4)
# (fraction of the lesion's SUVmax, within mm); (None, 0) is no growth.
DEFAULT_GROWTHS: tuple[tuple[float | None, float], ...] = ((None, 0.0), (0.4, 6.0), (0.4, 9.0), (0.5, 6.0))
TUNING_FILE = "tuning.json"


@dataclass(frozen=True)
class PostprocessSetting:
    """One point of the search: the card's `ensemble.threshold`, `component_filter.minimum_probability`
    (None for a card without a filter), `ensemble.grow_to_suvmax_fraction` and `ensemble.grow_within_mm`."""

    threshold: float
    minimum_probability: float | None
    grow_fraction: float | None
    grow_within_mm: float

    def describe(self) -> str:
        growth = (
            "no growth"
            if self.grow_fraction is None
            else f"growth {self.grow_fraction:g} within {self.grow_within_mm:g} mm"
        )
        cut = "" if self.minimum_probability is None else f", filter {self.minimum_probability:g}"
        return f"threshold {self.threshold:g}{cut}, {growth}"

    def to_json(self) -> dict[str, float | None]:
        return {
            "threshold": self.threshold,
            "minimum_probability": self.minimum_probability,
            "grow_to_suvmax_fraction": self.grow_fraction,
            "grow_within_mm": self.grow_within_mm,
        }


@dataclass(frozen=True)
class SelectionCase:
    """A case of the selection set: its input folder (`images/ct`, `images/pet`) and ground-truth mask."""

    name: str
    input_dir: Path
    truth: Path


@dataclass(frozen=True)
class SettingScore:
    """A setting's per-case Dice (NaN for lesion-free cases), false-positive and false-negative volumes
    (ml)."""

    setting: PostprocessSetting
    dice: tuple[float, ...]
    fpv_ml: tuple[float, ...]
    fnv_ml: tuple[float, ...]

    @property
    def mean_dice(self) -> float:
        values = [d for d in self.dice if not math.isnan(d)]
        return float(np.mean(values)) if values else math.nan

    @property
    def lesion_free_fpv_ml(self) -> float:
        values = [f for d, f in zip(self.dice, self.fpv_ml, strict=True) if math.isnan(d)]
        return float(np.mean(values)) if values else math.nan

    @property
    def largest_lesion_free_fpv_ml(self) -> float:
        """The largest FPV of a lesion-free case; 0 where there is none."""
        return max((f for d, f in zip(self.dice, self.fpv_ml, strict=True) if math.isnan(d)), default=0.0)

    @property
    def mean_fpv_ml(self) -> float:
        return float(np.mean(self.fpv_ml))

    @property
    def mean_fnv_ml(self) -> float:
        values = [f for f in self.fnv_ml if not math.isnan(f)]
        return float(np.mean(values)) if values else math.nan

    def to_json(self, per_case: bool = False) -> dict[str, object]:
        """The setting and its means; with `per_case`, each case's figures too (in the cases' order)."""
        data: dict[str, object] = {
            **self.setting.to_json(),
            "mean_dice": _rounded(self.mean_dice),
            "lesion_free_fpv_ml": _rounded(self.lesion_free_fpv_ml),
            "largest_lesion_free_fpv_ml": _rounded(self.largest_lesion_free_fpv_ml),
            "mean_fpv_ml": _rounded(self.mean_fpv_ml),
            "mean_fnv_ml": _rounded(self.mean_fnv_ml),
        }
        if per_case:
            for key, values in (("dice", self.dice), ("fpv_ml", self.fpv_ml), ("fnv_ml", self.fnv_ml)):
                data[key] = [_rounded(v) for v in values]
        return data


def selection_cases(folder: Path) -> list[SelectionCase]:
    """The case folders of `folder` that hold `input/images/{ct,pet}` and one `ground-truth` mask (the
    layout `python -m training evaluation-phantoms` and `petseg phantoms --layout gc` write)."""
    from petseg.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of selection cases")
    cases = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        truths = (
            sorted(t for t in (case / "ground-truth").glob("*") if t.is_file())
            if (case / "ground-truth").is_dir()
            else []
        )
        if not (case / "input").is_dir() or len(truths) != 1:
            raise InputError(f"{case}: expected input/ and one ground-truth mask in ground-truth/")
        cases.append(SelectionCase(case.name, case / "input", truths[0]))
    if not cases:
        raise InputError(f"{folder}: no case folders (each with input/ and ground-truth/)")
    return cases


def setting_grid(
    has_filter: bool,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    minimum_probabilities: Sequence[float] = DEFAULT_MINIMUM_PROBABILITIES,
    growths: Sequence[tuple[float | None, float]] = DEFAULT_GROWTHS,
) -> list[PostprocessSetting]:
    """Every combination; the filter's cut-off is searched only where the card has a filter."""
    cuts: Sequence[float | None] = minimum_probabilities if has_filter else (None,)
    return [
        PostprocessSetting(t, m, fraction, within if fraction is not None else 0.0)
        for t in thresholds
        for m in cuts
        for fraction, within in growths
    ]


def current_setting(card: ModelCard) -> PostprocessSetting:
    """The setting a card holds now."""
    ensemble = card.ensemble
    cut = card.component_filter.minimum_probability if card.component_filter is not None else None
    within = ensemble.grow_within_mm if ensemble.grow_to_suvmax_fraction is not None else 0.0
    return PostprocessSetting(ensemble.threshold, cut, ensemble.grow_to_suvmax_fraction, within)


def with_setting(card: ModelCard, setting: PostprocessSetting) -> ModelCard:
    """`card` with `setting` written into it (the SUV floor and everything else unchanged)."""
    ensemble = replace(
        card.ensemble,
        threshold=setting.threshold,
        grow_to_suvmax_fraction=setting.grow_fraction,
        grow_within_mm=setting.grow_within_mm
        if setting.grow_fraction is not None
        else card.ensemble.grow_within_mm,
    )
    component_filter = card.component_filter
    if component_filter is not None and setting.minimum_probability is not None:
        component_filter = replace(component_filter, minimum_probability=setting.minimum_probability)
    return replace(card, ensemble=ensemble, component_filter=component_filter)


def choose(
    scores: Sequence[SettingScore], reference: PostprocessSetting, lesion_free_fpv_ml: float | None = None
) -> SettingScore:
    """The highest mean Dice among the settings that keep the lesion-free cases clean enough; ties go to
    the smaller mean FPV.

    Clean enough: by default, a mean lesion-free FPV no larger than `reference`'s (the card's own); with
    `lesion_free_fpv_ml`, no lesion-free case above that many ml (the autoPET targets' form, a bound on
    every scan without disease). Where the set has no lesion-free case, every setting is allowed.
    """
    by_setting = {score.setting: score for score in scores}
    if reference not in by_setting:
        raise ValueError(f"the reference setting ({reference.describe()}) was not scored")
    if lesion_free_fpv_ml is None:
        ceiling = by_setting[reference].lesion_free_fpv_ml
        allowed = [s for s in scores if math.isnan(ceiling) or s.lesion_free_fpv_ml <= ceiling + 1e-9]
    else:
        allowed = [s for s in scores if s.largest_lesion_free_fpv_ml <= lesion_free_fpv_ml]
    with_lesions = [s for s in allowed if not math.isnan(s.mean_dice)]
    if not with_lesions:
        if not any(not math.isnan(s.mean_dice) for s in scores):
            raise TrainingError("the selection set has no case with lesions: there is no Dice to choose by")
        raise TrainingError(
            f"no setting keeps every lesion-free case at or below {lesion_free_fpv_ml:g} ml (the fewest: "
            f"{min(s.largest_lesion_free_fpv_ml for s in scores):.2f} ml): widen the grid or the bound"
        )
    return max(with_lesions, key=lambda s: (s.mean_dice, -s.mean_fpv_ml))


def score_settings(
    model_dir: Path,
    cases: Sequence[SelectionCase],
    settings: Sequence[PostprocessSetting],
    device: str = "cpu",
    on_case: Callable[[int, SelectionCase, float], None] | None = None,
) -> list[SettingScore]:
    """Each setting's scores on every case: each case read, preprocessed and predicted once (the tracer
    named by the card's classifier, as `process.py` names it), every setting applied to that probability."""
    import SimpleITK as sitk

    from petseg.evaluation.metrics.components import Components
    from petseg.inference.predict import Predictor
    from petseg.inference.preprocess import preprocess
    from petseg.io import find_case, read_case, read_image

    predictor = Predictor.load(Path(model_dir), device=device)
    card = predictor.card
    rows: dict[PostprocessSetting, list[tuple[float, float, float]]] = {s: [] for s in settings}
    postprocess_log = logging.getLogger("petseg.inference.postprocess")
    for number, case in enumerate(cases):
        started = time.perf_counter()
        ct, pet = read_case(find_case(case.input_dir))
        truth_image = read_image(case.truth, "ground truth")
        if truth_image.GetSize() != pet.GetSize():
            raise TrainingError(
                f"{case.truth}: ground truth of size {truth_image.GetSize()} on a PET of size {pet.GetSize()}"
            )
        truth = Components.of(sitk.GetArrayFromImage(truth_image) > 0)
        del truth_image
        uptake = _PetGrid(sitk.GetArrayFromImage(pet), pet.GetSpacing())
        prepared = preprocess(ct, pet, card.preprocessing, source=str(case.input_dir))
        del ct, pet
        tracer = predictor.choose_tracer(prepared.image)
        probability = predictor(prepared.image, tracer=tracer)
        level = postprocess_log.level
        postprocess_log.setLevel(logging.WARNING)  # a line per setting and case would drown the progress
        try:
            for setting, figures in _sweep_case(card, settings, probability, prepared, tracer, uptake, truth):
                rows[setting].append(figures)
        finally:
            postprocess_log.setLevel(level)
        if on_case is not None:
            on_case(number, case, time.perf_counter() - started)
    return [
        SettingScore(setting, *(tuple(r[i] for r in found) for i in range(3)))
        for setting, found in rows.items()
    ]


@dataclass(frozen=True)
class _PetGrid:
    """The PET on its own grid: (z, y, x) SUV and its (x, y, z) spacing in mm."""

    suv_zyx: np.ndarray
    spacing_xyz: tuple[float, float, float]


def _sweep_case(
    card: ModelCard,
    settings: Sequence[PostprocessSetting],
    probability: np.ndarray,
    prepared: PreprocessedCase,
    tracer: str | None,
    pet: _PetGrid,
    truth: Components,
) -> list[tuple[PostprocessSetting, tuple[float, float, float]]]:
    """(setting, (Dice, FPV, FNV)) of one case for every setting. The filter, back-map and threshold run
    once per (threshold, cut-off) through `postprocess`; the growth variants and the card's SUV floor are
    then applied as `postprocess` applies them.

    Every prediction lies in the body box, grown by at most the largest growth distance, so the masks are
    grown and labelled on that crop of the PET grid only: the ground truth keeps its whole-grid
    components (a lesion reaching out of the crop is one lesion, with its whole volume), and the overlap
    of each predicted component with them is counted on the crop, where all of it lies.
    """
    import SimpleITK as sitk

    from petseg.evaluation.metrics.case import scores_from
    from petseg.evaluation.metrics.components import Components, overlaps
    from petseg.inference.postprocess import grow_to_uptake_contour, postprocess, suv_floor_for

    crop = _crop_zyx(prepared, pet, max(s.grow_within_mm for s in settings))
    suv = pet.suv_zyx[crop]
    truth_labels = truth.labels[crop]
    floors = card.ensemble.suv_floor
    voxel_ml = float(np.prod(pet.spacing_xyz)) / 1000.0
    groups: dict[tuple[float, float | None], list[PostprocessSetting]] = {}
    for setting in settings:
        groups.setdefault((setting.threshold, setting.minimum_probability), []).append(setting)
    found = []
    for (threshold, cut), members in groups.items():
        plain = with_setting(card, PostprocessSetting(threshold, cut, None, 0.0))
        plain = replace(plain, ensemble=replace(plain.ensemble, suv_floor=None))
        image, _ = postprocess(probability, copy.copy(prepared), plain, tracer)
        core = sitk.GetArrayViewFromImage(image)[crop].astype(bool)
        del image
        for setting in members:
            mask = core
            if setting.grow_fraction is not None:
                mask = grow_to_uptake_contour(
                    core, suv, pet.spacing_xyz, setting.grow_fraction, setting.grow_within_mm
                )
            if floors is not None:
                mask = mask & (suv >= suv_floor_for(floors, tracer))
            predicted = Components.of(mask)
            shared = overlaps(predicted.labels, predicted.count, truth_labels, truth.count)[1:, 1:]
            figures = scores_from(predicted, truth, shared, voxel_ml)
            found.append((setting, (figures.dice, figures.fpv_ml, figures.fnv_ml)))
    return found


def _crop_zyx(prepared: PreprocessedCase, pet: _PetGrid, grow_mm: float) -> tuple[slice, slice, slice]:
    """The body box on the PET grid, widened by `grow_mm` (and a voxel) on every side."""
    box = prepared.back_map.body_box.slices_zyx
    shape = pet.suv_zyx.shape
    spacing_zyx = tuple(reversed(pet.spacing_xyz))
    crop = []
    for part, size, step in zip(box, shape, spacing_zyx, strict=True):
        margin = math.ceil(grow_mm / step) + 1
        crop.append(slice(max(0, part.start - margin), min(size, part.stop + margin)))
    return tuple(crop)


def run_tuning(
    model_dir: Path,
    cases_dir: Path,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    minimum_probabilities: Sequence[float] = DEFAULT_MINIMUM_PROBABILITIES,
    growths: Sequence[tuple[float | None, float]] = DEFAULT_GROWTHS,
    device: str = "cpu",
    output: Path | None = None,
    write: bool = False,
    progress: bool = True,
    lesion_free_fpv_ml: float | None = None,
) -> tuple[SettingScore, SettingScore]:
    """Score the grid (and the card's own setting) on the selection cases; (chosen, the card's own).

    `output`: a folder for `tuning.json`, every setting's scores. `write`: the chosen setting goes into the
    card, with what it was chosen on in `provenance.postprocessing_tuned`. `lesion_free_fpv_ml`: the bound
    on every lesion-free case's FPV (`choose`).
    """
    from petseg.io import write_json
    from petseg.model.card import load_card, save_card

    card = load_card(Path(model_dir))
    cases = selection_cases(Path(cases_dir))
    reference = current_setting(card)
    grid = setting_grid(card.component_filter is not None, thresholds, minimum_probabilities, growths)
    settings = grid + ([reference] if reference not in grid else [])
    log.info("tuning %s on %d case(s) of %s: %d setting(s)", model_dir, len(cases), cases_dir, len(settings))

    def report(number: int, case: SelectionCase, seconds: float) -> None:
        if progress:
            log.info("[%d/%d] %s (%.1f s)", number + 1, len(cases), case.name, seconds)

    scores = score_settings(Path(model_dir), cases, settings, device=device, on_case=report)
    chosen = choose(scores, reference, lesion_free_fpv_ml)
    current = next(s for s in scores if s.setting == reference)
    ranked = sorted(scores, key=lambda s: (-_or(s.mean_dice, -1.0), s.mean_fpv_ml))
    if output is not None:
        Path(output).mkdir(parents=True, exist_ok=True)
        write_json(
            {
                "model": card.name,
                "cases": [case.name for case in cases],
                "current": current.to_json(),
                "chosen": chosen.to_json(),
                "rule": _rule(lesion_free_fpv_ml),
                "settings": [s.to_json(per_case=True) for s in ranked],
            },
            Path(output) / TUNING_FILE,
        )
    if write:
        provenance = {
            **card.provenance,
            "postprocessing_tuned": {
                "cases": len(cases),
                "folder": Path(cases_dir).name,
                "mean_dice": round(chosen.mean_dice, 4),
                "lesion_free_fpv_ml": _rounded(chosen.lesion_free_fpv_ml),
                "rule": _rule(lesion_free_fpv_ml),
                "before": current.to_json(),
            },
        }
        save_card(replace(with_setting(card, chosen.setting), provenance=provenance), Path(model_dir))
    return chosen, current


def _rule(lesion_free_fpv_ml: float | None) -> str:
    if lesion_free_fpv_ml is None:
        return (
            "the highest mean Dice whose mean lesion-free FPV is no larger than the card's own settings give"
        )
    return f"the highest mean Dice with no lesion-free case above {lesion_free_fpv_ml:g} ml of FPV"


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
