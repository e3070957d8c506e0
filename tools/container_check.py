"""Checks of what the Grand-Challenge container produced, shared by both modes of `test.sh`.

`test.sh` runs the algorithm on every sample case in `test/`, either in the image (`docker run` with the
platform's flags) or with `process.py` directly (`--local`), and then calls this module on each output
folder, so that the check exists once:

    python -m tools.container_check case CASE_DIR OUTPUT_DIR [--min-dice 0.99]
    python -m tools.container_check model MODEL_DIR

`case` checks OUTPUT_DIR against the autoPET contract and against the mask that the shipped model produced
for the case (`CASE_DIR/expected/<pet-uuid>.mha`, written by `petseg samples --expected`):

- `images/automated-petct-lesion-segmentation/` holds exactly one file, `<pet-uuid>.mha`;
- the mask is a 3D scalar uint8 image with values in {0, 1};
- its size, spacing, origin and direction are those of the case's PET;
- its Dice against the expected mask is at least `--min-dice` (two empty masks agree perfectly);
- `data-centric-model.json` is the JSON boolean `false`, and the output holds no other file.

`model` checks a model folder without loading any network: the card is valid (read and checked by
`petseg.model.card.load_card`, so that a card this check passes is one inference loads) and every fold's
weight file is present, is not a Git LFS pointer and matches its sha256.

Every problem is printed as one line, `FAIL <name>: <file>: <problem>`, on stderr, and the exit code is 1;
a passing check prints one `ok` line on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from petseg.errors import PetsegError
from petseg.io import DATA_CENTRIC_JSON, MASK_FOLDER
from petseg.io.files import LFS_SIGNATURE

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

EXPECTED_FOLDER = "expected"
MIN_DICE = 0.99
GEOMETRY_TOLERANCE = (
    1e-6  # relative (absolute below 1): header values written by the same writer agree exactly
)


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str


@dataclass
class Report:
    """The outcome of one check: problems (empty when it passed) and facts for the `ok` line."""

    name: str
    problems: list[Problem] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def fail(self, path: Path, message: str) -> None:
        self.problems.append(Problem(Path(path), message))

    @property
    def passed(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.passed:
            return [f"ok {self.name}: {'; '.join(self.facts)}"]
        return [f"FAIL {self.name}: {p.path}: {p.message}" for p in self.problems]


# ---------------------------------------------------------------- images


def _read(path: Path, role: str, report: Report) -> sitk.Image | None:
    import SimpleITK as sitk

    from petseg.io.files import _first_itk_line

    try:
        with path.open("rb") as handle:
            head = handle.read(len(LFS_SIGNATURE))
    except OSError as error:
        report.fail(path, f"cannot open the {role}: {error.strerror or error}")
        return None
    if head == LFS_SIGNATURE:
        report.fail(path, f"the {role} is a Git LFS pointer, not an image (git lfs pull)")
        return None
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        report.fail(path, f"cannot read the {role}: {_first_itk_line(str(error))}")
        return None


def _binary_array(image: sitk.Image, path: Path, role: str, report: Report) -> np.ndarray | None:
    """The voxels of a 3D scalar uint8 {0,1} image, or None (with the problems reported)."""
    import numpy as np
    import SimpleITK as sitk

    ok = True
    if image.GetDimension() != 3:
        report.fail(path, f"the {role} is {image.GetDimension()}D; expected 3D")
        ok = False
    if image.GetNumberOfComponentsPerPixel() != 1:
        report.fail(path, f"the {role} has {image.GetNumberOfComponentsPerPixel()} components per voxel")
        ok = False
    if image.GetPixelID() != sitk.sitkUInt8:
        report.fail(path, f"the {role} is {image.GetPixelIDTypeAsString()}; expected 8-bit unsigned integer")
    if not ok:
        return None
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        report.fail(path, f"the {role} holds values {{{shown}}}; expected only 0 and 1")
        return None
    return array.astype(bool)


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    tolerance = GEOMETRY_TOLERANCE
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance) for x, y in zip(a, b, strict=True)
    )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _same_grid(image: sitk.Image, pet: sitk.Image, path: Path, role: str, report: Report) -> bool:
    """Report every geometry field in which `image` differs from the PET."""
    ok = True
    if image.GetSize() != pet.GetSize():
        report.fail(path, f"the {role} has size {image.GetSize()}, the PET {pet.GetSize()}")
        ok = False
    for name, mine, theirs in (
        ("spacing", image.GetSpacing(), pet.GetSpacing()),
        ("origin", image.GetOrigin(), pet.GetOrigin()),
        ("direction", image.GetDirection(), pet.GetDirection()),
    ):
        if not _close(mine, theirs):
            report.fail(path, f"the {role} has {name} {_fmt(mine)}, the PET {_fmt(theirs)}")
            ok = False
    return ok


# ---------------------------------------------------------------- the output folder


def _check_listing(output_dir: Path, pet_uuid: str, report: Report) -> Path | None:
    """Exactly one file, `<pet-uuid>.mha`, in the mask folder; nothing but it and the JSON elsewhere."""
    folder = output_dir / MASK_FOLDER
    mask: Path | None = None
    if not folder.is_dir():
        report.fail(folder, "mask folder not found: the run wrote no mask")
    else:
        entries = sorted(folder.iterdir())
        images = [p for p in entries if p.suffix.lower() == ".mha" and p.is_file()]
        if len(entries) != 1 or len(images) != 1:
            names = ", ".join(p.name for p in entries) or "nothing"
            report.fail(folder, f"expected exactly one .mha file, found {len(entries)} entries: {names}")
        if len(images) == 1:
            mask = images[0]
            if mask.name != f"{pet_uuid}.mha":
                report.fail(mask, f"the mask is not named after the PET's uuid ({pet_uuid}.mha)")
    allowed = {output_dir / DATA_CENTRIC_JSON}
    for path in sorted(p for p in output_dir.rglob("*") if not p.is_dir()):
        if path not in allowed and path.parent != folder:
            report.fail(path, "unexpected file in the output folder")
    return mask


def _check_json(output_dir: Path, report: Report) -> None:
    path = output_dir / DATA_CENTRIC_JSON
    if not path.is_file():
        report.fail(path, "not found: the platform fails a job whose declared output is missing")
        return
    try:
        value = json.loads(path.read_text())
    except RecursionError:
        report.fail(path, "not valid JSON: nested too deeply to read")
        return
    except (OSError, UnicodeDecodeError, ValueError) as error:  # ValueError: also a 5,000-digit integer
        report.fail(path, f"not valid JSON: {error}")
        return
    if value is not False:
        report.fail(path, f"holds {json.dumps(value)}; expected the bare JSON boolean false")


def check_case(case_dir: Path, output_dir: Path, min_dice: float = MIN_DICE) -> Report:
    """Check one case's output folder; see the module docstring for what is checked."""
    from petseg.io import PET_FOLDER, find_image, image_stem

    case_dir, output_dir = Path(case_dir), Path(output_dir)
    report = Report(case_dir.name)
    try:
        pet_path = find_image(case_dir / "input" / PET_FOLDER)
    except PetsegError as error:
        report.fail(case_dir, f"not a sample case: {error}")
        return report
    if not output_dir.is_dir():
        report.fail(output_dir, "output folder not found: the run wrote nothing")
        return report
    pet_uuid = image_stem(pet_path)
    mask_path = _check_listing(output_dir, pet_uuid, report)
    _check_json(output_dir, report)

    pet = _read(pet_path, "PET", report)
    if pet is None:
        return report
    mask = None
    if mask_path is not None and (image := _read(mask_path, "mask", report)) is not None:
        array = _binary_array(image, mask_path, "mask", report)
        if _same_grid(image, pet, mask_path, "mask", report) and array is not None:
            mask = array

    expected_path = case_dir / EXPECTED_FOLDER / f"{pet_uuid}.mha"
    if not expected_path.is_file():
        report.fail(
            expected_path,
            "expected mask not found; write it with `petseg samples --expected --model MODEL_DIR`",
        )
        return report
    reference = None
    if (image := _read(expected_path, "expected mask", report)) is not None:
        array = _binary_array(image, expected_path, "expected mask", report)
        if _same_grid(image, pet, expected_path, "expected mask", report) and array is not None:
            reference = array
    if mask is None or reference is None:
        return report
    from petseg.evaluation.metrics import mask_agreement

    score = mask_agreement(mask, reference)
    if score < min_dice:
        report.fail(
            mask_path,
            f"Dice {score:.4f} against the expected mask {expected_path} is below {min_dice} "
            f"({int(mask.sum())} voxels predicted, {int(reference.sum())} expected)",
        )
    report.facts = [
        f"{mask_path.name} uint8 {{0,1}} on the PET grid {'x'.join(map(str, pet.GetSize()))}",
        f"{int(mask.sum())} lesion voxels",
        f"Dice {score:.4f} against the expected mask",
        f"{DATA_CENTRIC_JSON} false",
    ]
    return report


