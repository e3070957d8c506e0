import logging

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

import petseg.inference.predict as predict_module
from petseg.errors import ModelError
from petseg.inference.predict import FoldEnsemble, Predictor, select_device
from petseg.model.networks import build_network
from petseg.model.settings import Architecture


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


@pytest.mark.parametrize("native_bf16", [False, True])
def test_cpu_precision_follows_the_cpus_bf16_support(caplog, monkeypatch, native_bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: native_bf16)
    with caplog.at_level(logging.WARNING, logger="petseg"):
        chosen = select_device("auto")
    assert chosen.device.type == "cpu"
    assert chosen.amp_dtype == (torch.bfloat16 if native_bf16 else None)
    assert chosen.channels_last
    assert chosen.describe() == f"CPU ({'bfloat16' if native_bf16 else 'fp32'}, channels-last)"
    assert any("running on the CPU" in r.message for r in caplog.records)
    # --precision fp32, and training on the CPU, never autocast
    assert select_device("auto", precision="fp32") == predict_module.ComputeDevice(torch.device("cpu"), None)
    assert predict_module.training_device("cpu") == predict_module.ComputeDevice(torch.device("cpu"), None)
    with pytest.raises(ModelError, match="no CUDA device"):
        select_device("cuda")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32"):
        select_device("cpu", precision="fp16")


def test_cpu_bf16_support_is_read_from_torch(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not predict_module.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert predict_module.cpu_has_native_bf16() == torch.backends.mkldnn.is_available()


def test_channels_last_and_bf16_windows_keep_the_probability(tiny_model_dir):
    """The CPU fast path (bf16 autocast, channels-last) against plain fp32 on the same volume: the
    channels-last layout alone changes nothing but float rounding; bf16 moves probabilities by about 1 %."""
    fp32 = Predictor.load(tiny_model_dir, device="cpu", precision="fp32")
    image = np.random.default_rng(1).random((2, 40, 36, 44), dtype=np.float32)
    reference = fp32(image)
    cpu = torch.device("cpu")
    layouts = {
        "fp32, channels-last": (predict_module.ComputeDevice(cpu, None, channels_last=True), 1e-4),
        "bf16, channels-last": (predict_module.ComputeDevice(cpu, torch.bfloat16, channels_last=True), 0.05),
    }
    for name, (compute, tolerance) in layouts.items():
        fast = Predictor(fp32.card, FoldEnsemble(folds_of(fp32), fp32.card.ensemble.average), compute)
        assert fast.ensemble.channels_last
        probability = fast(image)
        assert np.abs(probability - reference).max() < tolerance, name
        if compute.amp_dtype is not None:
            assert not np.array_equal(probability, reference), "bf16 must have run"


@pytest.mark.slow  # torch.compile builds C++ kernels for the CPU on first use: tens of seconds
def test_compiled_networks_give_the_same_probability(tiny_model_dir):
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    plain = Predictor.load(tiny_model_dir, device="cpu", precision="fp32")
    compiled = Predictor.load(tiny_model_dir, device="cpu", precision="fp32", compile=True)
    assert compiled.compiled
    assert not plain.compiled
    assert all(type(runner).__name__ == "OptimizedModule" for runner in compiled.ensemble.runners)
    image = np.random.default_rng(2).random((2, 40, 36, 44), dtype=np.float32)
    np.testing.assert_allclose(compiled(image), plain(image), atol=1e-4)


def folds_of(predictor: Predictor) -> list[torch.nn.Module]:
    """Fresh copies of a predictor's fold networks (a Predictor moves its ensemble in place)."""
    import copy

    return [copy.deepcopy(network) for network in predictor.ensemble.networks]


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
    assert not chosen.channels_last
    assert predict_module.select_device("auto", precision="fp32").amp_dtype is None
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
    caplog.set_level(logging.WARNING, logger="petseg.inference.predict")
    if expected_exit is not None:
        with pytest.raises(expected_exit, match="even stitching on the host"):
            predict_module.sliding_window_probability(image, predictor.ensemble, batched, gpu)
    else:
        got = predict_module.sliding_window_probability(image, predictor.ensemble, batched, gpu)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    plan = [(4, "cuda"), (1, "cuda"), (1, "cpu")]
    assert attempts == plan[: min(failures + 1, 3)]
    assert sum("out of GPU memory" in r.message for r in caplog.records) == min(failures, 2)


def test_predictor_folds_the_batch_norms_of_the_shipped_model_without_changing_it():
    """The shipped folds carry trained batch-norm statistics; folded into the convolutions they must give
    the probability of the networks as stored (fp32, one MONAI pass per fold, mean of softmaxes)."""
    from pathlib import Path

    from petseg.model.card import load_card
    from petseg.model.networks import load_fold

    model_dir = Path(__file__).resolve().parents[2] / "model"
    card = load_card(model_dir)
    stored = [load_fold(card, model_dir, fold.weights, fold.sha256).eval() for fold in card.folds]
    predictor = Predictor.load(model_dir, device="cpu", precision="fp32")
    assert not any(
        isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for ensemble in predictor.ensembles.values()
        for network in ensemble.networks
        for module in network.modules()
    )
    assert any(isinstance(module, torch.nn.BatchNorm3d) for module in stored[0].modules())
    image = np.random.default_rng(3).random((2, 40, 36, 44), dtype=np.float32)
    settings = card.ensemble
    with torch.inference_mode():
        per_fold = [
            torch.softmax(
                sliding_window_inference(
                    torch.from_numpy(image)[None],
                    settings.roi_size,
                    settings.sw_batch_size,
                    network,
                    overlap=settings.overlap,
                    mode=settings.blend_mode,
                ),
                dim=1,
            )[0, 1]
            for network in stored
        ]
    # Softmax then blend, per fold, equals blend of the fold mean: both are linear in the window scores.
    # A card split by tracer averages the folds of the tracer it runs.
    for tracer in card.tracers or (None,):
        members = [p for p, fold in zip(per_fold, card.folds, strict=True) if fold.tracer == tracer]
        expected = torch.stack(members).mean(0).numpy()
        np.testing.assert_allclose(predictor(image, tracer=tracer), expected, atol=1e-4)
