"""Segmentation losses for the (background, lesion) ResUNet: DL, DFL, GDFL and L1DFL.

Every loss is called as ``loss(logits, labels)`` with logits ``(B, C, *spatial)`` (C >= 2, 2 in this project)
and labels ``(B, 1, *spatial)`` holding class indices, and returns a float32 scalar. The logits are cast to
float32 and the loss runs outside autocast: softmax sums over a 128^3 patch and the difficulty histogram are
not safe in half precision.

Focal convention. The focal term of ``dfl`` and ``l1dfl`` is the softmax focal loss
``-(1 - p_t)^gamma log p_t`` (no alpha), averaged by default over all B x C x voxels elements of the one-hot
product, as MONAI's ``FocalLoss(use_softmax=True)`` does, i.e. (per-voxel mean) / C. The technical
reference's prose says "mean over voxels", but its L1DFL reference values (section 3: 0.438660 with focal
0.103522 for eps = 0.05) are reproduced only with this element mean; the per-voxel mean gives twice that
focal value for two classes. ``focal_reduction="voxel"`` selects the per-voxel mean instead. Both losses
share the convention so that DFL and L1DFL differ only in their Dice term.

MONAI traps avoided here: ``DiceFocalLoss`` and ``GeneralizedDiceFocalLoss`` always use the *sigmoid* focal
term even with ``softmax=True``, so ``dfl`` uses ``FocalLoss(use_softmax=True)``; ``gdfl`` keeps that sigmoid
term on purpose because it reproduces the autoPET III entry exactly as trained.

L1DFL under DDP. By default the difficulty histogram is per rank: each rank weights its voxels with the
histogram of its own batch, which is exactly what a single-GPU run on that rank's batch would compute, and
costs no communication. With ``distributed=True`` (and an initialised process group) the K bin counts
(N is their sum) are all-reduced so that every rank uses the histogram of the global batch; the weights
then no longer depend on how the batch is split across ranks, at the cost of one all-reduce of K integers
per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "LOSSES",
    "DiceFocal",
    "GeneralizedDiceFocal",
    "L1DiceFocal",
    "OrganSupervised",
    "SoftmaxDice",
    "build_loss",
]

LOSSES = ("dl", "dfl", "gdfl", "l1dfl")

FOCAL_REDUCTIONS = ("element", "voxel")


def _real(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A validated real option; ValueError (not TypeError) so callers see one error type for bad options."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"option {name!r} must be a finite number, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"option {name!r} must be {relation} {minimum:g}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be True or False, got {value!r}")
    return value


def _focal_reduction(value: Any) -> str:
    if value not in FOCAL_REDUCTIONS:
        raise ValueError(f"option 'focal_reduction' must be one of {FOCAL_REDUCTIONS}, got {value!r}")
    return value


class _Float32Loss(nn.Module):
    """Shared input checks and the float32, autocast-free evaluation every loss here needs."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = _check_inputs(logits, labels)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits.float(), labels)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reject shapes and label values that MONAI would either crash on obscurely or accept silently."""
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C>=2, *spatial), got {tuple(logits.shape)}")
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have shape {expected} for logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    low, high = torch.aminmax(labels)
    if low < 0 or high > logits.shape[1] - 1:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}], got values in [{low}, {high}]")
    return labels


class SoftmaxDice(_Float32Loss):
    """``dl``: 1 - mean over (b, c) of (2 sum p t + s) / (sum p + sum t + s), background included.

    MONAI's DiceLoss computes exactly this with these arguments. The default keeps one Dice per
    (sample, class) as the definition asks. Its blind spot: the lesion Dice of a lesion-free patch is
    s / (sum p + s), about 0 whatever is predicted, so false positives there get next to no gradient.
    ``batch=True`` pools the sums over the batch (nnU-Net's batch Dice): a false positive in a lesion-free
    patch then lowers the batch's lesion Dice like any other.
    """

    def __init__(self, smooth: float = 1e-5, batch: bool = False) -> None:
        # MONAI is imported where used: it takes seconds to import and l1dfl does not need it.
        from monai.losses import DiceLoss

        super().__init__()
        self.smooth = _real("smooth", smooth, strict=True)
        self.batch = bool(batch)
        self.dice = DiceLoss(
            include_background=True,
            to_onehot_y=True,
            softmax=True,
            batch=self.batch,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, labels)


