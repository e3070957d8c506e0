"""Randomly initialised ensembles: a complete model folder for demos and tests, before weights exist.

The folder is real in every respect (card, safetensors folds, checksums) except that nothing was
learned, and its card says so (`provenance.trained` is false), which every entry point reports loudly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from petseg.model.card import Architecture, EnsembleSettings, Fold, ModelCard, PreprocessSettings, save_card
from petseg.model.networks import build_network, save_weights

# Small windows keep a CPU demo on tiny phantoms to seconds.
TINY_ENSEMBLE = EnsembleSettings(roi_size=(64, 64, 64), overlap=0.25, sw_batch_size=2)


def create_untrained_model(
    out_dir: Path,
    architecture: str = "resunet-tiny",
    folds: int = 5,
    seed: int = 0,
    ensemble: EnsembleSettings = TINY_ENSEMBLE,
    preprocessing: PreprocessSettings | None = None,
) -> ModelCard:
    """Write `folds` randomly initialised networks and their card into `out_dir`."""
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    out_dir = Path(out_dir)
    arch = Architecture(name=architecture)
    fold_entries = []
    for fold in range(folds):
        torch.manual_seed(seed * 1000 + fold)
        network = build_network(arch, ensemble.roi_size)
        name = f"fold{fold}.safetensors"
        fold_entries.append(Fold(fold=fold, weights=name, sha256=save_weights(network, out_dir / name)))
    card = ModelCard(
        name=f"untrained-{architecture}",
        architecture=arch,
        preprocessing=preprocessing or PreprocessSettings(),
        folds=tuple(fold_entries),
        ensemble=ensemble,
        provenance={
            "trained": False,
            "note": "randomly initialised weights for demos and tests; the masks are meaningless",
            "seed": seed,
        },
    )
    save_card(card, out_dir)
    return card
