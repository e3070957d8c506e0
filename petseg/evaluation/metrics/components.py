"""Connected components, labelled once per mask, and the overlap table of two labellings.

Every metric of this package is computed from these: component sizes by bincount, and the voxels shared by
every pair of components from one pass over the voxels both masks cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

CONNECTIVITY = 18  # autoPET's and the L1DFL paper's definition


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """18-connected components of a mask: (labels, number of components)."""
    labels, count = cc3d.connected_components(
        np.asarray(mask).astype(bool, copy=False), connectivity=CONNECTIVITY, return_N=True
    )
    return labels, int(count)


def overlaps(first: np.ndarray, n_first: int, second: np.ndarray, n_second: int) -> np.ndarray:
    """Shared voxels of every pair of components, shape (n_first + 1, n_second + 1); row/column 0 unused."""
    both = (first > 0) & (second > 0)
    pairs = first[both].astype(np.int64) * (n_second + 1) + second[both]
    counts = np.bincount(pairs, minlength=(n_first + 1) * (n_second + 1))
    return counts.reshape(n_first + 1, n_second + 1)


@dataclass(frozen=True)
class Components:
    """One labelling of a mask: labels, component count, sizes (entry k for component k, 0: background)."""

    labels: np.ndarray
    count: int
    sizes: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Components:
        labels, count = label(mask)
        # Counted over the foreground only: a bincount over every voxel of a whole-body grid converts all
        # of them to int64 first (about 1.4 s for 30 M voxels, against milliseconds for the lesions).
        foreground = labels[labels > 0]
        sizes = np.bincount(foreground, minlength=count + 1)
        sizes[0] = labels.size - foreground.size
        return cls(labels, count, sizes)

    @property
    def voxels(self) -> int:
        return int(self.sizes[1:].sum())


def shared(predicted: Components, truth: Components) -> np.ndarray:
    """Voxels shared by predicted component i + 1 and ground-truth component j + 1, at [i, j]."""
    return overlaps(predicted.labels, predicted.count, truth.labels, truth.count)[1:, 1:]
