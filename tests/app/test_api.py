"""The Python API: `petseg.load_model` and `petseg.segment` on images in memory and on files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_gc_input

import petseg
from petseg.app.process import process_main
from petseg.errors import InputError
from petseg.io import MASK_FOLDER
from petseg.synthetic import make_case


@pytest.fixture(scope="module")
def phantom():
    return make_case(seed=3, index=0, tracer="fdg", size="tiny", grid="fdg-400", ct_own_grid=True)


def test_segment_in_memory_gives_the_mask_process_py_writes(tmp_path, tiny_model_dir, phantom):
    """The same stages as the container: the mask of images in memory equals process.py's, voxel for voxel,
    and carries the PET's geometry (the CT here is on its own grid)."""
    model = petseg.load_model(tiny_model_dir, device="cpu")
    mask = petseg.segment(phantom.ct, phantom.pet, model)
    assert mask.GetSize() == phantom.pet.GetSize()
    assert mask.GetSpacing() == phantom.pet.GetSpacing()
    assert mask.GetOrigin() == phantom.pet.GetOrigin()
    assert mask.GetDirection() == phantom.pet.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8

    input_dir = write_gc_input(tmp_path / "input", phantom.ct, phantom.pet, "ct", "pet")
    argv = ["--input", str(input_dir), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    assert process_main([*argv, "--device", "cpu"]) == 0
    written = sitk.ReadImage(str(tmp_path / "out" / MASK_FOLDER / "pet.mha"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(written))

    images = input_dir / "images"
    from_files = petseg.segment(images / "ct" / "ct.mha", images / "pet" / "pet.mha", tiny_model_dir)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_files), sitk.GetArrayFromImage(mask))


def test_segment_returns_the_probability_it_thresholded(tiny_model_dir, phantom):
    model = petseg.load_model(tiny_model_dir, device="cpu")
    mask, probability = petseg.segment(phantom.ct, phantom.pet, model, return_probability=True)
    assert probability.shape == tuple(reversed(phantom.pet.GetSize()))
    assert probability.dtype == np.float32
    threshold = model.card.ensemble.threshold
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask).astype(bool), probability > threshold)


def test_segment_reports_stage_times_to_a_timer(tiny_model_dir, phantom):
    from petseg.inference.timing import StageTimer

    timer = StageTimer(quiet=True)
    petseg.segment(phantom.ct, phantom.pet, petseg.load_model(tiny_model_dir, device="cpu"), timer=timer)
    assert set(timer.seconds) == {"preprocess", "predict", "postprocess"}


def test_bad_images_in_memory_are_refused_in_one_line(tiny_model_dir, phantom):
    model = petseg.load_model(tiny_model_dir, device="cpu")
    broken = sitk.Image(phantom.pet)
    broken[1, 1, 1] = float("nan")
    with pytest.raises(InputError, match=r"^the PET image given: PET image has 1 NaN or infinite voxels$"):
        petseg.segment(phantom.ct, broken, model)
    with pytest.raises(InputError, match="expected 3D"):
        petseg.segment(phantom.ct, phantom.pet[:, :, 5], model)
    with pytest.raises(InputError, match="must be a SimpleITK image or a path"):
        petseg.segment(sitk.GetArrayFromImage(phantom.ct), phantom.pet, model)
    far = sitk.Image(phantom.ct)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    with pytest.raises(InputError, match="CT does not overlap the PET"):
        petseg.segment(far, phantom.pet, model)


def test_importing_petseg_stays_light():
    """`import petseg` (and so `petseg --help`) loads neither torch nor MONAI: the API is imported on use."""
    import subprocess
    import sys

    code = "import sys, petseg; print('torch' in sys.modules, 'monai' in sys.modules, petseg.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", petseg.__version__]
