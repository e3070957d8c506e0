"""The demo's evaluation phantoms written to disk, so that models are compared on identical cases.

`training.phantom_scores` scores one model on phantoms it generates on the fly. An ablation needs more: every
arm predicted with `petseg predict` on the same files, then `petseg evaluate --compare` for the challenge
ranking and the paired Wilcoxon tests. This writes the three sets (fresh analytic phantoms with lesions,
phantoms around the held-out organ maps, lesion-free phantoms) as Grand-Challenge case folders, the layout
`process.py` reads with the CT on its own grid, and `meta.csv` naming each case's tracer and set (the
`centre` column `petseg evaluate --meta` groups by).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from petseg.io import write_text
from training.phantom_scores import EVALUATION_SEED, fresh_phantoms, held_out_phantoms
from training.trainer import TrainingError

log = logging.getLogger("petseg.training")

META_FILE = "meta.csv"
SETS = ("fresh", "held-out", "lesion-free")


def evaluation_phantoms(
    cases: int, negatives: int, organs_dir: Path | None, seed: int, size: str
) -> Iterator[tuple[str, object]]:
    """(set, phantom) for each case of the three sets, in the order `score_demo_model` scores them."""
    for phantom in fresh_phantoms(seed, cases, size):
        yield SETS[0], phantom
    if organs_dir is not None:
        for phantom in held_out_phantoms(organs_dir, seed, size):
            yield SETS[1], phantom
    for phantom in fresh_phantoms(seed, negatives, size, lesion_free=True):
        yield SETS[2], phantom


def write_evaluation_set(
    out_dir: Path,
    cases: int,
    negatives: int,
    organs_dir: Path | None = None,
    seed: int = EVALUATION_SEED,
    size: str = "full",
) -> list[dict[str, str]]:
    """Write the sets to `out_dir` (which must not exist) and return meta.csv's rows.

    The cases are written under `<out_dir>.partial` and the folder renamed when the last is there, so an
    interrupted run leaves no set that looks complete.
    """
    from petseg.synthetic.layouts import write_gc

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise TrainingError(f"{out_dir}: already exists; choose a new --output")
    if cases < 0 or negatives < 0:
        raise TrainingError(f"--cases and --negatives must be at least 0, got {cases} and {negatives}")
    if organs_dir is not None and not Path(organs_dir).is_dir():
        raise TrainingError(f"{organs_dir}: organ maps folder not found")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows: list[dict[str, str]] = []
    for number, (name, phantom) in enumerate(evaluation_phantoms(cases, negatives, organs_dir, seed, size)):
        if any(row["case"] == phantom.case_id for row in rows):
            raise TrainingError(f"two evaluation phantoms share the case id {phantom.case_id}")
        write_gc(phantom, partial)
        row = {"case": phantom.case_id, "tracer": phantom.tracer, "centre": name, "source": phantom.source}
        rows.append(row)
        log.info("%d %s: %s (%s, %s)", number + 1, name, phantom.case_id, phantom.tracer, phantom.source)
    write_text(_csv(rows), partial / META_FILE)
    partial.rename(out_dir)
    return rows


def _csv(rows: list[dict[str, str]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["case", "tracer", "centre", "source"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
