"""Per-stage timing of a case: the optional hook the pipeline reports its stages to.

The pipeline times read, preprocess, predict, postprocess and write through a `StageTimer`, which logs one
line per stage; callers that want no log lines pass a quiet one, or none (`petseg.segment` makes its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("petseg")


class StageTimer:
    """Times named stages and logs one line per stage with its duration."""

    def __init__(self, prefix: str = "", quiet: bool = False) -> None:
        self.prefix = prefix
        self.level = logging.DEBUG if quiet else logging.INFO  # quiet: for batch scoring, not for a run
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        log.log(self.level, "%s%-12s %7.2f s", self.prefix, name, elapsed)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