class DiceFocal(_Float32Loss):
    """``dfl``: the ``dl`` Dice plus the *softmax* focal loss (gamma, no alpha).

    MONAI's DiceFocalLoss would add the sigmoid focal term instead; FocalLoss(use_softmax=True) averages over
    B x C x voxels, which is the default ``focal_reduction="element"`` (see the module docstring).
    """

    def __init__(
        self, smooth: float = 1e-5, gamma: float = 2.0, focal_reduction: str = "element", batch: bool = False
    ) -> None:
        from monai.losses import FocalLoss

        super().__init__()
        self.dice = SoftmaxDice(smooth=smooth, batch=batch)
        self.gamma = _real("gamma", gamma)
        self.focal_reduction = _focal_reduction(focal_reduction)
        self.focal = FocalLoss(include_background=True, to_onehot_y=True, gamma=self.gamma, use_softmax=True)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        focal = self.focal(logits, labels)
        if self.focal_reduction == "voxel":
            focal = focal * logits.shape[1]
        return self.dice._loss(logits, labels) + focal


class GeneralizedDiceFocal(_Float32Loss):
    """``gdfl``: the autoPET III entry's loss, exactly as it was trained (sigmoid focal term included).

    In MONAI 1.6.1 the focal class weights are the keyword ``weight`` (there is no ``focal_weight``), passed
    to its FocalLoss: ``weight=[1, 100]`` weights the lesion channel's focal term 100x, as the entry trained.
    include_background stays True: with False the generalized Dice of a lesion-free sample is 0 with zero
    gradient.
    """

    def __init__(self) -> None:
        from monai.losses import GeneralizedDiceFocalLoss

        super().__init__()
        self.gdfl = GeneralizedDiceFocalLoss(
            to_onehot_y=True, softmax=True, weight=[1.0, 100.0], lambda_gdl=1, lambda_focal=1
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 2:
            raise ValueError(f"gdfl has class weights for 2 classes, got {logits.shape[1]} channels")
        return self.gdfl(logits, labels)


class L1DiceFocal(_Float32Loss):
    """``l1dfl``: L1-weighted Dice (squared denominator) plus softmax focal loss (technical reference, s. 3).

    Each element's difficulty g = |p - t| is histogrammed over the whole batch (every channel pooled) into
    K = 1/eps + 1 bins centred at 0, eps, ..., 1; an element's weight is N x width / count of its bin, so
    crowded difficulty levels (the easy background) are down-weighted and rare ones up-weighted. The weights
    are constants for autograd, as in gradient harmonisation: they re-balance the Dice gradient, they are
    not something to optimise. Since all weights take one of K values, they are computed as a K-vector and
    indexed, and the optional median normalisation (lower median, as torch.median) and clamp of the later
    reference versions work on that K-vector instead of on N values. The gradient is written out in closed
    form (see _L1DiceFocalFunction): on a 2 x 2 x 128^3 batch this makes l1dfl cheaper than MONAI's
    DiceFocalLoss (bench/README.md).

    The reference check of the technical reference (eps 0.05 -> 0.438660, eps 0.1 -> 0.450976) used
    smooth=1e-8; the default 1e-5 matches the other losses and moves those values by less than 3e-6.
    """

    def __init__(
        self,
        eps: float = 0.1,
        gamma: float = 2.0,
        smooth: float = 1e-5,
        normalise_median: bool = False,
        clamp: tuple[float, float] | None = None,
        distributed: bool = False,
        focal_reduction: str = "element",
    ) -> None:
        super().__init__()
        self.eps = _real("eps", eps, strict=True)
        intervals = 1.0 / self.eps
        if self.eps > 1 or abs(intervals - round(intervals)) > 1e-6:
            raise ValueError(
                f"option 'eps' must be 1/n for an integer n >= 1 (bins centred on 0..1), got {eps!r}"
            )
        self.bins = round(intervals) + 1
        self.gamma = _real("gamma", gamma)
        self.smooth = _real("smooth", smooth, strict=True)
        self.normalise_median = _flag("normalise_median", normalise_median)
        self.distributed = _flag("distributed", distributed)
        self.focal_reduction = _focal_reduction(focal_reduction)
        if clamp is not None:
            if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
                raise ValueError(f"option 'clamp' must be None or a pair (low, high), got {clamp!r}")
            low, high = _real("clamp[0]", clamp[0]), _real("clamp[1]", clamp[1])
            if low > high:
                raise ValueError(f"option 'clamp' needs low <= high, got {clamp!r}")
            clamp = (low, high)
        self.clamp = clamp
        centres = torch.arange(self.bins, dtype=torch.float64) * self.eps
        # Bin k covers [c_k - eps/2, c_k + eps/2) clipped to [0, 1]; g == 1 lands in the last bin.
        widths = (centres + self.eps / 2).clamp(max=1.0) - (centres - self.eps / 2).clamp(min=0.0)
        self.register_buffer("edges", (centres[:-1] + self.eps / 2).float(), persistent=False)
        self.register_buffer("widths", widths, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, gamma={self.gamma}, smooth={self.smooth}, "
            f"normalise_median={self.normalise_median}, clamp={self.clamp}, "
            f"distributed={self.distributed}, focal_reduction={self.focal_reduction!r}"
        )

    @torch.no_grad()
    def bin_weights(self, difficulty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin index of every difficulty value and the weight of every bin (float32 K-vector)."""
        index = torch.bucketize(difficulty, self.edges.to(difficulty.device), out_int32=True, right=True)
        counts = torch.bincount(index.reshape(-1), minlength=self.bins)
        if self.distributed and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        counts = counts.to(torch.float64)
        table = counts.sum() * self.widths.to(counts.device) / counts.clamp(min=1)
        if self.normalise_median:
            table = table / _histogram_median(table, counts)
        if self.clamp is not None:
            table = table.clamp(*self.clamp)
        return index, table.float()

    def _evaluate(self, logits: torch.Tensor, index: torch.Tensor) -> _Evaluation:
        """Every forward quantity, for logits (B, C, V) and class indices (B, 1, V); no autograd here."""
        batch, classes, voxels = logits.shape
        log_probs = torch.log_softmax(logits, dim=1)
        log_pt = log_probs.gather(1, index)
        probs = log_probs.exp_()  # reuses the log-softmax buffer: one full-size tensor for both
        pt = log_pt.exp()
        one_minus = -torch.expm1(log_pt)  # 1 - p_t, accurate near p_t = 1
        # |p - t| is p off the target and 1 - p_t on it. With two classes that is 1 - p_t in both channels:
        # one channel's histogram has every count and N halved, which leaves beta = N x width / count
        # unchanged, and one weight per voxel serves both channels.
        difficulty = one_minus if classes == 2 else probs.scatter(1, index, one_minus)
        bins, table = self.bin_weights(difficulty)
        weights = table[bins]
        target_weights = weights if classes == 2 else weights.gather(1, index)
        # Per-class sums over masks rather than scatter_add or weighted bincount, which accumulate float32
        # serially and lose digits over millions of voxels.
        masks = [index == label for label in range(classes)]
        weighted_pt = target_weights * pt
        intersection = torch.stack([weighted_pt.where(m, 0.0).sum((1, 2)) for m in masks], dim=1)
        label_weight = torch.stack([target_weights.where(m, 0.0).sum((1, 2)) for m in masks], dim=1)
        squares = (weights * probs).mul_(probs).sum(-1)
        denominator = squares + label_weight + self.smooth  # t^2 = t for one-hot targets
        dice = (2 * intersection + self.smooth) / denominator

        elements = batch * voxels * (classes if self.focal_reduction == "element" else 1)
        gamma = self.gamma
        if gamma == 0:
            modulator = torch.ones_like(log_pt)
            slope = -modulator
        elif gamma == 2:
            modulator = one_minus.square()
            slope = 2 * one_minus * pt * log_pt - modulator
        else:
            # pow' is infinite at 0 for gamma < 1 (0 * inf = nan); the clamp only touches p_t == 1.
            base = one_minus.clamp_min(1e-12)
            modulator = base.pow(gamma)
            slope = gamma * base.pow(gamma - 1) * pt * log_pt - modulator
        focal = -(modulator * log_pt).sum() / elements
        # slope = d(-(1 - p_t)^gamma log p_t) / d log p_t, already divided by the element count.
        return _Evaluation(probs, weights, weighted_pt, dice, denominator, focal, slope.div_(elements))

    def _prepare(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, classes = logits.shape[:2]
        return logits.reshape(batch, classes, -1), labels.reshape(batch, 1, -1).long()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _L1DiceFocalFunction.apply(*self._prepare(logits, labels), self)

    @torch.no_grad()
    def terms(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted Dice per (b, c) and the focal term: for logging, and to check against references."""
        labels = _check_inputs(logits, labels)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            evaluation = self._evaluate(*self._prepare(logits.float(), labels))
        return evaluation.dice, evaluation.focal

    @torch.no_grad()
    def weights(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-element weights beta, shaped like the logits: for the paper's sample-weighting analysis."""
        labels = _check_inputs(logits, labels)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            prepared = self._prepare(logits.float(), labels)
            weights = self._evaluate(*prepared).weights
        return weights.expand(prepared[0].shape).reshape(logits.shape)


class _Evaluation(NamedTuple):
    probs: torch.Tensor  # (B, C, V)
    weights: torch.Tensor  # beta: (B, 1, V) for two classes (shared by both channels), else (B, C, V)
    weighted_pt: torch.Tensor  # beta_t p_t: weight and probability of each voxel's own class, (B, 1, V)
    dice: torch.Tensor  # (B, C)
    denominator: torch.Tensor  # sum beta (p^2 + t^2) + s, (B, C)
    focal: torch.Tensor  # scalar
    focal_slope: torch.Tensor  # (B, 1, V)


class _L1DiceFocalFunction(torch.autograd.Function):
    """L1DFL with its gradient in closed form.

    Autograd through the same expression saves many full-size intermediates and allocates as many again in
    backward; the closed form saves the probabilities and allocates one gradient tensor. With
    D = (2I + s) / S per (b, c), S including s, and beta constant:
    dL/dp_j = H_j - t_j beta a with H_j = beta p_j r, r = (2 / BC) D / S and a = (2 / BC) / S; the softmax
    Jacobian maps that to p_j (dL/dp_j - sum_k p_k dL/dp_k), and the focal term adds slope x (t_j - p_j).
    Collected: dL/dx_j = p_j (H_j - sum_k p_k H_k + q - slope) + t_j (slope - q), q = a beta_t p_t.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, index: torch.Tensor, loss: L1DiceFocal) -> torch.Tensor:
        evaluation = loss._evaluate(logits, index)
        scale = 2.0 / evaluation.dice.numel()
        ctx.save_for_backward(
            evaluation.probs,
            evaluation.weights,
            evaluation.weighted_pt,
            index,
            scale * evaluation.dice / evaluation.denominator,
            scale / evaluation.denominator,
            evaluation.focal_slope,
        )
        return 1 - evaluation.dice.mean() + evaluation.focal

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        probs, weights, weighted_pt, index, r, a, slope = ctx.saved_tensors
        r, a, slope = r * grad, a * grad, slope * grad  # scale the small factors, not the full-size result
        gradient = probs * r.unsqueeze(-1)
        gradient.mul_(weights)
        inner = probs[:, :1] * gradient[:, :1]
        for channel in range(1, probs.shape[1]):
            inner.addcmul_(probs[:, channel : channel + 1], gradient[:, channel : channel + 1])
        q = a.gather(1, index.flatten(1)).unsqueeze(1).mul_(weighted_pt)
        gradient.sub_(inner.sub_(q).add_(slope)).mul_(probs)
        gradient.scatter_add_(1, index, slope.sub_(q))
        return gradient, None, None


def _histogram_median(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Lower median (as torch.median) of the N weights, from the K bin values and their counts."""
    present = counts > 0
    values, counts = values[present], counts[present]
    order = torch.argsort(values)
    cumulative = torch.cumsum(counts[order], 0)
    middle = torch.div(cumulative[-1] - 1, 2, rounding_mode="floor")
    return values[order][torch.searchsorted(cumulative, middle.reshape(1), right=True)]


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "dl": SoftmaxDice,
    "dfl": DiceFocal,
    "gdfl": GeneralizedDiceFocal,
    "l1dfl": L1DiceFocal,
}

_OPTIONS: dict[str, tuple[str, ...]] = {
    "dl": ("smooth", "batch"),
    "dfl": ("smooth", "gamma", "focal_reduction", "batch"),
    "gdfl": (),
    "l1dfl": ("eps", "gamma", "smooth", "normalise_median", "clamp", "distributed", "focal_reduction"),
}


def build_loss(name: str, **options: Any) -> nn.Module:
    """The loss called ``name`` (one of LOSSES); options are checked here so a typo fails before training."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        accepted = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for loss {name!r}; accepted: {accepted}")
    return _BUILDERS[name](**options)


class OrganSupervised(nn.Module):
    """A lesion loss on the network's first two outputs plus `weight` times the organ head's loss.

    The targets are (B, 2, ...): the lesion label, then the organ label map. The organ term is MONAI's Dice +
    cross-entropy over the organ classes (softmax over the organ outputs, background included), in float32:
    the organ classes are many and unbalanced, as the lesion classes are, and the cross-entropy keeps small
    organs (glands, prostate) from being ignored while the Dice keeps the large ones from dominating.
    """

    def __init__(self, lesion: nn.Module, weight: float) -> None:
        from monai.losses import DiceCELoss

        super().__init__()
        self.lesion = lesion
        self.weight = _real("organ_weight", weight)
        self.organs = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.shape[1] != 2:
            raise ValueError(f"expected lesion and organ targets (2 channels), got {targets.shape[1]}")
        lesion = self.lesion(logits[:, :2], targets[:, :1])
        if self.weight == 0:
            return lesion
        return lesion + self.weight * self.organs(logits[:, 2:].float(), targets[:, 1:2].float())
