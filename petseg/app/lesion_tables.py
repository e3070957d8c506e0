"""`petseg predict --quantify`: the lesion figures of each segmented case, beside its mask.

`<case>_lesions.csv` (one row per lesion) and `<case>_summary.json` (the totals, the definitions, and the
SUV record `petseg from-dicom` left in the case folder, where there is one) go beside the mask: in the case's
output folder for the Grand-Challenge layout (`OUTPUT/<case>/`, next to `data-centric-model.json`, so that the
mask's own folder keeps its one image), in the output folder for the nnU-Net layout. The figures are those of
`petseg predict --dicom` (`petseg.quantify`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petseg import __version__

if TYPE_CHECKING:
    from petseg.io.cases import Case

log = logging.getLogger("petseg")


def lesion_table_paths(case: Case, output: Path) -> tuple[Path, Path]:
    """Where the case's `_lesions.csv` and `_summary.json` go."""
    folder = Path(output) / case.name if case.layout == "gc" else Path(output)
    return folder / f"{case.name}_lesions.csv", folder / f"{case.name}_summary.json"


def _suv_record(case: Case) -> dict[str, Any] | None:
    """The `suv.json` of a case folder written by `petseg from-dicom`, if it has one."""
    from petseg.io.dicom import SUV_JSON

    if case.layout != "gc":
        return None
    path = case.files.pet.parent.parent.parent / SUV_JSON  # <case>/images/pet/<file>
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("%s: not read (%s); the summary has no SUV record", path, error)
        return None


def write_lesion_tables(case: Case, mask_path: Path, output: Path, model: str) -> tuple[Path, Path]:
    """Measure the case's written mask on its PET and write both files (the table only with its summary)."""
    from petseg.io import read_image, write_text
    from petseg.io.dicom.convert import json_text
    from petseg.quantify import lesions_csv, quantify, summary_record

    report = quantify(read_image(mask_path, "mask"), read_image(case.files.pet, "PET"))
    summary = summary_record(
        report,
        case=case.name,
        model=model,
        petseg_version=__version__,
        pet=str(case.files.pet),
        suv=_suv_record(case),
    )
    table, record = lesion_table_paths(case, output)
    write_text(lesions_csv(report), table)
    try:
        write_text(json_text(summary), record)
    except BaseException:
        table.unlink(missing_ok=True)
        raise
    return table, record
