"""Body-weight SUV from PET DICOM tags: the rules, as pure functions of the tag values.

`compute_suv(tags)` returns, for every slice, the factor that turns its rescaled voxel values
(RescaleSlope x stored value + RescaleIntercept, applied slice by slice) into body-weight SUV, with a record
of every tag it used, the rule it applied at each step and the warnings it has. The rules are the
vendor-neutral pseudo-code of the QIBA FDG-PET/CT profile, completed where it is silent by the SUV
manual of Vácha et al. (the rules its digital reference objects test); docs/dicom.md explains them step by
step:

1. Units: BQML (Bq/ml), CNTS with Philips' SUV scale factor (7053,1000) or, without it, its activity
   concentration scale factor (7053,1009) to Bq/ml; GML (already SUVbw: factor 1). Others are refused.
2. Weight in kg (a value over 1000 is grams), dose in Bq (a value under 1e5 is MBq).
3. Half-life from RadionuclideHalfLife, else from the nuclide's name.
4. DecayCorrection START: the dose decayed to the scan reference time (QIBA: SeriesDate/Time unless it is
   later than the earliest acquisition; else GE's private scan date-time; else the time the frames were
   decay-corrected to, back-computed from AcquisitionTime, FrameReferenceTime and ActualFrameDuration;
   else the earliest acquisition). ADMIN: the dose as given (the images are decay-corrected to the
   injection already; correcting again would count the decay twice). NONE: each slice decay-corrected
   from its own acquisition and frame duration.
5. The injection: RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime on the date of the
   scan time, a day earlier when it would otherwise fall after the scan (a scan that crossed midnight).

Where autoPET's conversion of its training data (the first file's AcquisitionTime as the reference,
Units and DecayCorrection ignored) gives values more than 1 % from these, the result says so.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from petseg.errors import InputError
from petseg.io.dicom.pet_tags import LABELS, PetTags, SliceTags
from petseg.io.dicom.values import parse_da, parse_dt, parse_tm

__all__ = [
    "AUTOPET_TOLERANCE",
    "HALF_LIVES_S",
    "AutopetComparison",
    "Step",
    "SuvResult",
    "compute_suv",
    "nuclide_of",
]

# Half-lives (s) by nuclide, used only where RadionuclideHalfLife is absent, and to check it where present.
HALF_LIVES_S = {
    "F-18": 6586.2,  # 109.77 min
    "Ga-68": 4062.6,  # 67.71 min
    "C-11": 1221.8,  # 20.36 min
    "N-13": 597.9,  # 9.965 min
    "O-15": 122.24,
    "Rb-82": 76.4,
    "Cu-64": 45721.0,  # 12.70 h
    "Zr-89": 282276.0,  # 78.41 h
    "I-124": 360806.0,  # 4.176 d
}
_ELEMENTS = {
    "fluorine": "F",
    "gallium": "Ga",
    "carbon": "C",
    "nitrogen": "N",
    "oxygen": "O",
    "rubidium": "Rb",
    "copper": "Cu",
    "zirconium": "Zr",
    "iodine": "I",
}
AUTOPET_TOLERANCE = 0.01  # relative difference from autoPET's convention worth a warning
WEIGHT_GRAMS_ABOVE = 1000.0  # a PatientWeight over this is grams, not kg (SUV manual)
DOSE_MBQ_BELOW = 1e5  # a RadionuclideTotalDose under this is MBq, not Bq (no PET dose is under 0.1 MBq)
PLAUSIBLE_DOSE_BQ = (1e7, 2e9)  # 10 MBq to 2 GBq: outside, the dose is most likely mis-entered
PLAUSIBLE_WEIGHT_KG = (2.0, 300.0)
MAX_HALF_LIVES = 5.0  # an uptake time over this many half-lives (under 3 % left) is most likely wrong
MAX_MIDNIGHT_UPTAKE = dt.timedelta(hours=12)  # the longest uptake the midnight rule may produce
_TIME_TOLERANCE = 0.01  # two candidate reference times that change SUV by more than this disagree


@dataclass(frozen=True)
class Step:
    """One step of the conversion: what was decided, by which rule, with what result."""

    step: str
    rule: str
    value: Any = None


@dataclass(frozen=True)
class AutopetComparison:
    """autoPET's conversion of the same series, and how far it lies from the correct one."""

    factor: float | None  # None where its tags are missing (then `note` says which)
    max_relative_difference: float | None
    note: str


