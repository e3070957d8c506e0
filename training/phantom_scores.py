"""A demo model scored on phantoms it never saw, through the container's own path.

Three sets, all of a seed no demo dataset uses: fresh analytic phantoms with lesions (Dice), phantoms built
around the held-out side of the organ-map split (Dice; the anatomy of real patients the model never saw), and
lesion-free phantoms (false-positive volume). Each case is written to a scratch folder as `.mha` and read
back by `petseg.inference.pipeline.segment`, so reading, resampling, the sliding window and every
postprocessing step are scored, not just the networks.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.trainer import TrainingError

log = logging.getLogger("petseg.training")

# Fresh phantoms for judging a demo ensemble: a seed no demo dataset uses, alternating FDG and PSMA.
# The per-case Dice spreads widely, so a mean over few cases is uncertain (docs/experiments/demo-recipe.md).
EVALUATION_SEED = 20261122
NEGATIVE_INDEX_OFFSET = 1000  # lesion-free phantoms take case indices the lesion sets never use


@dataclass(frozen=True)
class PhantomScore:
    """One scored case: Dice (NaN when lesion-free), false-positive and false-negative volume in ml."""

    case_id: str
    tracer: str
    source: str  # "analytic", or the organ map's file name
    lesion_free: bool
    dice: float
    fpv_ml: float
    fnv_ml: float
    seconds: float

    def to_json(self) -> dict:
        row = asdict(self)
        return {key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in row.items()}


def _trained_on(model_dir: Path, seed: int) -> dict:
    from petseg.model.card import load_card

    phantoms = load_card(Path(model_dir)).provenance.get("phantoms") or {}
    if phantoms.get("seed") == seed:
        raise TrainingError(f"seed {seed} generated the training phantoms of {model_dir}: pick another")
    return phantoms


@dataclass(frozen=True)
class PhantomSpec:
    """How to build one evaluation phantom: picklable, so that worker processes can build it."""

    seed: int
    index: int
    size: str
    tracer: str  # "fdg" or "psma"; "mixed" around an organ map (the map decides)
    lesion_free: bool = False
    organ_map: Path | None = None

    def build(self):
        from petseg.synthetic import make_case
        from petseg.synthetic.case import simulate
        from petseg.synthetic.organs import organ_scene

        if self.organ_map is not None:
            return simulate(
                organ_scene(self.organ_map, self.seed, self.index, self.tracer, self.size, self.lesion_free)
            )
        return make_case(
            seed=self.seed, index=self.index, tracer=self.tracer, size=self.size, lesion_free=self.lesion_free
        )


def fresh_specs(seed: int, cases: int, size: str, lesion_free: bool = False) -> list[PhantomSpec]:
    """Analytic phantoms, FDG and PSMA in turn; lesion-free ones take indices the others never use."""
    offset = NEGATIVE_INDEX_OFFSET if lesion_free else 0
    return [
        PhantomSpec(seed, offset + index, size, "fdg" if index % 2 == 0 else "psma", lesion_free)
        for index in range(cases)
    ]


def held_out_specs(organs_dir: Path, seed: int, size: str) -> list[PhantomSpec]:
    """One phantom with lesions around each map of the held-out side of the organ-map split."""
    from petseg.synthetic.organs import find_maps, select_maps

    maps = select_maps(find_maps(Path(organs_dir)), "held-out")
    return [PhantomSpec(seed, index, size, "mixed", organ_map=path) for index, path in enumerate(maps)]


def fresh_phantoms(seed: int, cases: int, size: str, lesion_free: bool = False) -> Iterator:
    """The phantoms of `fresh_specs`, built one after the other."""
    return (spec.build() for spec in fresh_specs(seed, cases, size, lesion_free))


def held_out_phantoms(organs_dir: Path, seed: int, size: str) -> Iterator:
    """The phantoms of `held_out_specs`, built one after the other."""
    return (spec.build() for spec in held_out_specs(organs_dir, seed, size))


def score_phantoms(
    model_dir: Path,
    phantoms: Iterator,
    device: str = "cpu",
    on_case: Callable[[PhantomScore], None] | None = None,
) -> list[PhantomScore]:
    """Segment each phantom as `process.py` would and score it against its label on the PET grid."""
    import SimpleITK as sitk

    from petseg.evaluation.metrics import case_scores
    from petseg.inference.pipeline import segment
    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer
    from petseg.io import CaseFiles, write_image

    predictor = Predictor.load(Path(model_dir), device=device)
    scores = []
    with tempfile.TemporaryDirectory(prefix="petseg-fresh-") as scratch:
        for number, phantom in enumerate(_prefetched(phantoms)):
            files = CaseFiles(
                ct=write_image(phantom.ct, Path(scratch) / f"{number}_ct.mha"),
                pet=write_image(phantom.pet, Path(scratch) / f"{number}_pet.mha"),
            )
            started = time.perf_counter()
            mask = sitk.GetArrayFromImage(segment(files, predictor, StageTimer(quiet=True))).astype(bool)
            seconds = time.perf_counter() - started
            truth = sitk.GetArrayFromImage(phantom.label).astype(bool)
            voxel_ml = float(np.prod(phantom.pet.GetSpacing())) / 1000.0
            figures = case_scores(mask, truth, voxel_ml)
            score = PhantomScore(
                case_id=phantom.case_id,
                tracer=phantom.tracer,
                source=phantom.source,
                lesion_free=not truth.any(),
                dice=figures.dice,
                fpv_ml=figures.fpv_ml,
                fnv_ml=figures.fnv_ml,
                seconds=round(seconds, 2),
            )
            scores.append(score)
            if on_case is not None:
                on_case(score)
            for path in (files.ct, files.pet):
                path.unlink()
    return scores


def _prefetched(phantoms: Iterator) -> Iterator:
    """The phantoms, the next one generated in a thread while the caller segments this one: generation is
    mostly single-threaded numpy and scipy, which leave the GIL, so the two overlap on a multi-core CPU."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        iterator = iter(phantoms)
        pending = pool.submit(next, iterator, None)
        while True:
            phantom = pending.result()
            if phantom is None:
                return
            pending = pool.submit(next, iterator, None)
            yield phantom


