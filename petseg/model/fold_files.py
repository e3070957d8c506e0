"""The files behind a card's folds, checked without reading them as weights (and without torch).

A model folder that is shipped, copied or cloned can lose its weights in three ways that all look like
files: a fold that was never trained, a Git LFS pointer left by a clone without `git lfs pull`, and a file
replaced or corrupted after the card recorded its sha256. Loading a fold and checking a model folder both
ask this module, so both name the same problem in the same words.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from petseg.io.files import LFS_SIGNATURE
from petseg.model.settings import CARD_NAME

__all__ = ["file_sha256", "fold_weights_problem"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fold_weights_problem(path: Path, sha256: str | None) -> str | None:
    """What stops `path` from being the fold's weights, as the rest of a sentence that begins "fold N
    weights" (None: nothing found): missing, a Git LFS pointer, or not the file whose sha256 the card
    records."""
    path = Path(path)
    if not path.is_file():
        return "not found (the model has no trained weights yet?)"
    try:
        with path.open("rb") as handle:
            head = handle.read(len(LFS_SIGNATURE))
    except OSError as error:
        return f"cannot be opened: {error.strerror or error}"
    if head == LFS_SIGNATURE:
        return "are a Git LFS pointer (git lfs pull)"
    if sha256 is not None and file_sha256(path) != sha256:
        return f"do not match the sha256 in {CARD_NAME} (corrupted or replaced file)"
    return None
