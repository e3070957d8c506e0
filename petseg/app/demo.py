"""The quick-start job: the shipped model on the sample cases, with everything the container does.

No data download and no GPU needed. It runs the Grand-Challenge pipeline, exactly as `process.py` does,
on the sample cases of `test/` (or on freshly generated phantoms), with the model in `model/`. Where that
folder has no trained weights yet, an untrained tiny ensemble stands in, and the output says so.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import SimpleITK as sitk

from petseg.errors import ModelError
from petseg.evaluation.metrics import dice
from petseg.evaluation.preview import preview_title, write_preview
from petseg.inference.pipeline import run_grand_challenge
from petseg.inference.predict import Predictor
from petseg.inference.timing import StageTimer
from petseg.io import find_image
from petseg.io.cases import discover_cases
from petseg.io.splits import tracer_of

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CASES = REPO / "test"
SHIPPED_MODEL = REPO / "model"


def _load_for_demo(model_dir: Path, out_dir: Path, seed: int, device: str) -> tuple[Predictor, str]:
    """The given model when its weights load; otherwise an untrained stand-in (and why)."""
    from petseg.model.untrained import create_untrained_model

    try:
        predictor = Predictor.load(model_dir, device)
    except ModelError as error:
        log.warning("%s; using an UNTRAINED resunet-tiny ensemble instead", error)
        create_untrained_model(out_dir / "untrained-model", seed=seed)
        predictor = Predictor.load(out_dir / "untrained-model", device)
        return predictor, "UNTRAINED resunet-tiny ensemble (its masks are meaningless)"
    card = predictor.card
    if not card.trained:
        return predictor, f"UNTRAINED {card.architecture.name} ensemble (its masks are meaningless)"
    kind = "trained on SYNTHETIC phantoms" if card.provenance.get("synthetic") else "trained"
    return predictor, f"{card.name}: {card.describe_ensemble()}, {kind}"


def run_demo(
    out_dir: Path,
    model_dir: Path = SHIPPED_MODEL,
    cases_dir: Path = SAMPLE_CASES,
    phantoms: int = 0,
    seed: int = 0,
    device: str = "auto",
    size: str | None = None,
) -> int:
    """`phantoms` > 0: segment that many fresh phantoms instead of `cases_dir`, of `size` (default: the size
    the model was trained on, where its card says, else full size)."""
    out_dir = Path(out_dir)
    predictor, description = _load_for_demo(Path(model_dir), out_dir, seed, device)
    if phantoms:
        from petseg.synthetic import generate

        trained_on = predictor.card.provenance.get("phantoms") or {}
        size = size or trained_on.get("size") or "full"
        cases_dir = out_dir / "phantoms"
        log.info("generating %d %s phantom case(s) in %s", phantoms, size, cases_dir)
        generate(cases_dir, cases=phantoms, seed=seed, tracer="mixed", size=size, layout="gc", progress=False)

    rows = []
    for case in discover_cases(cases_dir):
        case_root = case.files.pet.parents[2]  # .../<case>/input
        output = out_dir / "output" / case.name
        start = time.perf_counter()
        mask_path = run_grand_challenge(case_root, output, predictor, StageTimer(prefix=f"{case.name}: "))
        seconds = time.perf_counter() - start
        mask_image = sitk.ReadImage(str(mask_path))
        truth_image = sitk.ReadImage(str(find_image(case_root.parent / "ground-truth")))
        write_preview(
            sitk.ReadImage(str(case.files.pet)),
            mask_image,
            truth_image,
            out_dir / "preview" / f"{case.name}.png",
            title=preview_title(case.name, predictor.card.name, tracer_of(case.name)),
        )
        mask = sitk.GetArrayFromImage(mask_image).astype(bool)
        truth = sitk.GetArrayFromImage(truth_image).astype(bool)
        rows.append((case.name, int(truth.sum()), int(mask.sum()), dice(mask, truth), seconds))

    width = max(len("case"), *(len(row[0]) for row in rows))
    print(f"\npetseg demo: {len(rows)} case(s) from {cases_dir}")
    print(f"model: {description}, on {predictor.compute.describe()}")
    print(f"{'case':<{width}}  {'lesion voxels':>13}  {'predicted':>10}  {'Dice':>8}  {'time':>6}")
    for name, truth_voxels, mask_voxels, case_dice, seconds in rows:
        score = "negative" if truth_voxels == 0 else f"{case_dice:.3f}"
        print(f"{name:<{width}}  {truth_voxels:>13}  {mask_voxels:>10}  {score:>8}  {seconds:>5.1f}s")
    legend = "coronal PET MIP; truth red, prediction blue, both purple"
    print(f"masks:    {out_dir / 'output'}/<case>/images/automated-petct-lesion-segmentation/")
    print(f"previews: {out_dir / 'preview'}/<case>.png ({legend})")
    return 0
