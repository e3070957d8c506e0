"""Losses against loop-based float64 numpy re-implementations of the technical reference's formulas."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.losses import DiceLoss, FocalLoss, GeneralizedDiceFocalLoss

from training.losses import LOSSES, L1DiceFocal, build_loss

REPO = Path(__file__).resolve().parents[2]
SHAPES = [(3, 4, 5), (8, 8, 8), (1, 6, 7)]

# ---------------------------------------------------------------- numpy references (float64, literal loops)


def np_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def np_onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    index = labels[:, 0].astype(int)
    return np.stack([(index == c).astype(np.float64) for c in range(classes)], axis=1)


def np_dice(p: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """(2 sum p t + s) / (sum p + sum t + s) per (b, c)."""
    out = np.zeros(p.shape[:2])
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            out[b, c] = (2 * np.sum(p[b, c] * t[b, c]) + s) / (np.sum(p[b, c]) + np.sum(t[b, c]) + s)
    return out


def np_focal(p: np.ndarray, t: np.ndarray, gamma: float, reduction: str = "element") -> float:
    """-(1 - p_t)^gamma log p_t summed over voxels, divided by B*C*V ("element") or B*V ("voxel")."""
    total = 0.0
    batch, classes = p.shape[:2]
    voxels = p[0, 0].size
    for b in range(batch):
        for c in range(classes):
            for pv, tv in zip(p[b, c].ravel(), t[b, c].ravel(), strict=True):
                if tv == 1:
                    total += -((1 - pv) ** gamma) * math.log(pv)
    return total / (batch * voxels * (classes if reduction == "element" else 1))


def np_bin(g: float, eps: float) -> int:
    """The bin whose clipped interval [c - eps/2, c + eps/2) contains g; 1 belongs to the last bin."""
    bins = round(1 / eps) + 1
    for k in range(bins):
        low, high = max(k * eps - eps / 2, 0.0), min(k * eps + eps / 2, 1.0)
        if low <= g < high or (k == bins - 1 and g == 1.0):
            return k
    raise AssertionError(g)


def np_l1_weights(p: np.ndarray, t: np.ndarray, eps: float, normalise_median=False, clamp=None) -> np.ndarray:
    """beta = N / density of the element's bin, density = count / effective width."""
    bins = round(1 / eps) + 1
    g = np.abs(p - t).ravel()
    index = np.array([np_bin(v, eps) for v in g])
    counts = np.zeros(bins)
    for k in index:
        counts[k] += 1
    widths = np.array([min(k * eps + eps / 2, 1.0) - max(k * eps - eps / 2, 0.0) for k in range(bins)])
    beta = np.array([g.size / (counts[k] / widths[k]) for k in index])
    if normalise_median:
        beta = beta / np.sort(beta)[(beta.size - 1) // 2]  # lower median, as torch.median
    if clamp is not None:
        beta = np.clip(beta, *clamp)
    return beta.reshape(p.shape)


def np_weighted_dice(p: np.ndarray, t: np.ndarray, beta: np.ndarray, s: float) -> np.ndarray:
    out = np.zeros(p.shape[:2])
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            w, pc, tc = beta[b, c], p[b, c], t[b, c]
            out[b, c] = (2 * np.sum(w * pc * tc) + s) / (np.sum(w * (pc**2 + tc**2)) + s)
    return out


def np_l1dfl(logits, labels, eps=0.1, gamma=2.0, smooth=1e-5, normalise_median=False, clamp=None, **_):
    p = np_softmax(logits)
    t = np_onehot(labels, logits.shape[1])
    beta = np_l1_weights(p, t, eps, normalise_median, clamp)
    dice = np_weighted_dice(p, t, beta, smooth)
    focal = np_focal(p, t, gamma)
    return 1 - dice.mean() + focal, dice, focal


def np_batch_dice(p: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """(2 sum p t + s) / (sum p + sum t + s) per class, the sums taken over the whole batch."""
    return np.array(
        [
            (2 * np.sum(p[:, c] * t[:, c]) + s) / (np.sum(p[:, c]) + np.sum(t[:, c]) + s)
            for c in range(p.shape[1])
        ]
    )


def np_loss(name: str, logits: np.ndarray, labels: np.ndarray, **options) -> float:
    p = np_softmax(logits)
    t = np_onehot(labels, logits.shape[1])
    smooth = options.get("smooth", 1e-5)
    dice = np_batch_dice(p, t, smooth) if options.get("batch") else np_dice(p, t, smooth)
    if name == "dl":
        return 1 - dice.mean()
    if name == "dfl":
        factor = logits.shape[1] if options.get("focal_reduction") == "voxel" else 1
        return 1 - dice.mean() + factor * np_focal(p, t, options.get("gamma", 2.0))
    return np_l1dfl(logits, labels, **options)[0]


# ---------------------------------------------------------------- inputs


def make_batch(shape, seed: int, lesion_free: tuple[int, ...] = (), classes: int = 2, scale: float = 2.0):
    """Random logits and sparse lesion labels; the samples listed in lesion_free get no lesion at all."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(2, classes, *shape, generator=generator, dtype=torch.float64)
    labels = (torch.rand(2, 1, *shape, generator=generator) < 0.15).long()
    if classes > 2:
        labels = labels * torch.randint(1, classes, labels.shape, generator=generator)
    labels[list(lesion_free)] = 0
    return logits.float(), labels


def reference_case() -> tuple[torch.Tensor, torch.Tensor]:
    """The 2x2x2 check of the technical reference, section 3 (flattened in D, H, W order)."""
    lesion = torch.tensor([-3.0, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, -0.5]).reshape(1, 1, 2, 2, 2)
    logits = torch.cat([torch.zeros_like(lesion), lesion], dim=1)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]).reshape(1, 1, 2, 2, 2)
    return logits, labels


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("eps", "total", "focal", "dice"),
    [(0.05, 0.438660, 0.103522, (0.830191, 0.499533)), (0.1, 0.450976, 0.103522, None)],
)
def test_l1dfl_reference_values(eps, total, focal, dice):
    logits, labels = reference_case()
    loss = build_loss("l1dfl", eps=eps, smooth=1e-8)
    got_dice, got_focal = loss.terms(logits, labels)
    assert loss(logits, labels).item() == pytest.approx(total, abs=1e-6)
    assert got_focal.item() == pytest.approx(focal, abs=1e-6)
    if dice is not None:
        assert got_dice[0].tolist() == pytest.approx(dice, abs=1e-6)
    # The independent reference agrees on every component too.
    ref_total, ref_dice, ref_focal = np_l1dfl(logits.double().numpy(), labels.numpy(), eps=eps, smooth=1e-8)
    assert ref_total == pytest.approx(total, abs=1e-6)
    assert ref_focal == pytest.approx(focal, abs=1e-6)
    np.testing.assert_allclose(got_dice.numpy(), ref_dice, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dl", {}),
        ("dl", {"smooth": 1.0}),
        ("dl", {"batch": True}),
        ("dfl", {}),
        ("dfl", {"batch": True, "gamma": 1.0}),
        ("dfl", {"gamma": 1.5, "focal_reduction": "voxel"}),
        ("l1dfl", {}),
        ("l1dfl", {"eps": 0.05, "gamma": 0.0, "smooth": 1e-3}),
        ("l1dfl", {"eps": 0.25, "normalise_median": True}),
        ("l1dfl", {"normalise_median": True, "clamp": (0.5, 3.0)}),
    ],
)
def test_matches_numpy_reference(name, options, shape):
    logits, labels = make_batch(shape, seed=sum(shape), lesion_free=(1,))
    expected = np_loss(name, logits.double().numpy(), labels.numpy(), **options)
    assert build_loss(name, **options)(logits, labels).item() == pytest.approx(expected, rel=2e-5, abs=2e-6)


def test_batch_dice_sees_false_positives_in_lesion_free_patches():
    """Per-sample Dice gives a lesion-free patch's false positives almost no gradient; batch Dice does.

    A nearly trained network: sample 0 has its lesion right, sample 1 is lesion-free with one false
    positive block. (dfl adds its focal term to the same Dice term, so this holds for dfl's Dice too.)
    """
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    labels[0, 0, :2, :2, :2] = 1
    logits = torch.zeros(2, 2, 8, 8, 8)
    logits[:, 0], logits[:, 1] = 3.0, -3.0
    lesion = labels[0, 0] == 1
    logits[0, 1][lesion], logits[0, 0][lesion] = 3.0, -3.0
    false_positive = torch.zeros(8, 8, 8, dtype=torch.bool)
    false_positive[4:6, 4:6, 4:6] = True
    logits[1, 1][false_positive], logits[1, 0][false_positive] = 1.0, -1.0

    def push(batch: bool) -> float:
        """How hard the loss pushes the false positives' lesion logits down (mean gradient)."""
        x = logits.clone().requires_grad_(True)
        build_loss("dl", batch=batch)(x, labels).backward()
        return float(x.grad[1, 1][false_positive].mean())

    per_sample, pooled = push(False), push(True)
    assert per_sample > 0
    assert pooled > 0
    assert pooled > 20 * per_sample, (pooled, per_sample)


@pytest.mark.parametrize("name", ["dl", "dfl", "l1dfl"])
def test_more_than_two_classes(name):
    logits, labels = make_batch((4, 5, 6), seed=3, classes=3)
    expected = np_loss(name, logits.double().numpy(), labels.numpy())
    assert build_loss(name)(logits, labels).item() == pytest.approx(expected, rel=2e-5, abs=2e-6)


def test_focal_voxel_reduction_is_channel_count_times_element_mean():
    logits, labels = make_batch((4, 4, 4), seed=5)
    element = build_loss("l1dfl").terms(logits, labels)[1]
    voxel = build_loss("l1dfl", focal_reduction="voxel").terms(logits, labels)[1]
    assert voxel.item() == pytest.approx(2 * element.item(), rel=1e-6)


@pytest.mark.parametrize("lesion_free", [(), (0, 1)])
def test_gdfl_is_monai_with_the_seed_arguments(lesion_free):
    logits, labels = make_batch((6, 5, 4), seed=11, lesion_free=lesion_free)
    monai = GeneralizedDiceFocalLoss(
        to_onehot_y=True, softmax=True, weight=[1.0, 100.0], lambda_gdl=1, lambda_focal=1
    )
    assert build_loss("gdfl")(logits, labels).item() == pytest.approx(monai(logits, labels).item(), rel=1e-6)


def test_gdfl_focal_weights_the_lesion_channel():
    """Guards the class-weight keyword: sigmoid focal term, weights (1, 100), averaged over elements."""
    logits, labels = make_batch((4, 4, 4), seed=2)
    gdl = GeneralizedDiceFocalLoss(to_onehot_y=True, softmax=True, lambda_focal=0)(logits, labels)
    x, t = logits.double().numpy(), np_onehot(labels.numpy(), 2)
    prob = 1 / (1 + np.exp(-x))
    pt = np.where(t == 1, prob, 1 - prob)
    focal = -((1 - pt) ** 2) * np.log(pt) * np.array([1.0, 100.0]).reshape(1, 2, 1, 1, 1)
    expected = gdl.item() + focal.mean()
    assert build_loss("gdfl")(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_uniform_difficulty_reduces_to_squared_dice_plus_focal():
    """All g in one bin: beta is the constant bin width, so only the smoothing is rescaled (s / width)."""
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(2, 1, 6, 6, 6, generator=generator) < 0.2).long()
    labels[1] = 0
    margin = 2.3 + 0.6 * torch.rand(labels.shape, generator=generator)  # p_t in (0.909, 0.948): g in bin 1
    lesion = torch.where(labels == 1, margin, -margin)
    logits = torch.cat([torch.zeros_like(lesion), lesion], dim=1)
    loss = build_loss("l1dfl", eps=0.1, smooth=1e-5)
    assert torch.unique(loss.weights(logits, labels)).tolist() == pytest.approx([0.1])
    squared = DiceLoss(
        to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=1e-4, smooth_dr=1e-4, batch=False
    )
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
    expected = squared(logits, labels) + focal(logits, labels)
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- gradients


def gradient_batches() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    logits, labels = make_batch((5, 6, 4), seed=21)
    free = torch.zeros_like(labels)
    confident = torch.cat([torch.full_like(logits[:, :1], 30.0), torch.full_like(logits[:, 1:], -30.0)], 1)
    return {
        "random": (logits, labels),
        "lesion-free": (logits, free),
        "all-background-confident": (confident, free),  # p_t == 1 exactly in float32
        "all-lesion": (logits, torch.ones_like(labels)),
    }


@pytest.mark.parametrize("case", ["random", "lesion-free", "all-background-confident", "all-lesion"])
@pytest.mark.parametrize("name", LOSSES)
def test_gradients_are_finite(name, case):
    logits, labels = gradient_batches()[case]
    logits = logits.clone().requires_grad_(True)
    value = build_loss(name)(logits, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    if case == "random":
        assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5])
def test_l1dfl_gradient_finite_when_saturated(gamma):
    """p_t == 1 exactly: (1 - p_t)^gamma has an infinite derivative there for gamma < 1."""
    _, labels = make_batch((3, 4, 5), seed=2)
    lesion = torch.where(labels == 1, 40.0, -40.0)
    logits = torch.cat([torch.zeros_like(lesion), lesion], 1).requires_grad_(True)
    value = build_loss("l1dfl", gamma=gamma)(logits, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_label_dtypes_agree(name):
    logits, labels = make_batch((4, 3, 5), seed=12)
    loss = build_loss(name)
    values = [loss(logits, labels.to(dtype)).item() for dtype in (torch.int64, torch.uint8, torch.float32)]
    values.append(loss(logits, labels.bool()).item())
    assert values == pytest.approx([values[0]] * 4, rel=1e-7)


@pytest.mark.parametrize(
    ("classes", "options"),
    [
        (2, {"eps": 0.05}),
        (2, {"gamma": 0.0, "focal_reduction": "voxel"}),
        (2, {"gamma": 1.5, "normalise_median": True, "clamp": (0.2, 5.0)}),
        (3, {}),
        (3, {"gamma": 0.5, "eps": 0.25}),
    ],
)
def test_l1dfl_weights_carry_no_gradient(classes, options):
    """The gradient equals autograd's through weighted Dice + focal with an independent, constant beta."""
    logits, labels = make_batch((4, 5, 6), seed=8, lesion_free=(0,), classes=classes)
    ours = logits.clone().requires_grad_(True)
    (3 * build_loss("l1dfl", **options)(ours, labels)).backward()  # an upstream gradient other than 1

    p_np, t_np = np_softmax(logits.double().numpy()), np_onehot(labels.numpy(), classes)
    beta = np_l1_weights(
        p_np, t_np, options.get("eps", 0.1), options.get("normalise_median", False), options.get("clamp")
    )
    beta, t = torch.from_numpy(beta).float(), torch.from_numpy(t_np).float()
    theirs = logits.clone().requires_grad_(True)
    log_p = torch.log_softmax(theirs, 1)
    p = log_p.exp()
    dice = (2 * (beta * p * t).sum((2, 3, 4)) + 1e-5) / ((beta * (p * p + t * t)).sum((2, 3, 4)) + 1e-5)
    log_pt = (log_p * t).sum(1)
    per_voxel = -((1 - log_pt.exp()) ** options.get("gamma", 2.0)) * log_pt
    focal = per_voxel.sum() / (
        per_voxel.numel() * (1 if options.get("focal_reduction") == "voxel" else classes)
    )
    (3 * (1 - dice.mean() + focal)).backward()
    assert theirs.grad.abs().max() > 1e-4
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-7)
    assert not build_loss("l1dfl").weights(logits.clone().requires_grad_(True), labels).requires_grad


def test_bins_are_half_open_intervals_around_the_centres():
    """Bin k is [c_k - eps/2, c_k + eps/2): a value on an edge goes up, 1 goes to the last (half) bin."""
    edge = torch.tensor(0.05)
    g = torch.stack([torch.tensor(0.0), torch.nextafter(edge, torch.tensor(0.0)), edge])
    g = torch.cat([g, torch.tensor([0.5, 0.95, 1.0])])
    index, table = L1DiceFocal(eps=0.1).bin_weights(g)
    assert index.tolist() == [0, 0, 1, 5, 10, 10]
    # beta = N x width / count with N = 6: half-width end bins hold two values each, bins 1 and 5 one.
    assert table[[0, 1, 5, 10]].tolist() == pytest.approx([6 * 0.05 / 2, 6 * 0.1, 6 * 0.1, 6 * 0.05 / 2])


@pytest.mark.parametrize("name", LOSSES)
def test_float32_under_bf16_autocast(name):
    logits, labels = make_batch((4, 4, 4), seed=4)
    conv = torch.nn.Conv3d(2, 2, 1)
    loss = build_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = conv(logits)
        value = loss(half, labels)
    assert half.dtype == torch.bfloat16
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(half.float(), labels).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- properties


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    scale=st.floats(0.0, 40.0),
    lesion=st.floats(0.0, 1.0),
    eps=st.sampled_from([1.0, 0.5, 0.1, 0.05, 0.01]),
)
def test_l1dfl_is_finite_and_bounded(seed, shape, scale, lesion, eps):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(2, 2, *shape, generator=generator)).requires_grad_(True)
    labels = (torch.rand(2, 1, *shape, generator=generator) < lesion).long()
    loss = build_loss("l1dfl", eps=eps)
    dice, focal = loss.terms(logits, labels)
    value = loss(logits, labels)
    value.backward()
    # Weighted Dice lies in [0, 1] (p^2 + t^2 >= 2 p t); the focal term is at most the mean cross-entropy / C.
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels[:, 0]).item() / 2
    assert ((dice >= 0) & (dice <= 1 + 1e-6)).all()
    assert 0 <= focal.item() <= cross_entropy + 1e-6
    assert 0 <= value.item() <= 1 + cross_entropy + 1e-5
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- distributed histogram


RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from training.losses import build_loss

store, folder = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=1, world_size=2)
logits, labels = torch.load(f"{folder}/batch.pt")
losses = {
    "global": build_loss("l1dfl", eps=0.05, distributed=True)(logits[1:], labels[1:]).item(),
    "local": build_loss("l1dfl", eps=0.05)(logits[1:], labels[1:]).item(),
}
torch.save(losses, f"{folder}/1.pt")
dist.destroy_process_group()
"""


def test_distributed_histogram_makes_the_split_irrelevant(tmp_path: Path):
    """Two gloo ranks with one sample each and all-reduced counts average to the single-process batch loss.

    Rank 1 is a fresh interpreter, rank 0 is this process (which has torch imported already).
    """
    logits, labels = make_batch((6, 6, 6), seed=9, lesion_free=(1,))
    torch.save((logits, labels), tmp_path / "batch.pt")
    store = tmp_path / "store"
    other = subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(store), str(tmp_path)], cwd=REPO)
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{store}", rank=0, world_size=2, timeout=timedelta(seconds=120)
        )
        try:
            ours = build_loss("l1dfl", eps=0.05, distributed=True)(logits[:1], labels[:1]).item()
        finally:
            torch.distributed.destroy_process_group()
        assert other.wait(timeout=120) == 0
    finally:
        other.kill()
    theirs = torch.load(tmp_path / "1.pt")
    whole = build_loss("l1dfl", eps=0.05)(logits, labels).item()
    assert (ours + theirs["global"]) / 2 == pytest.approx(whole, rel=1e-6)
    # Per-rank histograms give different weights, hence a different loss: the option does something.
    local = build_loss("l1dfl", eps=0.05)(logits[:1], labels[:1]).item()
    assert (local + theirs["local"]) / 2 != pytest.approx(whole, rel=1e-4)


def test_distributed_without_a_process_group_is_per_rank():
    logits, labels = make_batch((4, 4, 4), seed=1)
    assert build_loss("l1dfl", distributed=True)(logits, labels) == build_loss("l1dfl")(logits, labels)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dice", {}, "unknown loss"),
        ("L1DFL", {}, "unknown loss"),
        ("l1dfl", {"epsilon": 0.1}, "unknown option"),
        ("gdfl", {"weight": [1.0, 10.0]}, "unknown option"),
        ("dl", {"gamma": 2.0}, "unknown option"),
        ("l1dfl", {"eps": 0.3}, "1/n"),
        ("l1dfl", {"eps": 0.0}, "eps"),
        ("l1dfl", {"eps": 2.0}, "1/n"),
        ("l1dfl", {"eps": "0.1"}, "finite number"),
        ("l1dfl", {"gamma": -1.0}, "gamma"),
        ("l1dfl", {"smooth": 0.0}, "smooth"),
        ("dfl", {"smooth": math.nan}, "finite number"),
        ("l1dfl", {"clamp": (3.0, 1.0)}, "low <= high"),
        ("l1dfl", {"clamp": 3.0}, "pair"),
        ("l1dfl", {"normalise_median": "yes"}, "True or False"),
        ("l1dfl", {"distributed": 1}, "True or False"),
        ("dfl", {"focal_reduction": "sum"}, "focal_reduction"),
    ],
)
def test_bad_names_and_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_loss(name, **options)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_inputs(name):
    loss = build_loss(name)
    logits, labels = make_batch((3, 3, 3), seed=0)
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(logits, labels[:, 0])
    with pytest.raises(ValueError, match="labels must lie"):
        loss(logits, labels + 1)
    with pytest.raises(ValueError, match=r"C>=2"):
        loss(logits[:, :1], labels)
    with pytest.raises(ValueError, match="floating-point"):
        loss(labels.repeat(1, 2, 1, 1, 1), labels)


def test_weights_rebalance_difficulty_levels():
    """Rare difficulty levels weigh more than crowded ones: each bin's total weight is N x its width."""
    logits, labels = make_batch((8, 8, 8), seed=6)
    loss = L1DiceFocal(eps=0.1)
    beta = loss.weights(logits, labels)
    g = (torch.softmax(logits, 1) - torch.cat([1 - labels, labels], 1)).abs()
    index = torch.bucketize(g, loss.edges, right=True)
    for k in torch.unique(index).tolist():
        width = 0.05 if k in (0, 10) else 0.1
        assert beta[index == k].sum().item() == pytest.approx(g.numel() * width, rel=1e-5)


def test_benchmark_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`python -m bench losses` on a tiny batch: the table and the ratio line come out."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench.__main__ import main

    arguments = ["losses", "--size", "8", "--repeats", "1", "--warmup", "0", "--losses", "l1dfl"]
    assert main([*arguments, "--max-ratio", "1000"]) == 0
    assert "ratio l1dfl / MONAI DiceFocalLoss on cpu" in capsys.readouterr().out
