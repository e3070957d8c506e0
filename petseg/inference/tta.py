"""Mirroring test-time augmentation that spends only what is left of a per-case time budget.

autoPET III stops a case after 5 minutes, and a case that overruns scores nothing, so extra passes are a
bonus that must never cost the case: the first (plain) pass always runs; after it, a mirrored pass runs
only while the budget left, less a safety margin and an allowance for postprocessing and writing, still
holds one more pass as slow as the slowest pass seen so far. Each mirrored pass flips the network-grid
input along some spatial axes, predicts, and flips the probability back; the result is the mean of all
passes done. With no mirrored pass done, the first pass is returned unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 300.0  # the autoPET III limit per case
MIN_MARGIN_S = 10.0
MARGIN_FRACTION = 0.1

# Subsets of the network grid's axes (X, Y, Z) = (right, anterior, superior), most useful first: single
# flips before pairs (each pass stays closer to what the network saw in training), and among them
# left-right first (a mirrored body is still plausible anatomy), superior-inferior last.
MIRROR_AXES: tuple[tuple[int, ...], ...] = ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


class TimeBudget:
    """Seconds allowed for one case, measured on `clock` from `start` (default: when it is created).

    The clock is injectable so tests can simulate slow passes without sleeping.
    """

    def __init__(
        self, seconds: float, clock: Callable[[], float] = time.perf_counter, start: float | None = None
    ) -> None:
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"a time budget must be a positive number of seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock() if start is None else start

    @property
    def margin(self) -> float:
        """Kept free for what the budget cannot see: container start, interpreter start, a slower pass."""
        return max(MIN_MARGIN_S, MARGIN_FRACTION * self.seconds)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


@dataclass(frozen=True)
class TtaReport:
    """What a budgeted prediction did, for the log and for tests."""

    mirrored: int  # mirrored passes done, after the first
    planned: int  # mirrored passes that would have run with time to spare
    first_pass_s: float
    slowest_pass_s: float
    left_s: float  # budget left when prediction ended


@dataclass(frozen=True)
class MirrorTTA:
    """A plan: mirrored passes along `axes`, in order, for as long as `budget` allows.

    The time still needed after prediction (back-mapping, writing) is estimated as `after_factor` times
    what reading and preprocessing took, and at least `after_min_s`. That is conservative: reading
    decompresses two images and preprocessing resamples both, while the back-map resamples one body box
    and the write compresses a uint8 mask (on a 400x400x284 FDG grid: 3.4-4.0 s before, 0.8-0.9 s after).
    """

    budget: TimeBudget
    axes: tuple[tuple[int, ...], ...] = MIRROR_AXES
    after_min_s: float = 5.0
    after_factor: float = 1.0

    def after_prediction_s(self, preparation_s: float) -> float:
        """Seconds to keep for postprocessing and writing, from the case's read + preprocess time."""
        return max(self.after_min_s, self.after_factor * preparation_s)

    def predict(
        self, predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, after_s: float
    ) -> tuple[np.ndarray, TtaReport]:
        """Lesion probability (X, Y, Z) of `image` (C, X, Y, Z): the plain pass, then mirrored passes.

        `after_s`: seconds to keep for everything after prediction. Logs one line saying how many
        mirrored passes fit.
        """
        budget, clock = self.budget, self.budget.clock
        started = clock()
        probability = predict(image)
        first_s = clock() - started
        slowest = first_s
        if budget.remaining() - budget.margin - after_s < 0:
            log.warning(
                "the time budget of %.0f s is too small: the first pass alone (%.1f s) leaves less than the "
                "%.0f s safety margin and the %.0f s kept for postprocessing and writing, so the case may "
                "overrun it; no mirrored passes",
                budget.seconds,
                first_s,
                budget.margin,
                after_s,
            )
        total: np.ndarray | None = None  # float64: n equal float32 passes average back exactly
        done = 0
        for axes in self.axes:
            if budget.remaining() - budget.margin - after_s < slowest:
                break
            started = clock()
            if total is None:
                total = probability.astype(np.float64)
            flipped = np.ascontiguousarray(np.flip(image, axis=tuple(axis + 1 for axis in axes)))
            mirrored = predict(flipped)
            del flipped
            if mirrored.shape != total.shape:
                raise ValueError(f"a mirrored pass returned shape {mirrored.shape}, expected {total.shape}")
            total += np.flip(mirrored, axis=axes)
            del mirrored
            done += 1
            seconds = clock() - started
            slowest = max(slowest, seconds)
            log.debug("mirrored pass along axes %s: %.1f s", axes, seconds)
        if total is not None:
            del probability
            total /= done + 1
            probability = total.astype(np.float32)
            del total
        report = TtaReport(done, len(self.axes), first_s, slowest, budget.remaining())
        log.info(
            "TTA: %d of %d mirrored passes fit in the budget (first pass %.1f s, %.0f s left)",
            report.mirrored,
            report.planned,
            report.first_pass_s,
            report.left_s,
        )
        return probability, report
