"""Exact cosine DBSCAN in bounded memory, and a data-driven choice of eps.

``cosine_dbscan`` gives the same clusters as scikit-learn's
``DBSCAN(eps, min_samples, metric="cosine", algorithm="brute")`` (identical labels up to renaming,
identical noise), without materialising the n x n distance matrix or the radius-neighbour lists:

1. neighbour counts (``1 - cos <= eps``, the point itself included) are accumulated over float32
   GEMM tiles of the upper triangle, so every pair is computed once; core points have
   ``count >= min_samples``;
2. core points are joined by union-find over core x core tiles (connected components of the
   core graph are the clusters);
3. a border point (not core, within eps of a core point) joins, like scikit-learn, the cluster
   that scikit-learn's expansion reaches first: the one whose smallest core index is smallest;
   everything else is noise (label ``-1``). Noise is never counted as a cluster.

Pairs whose float32 similarity lies within ``1e-4`` of the threshold are recomputed in float64 so
the float32 speed-up never changes a decision. "Exact" means: the same as scikit-learn on float64
input; on float32 input scikit-learn computes distances in float32 and its own rounding can
flip a few points that sit on the eps boundary (4 of 20,000 in our benchmark). Peak memory is
about one tile (``tile_rows x tile_cols`` floats) plus O(n). Identical vectors are clustered
once, weighted by their count (exactly equivalent, and much faster on templated answers).

Example:
    >>> import numpy as np
    >>> points = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    >>> cosine_dbscan(points, eps=0.05, min_samples=2).labels.tolist()
    [0, 0, -1]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_BAND = 1e-4


@dataclass
class DbscanResult:
    """Labels (``-1`` = noise), core mask and the parameters used."""

    labels: NDArray[np.int64]
    core: NDArray[np.bool_]
    eps: float
    min_samples: int

    @property
    def cluster_count(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def noise_count(self) -> int:
        return int((self.labels < 0).sum())

    def cluster_sizes(self) -> list[int]:
        """Sizes of the clusters, largest first (noise excluded)."""
        if not self.cluster_count:
            return []
        sizes = np.bincount(self.labels[self.labels >= 0], minlength=self.cluster_count)
        return sorted(sizes.tolist(), reverse=True)


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = np.arange(size, dtype=np.int64)

    def find_all(self, items: NDArray[np.int64]) -> NDArray[np.int64]:
        roots = self.parent[items]
        while True:
            higher = self.parent[roots]
            if np.array_equal(higher, roots):
                self.parent[items] = roots  # path compression for the items asked about
                return roots
            roots = higher

    def union_pairs(self, left: NDArray[np.int64], right: NDArray[np.int64]) -> None:
        """Union many pairs: repeated vectorised hooking of the larger root onto the smaller."""
        while left.size:
            root_left = self.find_all(left)
            root_right = self.find_all(right)
            differ = root_left != root_right
            if not differ.any():
                return
            root_left, root_right = root_left[differ], root_right[differ]
            low = np.minimum(root_left, root_right)
            high = np.maximum(root_left, root_right)
            # several pairs may hook the same root; minimum.at keeps the smallest, the rest are
            # retried in the next round
            np.minimum.at(self.parent, high, low)
            left, right = low, high


def normalise_rows(vectors: NDArray[np.floating]) -> NDArray[np.float32]:
    """Unit-length float32 rows (zero rows stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(matrix / norms)


def _exact_similarity(
    vectors: NDArray[np.floating], rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.float64]:
    left = np.asarray(vectors[rows], dtype=np.float64)
    right = np.asarray(vectors[cols], dtype=np.float64)
    left_norm = np.linalg.norm(left, axis=1)
    right_norm = np.linalg.norm(right, axis=1)
    left_norm[left_norm == 0] = 1.0
    right_norm[right_norm == 0] = 1.0
    return np.einsum("ij,ij->i", left / left_norm[:, None], right / right_norm[:, None])


def _tiles(
    row_ids: NDArray[np.int64],
    col_ids: NDArray[np.int64],
    tile_rows: int,
    tile_cols: int,
    *,
    upper: bool,
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Blocks of (row ids, col ids); with ``upper`` the two id lists are the same and only
    blocks on or above the diagonal are produced."""
    for row_start in range(0, row_ids.size, tile_rows):
        rows = row_ids[row_start : row_start + tile_rows]
        col_start = row_start if upper else 0
        for start in range(col_start, col_ids.size, tile_cols):
            yield rows, col_ids[start : start + tile_cols]


def _neighbour_mask(
    unit: NDArray[np.float32],
    vectors: NDArray[np.floating],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    threshold: float,
) -> NDArray[np.bool_]:
    """Boolean tile: ``cos(rows[i], cols[j]) >= threshold``, exact near the threshold."""
    similarity = unit[rows] @ unit[cols].T
    mask: NDArray[np.bool_] = similarity >= threshold
    near = np.abs(similarity - threshold) < _BAND
    if near.any():
        near_rows, near_cols = np.nonzero(near)
        exact = _exact_similarity(vectors, rows[near_rows], cols[near_cols])
        # scikit-learn compares the distance 1 - cos with eps; do the same arithmetic
        mask[near_rows, near_cols] = (1.0 - exact) <= (1.0 - threshold)
    return mask


def _tile_forest(
    rows: NDArray[np.int64], cols: NDArray[np.int64], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Reduce a tile's edges to (member, representative) pairs of its connected components,
    at most rows + cols pairs however dense the tile is."""
    pair_rows, pair_cols = np.nonzero(mask)
    if not pair_rows.size:
        return pair_rows.astype(np.int64), pair_cols.astype(np.int64)
    size = rows.size + cols.size
    graph = coo_matrix(
        (np.ones(pair_rows.size, dtype=np.int8), (pair_rows, pair_cols + rows.size)),
        shape=(size, size),
    )
    _, component = connected_components(graph, directed=False)
    ids = np.concatenate([rows, cols])
    _, first = np.unique(component, return_index=True)
    representative = ids[first][component]
    linked = representative != ids
    return ids[linked], representative[linked]


def cosine_dbscan(
    vectors: NDArray[np.floating],
    *,
    eps: float,
    min_samples: int,
    tile_rows: int = 2048,
    tile_cols: int = 4096,
) -> DbscanResult:
    """DBSCAN with cosine distance, exact, in tiles (see the module docstring)."""
    count = int(vectors.shape[0])
    if count == 0:
        return DbscanResult(
            labels=np.zeros(0, dtype=np.int64),
            core=np.zeros(0, dtype=bool),
            eps=eps,
            min_samples=min_samples,
        )
    tile_cols = max(tile_cols, tile_rows)  # a diagonal block must hold its whole square
    # identical vectors (templated answers: "Yes.", "2") are clustered once, weighted by their
    # multiplicity; DBSCAN on duplicates is exactly DBSCAN on the weighted unique points
    distinct, first_index, inverse, weights = np.unique(
        np.asarray(vectors), axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    unique_labels, unique_core = _weighted_dbscan(
        distinct, weights.astype(np.float64), first_index, eps, min_samples, tile_rows, tile_cols
    )
    labels = unique_labels[inverse]
    core = unique_core[inverse]
    return DbscanResult(labels=labels, core=core, eps=eps, min_samples=min_samples)


def _weighted_dbscan(
    vectors: NDArray[np.floating],
    weights: NDArray[np.float64],
    first_index: NDArray[np.int64],
    eps: float,
    min_samples: int,
    tile_rows: int,
    tile_cols: int,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """DBSCAN of distinct points with multiplicities; clusters are numbered by the smallest
    original index of their core points, as scikit-learn numbers them."""
    count = int(vectors.shape[0])
    unit = normalise_rows(vectors)
    threshold = 1.0 - eps
    everyone = np.arange(count, dtype=np.int64)

    neighbours = weights.copy()  # every point is its own neighbour, with its duplicates
    for rows, cols in _tiles(everyone, everyone, tile_rows, tile_cols, upper=True):
        mask = _neighbour_mask(unit, vectors, rows, cols, threshold)
        if rows[0] == cols[0]:  # the block straddles the diagonal: count pairs i < j once
            square = rows.size
            upper = np.triu(mask[:, :square], k=1).astype(np.float64)
            neighbours[rows] += upper @ weights[rows] + upper.T @ weights[rows]
            mask, cols = mask[:, square:], cols[square:]
        if cols.size:
            as_float = mask.astype(np.float32)
            neighbours[rows] += as_float @ weights[cols].astype(np.float32)
            neighbours[cols] += weights[rows].astype(np.float32) @ as_float
    core = neighbours >= min_samples - 1e-6  # weights are integers; float sums are exact-ish

    core_ids = np.flatnonzero(core).astype(np.int64)
    union_find = _UnionFind(count)
    for rows, cols in _tiles(core_ids, core_ids, tile_rows, tile_cols, upper=True):
        roots = union_find.find_all(np.concatenate([rows, cols]))
        if (roots == roots[0]).all():  # already one cluster: this tile cannot add anything
            continue
        mask = _neighbour_mask(unit, vectors, rows, cols, threshold)
        members, representatives = _tile_forest(rows, cols, mask)
        if members.size:
            union_find.union_pairs(members, representatives)

    labels = np.full(count, -1, dtype=np.int64)
    if core_ids.size:
        roots = union_find.find_all(core_ids)
        # scikit-learn discovers clusters in the order of their smallest core index
        smallest = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, roots, first_index[core_ids])
        distinct_roots = np.unique(roots)
        rank = np.empty(count, dtype=np.int64)
        rank[distinct_roots[np.argsort(smallest[distinct_roots])]] = np.arange(distinct_roots.size)
        core_labels = rank[roots]
        labels[core_ids] = core_labels
        others = np.flatnonzero(~core).astype(np.int64)
        no_cluster = np.iinfo(np.int64).max
        for start in range(0, others.size, tile_rows):
            rows = others[start : start + tile_rows]
            best = np.full(rows.size, no_cluster, dtype=np.int64)
            for col_start in range(0, core_ids.size, tile_cols):
                cols = core_ids[col_start : col_start + tile_cols]
                mask = _neighbour_mask(unit, vectors, rows, cols, threshold)
                candidate = np.where(
                    mask, core_labels[col_start : col_start + cols.size], no_cluster
                )
                np.minimum(best, candidate.min(axis=1), out=best)
            border = best != no_cluster
            labels[rows[border]] = best[border]
    return labels, core


def kth_neighbour_distances(
    vectors: NDArray[np.floating],
    *,
    k: int,
    sample_size: int = 2000,
    seed: int = 0,
    tile_cols: int = 8192,
) -> NDArray[np.float64]:
    """Sorted cosine distances from a seeded sample of points to their k-th nearest neighbour
    in the whole set (the point itself counts as its own first neighbour, as in DBSCAN)."""
    unit = normalise_rows(vectors)
    count = unit.shape[0]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(count, size=min(sample_size, count), replace=False))
    k = max(1, min(k, count))
    best = np.full((sample.size, 0), -np.inf, dtype=np.float32)
    for start in range(0, count, tile_cols):
        similarity = unit[sample] @ unit[start : start + tile_cols].T
        merged = np.concatenate([best, similarity], axis=1)
        keep = min(k, merged.shape[1])
        best = -np.sort(-np.partition(merged, merged.shape[1] - keep, axis=1)[:, -keep:], axis=1)
    distances = 1.0 - best[:, k - 1].astype(np.float64)
    return np.sort(np.clip(distances, 0.0, 2.0))


def knee_eps(sorted_distances: NDArray[np.float64]) -> float:
    """Knee of a sorted k-distance curve: the point farthest below the chord joining its ends
    (both axes scaled to [0, 1]), ignoring zero distances (duplicates). Returns the distance
    at the knee."""
    values = np.asarray(sorted_distances, dtype=np.float64)
    # exact duplicates have a k-distance of 0; a curve flat at 0 would put the knee at 0
    values = values[values > 1e-6]
    if values.size < 3 or values[-1] <= values[0]:
        return float(values[-1]) if values.size else 0.0
    x = np.linspace(0.0, 1.0, values.size)
    y = (values - values[0]) / (values[-1] - values[0])
    return float(values[int(np.argmax(x - y))])
