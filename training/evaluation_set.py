"""The demo's evaluation phantoms written to disk, so that models are compared on identical cases.

`training.phantom_scores` scores one model on phantoms it generates on the fly. An ablation needs more: every
arm predicted with `petseg predict` on the same files, then `petseg evaluate --compare` for the challenge
ranking and the paired Wilcoxon tests. This writes the three sets (fresh analytic phantoms with lesions,
phantoms around the held-out organ maps, lesion-free phantoms) as Grand-Challenge case folders, the layout
`process.py` reads with the CT on its own grid, and `meta.csv` naming each case's tracer and set (the
`centre` column `petseg evaluate --meta` groups by).

A phantom's PET and CT are registered perfectly, as no patient's are: breathing and moving between the CT
and the PET bed positions shift one against the other by millimetres. `ct_shift_mm` moves each CT by a rigid
shift drawn per case, so that a model's robustness to it (and what misalignment augmentation buys) can be
measured on the same cases as everything else.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petseg.io import write_text
from training.phantom_scores import EVALUATION_SEED, PhantomSpec, fresh_specs, held_out_specs
from training.trainer import TrainingError

log = logging.getLogger("petseg.training")

META_FILE = "meta.csv"
SETS = ("fresh", "held-out", "lesion-free")
CT_SHIFT = 101  # purpose of the per-case generator that draws the CT shift (the phantoms' own are below 10)


def evaluation_specs(
    cases: int, negatives: int, organs_dir: Path | None, seed: int, size: str
) -> list[tuple[str, PhantomSpec]]:
    """(set, phantom spec) for each case of the three sets, in the order `score_demo_model` scores them."""
    specs = [(SETS[0], spec) for spec in fresh_specs(seed, cases, size)]
    if organs_dir is not None:
        specs += [(SETS[1], spec) for spec in held_out_specs(organs_dir, seed, size)]
    return specs + [(SETS[2], spec) for spec in fresh_specs(seed, negatives, size, lesion_free=True)]


def evaluation_phantoms(
    cases: int, negatives: int, organs_dir: Path | None, seed: int, size: str
) -> Iterator[tuple[str, object]]:
    """(set, phantom) for each case of the three sets, built one after the other."""
    for name, spec in evaluation_specs(cases, negatives, organs_dir, seed, size):
        yield name, spec.build()


@dataclass(frozen=True)
class _EvaluationJob:
    """Every case of the sets, built by number: what a worker process is given."""

    specs: tuple[tuple[str, PhantomSpec], ...]
    seed: int
    ct_shift_mm: float

    def build(self, number: int) -> tuple[dict[str, str], object]:
        """meta.csv's row of case `number` and its phantom, the CT shifted where asked."""
        name, spec = self.specs[number]
        phantom = spec.build()
        row = {"case": phantom.case_id, "tracer": phantom.tracer, "centre": name, "source": phantom.source}
        if self.ct_shift_mm > 0:
            shift = draw_ct_shift(self.seed, number, self.ct_shift_mm)
            phantom = shifted_ct(phantom, shift)
            row["ct_shift_mm"] = " ".join(f"{v:g}" for v in shift)
        return row, phantom

    def stage(self, number: int, stage_root: Path) -> tuple[dict, Path]:
        from petseg.synthetic.layouts import write_gc

        row, phantom = self.build(number)
        stage = stage_root / str(number)
        write_gc(phantom, stage)
        return row, stage


def shifted_ct(phantom: object, shift_xyz_mm: tuple[float, float, float]) -> object:
    """The phantom with its CT moved by `shift_xyz_mm` (physical x, y, z) against the PET and the labels:
    the CT keeps its voxels and takes a new origin, so nothing is interpolated here and the pipeline's own
    resampling onto the PET grid realises the shift."""
    import SimpleITK as sitk

    ct = sitk.Image(phantom.ct)
    ct.SetOrigin(tuple(float(o + d) for o, d in zip(ct.GetOrigin(), shift_xyz_mm, strict=True)))
    return dataclasses.replace(phantom, ct=ct)


def draw_ct_shift(seed: int, number: int, largest_mm: float) -> tuple[float, float, float]:
    """Each of x, y and z uniform in [-largest_mm, largest_mm], from the case's own generator."""
    rng = np.random.default_rng([seed, number, CT_SHIFT])
    x, y, z = (round(float(v), 2) for v in rng.uniform(-largest_mm, largest_mm, size=3))
    return x, y, z


def write_evaluation_set(
    out_dir: Path,
    cases: int,
    negatives: int,
    organs_dir: Path | None = None,
    seed: int = EVALUATION_SEED,
    size: str = "full",
    ct_shift_mm: float = 0.0,
    progress: bool = True,
    workers: int = 1,
) -> list[dict[str, str]]:
    """Write the sets to `out_dir` (which must not exist) and return meta.csv's rows; with `ct_shift_mm`,
    each CT moved by a shift drawn per case (meta.csv's `ct_shift_mm` column: x y z). `progress` logs a
    line per case written (about 6 s each at full size on one core); without it they are debug lines.
    `workers` processes build the cases side by side; the files are those one process writes.

    The cases are written under `<out_dir>.partial` and the folder renamed when the last is there, so an
    interrupted run leaves no set that looks complete.
    """
    from petseg.synthetic.generate import staged_builds
    from petseg.synthetic.layouts import write_gc

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise TrainingError(f"{out_dir}: already exists; choose a new --output")
    if cases < 0 or negatives < 0:
        raise TrainingError(f"--cases and --negatives must be at least 0, got {cases} and {negatives}")
    if not 0 <= ct_shift_mm <= 50:
        raise TrainingError(f"--ct-shift-mm must be in [0, 50] mm, got {ct_shift_mm}")
    if workers < 1:
        raise TrainingError(f"--workers must be at least 1, got {workers}")
    if organs_dir is not None and not Path(organs_dir).is_dir():
        raise TrainingError(f"{organs_dir}: organ maps folder not found")
    job = _EvaluationJob(tuple(evaluation_specs(cases, negatives, organs_dir, seed, size)), seed, ct_shift_mm)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows: list[dict[str, str]] = []
    with staged_builds(job, partial, len(job.specs), workers) as built:
        for number, staged in built:
            row, phantom = job.build(number) if staged is None else (staged[0], None)
            if any(other["case"] == row["case"] for other in rows):
                raise TrainingError(f"two evaluation phantoms share the case id {row['case']}")
            if phantom is not None:
                write_gc(phantom, partial)
            else:
                os.replace(staged[1] / row["case"], partial / row["case"])
            rows.append(row)
            log.log(
                logging.INFO if progress else logging.DEBUG,
                "%d %s: %s (%s, %s)",
                number + 1,
                row["centre"],
                row["case"],
                row["tracer"],
                row["source"],
            )
    write_text(_csv(rows), partial / META_FILE)
    partial.rename(out_dir)
    return rows


def _csv(rows: list[dict[str, str]]) -> str:
    text = io.StringIO()
    if not rows:
        return "case,tracer,centre,source\n"
    columns = ["case", "tracer", "centre", "source"] + (["ct_shift_mm"] if "ct_shift_mm" in rows[0] else [])
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
