"""One study's outputs as one folder, all or nothing.

`petseg predict --dicom` writes several files per study (the SEG, the RTSTRUCT, the mask, the lesion table,
the summary, the preview) that belong together: a summary without its SEG, or a SEG beside the mask of an
earlier run, would mislead. Everything is prepared in memory by the caller and written into a hidden
staging folder beside the destination, which is then renamed into place in one step. A study folder that
exists already is replaced only when asked to: it is moved aside, the new one is renamed in, and only then
the old one removed; if anything fails, the old folder is put back as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import SimpleITK as sitk

from petseg.errors import OutputError
from petseg.io.files import check_link_inside, signals_deferred, write_atomically

__all__ = ["write_study_folder"]


def write_study_folder(
    destination: Path,
    files: Mapping[str, bytes],
    images: Mapping[str, sitk.Image],
    output_root: Path,
    replace: bool = False,
) -> Path:
    """Write `files` (name -> content) and `images` (name -> image, compressed) as the folder `destination`,
    which must lie inside `output_root`; an existing non-empty folder is replaced only with `replace`."""
    destination = Path(destination)
    check_link_inside(destination, output_root, "output", OutputError)
    if destination.exists() and not destination.is_dir():
        raise OutputError(f"{destination}: exists and is not a folder")

    def write(partial: Path) -> None:
        partial.mkdir()
        for name, content in files.items():
            (partial / name).write_bytes(content)
        for name, image in images.items():
            try:
                sitk.WriteImage(image, str(partial / name), True)
            except RuntimeError as error:
                raise OutputError(
                    f"{destination / name}: cannot write image: {str(error).strip().splitlines()[0]}"
                ) from None

    previous = None
    emptied = False
    if destination.is_dir():
        if any(destination.iterdir()):
            if not replace:
                raise OutputError(f"{destination}: the study folder exists and is not empty")
            # Not a staging name: no later run's clean-up may take it for the leftovers of a killed one.
            previous = destination.parent / f".petseg-replaced-{destination.name}-{uuid.uuid4().hex[:12]}"
        try:
            with signals_deferred():
                if previous is not None:
                    os.replace(destination, previous)
                else:
                    destination.rmdir()  # empty: the rename needs the name free or an empty folder
                    emptied = True
        except OSError as error:
            raise OutputError(f"{destination}: cannot replace: {error.strerror or error}") from None
    try:
        write_atomically(destination, write, "study folder")
    except BaseException:
        with signals_deferred():
            if previous is not None:
                os.replace(previous, destination)  # the old outputs back as they were
            elif emptied:
                destination.mkdir(exist_ok=True)  # the empty folder given, back in place
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return destination