@dataclass(frozen=True)
class SuvResult:
    """SUV = (RescaleSlope x stored + RescaleIntercept) x factor, per slice in slice order."""

    units: str
    slopes: tuple[float, ...]
    intercepts: tuple[float, ...]
    factors: tuple[float, ...]
    steps: tuple[Step, ...]
    tags: dict[str, Any]
    warnings: tuple[str, ...]
    autopet: AutopetComparison

    def as_json(self) -> dict[str, Any]:
        """The record suv.json holds: factors, tags used with their values, the rules, the warnings."""
        constant = len(set(self.factors)) == 1
        return {
            "formula": "SUV = (RescaleSlope * stored value + RescaleIntercept) * factor, slice by slice",
            "units": self.units,
            "factor": self.factors[0] if constant else None,
            "factors": list(self.factors),
            "rescale_slopes": list(self.slopes),
            "rescale_intercepts": list(self.intercepts),
            "steps": [{"step": s.step, "rule": s.rule, "value": s.value} for s in self.steps],
            "tags_note": "series tags from the first file in slice order (every file agrees); per-slice tags "
            "that differ are listed in slice order",
            "tags": self.tags,
            "warnings": list(self.warnings),
            "autopet_convention": {
                "rule": AUTOPET_RULE,
                "factor": self.autopet.factor,
                "max_relative_difference": self.autopet.max_relative_difference,
                "note": self.autopet.note,
            },
        }


AUTOPET_RULE = (
    "autoPET's training data: SUV = rescaled value * PatientWeight * 1000 / (RadionuclideTotalDose * "
    "0.5 ** (t / RadionuclideHalfLife)), t = the first file's AcquisitionTime - RadiopharmaceuticalStartTime "
    "in seconds as times of day (negative across midnight), for every Units and DecayCorrection, tags as "
    "stored"
)


@dataclass
class _Record:
    """What the conversion has used and decided so far."""

    tags: PetTags
    used: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def series(self, name: str) -> str | None:
        value = getattr(self.tags.series, name)
        if value is not None:
            self.used[LABELS[name]] = value
        return value

    def per_slice(self, name: str) -> list[str | None]:
        values = [getattr(item, name) for item in self.tags.slices]
        if any(value is not None for value in values):
            self.used[LABELS[name]] = values if len(set(values)) > 1 else values[0]
        return values

    def step(self, step: str, rule: str, value: Any = None) -> None:
        self.steps.append(Step(step, rule, value))

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def missing(self, name: str, why: str, file: Any = None) -> InputError:
        return InputError(f"{file or self.tags.file}: no {LABELS[name]}: {why}")

    def bad(self, name: str, text: str, problem: str, file: Any = None) -> InputError:
        return InputError(f"{file or self.tags.file}: {LABELS[name]} {text!r} {problem}")


