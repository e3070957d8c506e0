"""L2-regularised logistic regression on standardised features: the fit behind the card's small classifiers
(which tracer a scan shows, which predicted lesion to keep).

A handful of weights that a card can hold as JSON and any reader can check, where a library model would
need pickling. numpy and scipy are imported where the fit computes, so that reading a card costs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class LogisticWeights:
    """P(positive) = sigmoid(intercept + coefficients . (features - mean) / scale)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(positive) for features (n, k) or (k,); the result has the leading shape of `features`."""
        import numpy as np

        z = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = np.clip(self.intercept + z @ np.asarray(self.coefficients), -50.0, 50.0)
        return 1.0 / (1.0 + np.exp(-logits))


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, l2: float = 1.0, sample_weight: np.ndarray | None = None
) -> LogisticWeights:
    """Minimise the (weighted) negative log-likelihood plus l2/2 |coefficients|^2 (the intercept is not
    penalised).

    Features are standardised first, so one `l2` suits features of any unit; a constant feature gets
    scale 1 (and, penalised, a zero coefficient). Sample weights are scaled to a mean of 1, so `l2` means
    the same with or without them.
    """
    import numpy as np
    from scipy.optimize import minimize

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != y.shape or not np.all(w > 0):
        raise ValueError("sample weights must be positive, one per sample")
    w = w / w.mean()
    mean = x.mean(axis=0)
    spread = x.std(axis=0)
    scale = np.where(spread > 1e-9, spread, 1.0)
    z = (x - mean) / scale

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        logits = params[0] + z @ params[1:]
        p = 1.0 / (1.0 + np.exp(-logits))
        nll = np.sum(w * (np.logaddexp(0.0, logits) - y * logits))
        grad_logits = w * (p - y)
        grad = np.concatenate([[grad_logits.sum()], z.T @ grad_logits + l2 * params[1:]])
        return float(nll + 0.5 * l2 * params[1:] @ params[1:]), grad

    result = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    return LogisticWeights(
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coefficients=tuple(float(v) for v in result.x[1:]),
        intercept=float(result.x[0]),
    )
