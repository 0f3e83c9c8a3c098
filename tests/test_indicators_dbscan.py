"""Exact tiled cosine DBSCAN against scikit-learn's brute force, and the eps knee."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from vlit.quality.indicators.clustering import cosine_dbscan, knee_eps, kth_neighbour_distances


def _clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 48))
    assign = rng.integers(0, 30, count)
    spread = rng.uniform(0.3, 1.3, size=(count, 1))
    points = centres[assign] + rng.normal(size=(count, 48)) * spread
    points = np.concatenate([points, rng.normal(size=(count // 20, 48))])
    # exact duplicates (templated answers) scattered through the data
    copies = points[rng.integers(0, len(points), count // 10)]
    return rng.permutation(np.concatenate([points, copies]))


@pytest.mark.parametrize(("eps", "min_samples"), [(0.08, 5), (0.25, 12)])
def test_same_clusters_and_noise_as_sklearn_brute_force(eps: float, min_samples: int) -> None:
    points = _clustered(3500, seed=1)
    reference = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine", algorithm="brute")
    expected = reference.fit(points).labels_
    # small tiles so that diagonal, off-diagonal and ragged tiles all occur
    ours = cosine_dbscan(points, eps=eps, min_samples=min_samples, tile=700)
    assert ours.cluster_count == expected.max() + 1
    assert ours.cluster_count > 1
    assert np.array_equal(ours.labels < 0, expected < 0)  # same noise
    # identical up to renaming: a one-to-one map between label sets
    pairs = set(zip(ours.labels.tolist(), expected.tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert np.array_equal(np.flatnonzero(ours.core), np.sort(reference.core_sample_indices_))


def test_noise_is_not_a_cluster_and_sizes_exclude_it() -> None:
    points = np.array([[1.0, 0.0], [0.999, 0.01], [0.998, 0.02], [0.0, 1.0], [-1.0, 0.2]])
    result = cosine_dbscan(points, eps=0.01, min_samples=3)
    assert result.labels.tolist() == [0, 0, 0, -1, -1]
    assert result.cluster_count == 1
    assert result.noise_count == 2
    assert result.cluster_sizes() == [3]


def test_knee_of_k_distance_curve_separates_dense_from_sparse() -> None:
    points = _clustered(3000, seed=2)
    distances = kth_neighbour_distances(points, k=5, sample_size=800, seed=0)
    assert np.all(np.diff(distances) >= 0)
    eps = knee_eps(distances)
    assert distances[0] < eps < distances[-1]
    # with the knee eps most points are clustered and the outliers stay noise
    result = cosine_dbscan(points, eps=eps, min_samples=5)
    assert result.cluster_count >= 1
    assert 0 < result.noise_count < len(points) // 2
    # duplicates (k-distance 0) do not pull the knee to 0
    with_copies = np.concatenate([distances, np.zeros(3000)])
    assert knee_eps(np.sort(with_copies)) == pytest.approx(eps)
