"""Which tracer a PET shows (FDG or PSMA), for cards that hold one ensemble per tracer.

The Grand Challenge inputs name no tracer, and one network for both must guess it from its patch: a hot blob
in the neck is a salivary gland in PSMA and may be a lymph node in FDG. The whole scan shows it plainly.
FDG lights the brain and leaves the liver near blood level; PSMA leaves the brain dark and lights the
salivary glands, kidneys, liver and spleen. Those differences move the distribution of uptake over the
body, and where the hot volume sits tells the brain from the liver. So the classifier is a logistic
regression on two histograms of PET uptake in the body, one of its superior 30 % (head, neck, upper chest)
and one of the rest, taken from the preprocessed network-grid volume that training and inference share. It
is fitted at export on the training cases, whose autoPET case ids name their tracer (`fdg_...`,
`psma_...`). One histogram of the whole body named the tracer of 66 of 72 fresh phantoms right; the two
named all 72 (a classifier fitted on the 80 demo phantoms).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from petseg.io.splits import TRACERS
from petseg.model.logistic import LogisticWeights, fit_logistic
from petseg.model.settings import PreprocessSettings

if TYPE_CHECKING:  # numpy is imported where the arrays are computed, so reading a card does not need it
    import numpy as np

CLASSES = TRACERS  # the order of the classifier's classes
# Histogram bin edges in SUV, log-spaced from background fat to the hottest organs; the outer bins take
# everything below and above.
SUV_EDGES: tuple[float, ...] = tuple(round(0.1 * 400.0 ** (k / 13), 4) for k in range(14))
_FLOOR = 1e-4  # smallest bin fraction before the logarithm: an empty bin is not minus infinity
SUPERIOR_SHARE = 0.3  # of the body box's length, from its superior end: the first histogram's region


@dataclass(frozen=True)
class TracerClassifier:
    """P(PSMA) = sigmoid(intercept + coefficients . standardised log bin fractions)."""

    suv_edges: tuple[float, ...]
    superior_share: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    training_cases: int = 0
    cross_validated_accuracy: float | None = None

    def probability_psma(self, features: np.ndarray) -> float:
        weights = LogisticWeights(self.mean, self.scale, self.coefficients, self.intercept)
        return float(weights.probability(features))

    def classify(self, image: np.ndarray, settings: PreprocessSettings) -> tuple[str, float]:
        """(tracer, its probability) for a preprocessed network-grid image (2, X, Y, Z)."""
        p_psma = self.probability_psma(uptake_features(image, settings, self.suv_edges, self.superior_share))
        return ("psma", p_psma) if p_psma >= 0.5 else ("fdg", 1.0 - p_psma)

    def to_json(self) -> dict[str, object]:
        feature = "log-fraction of body voxels per SUV bin: superior share of the body box, then the rest"
        return json.loads(json.dumps({"feature": feature, **asdict(self)}))  # tuples -> lists


def uptake_features(
    image: np.ndarray,
    settings: PreprocessSettings,
    suv_edges: Sequence[float] = SUV_EDGES,
    superior_share: float = SUPERIOR_SHARE,
) -> np.ndarray:
    """The log bin fractions of the superior `superior_share` of the body box (the RAS network grid's
    last axis points superior), then those of the rest."""
    import numpy as np

    slices = image.shape[-1]
    split = slices - min(max(1, round(slices * superior_share)), slices - 1)
    return np.concatenate(
        [
            _log_fractions(image[..., split:], settings, suv_edges),
            _log_fractions(image[..., :split], settings, suv_edges),
        ]
    )


def _log_fractions(image: np.ndarray, settings: PreprocessSettings, suv_edges: Sequence[float]) -> np.ndarray:
    """Log of the fraction of body voxels in each SUV bin (bins: below the first edge, between edges,
    above the last). Body voxels: CT above the card's body threshold, as the body box is found."""
    import numpy as np

    body = image[0] > settings.scaled_ct(settings.body_threshold_hu)
    pet = image[1][body] if body.any() else image[1].ravel()
    counts = np.bincount(np.searchsorted(np.asarray(suv_edges), pet), minlength=len(suv_edges) + 1)
    fractions = counts / max(int(counts.sum()), 1)
    return np.log10(fractions + _FLOOR)


def fit_tracer_classifier(
    features: np.ndarray,
    tracers: Sequence[str],
    suv_edges: Sequence[float] = SUV_EDGES,
    superior_share: float = SUPERIOR_SHARE,
    l2: float = 1.0,
) -> TracerClassifier:
    """L2-regularised logistic regression; its cross-validated accuracy is leave-one-out."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.array([CLASSES.index(t) for t in tracers], dtype=np.float64)
    if len(set(y.tolist())) < 2:
        raise ValueError("the tracer classifier needs cases of both tracers")
    correct = 0
    for left_out in range(len(y)):
        keep = np.arange(len(y)) != left_out
        model = _fit(x[keep], y[keep], l2)
        correct += int((model.probability_psma(x[left_out]) >= 0.5) == bool(y[left_out]))
    return replace(
        _fit(x, y, l2),
        suv_edges=tuple(float(e) for e in suv_edges),
        superior_share=superior_share,
        training_cases=len(y),
        cross_validated_accuracy=correct / len(y),
    )


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> TracerClassifier:
    """The fitted weights only (its features' description is the caller's)."""
    weights = fit_logistic(x, y, l2)
    return TracerClassifier(
        suv_edges=(),
        superior_share=SUPERIOR_SHARE,
        mean=weights.mean,
        scale=weights.scale,
        coefficients=weights.coefficients,
        intercept=weights.intercept,
    )
