"""Which predicted lesions to keep: a learned check of each connected component of the thresholded
probability (false-positive reduction).

A network that sees one patch at a time cannot tell a salivary gland from a cervical node by the patch
alone, and marks both. The whole scan can: glands sit high in the body and come in mirrored pairs; edge
slices with PET but no CT are not lesions. So each component gets a few numbers (where it sits in the body
box, its size and uptake, the network's confidence, its CT density, the uptake at its mirror image across
the body's midline, its contrast to its rim) and a logistic regression per tracer gives the chance that it
is a lesion. It is fitted on the training cases' out-of-fold predictions (`training.components`), so it
learns the mistakes the networks make on cases they did not train on, and it runs on the network grid
that training and inference share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from petseg.model.logistic import LogisticWeights
from petseg.model.settings import PreprocessSettings

if TYPE_CHECKING:  # numpy is imported where the arrays are computed, so reading a card does not need it
    import numpy as np

log = logging.getLogger(__name__)

FEATURES = (
    "height",  # centroid along the body box, 0 inferior end, 1 superior end
    "lateral",  # distance of the centroid from the body's midline, in half body widths
    "depth",  # centroid along the box, 0 posterior, 1 anterior
    "log_volume_ml",
    "log_suvmax",
    "suv_mean_over_max",
    "probability_max",
    "probability_mean",
    "ct_hu_mean_per_1000",
    "mirror_uptake",  # SUVmax at the component's mirror image across the midline over its own SUVmax
    "end_distance_per_100mm",  # from the nearer superior or inferior end of the volume, capped at 100 mm
    "log_contrast",  # SUVmax over the median SUV of a two-voxel rim
)
ALL_TRACERS = "all"  # the model's key in a card whose folds are not split by tracer
_RIM_VOXELS = 2
_END_CAP_MM = 100.0


@dataclass(frozen=True)
class ComponentModel:
    """One tracer's logistic weights, with how many components (and lesions among them) it learned from."""

    weights: LogisticWeights
    components: int = 0
    lesions: int = 0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self.weights), "components": self.components, "lesions": self.lesions}


@dataclass(frozen=True)
class ComponentFilter:
    """Components of the probability above the card's threshold whose lesion probability falls below
    `minimum_probability` are removed; `models` has one entry per tracer ("all" for unsplit cards)."""

    minimum_probability: float
    models: dict[str, ComponentModel] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        data = {
            "features": list(FEATURES),
            "minimum_probability": self.minimum_probability,
            "models": {key: model.to_json() for key, model in self.models.items()},
        }
        return json.loads(json.dumps(data))

    def apply(
        self,
        probability: np.ndarray,
        image: np.ndarray,
        settings: PreprocessSettings,
        threshold: float,
        tracer: str | None,
    ) -> tuple[np.ndarray, int, int]:
        """(probability with removed components set to 0, components kept, components removed).

        `probability` (X, Y, Z) and `image` (2, X, Y, Z) on the network grid; `tracer` None for unsplit
        cards. The input array is not changed.
        """
        import numpy as np

        model = self.models[tracer or ALL_TRACERS]
        labels, features = component_features(probability, image, settings, threshold)
        if len(features) == 0:
            return probability, 0, 0
        removed = np.flatnonzero(model.weights.probability(features) < self.minimum_probability) + 1
        if removed.size == 0:
            return probability, len(features), 0
        filtered = probability.copy()
        filtered[np.isin(labels, removed)] = 0.0
        return filtered, len(features) - removed.size, int(removed.size)


