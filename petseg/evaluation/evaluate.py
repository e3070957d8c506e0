"""`petseg evaluate`: score a folder of predictions against a folder of ground truths.

Cases are matched by file name (Grand-Challenge `.mha` and nnU-Net `.nii.gz` alike). A missing prediction is
an error naming the case (or, on request, an empty mask), and a prediction on another grid than its ground
truth is an error too, never a silent misalignment. Each case is scored by
`petseg.evaluation.metrics.evaluate_case` (one labelling per mask) in a pool of processes; the results are
written as `cases.csv`, `lesions.csv` and `summary.json`, each atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.evaluation.calibration import Calibration
from petseg.evaluation.comparison import challenge_ranking, subset_key, wilcoxon_tests
from petseg.evaluation.metrics import evaluate_case
from petseg.evaluation.stratified import stratify
from petseg.io import (
    MASK_FOLDER,
    PET_FOLDER,
    image_stem,
    is_image_file,
    json_safe,
    read_image,
    write_json,
    write_text,
)
from petseg.io.nnunet_layout import IMAGES_FOLDER, LABELS_FOLDER, PET_CHANNEL
from petseg.io.probability import PROBABILITY_SUFFIX, read_probability

CASE_COLUMNS = ("case", "dice", "fpv_ml", "fnv_ml", "lesion_dice", "lesion_count")
PET_CASE_COLUMNS = ("tp", "fp", "fn", "f1", "tmtv_ml", "tlg", "dmax_mm")
LESION_COLUMNS = ("case", "lesion", "mtv_ml", "suvmax", "suvmean", "dice")
GEOMETRY_TOLERANCE = 1e-4  # relative to the spacing, as readers of NIfTI/MHA headers round
PET_CHANNEL_SUFFIX = f"_{PET_CHANNEL}"  # nnU-Net: <case>_0001.nii.gz is the PET


@dataclass(frozen=True)
class CaseFilesToScore:
    name: str
    truth: Path
    prediction: Path | None  # None: evaluated as an empty mask
    pet: Path | None
    probability: Path | None = None  # `petseg predict --save-probabilities` output: calibration


class ScoredCases(NamedTuple):
    rows: list[dict[str, Any]]  # cases.csv
    lesions: list[dict[str, Any]]  # lesions.csv
    calibration: Calibration | None  # summed over the cases, when probabilities were given


def _images_by_name(folder: Path, what: str) -> dict[str, Path]:
    """The images of one role (`what`: "ground-truth", "prediction", "PET") by case name, in any layout
    petseg reads or writes: image files directly in `folder`; an nnU-Net dataset (its `labelsTr/` for the
    ground truth, `imagesTr/` for the PET); or Grand-Challenge case folders, as `petseg phantoms` writes them
    (`<case>/ground-truth/`, `<case>/input/images/pet/`) and `petseg predict` (`<case>/images/
    automated-petct-lesion-segmentation/`), one image each, named by the case folder."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    found = _flat_images(folder, what)
    if found:
        return found
    inner = {"ground-truth": LABELS_FOLDER, "PET": IMAGES_FOLDER}.get(what)
    if inner is not None and (folder / inner).is_dir():
        return _flat_images(folder / inner, what)
    return _case_folder_images(folder, what)