def _number(record: _Record, name: str, text: str, file: Any = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise record.bad(name, text, "is not a number", file) from None
    if not math.isfinite(value):
        raise record.bad(name, text, "is not a finite number", file)
    return value


def _time_value(record: _Record, name: str, text: str, parse: Any, file: Any = None) -> Any:
    try:
        return parse(text)
    except ValueError as error:
        raise InputError(f"{file or record.tags.file}: {LABELS[name]}: {error}") from None


def compute_suv(tags: PetTags) -> SuvResult:
    """The per-slice SUV factors of a PET series, with the record of how they were found."""
    record = _Record(tags)
    slopes, intercepts = _rescale(record)
    units = record.series("units")
    if units is None:
        raise record.missing("units", "the voxel values' unit is unknown, so SUV cannot be computed")
    units = units.upper()
    manufacturer = record.series("manufacturer")
    factors: list[float]
    if units == "GML":
        _check_suv_type(record)
        factors = [1.0] * len(tags.slices)
        record.step(
            "units", "GML: the values are body-weight SUV already (SUVType BW or empty): factor 1", 1.0
        )
    elif units in ("BQML", "CNTS"):
        scale = [1.0] * len(tags.slices)
        if units == "CNTS":
            suv_factors, scale = _philips_factors(record, manufacturer)
            if suv_factors is not None:
                factors = suv_factors
                return _result(record, units, slopes, intercepts, factors)
        else:
            record.step("units", "BQML: the rescaled values are activity concentrations in Bq/ml")
        factors = [s * f for s, f in zip(scale, _bqml_factors(record), strict=True)]
    else:
        raise InputError(
            f"{tags.file}: {LABELS['units']} is {units}: only BQML, CNTS (Philips, with its scale "
            "factors) and GML (SUVbw) are converted to body-weight SUV"
        )
    return _result(record, units, slopes, intercepts, factors)


def _result(
    record: _Record, units: str, slopes: list[float], intercepts: list[float], factors: list[float]
) -> SuvResult:
    _check_corrections(record)
    autopet = _autopet(record, factors)
    return SuvResult(
        units=units,
        slopes=tuple(slopes),
        intercepts=tuple(intercepts),
        factors=tuple(factors),
        steps=tuple(record.steps),
        tags=record.used,
        warnings=tuple(record.warnings),
        autopet=autopet,
    )


def _rescale(record: _Record) -> tuple[list[float], list[float]]:
    """Each slice's RescaleSlope and RescaleIntercept (absent: 1 and 0), applied slice by slice."""
    slope_texts = record.per_slice("rescale_slope")
    intercept_texts = record.per_slice("rescale_intercept")
    slopes, intercepts = [], []
    for item, slope, intercept in zip(record.tags.slices, slope_texts, intercept_texts, strict=True):
        slopes.append(1.0 if slope is None else _number(record, "rescale_slope", slope, item.file))
        intercepts.append(
            0.0 if intercept is None else _number(record, "rescale_intercept", intercept, item.file)
        )
    distinct = len(set(slopes))
    record.step(
        "rescale",
        "RescaleSlope and RescaleIntercept of each slice applied to that slice's stored values "
        f"({distinct} distinct slope{'s' if distinct > 1 else ''}; absent: slope 1, intercept 0)",
        {"slopes": distinct, "intercept_nonzero": any(intercepts)},
    )
    if any(intercepts):
        record.warn(
            f"{LABELS['rescale_intercept']} is not 0 in {sum(1 for b in intercepts if b)} slice(s): PET "
            "should have none; applied as the header says"
        )
    return slopes, intercepts


def _check_suv_type(record: _Record) -> None:
    suv_type = record.series("suv_type")
    if suv_type is not None and suv_type.upper() != "BW":
        raise InputError(
            f"{record.tags.file}: Units GML with {LABELS['suv_type']} {suv_type}: the values are SUV "
            "normalised otherwise than by body weight; only body-weight SUV (BW) is read"
        )


def _philips_factors(record: _Record, manufacturer: str | None) -> tuple[list[float] | None, list[float]]:
    """Units CNTS: Philips' SUV scale factor (SUV directly) or, without it, its activity concentration
    scale factor (to Bq/ml, then as BQML). A factor of 0 means "cannot be converted" (Philips' conformance
    statement), as if absent."""
    slices = record.tags.slices
    suv = _slice_factors(record, "philips_suv_factor")
    activity = _slice_factors(record, "philips_activity_factor")
    lookup = next((item.philips_lookup for item in slices if item.philips_lookup), "")
    if manufacturer is not None and "PHILIPS" not in manufacturer.upper():
        record.warn(
            f"Units CNTS from {manufacturer}, not Philips: Philips' private scale factors read anyway"
        )
    if all(value is not None for value in suv):
        record.step(
            "units",
            f"CNTS with {LABELS['philips_suv_factor']} in every slice ({lookup}): SUV = rescaled value x "
            "that factor; weight, dose and decay are in it already",
            sorted(set(suv)),
        )
        return [float(value) for value in suv], [1.0] * len(slices)  # type: ignore[arg-type]
    if all(value is not None for value in activity):
        if any(value is not None for value in suv):
            missing = next(item.file for item, value in zip(slices, suv, strict=True) if value is None)
            record.warn(
                f"{missing}: no usable Philips SUV scale factor in some slices: the activity factor used"
            )
        record.step(
            "units",
            f"CNTS with {LABELS['philips_activity_factor']} in every slice ({lookup}) and no SUV scale "
            "factor: rescaled value x that factor = Bq/ml, then as BQML",
            sorted(set(activity)),
        )
        return None, [float(value) for value in activity]  # type: ignore[arg-type]
    where = next(
        (item.file for item, s, a in zip(slices, suv, activity, strict=True) if s is None and a is None),
        record.tags.file,
    )
    raise InputError(
        f"{where}: Units CNTS without a usable {LABELS['philips_suv_factor']} or "
        f"{LABELS['philips_activity_factor']}: counts cannot be converted to SUV"
    )


def _slice_factors(record: _Record, name: str) -> list[float | None]:
    values: list[float | None] = []
    for item, text in zip(record.tags.slices, record.per_slice(name), strict=True):
        value = None if text is None else _number(record, name, text, item.file)
        values.append(value if value else None)  # 0: not convertible, as absent
    return values


def _bqml_factors(record: _Record) -> list[float]:
    """Factor from Bq/ml to SUVbw, per slice: weight (g) / decay-corrected dose (Bq)."""
    weight_g = _weight_g(record)
    dose = _dose_bq(record)
    half_life = _half_life_s(record)
    decay = record.series("decay_correction")
    if decay is None:
        raise record.missing(
            "decay_correction", "cannot tell to which time the images were decay-corrected, so SUV is unknown"
        )
    decay = decay.upper()
    if decay == "ADMIN":
        record.step(
            "decay",
            "DecayCorrection ADMIN: the images are decay-corrected to the injection, so the dose is used as "
            "given (no second decay correction)",
            dose,
        )
        factor = weight_g / dose
        record.step("factor", "PatientWeight (g) / RadionuclideTotalDose (Bq)", factor)
        return [factor] * len(record.tags.slices)
    if decay == "START":
        reference = _reference_time(record, half_life)
        injection = _injection_time(record, reference)
        uptake = (reference - injection).total_seconds()
        _check_uptake(record, uptake, half_life, injection, reference)
        decayed = dose * 2.0 ** (-uptake / half_life)
        record.step(
            "decay",
            "DecayCorrection START: the dose decayed from the injection to the scan reference time: "
            "dose x 2^(-t / half-life)",
            {"uptake_s": uptake, "decayed_dose_bq": decayed},
        )
        factor = weight_g / decayed
        record.step("factor", "PatientWeight (g) / decayed dose (Bq)", factor)
        return [factor] * len(record.tags.slices)
    if decay == "NONE":
        return _undecayed_factors(record, weight_g, dose, half_life)
    raise InputError(
        f"{record.tags.file}: {LABELS['decay_correction']} is {decay}: only START, ADMIN and NONE are defined"
    )


def _weight_g(record: _Record) -> float:
    text = record.series("patient_weight")
    if text is None:
        raise record.missing("patient_weight", "body-weight SUV needs the patient's weight")
    weight = _number(record, "patient_weight", text)
    if weight <= 0:
        raise record.bad(
            "patient_weight", text, "is not a weight: body-weight SUV needs the patient's weight"
        )
    rule = "PatientWeight in kg, x 1000 = grams"
    if weight > WEIGHT_GRAMS_ABOVE:
        record.warn(
            f"{LABELS['patient_weight']} {text} is over {WEIGHT_GRAMS_ABOVE:g}: read as grams, not kg"
        )
        rule = f"PatientWeight over {WEIGHT_GRAMS_ABOVE:g}: entered in grams, used as grams"
        weight /= 1000.0
    low, high = PLAUSIBLE_WEIGHT_KG
    if not low <= weight <= high:
        record.warn(f"{LABELS['patient_weight']} {weight:g} kg is implausible for a patient: check it")
    record.step("weight", rule, weight * 1000.0)
    return weight * 1000.0


def _dose_bq(record: _Record) -> float:
    count = record.tags.series.radiopharmaceuticals
    if count == 0:
        raise record.missing(
            "radiopharmaceuticals", "no dose, injection time or half-life to compute SUV with"
        )
    if count > 1:
        record.warn(f"{count} items in the {LABELS['radiopharmaceuticals']}: the first one is used")
    record.series("radiopharmaceutical")
    text = record.series("total_dose")
    if text is None:
        raise record.missing("total_dose", "SUV needs the injected dose")
    dose = _number(record, "total_dose", text)
    if dose <= 0:
        raise record.bad("total_dose", text, "is not a dose: SUV needs the injected dose")
    rule = "RadionuclideTotalDose in Bq"
    if dose < DOSE_MBQ_BELOW:
        record.warn(
            f"{LABELS['total_dose']} {text} is under {DOSE_MBQ_BELOW:g}: no PET dose is that small in Bq, "
            "so it was read as MBq"
        )
        rule = f"RadionuclideTotalDose under {DOSE_MBQ_BELOW:g}: entered in MBq, x 1e6 = Bq"
        dose *= 1e6
    low, high = PLAUSIBLE_DOSE_BQ
    if not low <= dose <= high:
        record.warn(
            f"{LABELS['total_dose']} {dose / 1e6:g} MBq is outside {low / 1e6:g}-{high / 1e6:g} MBq: check it"
        )
    record.step("dose", rule, dose)
    return dose


def nuclide_of(text: str | None) -> str | None:
    """`F-18`, `Ga-68`, ... from a code meaning (`^18^Fluorine`) or a radiopharmaceutical's name
    (`Ga68-PSMA`, `18F-FDG`); None when none of the known nuclides is named."""
    if not text:
        return None
    lowered = text.lower()
    for name, symbol in _ELEMENTS.items():
        for mass in re.findall(rf"(\d+)\W*{name}|{name}\W*(\d+)", lowered):
            number = next(m for m in mass if m)
            if f"{symbol}-{number}" in HALF_LIVES_S:
                return f"{symbol}-{number}"
    for nuclide in HALF_LIVES_S:
        symbol, mass = nuclide.split("-")
        if re.search(
            rf"(?<![a-z]){symbol.lower()}-?{mass}(?!\d)|(?<!\d){mass}-?{symbol.lower()}(?![a-z])", lowered
        ):
            return nuclide
    return None


def _half_life_s(record: _Record) -> float:
    text = record.series("half_life")
    named = record.series("nuclide_code")
    nuclide = nuclide_of(named) or nuclide_of(record.tags.series.radiopharmaceutical)
    if text is not None:
        half_life = _number(record, "half_life", text)
        if half_life <= 0:
            raise record.bad("half_life", text, "is not a half-life")
        if nuclide is not None and abs(half_life / HALF_LIVES_S[nuclide] - 1) > 0.01:
            record.warn(
                f"{LABELS['half_life']} {text} s differs from {nuclide}'s {HALF_LIVES_S[nuclide]:g} s by "
                "over 1 %: the tag was used"
            )
        record.step("half-life", "RadionuclideHalfLife (s)", {"seconds": half_life, "nuclide": nuclide})
        return half_life
    if nuclide is None:
        raise record.missing("half_life", "and no known nuclide named in the RadionuclideCodeSequence")
    half_life = HALF_LIVES_S[nuclide]
    record.warn(f"no {LABELS['half_life']}: {nuclide}'s half-life {half_life:g} s used")
    record.step("half-life", f"no RadionuclideHalfLife: the half-life of {nuclide}", half_life)
    return half_life


def _acquisitions(record: _Record) -> list[dt.datetime | None]:
    """Each slice's acquisition date-time: AcquisitionDateTime, else AcquisitionTime on AcquisitionDate
    (else SeriesDate, else StudyDate)."""
    datetimes = record.per_slice("acquisition_datetime")
    times = record.per_slice("acquisition_time")
    dates = record.per_slice("acquisition_date")
    fallback = record.tags.series.series_date or record.tags.series.study_date
    result: list[dt.datetime | None] = []
    for item, stamp, time, date in zip(record.tags.slices, datetimes, times, dates, strict=True):
        if stamp is not None:
            result.append(_time_value(record, "acquisition_datetime", stamp, parse_dt, item.file))
        elif time is not None and (date or fallback) is not None:
            day_name = "acquisition_date" if date is not None else "series_date"
            day = _time_value(record, day_name, date or fallback, parse_da, item.file)  # type: ignore[arg-type]
            result.append(
                dt.datetime.combine(day, _time_value(record, "acquisition_time", time, parse_tm, item.file))
            )
        else:
            result.append(None)
    return result


def _series_datetime(record: _Record) -> dt.datetime | None:
    time = record.series("series_time")
    if time is None:
        return None
    date = record.series("series_date") or record.series("study_date")
    if date is None:
        date = next((item.acquisition_date for item in record.tags.slices if item.acquisition_date), None)
    if date is None:
        return None
    day = _time_value(record, "series_date", date, parse_da)
    return dt.datetime.combine(day, _time_value(record, "series_time", time, parse_tm))


def frame_average_s(duration_s: float, half_life_s: float) -> float:
    """The time after a frame's start at which the activity equals the frame's decay-weighted average:
    (1 / lambda) ln(lambda T / (1 - exp(-lambda T))); about T / 2."""
    if duration_s <= 0:
        return 0.0
    rate = math.log(2) / half_life_s
    return math.log(rate * duration_s / -math.expm1(-rate * duration_s)) / rate


def _backcomputed(
    record: _Record, acquisitions: list[dt.datetime | None], half_life: float
) -> dt.datetime | None:
    """The time the frames were decay-corrected to: AcquisitionTime + average count time -
    FrameReferenceTime, per slice; None unless every slice has the tags and they agree to 1 %."""
    durations = record.per_slice("frame_duration")
    references = record.per_slice("frame_reference_time")
    if any(value is None for value in [*durations, *references, *acquisitions]):
        return None
    times = []
    for item, start, duration, reference in zip(
        record.tags.slices, acquisitions, durations, references, strict=True
    ):
        seconds = _number(record, "frame_duration", duration, item.file) / 1000.0  # type: ignore[arg-type]
        offset = _number(record, "frame_reference_time", reference, item.file) / 1000.0  # type: ignore[arg-type]
        times.append(start + dt.timedelta(seconds=frame_average_s(seconds, half_life) - offset))  # type: ignore[operator]
    times.sort()
    middle = times[len(times) // 2]
    spread = max(abs((t - middle).total_seconds()) for t in times)
    if _relative_change(spread, half_life) > _TIME_TOLERANCE:
        record.warn(
            "the decay reference times back-computed from AcquisitionTime, FrameReferenceTime and "
            f"ActualFrameDuration differ by up to {spread:.0f} s between slices: not used"
        )
        return None
    return middle


def _relative_change(seconds: float, half_life: float) -> float:
    """How much SUV changes when the reference time moves by `seconds`."""
    return 2.0 ** (abs(seconds) / half_life) - 1.0


def _reference_time(record: _Record, half_life: float) -> dt.datetime:
    """The scan reference time of DecayCorrection START, by QIBA's order of sources."""
    acquisitions = _acquisitions(record)
    known = [a for a in acquisitions if a is not None]
    earliest = min(known) if known else None
    series = _series_datetime(record)
    ge_text = record.series("ge_scan_datetime")
    ge = _time_value(record, "ge_scan_datetime", ge_text, parse_dt) if ge_text else None
    candidates = {
        "series": _iso(series),
        "earliest_acquisition": _iso(earliest),
        "ge_private": _iso(ge),
    }
    if series is not None and (earliest is None or series <= earliest):
        chosen, rule = series, "SeriesDate/SeriesTime: not later than the earliest acquisition (QIBA)"
        if earliest is None:
            rule = "SeriesDate/SeriesTime (no AcquisitionTime to compare it with)"
        if ge is not None and _relative_change((ge - series).total_seconds(), half_life) > _TIME_TOLERANCE:
            record.warn(
                f"GE's private scan date-time {_iso(ge)} differs from SeriesTime {_iso(series)} by "
                f"{abs((ge - series).total_seconds()):.0f} s: SeriesTime used (QIBA)"
            )
    elif ge is not None:
        chosen = ge
        rule = (
            "GE private scan date-time (0009,100D): SeriesTime is later than the acquisition or absent (QIBA)"
        )
        if series is None:
            rule = "GE private scan date-time (0009,100D): no SeriesTime (QIBA)"
    elif earliest is not None:
        back = _backcomputed(record, acquisitions, half_life)
        candidates["back_computed"] = _iso(back)
        why = "no SeriesTime" if series is None else "SeriesTime is later than the earliest acquisition"
        if back is not None:
            chosen = back
            rule = (
                f"{why} and no GE scan date-time: the time the frames were decay-corrected to, "
                "AcquisitionTime + average count time - FrameReferenceTime (QIBA's back-computation)"
            )
        else:
            chosen = earliest
            rule = f"{why} and no GE scan date-time: the earliest AcquisitionTime (QIBA)"
    else:
        raise InputError(
            f"{record.tags.file}: no {LABELS['series_time']} and no {LABELS['acquisition_time']}: the scan "
            "time the images were decay-corrected to is unknown"
        )
    record.step("scan reference time", rule, {"chosen": _iso(chosen), "candidates": candidates})
    return chosen


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _injection_time(record: _Record, scan: dt.datetime) -> dt.datetime:
    """RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime on the scan's date (the day
    before when the scan crossed midnight)."""
    if record.tags.series.radiopharmaceuticals == 0:
        raise record.missing("radiopharmaceuticals", "no injection time")
    stamp = record.series("start_datetime")
    if stamp is not None:
        injection = _time_value(record, "start_datetime", stamp, parse_dt)
        if len(re.sub(r"\D", "", stamp.split(".")[0])) < 10:
            raise record.bad("start_datetime", stamp, "has no time of day")
        record.step("injection time", "RadiopharmaceuticalStartDateTime", _iso(injection))
        return injection
    time = record.series("start_time")
    if time is None:
        raise InputError(
            f"{record.tags.file}: no {LABELS['start_datetime']} or {LABELS['start_time']}: the injection "
            "time is unknown, so the dose cannot be decay-corrected"
        )
    injection = dt.datetime.combine(scan.date(), _time_value(record, "start_time", time, parse_tm))
    rule = "RadiopharmaceuticalStartTime (no date) on the date of the scan time"
    if injection > scan:
        earlier = injection - dt.timedelta(days=1)
        if scan - earlier > MAX_MIDNIGHT_UPTAKE:
            raise InputError(
                f"{record.tags.file}: {LABELS['start_time']} {injection.time()} is after the scan time "
                f"{_iso(scan)}, and a day earlier it would be "
                f"{(scan - earlier).total_seconds() / 3600:.1f} h before it: the times disagree"
            )
        injection = earlier
        rule += ", a day earlier: it is after the scan time, so the scan crossed midnight"
    record.step("injection time", rule, _iso(injection))
    return injection


def _check_uptake(
    record: _Record, uptake: float, half_life: float, injection: dt.datetime, scan: dt.datetime
) -> None:
    if uptake < 0:
        raise InputError(
            f"{record.tags.file}: the injection ({_iso(injection)}) is after the scan time ({_iso(scan)}): "
            "the times disagree"
        )
    if uptake > MAX_HALF_LIVES * half_life:
        record.warn(
            f"{uptake / 3600:.1f} h between injection and scan, over {MAX_HALF_LIVES:g} half-lives: "
            "check the times"
        )


def _undecayed_factors(record: _Record, weight_g: float, dose: float, half_life: float) -> list[float]:
    """DecayCorrection NONE: each slice's values are the average activity over its own frame, at its own
    time; each is corrected to its frame start and the dose to the same time:
    factor = W / D x lambda T / (1 - exp(-lambda T)) x exp(lambda (t_acq - t_injection))."""
    acquisitions = _acquisitions(record)
    durations = record.per_slice("frame_duration")
    for item, start, duration in zip(record.tags.slices, acquisitions, durations, strict=True):
        if start is None:
            raise record.missing(
                "acquisition_time", "DecayCorrection NONE needs each slice's acquisition time", item.file
            )
        if duration is None:
            raise record.missing(
                "frame_duration", "DecayCorrection NONE needs each slice's frame duration", item.file
            )
    earliest = min(a for a in acquisitions if a is not None)
    injection = _injection_time(record, earliest)
    rate = math.log(2) / half_life
    factors = []
    for item, start, duration in zip(record.tags.slices, acquisitions, durations, strict=True):
        seconds = _number(record, "frame_duration", duration, item.file) / 1000.0  # type: ignore[arg-type]
        since = (start - injection).total_seconds()  # type: ignore[operator]
        _check_uptake(record, since, half_life, injection, start)  # type: ignore[arg-type]
        frame = rate * seconds / -math.expm1(-rate * seconds) if seconds > 0 else 1.0
        factors.append(weight_g / dose * frame * math.exp(rate * since))
    record.step(
        "decay",
        "DecayCorrection NONE: each slice decay-corrected from its own AcquisitionTime over its "
        "ActualFrameDuration, the dose to the same time: W / D x lambda T / (1 - exp(-lambda T)) x "
        "exp(lambda (t_acq - t_injection))",
        {"acquisition_times": len(set(acquisitions)), "earliest": _iso(earliest)},
    )
    record.step("factor", "per slice, as in the decay step", {"min": min(factors), "max": max(factors)})
    return factors


def _check_corrections(record: _Record) -> None:
    """QIBA converts only attenuation- and decay-corrected images; say where CorrectedImage says
    otherwise."""
    corrected = record.tags.series.corrected_image
    if not corrected:
        return
    record.used[LABELS["corrected_image"]] = list(corrected)
    if "ATTN" not in corrected:
        record.warn(
            f"{LABELS['corrected_image']} lacks ATTN: not attenuation-corrected, so SUV is not quantitative"
        )
    decay = (record.tags.series.decay_correction or "").upper()
    if decay in ("START", "ADMIN") and "DECY" not in corrected:
        record.warn(f"{LABELS['corrected_image']} lacks DECY although DecayCorrection is {decay}")


def _autopet(record: _Record, factors: list[float]) -> AutopetComparison:
    """autoPET's conversion: the first file's AcquisitionTime, the dose decayed to it, Units and
    DecayCorrection ignored; tags as stored."""
    series = record.tags.series
    first: SliceTags = record.tags.slices[0]
    for name in ("patient_weight", "total_dose", "half_life", "start_time"):
        record.series(name)
    record.per_slice("acquisition_time")
    needed = {
        "patient_weight": series.patient_weight,
        "total_dose": series.total_dose,
        "half_life": series.half_life,
        "start_time": series.start_time,
        "acquisition_time": first.acquisition_time,
    }
    absent = [LABELS[name] for name, value in needed.items() if value is None]
    if absent:
        return AutopetComparison(None, None, f"not computable: no {', '.join(absent)}")
    try:
        weight, dose, half_life = (
            float(needed["patient_weight"]),  # type: ignore[arg-type]
            float(needed["total_dose"]),  # type: ignore[arg-type]
            float(needed["half_life"]),  # type: ignore[arg-type]
        )
        start = parse_tm(needed["start_time"])  # type: ignore[arg-type]
        acquired = parse_tm(needed["acquisition_time"])  # type: ignore[arg-type]
    except ValueError as error:
        return AutopetComparison(None, None, f"not computable: {error}")
    day = dt.date(2000, 1, 1)
    # Times of day subtracted as they are: a scan after midnight gives a negative time, as it did there.
    elapsed = (dt.datetime.combine(day, acquired) - dt.datetime.combine(day, start)).total_seconds()
    if dose <= 0 or half_life <= 0:
        return AutopetComparison(None, None, "not computable: dose or half-life not positive")
    factor = weight * 1000.0 / (dose * 0.5 ** (elapsed / half_life))
    ratios = [factor / f for f in factors if f > 0]
    worst_ratio = max(ratios, key=lambda r: abs(r - 1.0)) if ratios else None
    worst = abs(worst_ratio - 1.0) if worst_ratio is not None else None
    note = (
        f"the first file in slice order ({first.file.name}) acquired {elapsed:g} s after the injection time "
        "(autoPET took whichever file the folder listed first)"
    )
    if worst_ratio is not None and worst is not None and worst > AUTOPET_TOLERANCE:
        off = (
            f"{(worst_ratio - 1.0) * 100:+.1f} %"
            if 0.5 < worst_ratio < 2.0
            else f"{worst_ratio:.3g} times the correct values"
        )
        record.warn(
            "autoPET's conversion of its training data (the first file's acquisition time, Units and "
            f"DecayCorrection ignored) would give SUV {off} here"
        )
    return AutopetComparison(factor, worst, note)
