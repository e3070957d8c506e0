"""The Python API: load an ensemble once, then segment CT/PET pairs held in memory or on disk.

    import petseg
    model = petseg.load_model("model/")
    mask = petseg.segment("ct.mha", "pet.mha", model)    # or SimpleITK images; the mask is on the PET grid

The same stages as `process.py` run: the same checks of the images, the same preprocessing, the one
sliding-window pass and the same postprocessing. Only the writing is left to the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from petseg.inference.pipeline import segment_images
from petseg.inference.timing import StageTimer
from petseg.io.files import check_image, check_overlap, check_pet_units, read_image

if TYPE_CHECKING:
    import numpy as np

    from petseg.inference.predict import Predictor

Image = sitk.Image | str | Path


def load_model(
    model_dir: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
) -> Predictor:
    """The ensemble of a model folder (`model.json` and its fold weights), validated and loaded once.

    `model_dir` defaults to the model folder `process.py` would use. `device`: "auto" (a CUDA GPU where
    there is one), "cuda" or "cpu"; `precision`: "auto" or "fp32".
    """
    from petseg.app.runtime import default_model_dir
    from petseg.inference.predict import Predictor

    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    return Predictor.load(folder, device, precision=precision, compile=compile)


def segment(
    ct: Image,
    pet: Image,
    model: Predictor | str | Path,
    *,
    tracer: str | None = None,
    return_probability: bool = False,
    timer: StageTimer | None = None,
) -> sitk.Image | tuple[sitk.Image, np.ndarray]:
    """The lesion mask (uint8 {0,1}) of one CT/PET pair, on the exact grid of the PET.

    `ct` and `pet` are SimpleITK images or paths; the PET in body-weight SUV, the CT in HU on any grid
    that overlaps the PET. `model` is what `load_model` returned, or a model folder (loaded for this one
    call). `tracer` ("fdg" or "psma") picks the ensemble of a model split by tracer; by default its
    classifier names it. With `return_probability`, the lesion probability on the PET grid ((z, y, x)
    float32, before any growth to the uptake contour) comes too. `timer` receives the stage times
    (a quiet one by default). Bad input raises `petseg.errors.InputError` with one line naming it.
    """
    predictor = model if not isinstance(model, (str, Path)) else load_model(model)
    ct_image, ct_name = _image(ct, "CT")
    pet_image, pet_name = _image(pet, "PET")
    check_pet_units(pet_image, Path(pet_name))
    check_overlap(ct_image, pet_image, Path(ct_name), Path(pet_name))
    result = segment_images(
        ct_image,
        pet_image,
        predictor,
        timer if timer is not None else StageTimer(quiet=True),
        keep_probability=return_probability,
        tracer=tracer,
        source=pet_name,
    )
    if return_probability:
        assert result.probability is not None
        return result.mask, result.probability
    return result.mask


def _image(image: Image, role: str) -> tuple[sitk.Image, str]:
    """The image, read and checked as `process.py` reads a file, and the name that messages give it."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image), role), str(image)
    name = f"the {role} image given"
    return check_image(image, role, name), name
