import pickle

import pytest
import torch

from petseg.errors import ModelError
from petseg.model.card import Architecture, load_card
from petseg.model.networks import (
    build_network,
    count_parameters,
    fuse_batch_norms,
    input_divisor,
    load_fold,
    save_weights,
)
from petseg.model.untrained import create_untrained_model


def test_resunet_is_exactly_the_seed_network():
    network = build_network(Architecture("resunet"))
    assert count_parameters(network) == 19_223_525
    assert input_divisor(Architecture("resunet")) == 16
    # Batch norm, PReLU, 2 residual units: the seed's MONAI UNet.
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    assert any(isinstance(m, torch.nn.PReLU) for m in network.modules())


def test_tiny_preset_runs_and_keeps_the_shape():
    network = build_network(Architecture("resunet-tiny")).eval()
    with torch.inference_mode():
        out = network(torch.zeros(1, 2, 32, 32, 32))
    assert out.shape == (1, 2, 32, 32, 32)
    assert count_parameters(network) < 1_000_000


@pytest.mark.parametrize("name", ["resunet-tiny", "segresnet", "attention-unet"])
def test_an_organ_head_adds_output_channels_and_inference_reads_the_lesion_channels_only(name):
    """With `organ_classes`, the network outputs [background, lesion, organ classes...]; the fold ensemble's
    lesion probability is the softmax over the first two alone, the same as the network's without the rest."""
    from petseg.inference.predict import FoldEnsemble

    torch.manual_seed(0)
    network = build_network(Architecture(name, organ_classes=11)).eval()
    window = torch.rand(1, 2, 32, 32, 32)
    with torch.inference_mode():
        out = network(window)
        probability = FoldEnsemble([network])(window)
        difference = FoldEnsemble([network], average="logits")(window)
    assert out.shape == (1, 13, 32, 32, 32)
    torch.testing.assert_close(probability, torch.softmax(out[:, :2], dim=1)[:, 1:2])
    torch.testing.assert_close(difference, out[:, 1:2] - out[:, 0:1])
    plain = build_network(Architecture(name))
    assert count_parameters(network) > count_parameters(plain)  # only the output layer grows


def test_unknown_architecture_is_a_model_error():
    with pytest.raises(ModelError, match="unknown architecture 'nope'"):
        build_network(Architecture("nope"))
    with pytest.raises(ModelError, match="resunet-tiny"):
        build_network(Architecture("resunet-tiny", {"not_an_argument": 1}))


def test_weights_round_trip_through_safetensors(tmp_path):
    card = create_untrained_model(tmp_path, folds=2, seed=3)
    torch.manual_seed(3000)
    reference = build_network(card.architecture).eval()
    loaded = load_fold(card, tmp_path, "fold0.safetensors", card.folds[0].sha256)
    x = torch.rand(1, 2, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(reference(x), loaded(x))
    assert not loaded.training


def test_missing_weights_say_how_to_get_them(tmp_path):
    card = create_untrained_model(tmp_path, folds=1)
    (tmp_path / "fold0.safetensors").unlink()
    with pytest.raises(ModelError, match="train them") as raised:
        load_fold(card, tmp_path, "fold0.safetensors", None)
    # Training and the shipped model are the ways to weights; random ones are for tests, not advice.
    assert "python -m training" in str(raised.value)
    assert "model/" in str(raised.value)
    assert "random-model" not in str(raised.value)


def test_checksum_mismatch_is_reported(tmp_path):
    card = create_untrained_model(tmp_path, folds=1)
    with pytest.raises(ModelError, match="do not match the sha256"):
        load_fold(card, tmp_path, "fold0.safetensors", "0" * 64)


def test_weights_of_another_architecture_are_refused(tmp_path):
    card = create_untrained_model(tmp_path, folds=1)
    save_weights(
        build_network(Architecture("resunet-tiny", {"channels": (4, 8, 16, 32)})), tmp_path / "x.safetensors"
    )
    with pytest.raises(ModelError, match="do not fit architecture 'resunet-tiny'"):
        load_fold(card, tmp_path, "x.safetensors", None)


def test_weights_stored_as_integers_are_refused_not_cast(tmp_path):
    """int8 tensors of the right names and shapes would be cast to float by load_state_dict, silently."""
    from safetensors.torch import load_file, save_file

    card = create_untrained_model(tmp_path, folds=1)
    state = load_file(str(tmp_path / "fold0.safetensors"))
    quantised = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()}
    save_file(quantised, str(tmp_path / "int8.safetensors"))
    with pytest.raises(ModelError, match=r"is stored as int8; the network holds float32 there"):
        load_fold(card, tmp_path, "int8.safetensors", None)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_posing_as_weights_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    card = create_untrained_model(tmp_path, folds=1)
    (tmp_path / "fold0.safetensors").write_bytes(pickle.dumps({"state": _Exploit()}))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_fold(card, tmp_path, "fold0.safetensors", None)
    assert not (tmp_path / "PWNED").exists()