def dice_on_fresh_phantoms(
    model_dir: Path, seed: int = EVALUATION_SEED, cases: int = 24, device: str = "cpu"
) -> list[float]:
    """Per-case Dice of the model on fresh analytic phantoms of the size it was trained on.

    `seed` must not be the training seed (the card's `provenance.phantoms` says which that was).
    """
    size = _trained_on(model_dir, seed).get("size", "tiny")
    return [s.dice for s in score_phantoms(model_dir, fresh_phantoms(seed, cases, size), device)]


@dataclass(frozen=True)
class DemoScores:
    """The three sets' scores; `held_out` is empty when no organ maps were given."""

    fresh: list[PhantomScore]
    held_out: list[PhantomScore]
    negatives: list[PhantomScore]

    def summary(self) -> dict:
        def mean(values: list[float]) -> float | None:
            return round(float(np.mean(values)), 4) if values else None

        return {
            "fresh_mean_dice": mean([s.dice for s in self.fresh]),
            "held_out_mean_dice": mean([s.dice for s in self.held_out]),
            "negatives_mean_fpv_ml": mean([s.fpv_ml for s in self.negatives]),
            "negatives_max_fpv_ml": max((s.fpv_ml for s in self.negatives), default=None),
            "mean_seconds_per_case": mean([s.seconds for s in self.fresh + self.held_out + self.negatives]),
        }

    def to_json(self) -> dict:
        return {
            "summary": self.summary(),
            "fresh": [s.to_json() for s in self.fresh],
            "held_out": [s.to_json() for s in self.held_out],
            "negatives": [s.to_json() for s in self.negatives],
        }


def score_demo_model(
    model_dir: Path,
    cases: int,
    negatives: int,
    organs_dir: Path | None = None,
    seed: int = EVALUATION_SEED,
    device: str = "cpu",
) -> DemoScores:
    """Fresh phantoms with lesions, the held-out organ maps' phantoms, and lesion-free phantoms."""
    size = _trained_on(model_dir, seed).get("size", "tiny")

    def report(score: PhantomScore) -> None:
        figure = f"FPV {score.fpv_ml:.2f} ml" if score.lesion_free else f"Dice {score.dice:.3f}"
        log.info("%s (%s): %s, %.0f s", score.case_id, score.source, figure, score.seconds)

    fresh = score_phantoms(model_dir, fresh_phantoms(seed, cases, size), device, report)
    held_out = (
        []
        if organs_dir is None
        else score_phantoms(model_dir, held_out_phantoms(organs_dir, seed, size), device, report)
    )
    lesion_free = score_phantoms(
        model_dir, fresh_phantoms(seed, negatives, size, lesion_free=True), device, report
    )
    return DemoScores(fresh=fresh, held_out=held_out, negatives=lesion_free)