def component_features(
    probability: np.ndarray, image: np.ndarray, settings: PreprocessSettings, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(component labels (X, Y, Z), features (components, len(FEATURES))) of `probability > threshold`.

    Network-grid arrays in RAS: axis 0 runs left-right, 1 posterior-anterior, 2 inferior-superior.
    Component k (label k) has feature row k - 1.
    """
    import cc3d
    import numpy as np

    labels, count = cc3d.connected_components(probability > threshold, return_N=True, connectivity=26)
    rows = np.zeros((count, len(FEATURES)), dtype=np.float64)
    if count == 0:
        return labels, rows
    ct, pet = image[0], image[1]
    body = ct > settings.scaled_ct(settings.body_threshold_hu)
    shape = np.asarray(probability.shape)
    if body.any():
        extent = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        start = np.array([e[0] for e in extent], dtype=np.float64)
        stop = np.array([e[-1] for e in extent], dtype=np.float64)
    else:
        start, stop = np.zeros(3), shape - 1.0
    size = np.maximum(stop - start, 1.0)
    midline = (start[0] + stop[0]) / 2
    spacing = np.asarray(settings.spacing_mm, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    boxes = cc3d.statistics(labels)["bounding_boxes"]
    for k in range(1, count + 1):
        box = tuple(
            slice(max(0, b.start - _RIM_VOXELS), min(n, b.stop + _RIM_VOXELS))
            for b, n in zip(boxes[k], probability.shape, strict=True)
        )
        inside = labels[box] == k
        where = np.argwhere(inside) + np.array([b.start for b in box])
        centre = where.mean(axis=0)
        suv = pet[box][inside]
        suvmax = float(suv.max())
        mirrored_x = np.clip(np.rint(2 * midline - where[:, 0]).astype(int), 0, shape[0] - 1)
        mirror = float(pet[mirrored_x, where[:, 1], where[:, 2]].max())
        rim = _rim(inside)
        background = float(np.median(pet[box][rim])) if rim.any() else 0.0
        hu = settings.ct_hu(float(ct[box][inside].mean()))
        end_mm = min(centre[2], shape[2] - 1 - centre[2]) * spacing[2]
        prob = probability[box][inside]
        rows[k - 1] = (
            (centre[2] - start[2]) / size[2],
            abs(centre[0] - midline) / (size[0] / 2),
            (centre[1] - start[1]) / size[1],
            np.log10(inside.sum() * voxel_ml),
            np.log10(max(suvmax, 0.0) + 0.1),
            float(suv.mean()) / suvmax if suvmax > 0 else 1.0,
            float(prob.max()),
            float(prob.mean()),
            hu / 1000.0,
            mirror / suvmax if suvmax > 0 else 1.0,
            min(end_mm, _END_CAP_MM) / _END_CAP_MM,
            np.log10((max(suvmax, 0.0) + 0.1) / (max(background, 0.0) + 0.1)),
        )
    return labels, rows


def _rim(inside: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(inside, iterations=_RIM_VOXELS) & ~inside


def check_minimum_probability(value: float) -> None:
    """A filter removes the components below this chance of being a lesion: 1 or more would remove all."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"the component filter's minimum probability must be in [0, 1), got {value}")


def fit_component_filter(
    features: dict[str, np.ndarray],
    is_lesion: dict[str, np.ndarray],
    minimum_probability: float,
    l2: float = 1.0,
) -> ComponentFilter:
    """One logistic model per key (tracer, or "all") from the components' features and whether each
    overlaps a labelled lesion.

    Lesions and false positives weigh equally in total (the training cases' share of lesion-free scans
    would otherwise set the prior), and each component weighs with the square root of its volume: a
    wrongly removed lesion of 100 voxels costs the Dice far more than a kept false positive of 5
    (the weighted and unweighted fits are compared in docs/experiments/demo-recipe-tiny.md).
    """
    import numpy as np

    from petseg.model.logistic import fit_logistic

    check_minimum_probability(minimum_probability)
    models = {}
    for key, x in features.items():
        y = np.asarray(is_lesion[key], dtype=np.float64)
        if len(set(y.tolist())) < 2:
            found = f"{y.size}, all {'lesion' if y[0] else 'false-positive'}" if y.size else "none"
            raise ValueError(
                f"the component filter for {key} needs both lesions and false positives among the "
                f"predicted components; the out-of-fold predictions gave {found}"
            )
        lesion_share = float(y.mean())
        balance = np.where(y > 0, 0.5 / lesion_share, 0.5 / (1.0 - lesion_share))
        weight = balance * np.sqrt(10.0 ** x[:, FEATURES.index("log_volume_ml")])
        models[key] = ComponentModel(
            fit_logistic(x, y, l2, sample_weight=weight), components=int(y.size), lesions=int(y.sum())
        )
    return ComponentFilter(minimum_probability=minimum_probability, models=models)