def test_card_of_untrained_model_says_so(tmp_path):
    create_untrained_model(tmp_path, folds=2)
    card = load_card(tmp_path)
    assert not card.trained
    assert [f.weights for f in card.folds] == ["fold0.safetensors", "fold1.safetensors"]
    assert all(len(f.sha256) == 64 for f in card.folds)


@pytest.mark.parametrize(
    ("name", "window", "norm"),
    [
        ("segresnet", 32, torch.nn.GroupNorm),
        ("attention-unet", 32, torch.nn.BatchNorm3d),
        ("unet", 32, torch.nn.BatchNorm3d),
        ("unetr", 32, torch.nn.LayerNorm),
    ],
)
def test_comparison_architectures_of_the_l1dfl_paper(name, window, norm):
    architecture = Architecture(name)
    assert window % input_divisor(architecture) == 0
    network = build_network(architecture, roi_size=(window,) * 3).eval()
    assert any(isinstance(m, norm) for m in network.modules())
    with torch.inference_mode():
        out = network(torch.zeros(1, 2, window, window, window))
    assert out.shape == (1, 2, window, window, window)


def test_paper_settings_of_the_comparison_architectures():
    unetr = build_network(Architecture("unetr"), roi_size=(128, 128, 128))
    assert unetr.vit.blocks[0].mlp.linear1.out_features == 1024
    assert len(unetr.vit.blocks[0].attn.out_proj.weight) == 256
    assert unetr.vit.blocks[0].attn.num_heads == 4
    segresnet = build_network(Architecture("segresnet"))
    blocks = [sum(type(m).__name__ == "ResBlock" for m in layer) for layer in segresnet.down_layers]
    assert blocks == [1, 2, 2, 4]
    assert input_divisor(Architecture("unet")) == 32


def _with_running_statistics(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch norms with statistics and affine parameters far from the identity, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return network.eval()


@pytest.mark.parametrize("name", ["resunet-tiny", "resunet"])
def test_folding_batch_norms_keeps_the_output_and_removes_every_norm(name):
    torch.manual_seed(0)
    network = _with_running_statistics(build_network(Architecture(name)))
    norms = sum(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    window = torch.randn(1, 2, 32, 32, 32)
    with torch.inference_mode():
        before = network(window)
    assert fuse_batch_norms(network) == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    with torch.inference_mode():
        after = network(window)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_a_norm_after_the_activation_is_not_folded():
    from monai.networks.blocks import Convolution

    torch.manual_seed(0)
    block = Convolution(3, 2, 4, act="PRELU", norm="BATCH", adn_ordering="AN")
    block = _with_running_statistics(block)
    window = torch.randn(1, 2, 8, 8, 8)
    with torch.inference_mode():
        before = block(window)
    assert fuse_batch_norms(block) == 0
    with torch.inference_mode():
        torch.testing.assert_close(block(window), before, rtol=0, atol=0)


def test_batch_norms_are_folded_only_in_eval_mode():
    network = build_network(Architecture("resunet-tiny")).train()
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batch_norms(network)