def _flat_images(folder: Path, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if is_image_file(path):
            name = image_stem(path)
            if name in found:
                raise InputError(
                    f"{folder}: two {what} files for case {name!r}: {found[name].name}, {path.name}"
                )
            found[name] = path
    return found


# Where a Grand-Challenge case folder holds each role's one image.
_CASE_SUBFOLDERS = {
    "ground-truth": (Path("ground-truth"),),
    "prediction": (MASK_FOLDER, Path("output") / MASK_FOLDER),
    "PET": (Path("input") / PET_FOLDER, PET_FOLDER),
}


def _pets_beside_truths(folder: Path) -> dict[str, Path]:
    """The PETs of a folder of Grand-Challenge case folders that hold their own (`petseg phantoms --layout
    gc`), by case; empty for any other ground-truth folder."""
    try:
        return {} if _flat_images(folder, "PET") else _case_folder_images(folder, "PET")
    except (InputError, OSError):
        return {}


def _case_folder_images(folder: Path, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sub in _CASE_SUBFOLDERS[what]:
            if (case / sub).is_dir():
                images = list(_flat_images(case / sub, what).values())
                if len(images) != 1:
                    raise InputError(f"{case / sub}: expected one {what} image, found {len(images)}")
                found[case.name] = images[0]
                break
    return found


def match_cases(
    truth_dir: Path,
    prediction_dir: Path,
    pet_dir: Path | None = None,
    missing_as_empty: bool = False,
    probability_dir: Path | None = None,
) -> list[CaseFilesToScore]:
    """Pair every ground truth with its prediction (and PET, and `<case>_probability.npz`) by file name."""
    truths = _images_by_name(Path(truth_dir), "ground-truth")
    if not truths:
        raise InputError(f"{truth_dir}: no ground-truth images (.mha, .nii.gz, ...)")
    predictions = _images_by_name(Path(prediction_dir), "prediction")
    if pet_dir is None:
        pets = _pets_beside_truths(Path(truth_dir))
        if pets:
            pet_dir = Path(truth_dir)  # phantom case folders hold their PET beside the ground truth
    else:
        pets = _images_by_name(Path(pet_dir), "PET")
    cases = []
    for name, truth in truths.items():
        prediction = predictions.get(name)
        if prediction is None and not missing_as_empty:
            raise InputError(
                f"{prediction_dir}: no prediction for case {name!r} (--missing-as-empty scores it as empty)"
            )
        pet = None
        if pet_dir is not None:
            pet = pets.get(name) or pets.get(name + PET_CHANNEL_SUFFIX)
            if pet is None:
                raise InputError(
                    f"{pet_dir}: no PET for case {name!r} ({name} or {name}{PET_CHANNEL_SUFFIX})"
                )
        probability = None
        if probability_dir is not None:
            probability = Path(probability_dir) / f"{name}{PROBABILITY_SUFFIX}"
            if not probability.is_file():
                raise InputError(
                    f"{probability}: no probability file for case {name!r} (see predict --save-probabilities)"
                )
        cases.append(CaseFilesToScore(name, truth, prediction, pet, probability))
    return cases


def _check_same_grid(image: sitk.Image, reference: sitk.Image, path: Path, reference_path: Path) -> None:
    problems = []
    if image.GetSize() != reference.GetSize():
        problems.append(f"size {image.GetSize()} != {reference.GetSize()}")
    spacing, reference_spacing = np.array(image.GetSpacing()), np.array(reference.GetSpacing())
    tolerance = GEOMETRY_TOLERANCE * float(reference_spacing.max())
    if not np.allclose(spacing, reference_spacing, rtol=GEOMETRY_TOLERANCE, atol=0):
        problems.append(f"spacing {tuple(spacing)} != {tuple(reference_spacing)}")
    if not np.allclose(image.GetOrigin(), reference.GetOrigin(), rtol=0, atol=tolerance):
        problems.append(f"origin {image.GetOrigin()} != {reference.GetOrigin()}")
    if not np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-4):
        problems.append("direction differs")
    if problems:
        raise InputError(f"{path}: not on the grid of {reference_path.name}: {'; '.join(problems)}")


def _mask(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        raise InputError(f"{path}: not a binary mask (values {values[:6].tolist()}...)")
    return array.astype(bool)


def score_case(case: CaseFilesToScore) -> ScoredCases:
    """One case's row of cases.csv, its rows of lesions.csv and its voxel calibration."""
    truth_image = read_image(case.truth, "ground truth")
    truth = _mask(truth_image, case.truth)
    if case.prediction is None:
        prediction = np.zeros_like(truth)
    else:
        prediction_image = read_image(case.prediction, "prediction")
        _check_same_grid(prediction_image, truth_image, case.prediction, case.truth)
        prediction = _mask(prediction_image, case.prediction)
    pet = None
    if case.pet is not None:
        pet_image = read_image(case.pet, "PET")
        _check_same_grid(pet_image, truth_image, case.pet, case.truth)
        pet = sitk.GetArrayFromImage(pet_image).astype(np.float32)
    spacing = truth_image.GetSpacing()[::-1]  # array axes are (z, y, x)
    result = evaluate_case(prediction, truth, spacing, pet)
    row: dict[str, Any] = {
        "case": case.name,
        "dice": result.scores.dice,
        "fpv_ml": result.scores.fpv_ml,
        "fnv_ml": result.scores.fnv_ml,
        "lesion_dice": result.lesion_dice,
        "lesion_count": result.lesion_count,
    }
    lesions: list[dict[str, Any]] = []
    if result.detection is not None and result.lesions is not None:
        stats = result.lesions
        row.update(
            tp=result.detection.tp,
            fp=result.detection.fp,
            fn=result.detection.fn,
            f1=result.detection.f1,
            tmtv_ml=stats.tmtv_ml,
            tlg=stats.tlg,
            dmax_mm=stats.dmax_mm,
        )
        for k in range(stats.count):
            lesions.append(
                {
                    "case": case.name,
                    "lesion": k + 1,
                    "mtv_ml": float(stats.mtv_ml[k]),
                    "suvmax": float(stats.suvmax[k]),
                    "suvmean": float(stats.suvmean[k]),
                    "dice": float(result.per_lesion_dice[k]),
                }
            )
    calibration = None
    if case.probability is not None:
        probability_image = read_probability(case.probability)
        _check_same_grid(probability_image, truth_image, case.probability, case.truth)
        calibration = Calibration().add(sitk.GetArrayViewFromImage(probability_image), truth)
    return ScoredCases([row], lesions, calibration)


def _csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        # A case named "=HYPERLINK(...)" would be a formula in a spreadsheet: a leading ' keeps it text.
        return "'" + value
    return value


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, median and quartiles of the finite values (None where there are none)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"n": 0, "mean": None, "median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
    }


def read_meta(path: Path, cases: Iterable[str]) -> dict[str, dict[str, str]]:
    """case -> {"tracer": ..., "centre": ...} from a CSV with columns case, tracer, centre.

    Every one of `cases` must have a row: checked here, before any case is scored.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    needed = {"case", "tracer", "centre"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path}: needs the columns case, tracer, centre")
    meta = {row["case"]: {"tracer": row["tracer"], "centre": row["centre"]} for row in rows}
    missing = [case for case in cases if case not in meta]
    if missing:
        raise InputError(f"{path}: no row for case(s): {', '.join(missing[:5])}")
    return meta


def summarise(
    rows: Sequence[dict[str, Any]], meta: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Means, medians and IQRs per metric; with `meta`, mean Dice, FPV and FNV per tracer x centre subset."""
    metrics = [c for c in (*CASE_COLUMNS[1:], *PET_CASE_COLUMNS) if any(c in row for row in rows)]
    summary: dict[str, Any] = {
        "cases": len(rows),
        "lesion_free_cases": sum(1 for row in rows if math.isnan(row["dice"])),
        "metrics": {m: describe([row.get(m, math.nan) for row in rows]) for m in metrics},
    }
    if meta is not None:  # covers every case (`read_meta` checks)
        subsets: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            subsets.setdefault(subset_key(row["case"], meta), []).append(row)
        summary["subsets"] = {
            key: {
                "cases": len(members),
                **{m: describe([r[m] for r in members])["mean"] for m in ("dice", "fpv_ml", "fnv_ml")},
            }
            for key, members in sorted(subsets.items())
        }
    return summary


def score_cases(
    cases: Sequence[CaseFilesToScore],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> ScoredCases:
    """Rows of cases.csv and lesions.csv (in case order) and the summed calibration, in parallel processes."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(cases)))
    total = ScoredCases([], [], None)
    with tqdm(total=len(cases), desc=desc, unit="case", disable=not progress) as bar:
        if workers == 1:
            results: Iterable[ScoredCases] = map(score_case, cases)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(score_case, cases)
        try:
            for result in results:
                total.rows.extend(result.rows)
                total.lesions.extend(result.lesions)
                if result.calibration is not None:
                    if total.calibration is None:
                        total = total._replace(calibration=result.calibration)
                    else:
                        total.calibration.merge(result.calibration)
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown()
    return total


def _case_columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    with_pet = any("tp" in row for row in rows)
    return (*CASE_COLUMNS, *(PET_CASE_COLUMNS if with_pet else ()))


def evaluate_folder(
    cases: Sequence[CaseFilesToScore],
    out_dir: Path,
    meta: dict[str, dict[str, str]] | None = None,
    workers: int | None = None,
    progress: bool = True,
    compare: Mapping[str, Sequence[CaseFilesToScore]] | None = None,
    name: str = "prediction",
    report_cases: int | None = None,
) -> dict[str, Any]:
    """Score the cases; write cases.csv, lesions.csv and summary.json, and return the summary.

    With `compare` (other prediction sets of the same cases, by name), each set's rows go to
    `cases-<name>.csv`, and the summary gains the challenge ranking of all sets and one-sided paired Wilcoxon
    tests of this set (`name`) against each other one. With `report_cases` (a number, 0 included), also
    `report.html` with a gallery of at most that many cases.
    """
    rows, lesions, calibration = score_cases(cases, workers, progress)
    summary = summarise(rows, meta)
    summary["stratified"] = stratify(rows, lesions)
    if calibration is not None:
        summary["calibration"] = calibration.summary()
    out_dir = Path(out_dir)
    outputs = {out_dir / "cases.csv": _csv(rows, _case_columns(rows))}
    outputs[out_dir / "lesions.csv"] = _csv(lesions, LESION_COLUMNS)
    if compare:
        sets = {name: rows}
        for other, other_cases in compare.items():
            sets[other] = score_cases(other_cases, workers, progress, desc=other).rows
            outputs[out_dir / f"cases-{other}.csv"] = _csv(sets[other], _case_columns(sets[other]))
        summary["comparison"] = {
            "sets": list(sets),
            "ranking": challenge_ranking(sets, meta),
            "wilcoxon": wilcoxon_tests(name, sets),
        }
    for path, text in outputs.items():
        write_text(text, path)
    if calibration is not None:
        from petseg.evaluation.plots import calibration_png, write_png

        write_png(calibration_png(summary["calibration"]), out_dir / "calibration.png")
    write_json(json_safe(summary), out_dir / "summary.json")
    if report_cases is not None:
        from petseg.evaluation.report import write_report

        write_report(
            out_dir / "report.html",
            json_safe(summary),
            rows,
            cases,
            meta,
            max_cases=report_cases,
            progress=progress,
            title=f"petseg evaluation of {name}",
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short table of the summary for the terminal."""
    lines = [f"{summary['cases']} cases ({summary['lesion_free_cases']} lesion-free)"]
    lines.append(f"{'metric':<14}{'n':>5}{'mean':>11}{'median':>11}{'IQR':>24}")
    for name, stats in summary["metrics"].items():
        if stats["n"] == 0:
            lines.append(f"{name:<14}{0:>5}{'-':>11}{'-':>11}{'-':>24}")
            continue
        iqr = f"{stats['q1']:.4g} - {stats['q3']:.4g}"
        lines.append(f"{name:<14}{stats['n']:>5}{stats['mean']:>11.4g}{stats['median']:>11.4g}{iqr:>24}")
    for key, subset in summary.get("subsets", {}).items():
        values = ", ".join(
            f"{m} {v:.4g}" if v is not None else f"{m} -" for m, v in subset.items() if m != "cases"
        )
        lines.append(f"subset {key} ({subset['cases']} cases): {values}")
    calibration = summary.get("calibration")
    if calibration:
        lines.append(
            "calibration: "
            + ", ".join(
                f"{key} {calibration[key]:.4g}"
                for key in (
                    "entropy_correct",
                    "entropy_incorrect",
                    "confidence_correct",
                    "confidence_incorrect",
                )
                if calibration[key] == calibration[key]
            )
            + f", gap {calibration['calibration_gap']:.4g}"
        )
    comparison = summary.get("comparison")
    if comparison:
        ranking = comparison["ranking"]
        for name in sorted(ranking["rank"], key=ranking["rank"].get):
            lines.append(f"rank {ranking['rank'][name]}: {name} (score {ranking['overall_score'][name]:.3g})")
        for test in comparison["wilcoxon"]:
            lines.append(
                f"Wilcoxon {test['metric']}: {test['alternative']}, {test['pairs']} pairs, "
                f"p {test['p']:.3g}, Bonferroni {test['p_bonferroni']:.3g}"
            )
    return "\n".join(lines)
