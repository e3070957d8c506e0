"""Errors that reach the user as one line and a distinct exit code.

Every failure a user can cause (a bad input file, a broken model folder) is raised as a subclass of
`PetsegError`; the entry points print `str(error)` on one line and exit with `error.exit_code`, never a
traceback. Anything else is a bug in petseg and is reported as such.
"""

from __future__ import annotations


class PetsegError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line, always: multi-line library messages (SimpleITK, torch) are folded. Spaces inside a line
        # stay as they are: real case ids contain double spaces, and a message must name the file exactly.
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))


class InputError(PetsegError):
    """An input image or input folder is missing, ambiguous or unusable."""

    exit_code = 3


class ModelError(PetsegError):
    """The model folder (card or fold weights) is missing or invalid."""

    exit_code = 4


class OutputError(PetsegError):
    """The output location cannot be written."""

    exit_code = 5
