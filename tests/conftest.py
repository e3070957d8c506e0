"""Shared fixtures: an untrained tiny ensemble, phantom cases written in the Grand-Challenge layout."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.io import CT_FOLDER, PET_FOLDER, write_image
from petseg.model.untrained import create_untrained_model

REPO = Path(__file__).resolve().parents[1]
# The autoPET III recipe: what `python -m training` trains for real data.
RECIPE = REPO / "training" / "recipes" / "autopet3-resunet-gdfl.json"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-fold resunet-tiny ensemble (real card, real safetensors): fast."""
    model_dir = tmp_path_factory.mktemp("tiny-model")
    create_untrained_model(model_dir, architecture="resunet-tiny", folds=2, seed=0)
    return model_dir


@pytest.fixture(scope="session")
def five_fold_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised five-fold resunet-tiny ensemble, as shipped ensembles are."""
    model_dir = tmp_path_factory.mktemp("five-fold-model")
    create_untrained_model(model_dir, architecture="resunet-tiny", folds=5, seed=1)
    return model_dir


@pytest.fixture(scope="session")
def tiny_fdg_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FDG phantom with lesions, its CT on its own finer grid, as a Grand-Challenge /input folder.

    For tests that run whole cases through small test models: the whole-body samples in test/ would make
    each of them take minutes.
    """
    from petseg.synthetic import make_case
    from petseg.synthetic.layouts import write_gc

    out = tmp_path_factory.mktemp("tiny-fdg")
    phantom = make_case(seed=2024, index=0, tracer="fdg", size="tiny", grid="fdg-400", ct_own_grid=True)
    assert phantom.info["lesions"], "the tiny FDG case must have lesions"
    write_gc(phantom, out)
    return out / phantom.case_id / "input"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA


def write_gc_input(
    root: Path, ct: sitk.Image, pet: sitk.Image, ct_name: str = "ct-uuid", pet_name: str = "pet-uuid"
) -> Path:
    """Write a CT/PET pair as a Grand-Challenge /input folder; returns that folder."""
    write_image(ct, root / CT_FOLDER / f"{ct_name}.mha")
    write_image(pet, root / PET_FOLDER / f"{pet_name}.mha")
    return root


def run_process(*args: str | Path) -> subprocess.CompletedProcess:
    """Run process.py exactly as the container does, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / "process.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def assert_binary_mask_on_grid(mask: sitk.Image, pet: sitk.Image) -> None:
    """The container contract for a written mask: uint8, values in {0, 1}, exactly the PET's grid."""
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == pet.GetSize()
    assert mask.GetSpacing() == pet.GetSpacing()
    assert mask.GetOrigin() == pet.GetOrigin()
    assert mask.GetDirection() == pet.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


@functools.cache
def recipe_card_text() -> str:
    """The autoPET III recipe's card before there are weights, as `python -m training card` writes it."""
    from training.config import TrainConfig, read_recipe
    from training.export import recipe_card

    config = TrainConfig.from_json(read_recipe(RECIPE))
    text = json.dumps(recipe_card(config).to_json(), indent=2) + "\n"
    # Arrays of numbers or words on one line, as a person writes a card: `"roi_size": [192, 192, 192]`.
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text)
