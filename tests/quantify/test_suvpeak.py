"""SUVpeak against a brute-force search: every voxel of the lesion as a centre, every voxel of the image
tested for lying within 6.2035 mm, on grids with anisotropic spacing."""

from __future__ import annotations

import math

import cc3d
import numpy as np
import pytest

from petseg.quantify import SPHERE_RADIUS_MM, sphere_kernel, suvpeaks


def _brute_force(pet: np.ndarray, lesion: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The highest mean over the in-image voxels whose centres lie within the radius of a lesion voxel."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in pet.shape], indexing="ij"), axis=-1).astype(float)
    best = -math.inf
    for centre in np.argwhere(lesion):
        distance = np.sqrt((((grid - centre) * np.asarray(spacing)) ** 2).sum(axis=-1))
        best = max(best, float(pet[distance <= SPHERE_RADIUS_MM].mean()))
    return best


def test_the_sphere_holds_one_millilitre() -> None:
    assert abs(SPHERE_RADIUS_MM - 6.2035) < 1e-4
    assert 4 / 3 * math.pi * SPHERE_RADIUS_MM**3 == pytest.approx(1000.0)
    # On a fine grid the voxels whose centres lie inside add up to about 1 ml.
    kernel = sphere_kernel((0.25, 0.25, 0.25))
    assert kernel.sum() * 0.25**3 == pytest.approx(1000.0, rel=0.01)
    coarse = sphere_kernel((3.0, 2.0, 4.0))
    assert coarse.shape == (5, 7, 3)  # floor(6.2035 / spacing) voxels either side of the centre
    assert coarse[2, 3, 1]


@pytest.mark.parametrize(
    ("spacing", "seed"),
    [((3.0, 2.04, 2.04), 0), ((5.0, 4.07, 4.07), 1), ((2.0, 3.27, 1.5), 2), ((1.0, 1.0, 1.0), 3)],
)
def test_suvpeak_matches_a_brute_force_search(spacing: tuple[float, float, float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pet = rng.gamma(2.0, 1.0, size=(12, 14, 13))
    mask = np.zeros(pet.shape, bool)
    mask[3:6, 4:8, 2:5] = True  # inside
    mask[0:2, 0:3, 10:13] = True  # at the corner of the field of view: the sphere is cut by the image's edge
    mask[9, 11, 6] = True  # a single voxel
    pet[mask] += rng.uniform(2.0, 8.0, size=int(mask.sum()))
    labels, count = cc3d.connected_components(mask, connectivity=26, return_N=True)
    assert count == 3
    peaks = suvpeaks(pet, labels, count, spacing)
    for k in range(1, count + 1):
        assert peaks[k - 1] == pytest.approx(_brute_force(pet, labels == k, spacing), rel=1e-12)
    # A sphere mean, not a voxel: below each lesion's SUVmax here, where the lesions are hotter than around.
    assert all(peaks[k - 1] < pet[labels == k].max() for k in range(1, count + 1))


def test_a_uniform_image_has_its_value_as_suvpeak_even_at_the_edges() -> None:
    pet = np.full((6, 7, 8), 2.5)
    mask = np.zeros(pet.shape, bool)
    mask[0, 0, 0] = True
    mask[5, 6, 7] = True
    labels, count = cc3d.connected_components(mask, connectivity=26, return_N=True)
    np.testing.assert_allclose(suvpeaks(pet, labels, count, (4.0, 4.0, 4.0)), [2.5, 2.5])
