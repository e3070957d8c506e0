"""The two sample cases in `test/` that the container's test script runs on.

One FDG case with lesions whose CT lies on its own finer grid (so resampling is exercised), and one
lesion-free PSMA case (so an empty mask is exercised). Both are tiny, so they are cheap to keep in git.

Besides its ground truth, each case can carry the mask that a given model (the shipped one) produces for
it, `<case>/expected/<pet-uuid>.mha`: `test.sh` checks the container's output against that mask.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from petseg.io import find_case, write_image, write_json
from petseg.synthetic.case import make_case
from petseg.synthetic.layouts import write_gc

SAMPLE_SEED = 2024
SAMPLES = (
    {"index": 0, "tracer": "fdg", "grid": "fdg-400", "ct_own_grid": True, "lesion_free": False},
    {"index": 1, "tracer": "psma", "grid": "psma-200", "ct_own_grid": False, "lesion_free": True},
)


def write_samples(out_dir: Path) -> list[dict]:
    """Write the sample cases (gc layout) and a manifest; returns its rows."""
    rows = []
    for spec in SAMPLES:
        phantom = make_case(seed=SAMPLE_SEED, size="tiny", **spec)
        files = write_gc(phantom, out_dir)
        rows.append({"case_id": phantom.case_id, "tracer": phantom.tracer, **spec, "files": files})
    write_json({"seed": SAMPLE_SEED, "cases": rows}, Path(out_dir) / "samples.json")
    return rows


EXPECTED_FOLDER = "expected"  # test/<case>/expected/<pet-uuid>.mha, as tools.container_check reads it


def write_expected(out_dir: Path, model_dir: Path, device: str = "auto") -> list[Path]:
    """Segment every sample case listed in `out_dir/samples.json` with the model in `model_dir`.

    Writes `<case>/expected/<pet-uuid>.mha` (replacing whatever that folder held) through the pipeline
    that `process.py` runs, and records the files and the model (name, fold checksums) in samples.json.
    """
    from petseg.inference.pipeline import segment
    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer

    out_dir = Path(out_dir)
    manifest_path = out_dir / "samples.json"
    manifest = json.loads(manifest_path.read_text())
    predictor = Predictor.load(model_dir, device)
    card = predictor.card
    if not card.trained:
        logging.getLogger(__name__).warning(
            "expected masks from an UNTRAINED model (%s): fine for tests of the scripts, not for shipping",
            model_dir,
        )
    written = []
    for row in manifest["cases"]:
        case_dir = out_dir / row["case_id"]
        files = find_case(case_dir / "input")
        mask = segment(files, predictor, StageTimer(prefix=f"{row['case_id']}: "))
        folder = case_dir / EXPECTED_FOLDER
        if folder.is_dir():
            for stale in folder.iterdir():
                if stale.is_file():
                    stale.unlink()
        path = write_image(mask, folder / f"{files.pet_uuid}.mha", compress=True)
        row["files"]["expected"] = path.relative_to(out_dir).as_posix()
        written.append(path)
    manifest["expected"] = {
        "model": card.name,
        "architecture": card.architecture.name,
        "trained": card.trained,
        "folds_sha256": [fold.sha256 for fold in card.folds],
        "ensemble": card.to_json()["ensemble"],  # threshold and growth shape the masks as much as weights
        "device": predictor.compute.describe(),
    }
    write_json(manifest, manifest_path)
    return written
