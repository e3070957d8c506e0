"""petseg: whole-body PET/CT lesion segmentation with a five-fold ResUNet ensemble.

`petseg.load_model(folder)` and `petseg.segment(ct, pet, model)` are the Python API (`petseg.api`); they
are imported on first use, so that `import petseg` (and `petseg --help`) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "segment"]

if TYPE_CHECKING:
    from petseg.api import load_model, segment


def __getattr__(name: str) -> Any:
    if name in ("load_model", "segment"):
        from petseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'petseg' has no attribute {name!r}")