# ---------------------------------------------------------------- the model folder


def check_model(model_dir: Path) -> Report:
    """The card is valid and every fold's weights are there, real and unaltered (nothing is loaded)."""
    from petseg.model.card import CARD_NAME, check_relative_path, load_card
    from petseg.model.fold_files import fold_weights_problem

    model_dir = Path(model_dir)
    report = Report(str(model_dir))
    try:
        card = load_card(model_dir)
    except PetsegError as error:  # already names the card: one path per FAIL line
        report.fail(model_dir / CARD_NAME, str(error).removeprefix(f"{model_dir / CARD_NAME}: "))
        return report
    for fold in card.folds:
        try:
            check_relative_path(fold.weights, f"fold {fold.fold} weights")
        except PetsegError as error:
            report.fail(model_dir / CARD_NAME, str(error))
            continue
        path = model_dir / fold.weights
        if (problem := fold_weights_problem(path, fold.sha256)) is not None:
            report.fail(path, f"fold {fold.fold} weights {problem}")
    report.facts = [
        f"{card.name}",
        f"{card.architecture.name}",
        f"{len(card.folds)} fold(s) present",
        "trained" if card.trained else "UNTRAINED",
    ]
    return report


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.container_check",
        description="Check a Grand-Challenge output folder (or a model folder) as test.sh does.",
    )
    checks = parser.add_subparsers(dest="check", required=True, metavar="CHECK")
    case = checks.add_parser(
        "case", help="check one case's output against the contract and its expected mask"
    )
    case.add_argument("case_dir", type=Path, help="sample case folder: input/images/{ct,pet}/, expected/")
    case.add_argument("output_dir", type=Path, help="the folder the algorithm wrote (its /output)")
    case.add_argument("--min-dice", type=float, default=MIN_DICE, help=f"default {MIN_DICE}")
    model = checks.add_parser("model", help="check a model folder: card, fold weights, checksums")
    model.add_argument("model_dir", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check == "case":
        report = check_case(args.case_dir, args.output_dir, args.min_dice)
    else:
        report = check_model(args.model_dir)
    stream = sys.stdout if report.passed else sys.stderr
    for line in report.lines():
        print(line, file=stream)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
