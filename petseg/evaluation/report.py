"""`report.html` of `petseg evaluate`: one self-contained file to read and share (every image embedded).

It holds the summary table, the subsets, the comparison and calibration when present, box plots of the
case metrics (per tracer/centre subset with `--meta`), the stratified curves, and a gallery of coronal PET
MIPs with outlines (lesions found and missed, predictions matched and false positives), worst cases first.
A whole-body study set has over a thousand cases, so the gallery holds at most `max_cases` of them.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg import __version__
from petseg.evaluation.comparison import subset_key
from petseg.evaluation.plots import box_plots_png, calibration_png, stratified_png
from petseg.evaluation.preview import (
    FALSE_POSITIVE_RGB,
    FOUND_RGB,
    MATCHED_RGB,
    MISSED_RGB,
    annotated_png,
    outline_panel,
)
from petseg.io import read_image, write_text

GALLERY_CASES = 60
# Marks the body with how many images the browser decoded, e.g. data-images-decoded="9/9": a broken
# embedded image shows at a glance in the DOM (and the rendering test reads it).
IMAGE_CHECK = (
    'window.addEventListener("load", () => { const all = Array.from(document.images); '
    "document.body.dataset.imagesDecoded = "
    'all.filter((i) => i.complete && i.naturalWidth > 0).length + "/" + all.length; });'
)
BOX_METRICS = ("dice", "fpv_ml", "fnv_ml", "lesion_dice", "f1")
# The autoPET definitions, in one sentence a clinician can check a row against.
METRIC_DEFINITIONS = (
    "autoPET definitions: Dice is the voxel overlap of prediction and ground truth; FPV (false-positive "
    "volume) is the volume of predicted components that touch no true lesion, and FNV (false-negative "
    "volume) the volume of true lesions that no predicted component touches (components 18-connected), so "
    "a case whose every lesion is touched and whose every prediction touches a lesion has FPV = FNV = 0 ml "
    "even when its Dice is low."
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img.figure { max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.case { border: 1px solid #ddd; padding: 6px; font-size: 0.8em; max-width: 520px; overflow-wrap: anywhere; }
.case img { display: block; height: 480px; }
.key span { display: inline-block; width: 1em; height: 1em; margin: 0 4px 0 12px; vertical-align: middle; }
"""


