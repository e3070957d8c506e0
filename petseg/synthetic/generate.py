"""`generate`: a folder of phantom cases in one layout, with a manifest (`phantoms.json`).

Which tracer a case gets, and whether it is a second study of an earlier case's patient, is decided per case
from (seed, case index), so the first cases of a run are the same whatever the number of cases asked for.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from petseg.errors import InputError, OutputError
from petseg.io import write_json
from petseg.synthetic import ids
from petseg.synthetic.case import IDS, TRACERS, Phantom, check_common, make_case, rng_for, simulate
from petseg.synthetic.layouts import LAYOUTS, finish_nnunet, write_gc, write_nnunet
from petseg.synthetic.organs import MAP_SETS, find_maps, organ_scene, select_maps

log = logging.getLogger(__name__)

MANIFEST = "phantoms.json"
FDG_SHARE = 0.6
SECOND_STUDY_PROBABILITY = 0.2
STAGING = ".staging"  # scratch folder of the worker processes inside the output folder
PLAN = 7  # purpose of the per-case generator that plans tracer and patient


def plan_cases(
    seed: int, cases: int, tracer: str, fdg_share: float = FDG_SHARE
) -> list[tuple[str, str | None]]:
    """(tracer, patient id or None for a new patient) per case; about 20% revisit an earlier patient.

    With tracer "mixed", a new patient is an FDG one with probability `fdg_share`.
    """
    plan: list[tuple[str, str | None]] = []
    roots: list[int] = []
    for index in range(cases):
        rng = rng_for(seed, index, PLAN)
        fdg, second, pick = rng.random(), rng.random(), rng.random()
        root = index
        if index > 0 and second < SECOND_STUDY_PROBABILITY:
            root = roots[int(pick * index)]
        roots.append(root)
        if root == index:
            case_tracer = tracer if tracer != "mixed" else ("fdg" if fdg < fdg_share else "psma")
            plan.append((case_tracer, None))
        else:
            root_tracer = plan[root][0]
            patient = ids.new_patient_id(rng_for(seed, root, IDS), root_tracer)
            plan.append((root_tracer, patient))
    return plan


def generate(
    out_dir: Path,
    cases: int,
    seed: int = 0,
    tracer: str = "mixed",
    size: str = "tiny",
    layout: str = "gc",
    organs_dir: Path | None = None,
    progress: bool = True,
    fdg_share: float = FDG_SHARE,
    negatives: bool = True,
    autopet_ids: bool = False,
    organ_maps: str = "all",
    workers: int = 1,
) -> list[dict]:
    """Write `cases` phantoms to `out_dir` and return their manifest rows (also in `out_dir/phantoms.json`).

    `fdg_share`: with tracer "mixed", the share of new patients that get FDG (the default is about
    autoPET III's); the rest get PSMA. `negatives` False gives every case lesions (by default about one
    in ten is lesion-free, as in autoPET). `autopet_ids` keeps autoPET's free-text study descriptions in
    the case ids, spaces included (`fdg_<hex>_<date>-NA-PET-CT Ganzkoerper  primaer mit KM-<n>`), to test
    code against them; by default ids are plain (`fdg_<hex>_<date>`).

    With `organs_dir`, the first cases are built around its organ maps (of `organ_maps`: "all", or one side
    of the fixed train/held-out split), one case per map, and any further cases are analytic, so `cases`
    is always the number of cases written.

    `workers` processes build the cases side by side (each writes to a scratch folder inside `out_dir`,
    moved into place in case order), so the files and the manifest are those of one process.

    Invalid arguments raise ValueError; an unusable organ-map folder raises InputError and an output folder
    that holds something other than an earlier phantom run raises OutputError.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    check_common(seed, 0, size)
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(fdg_share, bool) or not isinstance(fdg_share, (int, float)) or not 0.0 <= fdg_share <= 1.0:
        raise ValueError(f"fdg_share must be a number from 0 to 1, got {fdg_share!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if organ_maps not in MAP_SETS:
        raise ValueError(f"organ_maps must be one of {', '.join(MAP_SETS)}, got {organ_maps!r}")
    out_dir = Path(out_dir)
    maps = select_maps(find_maps(Path(organs_dir)), organ_maps)[:cases] if organs_dir is not None else []
    if organs_dir is not None and not maps:
        raise InputError(f"{organs_dir}: no organ maps in the {organ_maps!r} set")
    previous = _previous_files(out_dir)
    plan = plan_cases(seed, cases, tracer, fdg_share)

    job = _Job(seed, tracer, size, layout, tuple(maps), tuple(plan), negatives, autopet_ids)
    rows: list[dict] = []
    taken: set[str] = set()
    with staged_builds(job, out_dir, cases, workers) as built:
        for index, staged in tqdm(built, total=cases, desc="phantoms", unit="case", disable=not progress):
            if staged is not None and staged[0]["case_id"] not in taken:
                row, stage = staged
                _move_files(row, stage, out_dir)
            else:
                # Built here, not in a worker: the case the one-process run writes (a second study whose
                # drawn date an earlier study of its patient already has gets another date).
                phantom = job.build(index)
                if index >= len(maps):
                    _make_unique(phantom, taken, seed, index, autopet_ids)
                row = _row(phantom, job.write(phantom, out_dir))
            taken.add(row["case_id"])
            rows.append(row)

    extra: dict[str, str] = {}
    if layout == "nnunet":
        extra = finish_nnunet(out_dir, [row["case_id"] for row in rows], seed)
    written = {row[key] for row in rows for key in FILE_KEYS if key in row} | set(extra.values())
    _remove_stale(out_dir, previous - written)
    arguments = {
        "cases": int(cases),
        "seed": int(seed),
        "tracer": tracer,
        "fdg_share": float(fdg_share),
        "size": size,
        "layout": layout,
        "organs_dir": None if organs_dir is None else str(organs_dir),
        "organ_maps": organ_maps,
        "negatives": bool(negatives),
        "autopet_ids": bool(autopet_ids),
    }
    manifest = {
        "generator": "petseg.synthetic",
        "arguments": arguments,
        "extra_files": sorted(extra.values()),
        "cases": rows,
    }
    write_json(manifest, out_dir / MANIFEST)
    log.info("wrote %d phantom cases (%s layout) to %s", len(rows), layout, out_dir)
    return rows


@dataclass(frozen=True)
class _Job:
    """Everything a case needs besides its index: what a worker process is given."""

    seed: int
    tracer: str
    size: str
    layout: str
    maps: tuple[Path, ...]
    plan: tuple[tuple[str, str | None], ...]
    negatives: bool
    autopet_ids: bool

    def build(self, index: int) -> Phantom:
        """Case `index` with its drawn id (plain unless `autopet_ids`); not yet made unique."""
        lesion_free = None if self.negatives else False
        if index < len(self.maps):
            scene = organ_scene(self.maps[index], self.seed, index, self.tracer, self.size, lesion_free)
            phantom = simulate(scene)
        else:
            case_tracer, patient = self.plan[index]
            phantom = make_case(
                self.seed, index, case_tracer, self.size, patient_id=patient, lesion_free=lesion_free
            )
        if not self.autopet_ids:
            phantom.case_id = phantom.info["case_id"] = ids.plain_id(phantom.case_id)
        return phantom

    def write(self, phantom: Phantom, out_dir: Path) -> dict[str, str]:
        return write_gc(phantom, out_dir) if self.layout == "gc" else write_nnunet(phantom, out_dir)

    def stage(self, index: int, stage_root: Path) -> tuple[dict, Path]:
        """Build case `index` and write it under its own scratch folder: (manifest row, that folder)."""
        stage = stage_root / str(index)
        phantom = self.build(index)
        return _row(phantom, self.write(phantom, stage)), stage


class StagedJob(Protocol):
    """What a worker process is given: it builds case `index` and writes it under its own scratch folder in
    `stage_root`, returning (a row describing the case, that folder). It must pickle."""

    def stage(self, index: int, stage_root: Path) -> tuple[dict, Path]: ...


@contextmanager
def staged_builds(
    job: StagedJob, out_dir: Path, cases: int, workers: int
) -> Iterator[Iterator[tuple[int, tuple[dict, Path] | None]]]:
    """(index, staged row and folder) in case order; None where the caller builds the case itself (one
    worker). The workers write under `out_dir/.staging`, which is removed afterwards, also when a case
    fails; the caller moves each staged case into its place, so the output holds only whole cases."""
    if workers == 1 or cases == 1:
        yield ((index, None) for index in range(cases))
        return
    stage_root = Path(out_dir) / STAGING
    created = not Path(out_dir).exists()
    if stage_root.exists():
        shutil.rmtree(stage_root)
    stage_root.mkdir(parents=True)
    # spawn: the workers start clean, whatever threads the calling process (a training run) holds
    context = multiprocessing.get_context("spawn")
    threads = max(1, usable_cores() // workers)
    try:
        pool = ProcessPoolExecutor(min(workers, cases), context, initializer=_one_worker, initargs=(threads,))
        with pool:
            futures = [pool.submit(job.stage, index, stage_root) for index in range(cases)]
            try:
                yield ((index, future.result()) for index, future in enumerate(futures))
            finally:
                for future in futures:
                    future.cancel()
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
        if created and not any(Path(out_dir).iterdir()):
            Path(out_dir).rmdir()  # a run that failed before its first case leaves no folder behind


def _one_worker(threads: int) -> None:
    """A worker's share of the cores for SimpleITK's filters and writers."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _move_files(row: dict, stage: Path, out_dir: Path) -> None:
    """A staged case's files into their places in `out_dir` (same relative paths)."""
    for key in FILE_KEYS:
        if key in row:
            target = Path(out_dir) / row[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / row[key], target)
    shutil.rmtree(stage, ignore_errors=True)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a batch scheduler sets it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity
        return max(1, os.cpu_count() or 1)


def manifest_arguments(out_dir: Path) -> dict[str, Any] | None:
    """The generator arguments a phantom folder was made with (its manifest), None if it has none."""
    try:
        return dict(json.loads((Path(out_dir) / MANIFEST).read_text())["arguments"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _make_unique(phantom: Phantom, taken: set[str], seed: int, index: int, autopet_ids: bool) -> None:
    """A second study that drew the same date as an earlier one of its patient gets another date."""
    attempt = 0
    while phantom.case_id in taken:
        attempt += 1
        rng = np.random.default_rng([seed, index, IDS, attempt])
        drawn = ids.case_id(rng, phantom.patient_id, phantom.tracer, bool(phantom.info["body"]["contrast"]))
        phantom.case_id = drawn if autopet_ids else ids.plain_id(drawn)
    phantom.info["case_id"] = phantom.case_id


def _row(phantom: Phantom, files: dict[str, str]) -> dict:
    info = phantom.info
    return {
        "case_id": phantom.case_id,
        "patient_id": phantom.patient_id,
        "tracer": phantom.tracer,
        "grid": info["grid"],
        "size": info["size"],
        **files,
        "ct_uuid": info["ct_uuid"],
        "pet_uuid": info["pet_uuid"],
        "ct_own_grid": info["ct_own_grid"],
        "lesion_free": info["lesion_free"],
        "lesion_count": len(info["lesions"]),
        "lesion_volume_ml": info["lesion_volume_ml"],
        "lesions": info["lesions"],
        "source": phantom.source,
    }


FILE_KEYS = ("ct", "pet", "label", "organs")  # a manifest row's files (organs: runs since organ maps)


def _previous_files(out_dir: Path) -> set[str]:
    """Files of an earlier run in `out_dir` (from its manifest); refuse a folder that holds anything else."""
    if not out_dir.exists():
        return set()
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        if any(not p.name.startswith(".") for p in out_dir.iterdir()):
            raise OutputError(
                f"{out_dir}: folder is not empty and holds no {MANIFEST}; choose an empty or new folder"
            )
        return set()
    try:
        data = json.loads(manifest.read_text())
        files = {row[key] for row in data["cases"] for key in FILE_KEYS if key in row}
        return files | set(data.get("extra_files", []))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OutputError(f"{manifest}: cannot read the earlier run's manifest: {error}") from None


def _remove_stale(out_dir: Path, stale: set[str]) -> None:
    """Delete an earlier run's files that this run did not rewrite, and the folders they leave empty."""
    root = out_dir.resolve()
    for name in sorted(stale):
        path = (out_dir / name).resolve()
        if root not in path.parents or not path.is_file():
            continue
        path.unlink()
        parent = path.parent
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            os.rmdir(parent)
            parent = parent.parent
