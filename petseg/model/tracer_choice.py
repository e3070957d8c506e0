"""Which of a card's ensembles segments a case: the one rule for inference and for training's analyses.

A card split by tracer holds one ensemble per tracer. The tracer is the one given (by the user, or by a
case id that names it), else the card's classifier's answer from the uptake histogram of the network-grid
PET. A card not split by tracer has one ensemble for every tracer, and the choice is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from petseg.model.card import ModelCard

__all__ = ["TracerChoice", "choose_tracer"]


@dataclass(frozen=True)
class TracerChoice:
    """The chosen tracer (None: the card has one ensemble), and how: "given", "classified" or "single"."""

    tracer: str | None
    how: str
    probability: float = 1.0


def choose_tracer(card: ModelCard, image: np.ndarray, given: str | None = None) -> TracerChoice:
    """The tracer whose ensemble should segment `image` (a network-grid PET/CT array, channels first)."""
    if not card.tracers:
        return TracerChoice(None, "single")
    if given is not None:  # the ensemble lookup refuses a tracer the card has no folds for
        return TracerChoice(given, "given")
    assert card.tracer_classifier is not None  # the card parser requires one for split folds
    tracer, probability = card.tracer_classifier.classify(image, card.preprocessing)
    return TracerChoice(tracer, "classified", float(probability))