def _png_tag(png: bytes, alt: str, css: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_section(summary: Mapping[str, Any]) -> str:
    parts = [
        f"<p>{summary['cases']} cases, {summary['lesion_free_cases']} of them lesion-free "
        "(scored by false-positive volume only).</p>",
        f"<p>{METRIC_DEFINITIONS}</p>",
    ]
    parts.append(
        _table(
            ("metric", "n", "mean", "median", "Q1", "Q3"),
            [(m, s["n"], s["mean"], s["median"], s["q1"], s["q3"]) for m, s in summary["metrics"].items()],
        )
    )
    if "subsets" in summary:
        parts.append("<h3>Tracer / centre subsets (means)</h3>")
        parts.append(
            _table(
                ("subset", "cases", "dice", "fpv_ml", "fnv_ml"),
                [(k, v["cases"], v["dice"], v["fpv_ml"], v["fnv_ml"]) for k, v in summary["subsets"].items()],
            )
        )
    comparison = summary.get("comparison")
    if comparison:
        ranking = comparison["ranking"]
        parts.append("<h3>Challenge ranking</h3>")
        names = sorted(ranking["rank"], key=ranking["rank"].get)
        parts.append(
            _table(
                ("set", "rank", "score"),
                [(n, ranking["rank"][n], ranking["overall_score"][n]) for n in names],
            )
        )
        parts.append("<h3>One-sided paired Wilcoxon signed-rank tests (Bonferroni)</h3>")
        parts.append(
            _table(
                ("metric", "against", "alternative", "pairs", "p", "p (Bonferroni)"),
                [
                    (t["metric"], t["other"], t["alternative"], t["pairs"], t["p"], t["p_bonferroni"])
                    for t in comparison["wilcoxon"]
                ],
            )
        )
    return "\n".join(parts)


def _calibration_section(calibration: Mapping[str, Any]) -> str:
    rows = [
        (
            group,
            calibration[f"voxels_{group}"],
            calibration[f"entropy_{group}"],
            calibration[f"confidence_{group}"],
        )
        for group in ("correct", "incorrect")
    ]
    return "\n".join(
        [
            _table(("voxels", "count", "mean entropy (nats)", "mean confidence"), rows),
            f"<p>Calibration gap (mean confidence correct - incorrect): "
            f"<b>{_number(calibration['calibration_gap'])}</b></p>",
            _png_tag(calibration_png(calibration), "calibration histograms"),
        ]
    )


def _gallery_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Cases with lesions by Dice, worst first, then lesion-free cases by false-positive volume."""
    with_lesions = sorted((r for r in rows if math.isfinite(r["dice"])), key=lambda r: r["dice"])
    lesion_free = sorted((r for r in rows if not math.isfinite(r["dice"])), key=lambda r: -r["fpv_ml"])
    return [*with_lesions, *lesion_free]


def _case_figure(case: Any, row: Mapping[str, Any]) -> str:
    truth_image = read_image(case.truth, "ground truth")
    truth = sitk.GetArrayFromImage(truth_image).astype(bool)
    if case.prediction is not None:
        prediction = sitk.GetArrayFromImage(read_image(case.prediction, "prediction")).astype(bool)
    else:
        prediction = np.zeros_like(truth)
    background = read_image(case.pet, "PET") if case.pet is not None else truth_image
    # The report's key above the gallery explains the colours; each panel carries its R/L markers and scale.
    png = annotated_png([("", outline_panel(background, truth, prediction))], "", ())
    caption = (
        f"<b>{html.escape(row['case'])}</b><br>Dice {_number(row['dice'])}, FPV {_number(row['fpv_ml'])} ml, "
        f"FNV {_number(row['fnv_ml'])} ml, {row['lesion_count']} lesion(s)"
    )
    return f'<div class="case">{_png_tag(png, row["case"], "mip")}{caption}</div>'


def write_report(
    path: Path,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    cases: Sequence[Any],
    meta: Mapping[str, Mapping[str, str]] | None = None,
    max_cases: int = GALLERY_CASES,
    progress: bool = False,
    title: str = "petseg evaluation",
) -> Path:
    """Write the self-contained HTML report; `cases` are the scored `CaseFilesToScore` (for the gallery)."""
    from tqdm import tqdm

    sections = [f"<h1>{html.escape(title)}</h1>"]
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sections.append(f"<p>petseg {__version__}, {stamp}.</p>")
    sections.append("<h2>Summary</h2>" + _summary_section(summary))
    metrics = [m for m in BOX_METRICS if any(m in r for r in rows)]
    grouped = [{**r, "subset": subset_key(r["case"], meta)} for r in rows] if meta else list(rows)
    sections.append("<h2>Case metrics</h2>")
    sections.append(_png_tag(box_plots_png(grouped, metrics, "subset" if meta else None), "box plots"))
    stratified = summary.get("stratified", {})
    figure = stratified_png(stratified)
    if figure is not None:
        sections.append("<h2>Stratified evaluation</h2>")
        counts = ", ".join(f"{k}: {v['cases']} cases" for k, v in stratified.items())
        sections.append(
            f"<p>Median Dice over volume thresholds and Dmax quartiles ({html.escape(counts)}).</p>"
        )
        sections.append(_png_tag(figure, "stratified evaluation"))
    if "calibration" in summary:
        sections.append("<h2>Voxel calibration</h2>" + _calibration_section(summary["calibration"]))
    by_name = {case.name: case for case in cases}
    chosen = _gallery_order(rows)[:max_cases]
    key = "".join(
        f'<span style="background: rgb{colour}"></span>{label}'
        for colour, label in (
            (FOUND_RGB, "lesion found"),
            (MISSED_RGB, "lesion missed (FN)"),
            (MATCHED_RGB, "prediction on a lesion"),
            (FALSE_POSITIVE_RGB, "false positive (FP)"),
        )
    )
    sections.append(
        f"<h2>Cases</h2><p>{len(chosen)} of {len(rows)} cases, worst Dice first, then lesion-free cases by "
        f"false-positive volume. Coronal maximum-intensity projection of the "
        f"{'PET' if any(c.pet for c in cases) else 'ground truth (no --pet given)'}.</p>"
        f'<p class="key">{key}</p>'
    )
    figures = [
        _case_figure(by_name[row["case"]], row)
        for row in tqdm(chosen, desc="report", unit="case", disable=not progress)
    ]
    sections.append('<div class="gallery">' + "\n".join(figures) + "</div>")
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(sections)
        + f"\n<script>{IMAGE_CHECK}</script>\n</body></html>\n"
    )
    return write_text(document, Path(path))
