"""The two sample cases in `test/` that the container's test script and `make demo` run on.

Both are whole-body phantoms on real autoPET grids: an FDG case with lesions on the 400 x 400 grid at
2.04 x 2.04 x 3 mm with 326 slices (the size of the Grand-Challenge example case), and a lesion-free PSMA
case on the coarse 168 x 168 grid at 4.07 x 4.07 x 5 mm (so an empty mask is exercised). To keep them small
in git they are stored as a scanner's archive would quantize them (`compact`): the PET in steps of 1/64 SUV,
the CT in steps of 8 HU with the air around the body at -1024 HU, and the CT on the PET grid (a CT on its
own finer grid alone would be 20-70 MB).

Besides its ground truth, each case can carry the mask that a given model (the shipped one) produces for
it, `<case>/expected/<pet-uuid>.mha`: `test.sh` checks the container's output against that mask.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.io import find_case, write_image, write_json
from petseg.synthetic.case import Phantom, make_case
from petseg.synthetic.layouts import write_gc

SAMPLE_SEED = 2024
SAMPLE_SIZE = "full"
SAMPLES = (
    {
        "index": 0,
        "tracer": "fdg",
        "grid": "fdg-400",
        "z_slices": 326,
        "ct_own_grid": False,
        "lesion_free": False,
    },
    {"index": 1, "tracer": "psma", "grid": "psma-168", "ct_own_grid": False, "lesion_free": True},
)
PET_STEP_SUV = 1.0 / 64  # a scanner stores PET as integers times a slope; this is a coarse slope
CT_STEP_HU = 8
AIR_HU = -1024
AIR_BELOW_HU = -960  # the air around the body (noise about -1024 HU); lungs lie well above it


def compact(phantom: Phantom) -> Phantom:
    """The phantom with its PET and CT quantized, so that zlib can compress the noise.

    The PET is rounded to multiples of `PET_STEP_SUV` (below half a step: 0), the CT to multiples of
    `CT_STEP_HU`, and CT voxels below `AIR_BELOW_HU` (the air outside the body) become `AIR_HU`. Both
    changes lie far below what the networks or the metrics can tell apart (the PET noise in the liver is
    about 0.2-0.3 SUV, the CT's about 20 HU).
    """
    pet = sitk.GetArrayFromImage(phantom.pet)
    quantized = (np.round(pet / PET_STEP_SUV) * PET_STEP_SUV).astype(np.float32)
    ct = sitk.GetArrayFromImage(phantom.ct).astype(np.int32)
    ct = np.round(ct / CT_STEP_HU).astype(np.int32) * CT_STEP_HU
    ct[ct < AIR_BELOW_HU] = AIR_HU
    return replace(
        phantom,
        pet=_like(quantized, phantom.pet),
        ct=_like(ct.astype(np.int16), phantom.ct),
    )


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def write_samples(out_dir: Path, size: str = SAMPLE_SIZE) -> list[dict]:
    """Write the sample cases (gc layout) and a manifest; returns its rows. `size` "tiny" gives the same
    cases in miniature, for unit tests of the scripts."""
    rows = []
    for spec in SAMPLES:
        spec = spec if size == "full" else {key: v for key, v in spec.items() if key != "z_slices"}
        # The sample cases are for inference: no organ map (it would only take room under the 15 MB).
        phantom = replace(compact(make_case(seed=SAMPLE_SEED, size=size, **spec)), organs=None)
        files = write_gc(phantom, out_dir)
        rows.append({"case_id": phantom.case_id, "tracer": phantom.tracer, **spec, "files": files})
    write_json({"seed": SAMPLE_SEED, "size": size, "cases": rows}, Path(out_dir) / "samples.json")
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
