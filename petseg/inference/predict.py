"""One sliding-window pass that runs every fold on each window.

The seed ran five separate sliding-window passes; here the predictor handed to MONAI's
`sliding_window_inference` is the whole ensemble, so each window is read, padded and stitched once and
the folds are averaged before stitching. Stitching buffers live on the compute device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from petseg.errors import ModelError
from petseg.inference.compute_choices import PRECISIONS, parse_device
from petseg.model.card import EnsembleSettings, ModelCard, load_card
from petseg.model.networks import fuse_batch_norms, load_fold
from petseg.model.tracer_choice import choose_tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputeDevice:
    """Where the networks run, which autocast precision they use (None: full fp32), and whether the
    windows go through them channels-last (oneDNN's fast 3D-convolution layout on the CPU)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool = False

    def describe(self) -> str:
        precision = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"{name} ({self.device}, autocast {precision})"
        return f"CPU ({precision}{', channels-last' if self.channels_last else ''})"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays.

    Elsewhere oneDNN emulates bf16 and autocast would be slower than fp32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(
        bool(getattr(torch.cpu, check, lambda: False)()) for check in checks
    )


def select_device(
    preference: str = "auto", cuda_index: int | None = None, precision: str = "auto"
) -> ComputeDevice:
    """CUDA when available, else CPU; with precision "auto", the reduced precision that pays there.

    CUDA: fp16 autocast below compute capability 8, bf16 from 8 on (bf16 is emulated, and slow, on
    pre-Ampere cards such as the T4 that Grand Challenge uses). CPU: channels-last windows, in bf16
    autocast where the CPU has native bf16. Precision "fp32" means plain fp32 everywhere, in the
    default memory layout: what another fp32 pipeline computes, up to the float rounding of the folded
    batch norms (`Predictor`).
    `cuda_index` picks the GPU (a DDP rank's own), as does a preference "cuda:N"; by default the current one.
    """
    preference, named_index = parse_device(preference)  # ValueError for an unknown name
    if named_index is not None:
        cuda_index = named_index
        if not torch.cuda.is_available():
            raise ModelError(f"--device cuda:{named_index} was requested but no CUDA device is available")
        if named_index >= torch.cuda.device_count():
            raise ModelError(
                f"--device cuda:{named_index}: no such GPU (this machine has {torch.cuda.device_count()})"
            )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    reduced = precision == "auto"
    if preference != "cpu" and torch.cuda.is_available():
        index = torch.cuda.current_device() if cuda_index is None else cuda_index
        device = torch.device("cuda", index)
        torch.backends.cudnn.benchmark = True  # fixed window shapes: the fastest kernels are found once
        major, _ = torch.cuda.get_device_capability(device)
        amp_dtype = torch.bfloat16 if major >= 8 else torch.float16
        return ComputeDevice(device, amp_dtype if reduced else None)
    if preference == "cuda":
        raise ModelError("--device cuda was requested but no CUDA device is available")
    if preference == "auto":  # asked for the CPU, nothing to warn about
        log.warning("no CUDA GPU available: running on the CPU, which is much slower")
    if not reduced:
        return ComputeDevice(torch.device("cpu"), None)
    return ComputeDevice(
        torch.device("cpu"), torch.bfloat16 if cpu_has_native_bf16() else None, channels_last=True
    )


def training_device(preference: str = "auto", cuda_index: int | None = None) -> ComputeDevice:
    """The device for training: AMP on CUDA, as the autoPET III entry trained; fp32 on the CPU, where training
    is for demos and tests and an exact resume matters more than speed."""
    compute = select_device(preference, cuda_index)
    if compute.device.type == "cpu":
        return ComputeDevice(compute.device, None)
    return compute


LESION_CHANNELS = 2  # [background, lesion]: the first outputs of every network (petseg.model.networks)


class FoldEnsemble(torch.nn.Module):
    """All folds on one window batch, combined into one lesion score per voxel.

    average="probabilities": the mean of the folds' softmax lesion probabilities (over the two lesion
    channels: the outputs of an organ head, which follow them, are not read).
    average="logits": the mean of the folds' logit differences (lesion - background); its sigmoid,
    thresholded at 0.5, is the argmax of the mean logits, which is what the autoPET III entry computed.
    """

    def __init__(self, networks: Sequence[torch.nn.Module], average: str = "probabilities") -> None:
        super().__init__()
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        if average not in ("probabilities", "logits"):
            raise ValueError(f"average must be 'probabilities' or 'logits', got {average!r}")
        self.networks = torch.nn.ModuleList(networks)
        self.average = average
        self.channels_last = False
        self.runners: list[torch.nn.Module] = list(networks)

    def use_channels_last(self) -> FoldEnsemble:
        """Weights and windows channels-last: oneDNN's fastest 3D convolutions on the CPU."""
        self.to(memory_format=torch.channels_last_3d)
        self.channels_last = True
        return self

    def use_compiled(self) -> FoldEnsemble:
        """Run each fold through `torch.compile` (compiled on the first window; see `compile_cache`)."""
        self.runners = [torch.compile(network) for network in self.networks]
        return self

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        total: torch.Tensor | None = None
        for network in self.runners:
            logits = network(window)[:, :LESION_CHANNELS].float()
            if self.average == "probabilities":
                score = torch.softmax(logits, dim=1)[:, 1:2]
            else:
                score = logits[:, 1:2] - logits[:, 0:1]
            total = score if total is None else total + score
        assert total is not None
        return total / len(self.networks)

    def to_probability(self, stitched: torch.Tensor) -> torch.Tensor:
        """Stitched ensemble scores -> lesion probability."""
        return torch.sigmoid(stitched) if self.average == "logits" else stitched


class Predictor:
    """A loaded ensemble on a compute device, ready to segment network-grid volumes.

    Stateless between cases: a card with one ensemble per tracer loads them all, and each call names the
    tracer whose ensemble runs (`choose_tracer` gives it from the image, or from the user's word).
    """

    def __init__(
        self,
        card: ModelCard,
        ensemble: FoldEnsemble | Mapping[str, FoldEnsemble],
        compute: ComputeDevice,
        compile: bool = False,
    ) -> None:
        self.card = card
        ensembles = dict(ensemble) if isinstance(ensemble, Mapping) else {"": ensemble}
        for member in ensembles.values():
            member.to(compute.device).eval()
            for network in member.networks:
                fuse_batch_norms(network)  # inference only: a Predictor's networks are never trained
            if compute.channels_last:
                member.use_channels_last()
            if compile:
                member.use_compiled()
        self.ensembles = ensembles
        self.compute = compute
        self.compiled = compile

    @property
    def ensemble(self) -> FoldEnsemble:
        """The ensemble of a card with one for every case (the first one of a card split by tracer)."""
        return next(iter(self.ensembles.values()))

    def ensemble_for(self, tracer: str | None) -> FoldEnsemble:
        """The ensemble trained on `tracer`'s cases; where only one is loaded (a card not split by tracer,
        or one fold given alone), that one."""
        if len(self.ensembles) == 1 and (tracer is None or tracer not in self.ensembles):
            return self.ensemble
        if tracer not in self.ensembles:
            raise ModelError(
                f"the model has no ensemble for tracer {tracer!r} (it has: {', '.join(self.ensembles)})"
            )
        return self.ensembles[tracer]

    def choose_tracer(self, image: np.ndarray, given: str | None = None) -> str | None:
        """The tracer whose ensemble should segment a network-grid image: `given` (a user's `--tracer`),
        else the card's classifier's answer; None for cards not split by tracer. Logs how it was chosen."""
        choice = choose_tracer(self.card, image, given)
        if choice.how == "single":
            if given is not None:
                log.info("tracer %s given: the model is one ensemble for every tracer", given)
            return None
        if choice.how == "given":
            self.ensemble_for(choice.tracer)  # refuses a tracer the card has no ensemble for
            log.info("tracer %s (given)", choice.tracer)
            return choice.tracer
        log.info(
            "tracer %s (classified from the uptake histogram, probability %.3f)",
            choice.tracer,
            choice.probability,
        )
        if choice.probability < 0.9:
            log.warning(
                "the tracer is uncertain (%s at probability %.2f): give --tracer if you know it",
                choice.tracer,
                choice.probability,
            )
        return choice.tracer

    @classmethod
    def load(
        cls, model_dir: Path, device: str = "auto", precision: str = "auto", compile: bool = False
    ) -> Predictor:
        """Read the card, then every fold's weights (all validated before anything runs)."""
        card = load_card(model_dir)
        networks = [load_fold(card, model_dir, fold.weights, fold.sha256) for fold in card.folds]
        compute = select_device(device, precision=precision)
        if not card.tracers:
            return cls(card, FoldEnsemble(networks, card.ensemble.average), compute, compile)
        ensembles = {
            tracer: FoldEnsemble(
                [n for n, fold in zip(networks, card.folds, strict=True) if fold.tracer == tracer],
                card.ensemble.average,
            )
            for tracer in card.tracers
        }
        return cls(card, ensembles, compute, compile)

    def __call__(self, image: np.ndarray, tracer: str | None = None, progress: bool = False) -> np.ndarray:
        """Lesion probability (X, Y, Z) float32 for a network-grid image (2, X, Y, Z), from the ensemble of
        `tracer` (see `choose_tracer`; ignored for a card with one ensemble for every case)."""
        ensemble = self.ensemble_for(tracer)
        return sliding_window_probability(image, ensemble, self.card.ensemble, self.compute, progress)


def sliding_window_probability(
    image: np.ndarray,
    ensemble: FoldEnsemble,
    settings: EnsembleSettings,
    compute: ComputeDevice,
    progress: bool = False,
) -> np.ndarray:
    """The card's sliding-window pass over one network-grid volume: lesion probability (X, Y, Z).

    Inference and training validation both call this, so a validation score measures what the shipped
    ensemble will do. On a GPU out-of-memory error the pass is retried with one window at a time, then
    with the stitching buffers in host memory (the windows still run on the GPU): slower, same mask.
    """
    attempts = [(settings.sw_batch_size, compute.device)]
    if settings.sw_batch_size > 1:
        attempts.append((1, compute.device))
    if compute.device.type != "cpu":
        attempts.append((1, torch.device("cpu")))
    for number, (sw_batch_size, stitch_device) in enumerate(attempts, start=1):
        try:
            return _sliding_window_pass(
                image, ensemble, settings, compute, sw_batch_size, stitch_device, progress
            )
        except torch.OutOfMemoryError:
            if number == len(attempts):
                raise MemoryError(
                    "out of memory in the sliding-window pass, even stitching on the host"
                ) from None
            following = attempts[number]
            log.warning(
                "out of GPU memory with %d window(s) per batch, stitching on %s: retrying with %d, on %s",
                sw_batch_size,
                stitch_device,
                following[0],
                following[1],
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise AssertionError("unreachable")  # the loop returns or raises


def _sliding_window_pass(
    image: np.ndarray,
    ensemble: FoldEnsemble,
    settings: EnsembleSettings,
    compute: ComputeDevice,
    sw_batch_size: int,
    stitch_device: torch.device,
    progress: bool,
) -> np.ndarray:
    device = compute.device
    inputs = torch.from_numpy(image)[None].to(device)
    autocast = torch.autocast(
        device_type=device.type,
        dtype=compute.amp_dtype or torch.float32,
        enabled=compute.amp_dtype is not None,
    )
    with torch.inference_mode(), autocast:
        stitched = sliding_window_inference(
            inputs,
            roi_size=settings.roi_size,
            sw_batch_size=sw_batch_size,
            predictor=ensemble,
            overlap=settings.overlap,
            mode=settings.blend_mode,
            sw_device=device,
            device=stitch_device,
            progress=progress,
        )
    del inputs
    return ensemble.to_probability(stitched[0, 0].float()).cpu().numpy()
