import logging

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

import petseg.predict as predict_module
from petseg.card import Architecture
from petseg.errors import ModelError
from petseg.networks import build_network
from petseg.predict import FoldEnsemble, Predictor, select_device


def folds(n=3, seed=0):
    networks = []
    for k in range(n):
        torch.manual_seed(seed + k)
        networks.append(build_network(Architecture("resunet-tiny")).eval())
    return networks


def test_probability_average_is_the_mean_of_fold_softmaxes():
    networks = folds()
    x = torch.rand(2, 2, 16, 16, 16)
    with torch.inference_mode():
        expected = torch.stack([torch.softmax(n(x), 1)[:, 1:2] for n in networks]).mean(0)
        got = FoldEnsemble(networks, "probabilities")(x)
    assert got.shape == (2, 1, 16, 16, 16)
    torch.testing.assert_close(got, expected)


def test_logit_average_reproduces_the_argmax_of_mean_logits():
    networks = folds()
    x = torch.rand(1, 2, 16, 16, 16) * 3
    ensemble = FoldEnsemble(networks, "logits")
    with torch.inference_mode():
        mean_logits = torch.stack([n(x) for n in networks]).mean(0)
        seed_mask = mean_logits.argmax(1, keepdim=True) == 1
        ours = ensemble.to_probability(ensemble(x)) > 0.5
    assert torch.equal(ours, seed_mask)
    assert 0 < int(seed_mask.sum()) < seed_mask.numel()  # a non-trivial comparison


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_one_pass_equals_the_mean_of_one_pass_per_fold(mode):
    """Averaging inside the window before stitching is exact: stitching is linear."""
    networks = folds(2)
    x = torch.rand(1, 2, 40, 36, 44)
    kwargs = {"roi_size": (32, 32, 32), "sw_batch_size": 2, "overlap": 0.5, "mode": mode}
    with torch.inference_mode():
        one_pass = sliding_window_inference(x, predictor=FoldEnsemble(networks), **kwargs)
        per_fold = [
            sliding_window_inference(x, predictor=lambda w, n=n: torch.softmax(n(w), 1)[:, 1:2], **kwargs)
            for n in networks
        ]
    torch.testing.assert_close(one_pass, torch.stack(per_fold).mean(0), atol=1e-5, rtol=1e-5)


def test_cpu_is_fp32_with_a_visible_warning(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="petseg"):
        chosen = select_device("auto")
    assert chosen.device.type == "cpu"
    assert chosen.amp_dtype is None
    assert any("running on the CPU" in r.message for r in caplog.records)
    with pytest.raises(ModelError, match="no CUDA device"):
        select_device("cuda")


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]
)
def test_autocast_precision_follows_compute_capability(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen = predict_module.select_device("auto")
    assert chosen.device.type == "cuda"
    assert chosen.amp_dtype == dtype
    assert select_device("cpu").device.type == "cpu"


def test_predictor_handles_volumes_smaller_than_the_window(tiny_model_dir):
    predictor = Predictor.load(tiny_model_dir, device="cpu")
    image = np.random.default_rng(0).random((2, 20, 70, 33), dtype=np.float32)
    probability = predictor(image)
    assert probability.shape == (20, 70, 33)
    assert probability.dtype == np.float32
    assert probability.min() >= 0.0
    assert probability.max() <= 1.0
    assert len(predictor.ensemble.networks) == 2


@pytest.mark.parametrize(("failures", "expected_exit"), [(0, None), (1, None), (2, None), (3, MemoryError)])
def test_gpu_out_of_memory_falls_back_to_single_windows_then_host_stitching(
    tiny_model_dir, monkeypatch, caplog, failures, expected_exit
):
    """Injected OOM errors: each retry takes the next fallback, and the result equals the plain pass."""
    predictor = Predictor.load(tiny_model_dir, device="cpu")
    image = np.random.default_rng(0).random((2, 40, 36, 44), dtype=np.float32)
    settings = predictor.card.ensemble
    expected = predict_module.sliding_window_probability(
        image, predictor.ensemble, settings, predictor.compute
    )

    real_pass = predict_module._sliding_window_pass
    gpu = predict_module.ComputeDevice(torch.device("cuda", 0), torch.float16)
    attempts = []

    def flaky_pass(image, ensemble, settings, compute, sw_batch_size, stitch_device, progress):
        attempts.append((sw_batch_size, stitch_device.type))
        if len(attempts) <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_pass(
            image, ensemble, settings, predictor.compute, sw_batch_size, torch.device("cpu"), progress
        )

    monkeypatch.setattr(predict_module, "_sliding_window_pass", flaky_pass)
    monkeypatch.setattr(predict_module.torch.cuda, "is_available", lambda: False)
    batched = type(settings)(**{**settings.__dict__, "sw_batch_size": 4})
    caplog.set_level(logging.WARNING, logger="petseg.predict")
    if expected_exit is not None:
        with pytest.raises(expected_exit, match="even stitching on the host"):
            predict_module.sliding_window_probability(image, predictor.ensemble, batched, gpu)
    else:
        got = predict_module.sliding_window_probability(image, predictor.ensemble, batched, gpu)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    plan = [(4, "cuda"), (1, "cuda"), (1, "cpu")]
    assert attempts == plan[: min(failures + 1, 3)]
    assert sum("out of GPU memory" in r.message for r in caplog.records) == min(failures, 2)
