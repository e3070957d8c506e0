"""Logging set-up for the command-line entry points: one readable line per event on stderr."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("petseg")


def setup_logging(verbose: bool = False) -> None:
    """One readable line per event on stderr; library chatter stays at warning level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("petseg").setLevel(logging.DEBUG if verbose else logging.INFO)
