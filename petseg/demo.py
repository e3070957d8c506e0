"""The quick-start job: phantoms in, masks out, with everything the container does in between.

No data download and no GPU needed: it generates small synthetic cases, writes an untrained tiny
ensemble, and runs the Grand-Challenge pipeline on each case exactly as `process.py` does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.cases import discover_cases
from petseg.console import StageTimer
from petseg.io import find_image
from petseg.pipeline import run_grand_challenge
from petseg.preview import write_preview

log = logging.getLogger(__name__)


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return float("nan") if truth.sum() == 0 else 2.0 * int((prediction & truth).sum()) / total


def run_demo(out_dir: Path, cases: int = 2, seed: int = 0, device: str = "auto") -> int:
    from petseg.phantoms import generate
    from petseg.predict import Predictor
    from petseg.untrained import create_untrained_model

    out_dir = Path(out_dir)
    log.info("generating %d tiny phantom case(s) in %s", cases, out_dir / "phantoms")
    generate(
        out_dir / "phantoms", cases=cases, seed=seed, tracer="mixed", size="tiny", layout="gc", progress=False
    )
    log.info("writing an UNTRAINED resunet-tiny ensemble (5 folds) to %s", out_dir / "model")
    create_untrained_model(out_dir / "model", seed=seed)
    predictor = Predictor.load(out_dir / "model", device)
    log.warning("UNTRAINED ensemble: the masks below show the pipeline working, not segmentation quality")

    rows = []
    for case in discover_cases(out_dir / "phantoms"):
        case_root = case.files.pet.parents[2]  # .../<case>/input
        output = out_dir / "output" / case.name
        start = time.perf_counter()
        mask_path = run_grand_challenge(case_root, output, predictor, StageTimer(prefix=f"{case.name}: "))
        seconds = time.perf_counter() - start
        mask_image = sitk.ReadImage(str(mask_path))
        truth_image = sitk.ReadImage(str(find_image(case_root.parent / "ground-truth")))
        preview = write_preview(
            sitk.ReadImage(str(case.files.pet)),
            mask_image,
            truth_image,
            out_dir / "preview" / f"{case.name}.png",
        )
        mask = sitk.GetArrayFromImage(mask_image).astype(bool)
        truth = sitk.GetArrayFromImage(truth_image).astype(bool)
        rows.append((case.name, int(truth.sum()), int(mask.sum()), _dice(mask, truth), seconds, preview))

    device_name = predictor.compute.describe()
    width = max(len("case"), *(len(row[0]) for row in rows))
    print(f"\npetseg demo: {len(rows)} case(s), UNTRAINED resunet-tiny ensemble on {device_name}")
    print(f"{'case':<{width}}  {'lesion voxels':>13}  {'predicted':>10}  {'Dice':>8}  {'time':>6}")
    for name, truth_voxels, mask_voxels, dice, seconds, _ in rows:
        score = "negative" if truth_voxels == 0 else f"{dice:.3f}"
        print(f"{name:<{width}}  {truth_voxels:>13}  {mask_voxels:>10}  {score:>8}  {seconds:>5.1f}s")
    print(f"masks:    {out_dir / 'output'}/<case>/images/automated-petct-lesion-segmentation/")
    legend = "coronal PET MIP; truth red, prediction blue, both purple"
    print(f"previews: {out_dir / 'preview'}/<case>.png ({legend})")
    print("The ensemble is untrained: its masks are meaningless until trained fold weights are in model/.")
    return 0
