"""Logging set-up and per-stage timing for the command-line entry points."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("petseg")


def setup_logging(verbose: bool = False) -> None:
    """One readable line per event on stderr; library chatter stays at warning level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("petseg").setLevel(logging.DEBUG if verbose else logging.INFO)


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
