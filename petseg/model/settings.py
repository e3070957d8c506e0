"""The settings a model card holds, as plain frozen dataclasses: the leaf of the model package.

Preprocessing, the sliding window and the back-map read these, and the card parser builds them; nothing
here imports anything of petseg's but its errors, so every stage can depend on the settings without
depending on the card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from petseg.errors import ModelError

CARD_NAME = "model.json"  # the model card, at the top of a model folder

CHANNELS = ("ct", "pet")
AVERAGING = ("probabilities", "logits")
BLEND_MODES = ("gaussian", "constant")
BACK_INTERPOLATIONS = ("nearest", "linear")


@dataclass(frozen=True)
class Architecture:
    """Network preset name plus keyword overrides passed to its constructor.

    `organ_classes` > 0: the network has an organ head, that many output channels after the two lesion
    channels (organ labels 0 = background, 1 ... organ_classes - 1), trained beside the lesions so that it
    tells physiological uptake from disease; inference reads the lesion channels only.
    """

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    organ_classes: int = 0


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that turns a PET/CT pair into the network's input grid.

    Training and inference both read these from the card, so a model is always fed what it learned on.
    """

    channels: tuple[str, ...] = CHANNELS
    orientation: str = "RAS"
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    ct_window_hu: tuple[float, float] = (-1024.0, 1024.0)
    ct_fill_hu: float = -1024.0
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 10.0

    def scaled_ct(self, hu: float) -> float:
        """A CT value in HU as the network's CT channel holds it (`ct_window_hu` mapped onto [0, 1])."""
        low, high = self.ct_window_hu
        return (hu - low) / (high - low)

    def ct_hu(self, scaled: float) -> float:
        """The inverse of `scaled_ct`: a CT-channel value in HU."""
        low, high = self.ct_window_hu
        return low + scaled * (high - low)


@dataclass(frozen=True)
class Fold:
    fold: int
    weights: str
    sha256: str | None = None
    tracer: str | None = None  # the tracer whose cases trained it; None: every case

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.tracer is None:
            del data["tracer"]
        return data


@dataclass(frozen=True)
class EnsembleSettings:
    """The sliding-window pass, how fold outputs are combined, and how they return to the PET grid.

    `back_interpolation` "nearest" is the exact inverse of the nearest-neighbour label sampling used in
    training whenever the network grid is at least as fine as the PET grid (true for every autoPET grid);
    "linear" shaves the corners of sharp (Dice-trained, near-binary) probability maps.
    """

    roi_size: tuple[int, int, int] = (192, 192, 192)
    overlap: float = 0.5
    blend_mode: str = "gaussian"
    sw_batch_size: int = 1
    average: str = "probabilities"
    threshold: float = 0.5
    back_interpolation: str = "nearest"
    # Optional: each predicted lesion grown to its contour at this fraction of its SUVmax, within
    # `grow_within_mm` of the prediction (`petseg.inference.postprocess.grow_to_uptake_contour`); None: off.
    grow_to_suvmax_fraction: float | None = None
    grow_within_mm: float = 6.0
    # Optional: predicted voxels below this SUV are removed, the last step of postprocessing; one floor per
    # tracer ("fdg", "psma") or one for every case ("all"). Physiological background is rarely above SUV
    # 1.5 (FDG) or 1.0 (PSMA), lesions almost always are. None: off.
    suv_floor: dict[str, float] | None = None
    # The mirrored passes `--tta auto` may add, as sets of network-grid axes (0 left-right, 1
    # anterior-posterior, 2 superior-inferior), most useful first. A network trained without a mirror
    # is hurt by it at test time, so `training export` lists only the mirrors its folds trained with
    # (none, or left-right). None (a card without the field): all seven, as for nnU-Net-style training.
    mirror_axes: tuple[tuple[int, ...], ...] | None = None


def check_relative_path(name: str, what: str) -> None:
    """Card paths stay inside the model folder: no absolute paths, no `..`."""
    path = Path(name)
    if "\x00" in name or path.is_absolute() or ".." in path.parts or not name.strip():
        raise ModelError(f"{what} must be a file name inside the model folder, got {name!r}")
