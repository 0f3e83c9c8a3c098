"""Exact cosine DBSCAN in bounded memory, and a data-driven choice of eps.

``cosine_dbscan`` gives the same clusters as scikit-learn's
``DBSCAN(eps, min_samples, metric="cosine", algorithm="brute")`` (identical labels up to renaming,
identical noise), without materialising the n x n distance matrix or the radius-neighbour lists:

1. neighbour counts (``1 - cos <= eps``, the point itself included) are accumulated over
   cache-sized float32 GEMM tiles of the upper triangle, so every pair is computed once; core
   points have ``count >= min_samples``. The same pass keeps the neighbours of every point
   whose count is still below ``min_samples``: a non-core point has fewer than ``min_samples``
   neighbours, so its whole list is kept in O(n * min_samples) memory;
2. core points are joined by union-find over core x core tiles (connected components of the
   core graph are the clusters); tiles whose points are already one cluster are skipped;
3. a border point (not core, within eps of a core point) joins, like scikit-learn, the cluster
   that scikit-learn's expansion reaches first: the one whose smallest core index is smallest.
   Its neighbours come from the lists of step 1, so no third pass over the data is needed;
   everything else is noise (label ``-1``). Noise is never counted as a cluster.

Pairs whose float32 similarity lies within ``1e-4`` of the threshold are recomputed in float64 so
the float32 speed-up never changes a decision. "Exact" means: the same as scikit-learn on float64
input; on float32 input scikit-learn computes distances in float32 and its own rounding can
flip a few points that sit on the eps boundary (4 of 20,000 in our benchmark). Peak memory is
a few ``tile x tile`` arrays plus O(n * min_samples). Identical vectors are clustered once,
weighted by their count (exactly equivalent, and much faster on templated answers).

Example:
    >>> import numpy as np
    >>> points = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    >>> cosine_dbscan(points, eps=0.05, min_samples=2).labels.tolist()
    [0, 0, -1]
"""

from __future__ import annotations

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


def _pairs(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row and column indices of the true cells (``np.nonzero`` on 2-D is ~20x slower)."""
    flat = np.flatnonzero(mask)
    rows, cols = np.divmod(flat, mask.shape[1])
    return rows, cols


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


class _Tiles:
    """Similarity tiles of a set of points: ``unit`` rows are float32 unit vectors, ``ids``
    their indices in ``vectors`` (the original rows, for the float64 re-check)."""

    def __init__(
        self, vectors: NDArray[np.floating], ids: NDArray[np.int64], eps: float, size: int
    ) -> None:
        self.vectors, self.ids, self.size = vectors, ids, size
        self.unit = normalise_rows(np.asarray(vectors)[ids])
        self.threshold = 1.0 - eps
        self._buffer = np.empty((size, size), dtype=np.float32)

    def starts(self) -> range:
        return range(0, self.ids.size, self.size)

    def neighbours(self, row_start: int, col_start: int) -> NDArray[np.bool_]:
        """Boolean tile: ``cos >= 1 - eps`` for rows and columns starting at these positions,
        exact near the threshold."""
        left = self.unit[row_start : row_start + self.size]
        right = self.unit[col_start : col_start + self.size]
        similarity = np.matmul(left, right.T, out=self._buffer[: len(left), : len(right)])
        mask: NDArray[np.bool_] = similarity >= self.threshold
        below, above = self.threshold - _BAND, self.threshold + _BAND
        if np.count_nonzero(similarity > below) != np.count_nonzero(similarity >= above):
            near_rows, near_cols = _pairs((similarity > below) & (similarity < above))
            exact = _exact_similarity(
                self.vectors,
                self.ids[row_start + near_rows],
                self.ids[col_start + near_cols],
            )
            # scikit-learn compares the distance 1 - cos with eps; do the same arithmetic
            mask[near_rows, near_cols] = (1.0 - exact) <= (1.0 - self.threshold)
        return mask


def _tile_forest(
    rows: NDArray[np.int64], cols: NDArray[np.int64], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Reduce a tile's edges to (member, representative) pairs of its connected components,
    at most rows + cols pairs however dense the tile is."""
    pair_rows, pair_cols = _pairs(mask)
    if not pair_rows.size:
        return pair_rows, pair_cols
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
    vectors: NDArray[np.floating], *, eps: float, min_samples: int, tile: int = 1024
) -> DbscanResult:
    """DBSCAN with cosine distance, exact, in ``tile x tile`` blocks (see the module docstring)."""
    count = int(vectors.shape[0])
    if count == 0:
        return DbscanResult(
            labels=np.zeros(0, dtype=np.int64),
            core=np.zeros(0, dtype=bool),
            eps=eps,
            min_samples=min_samples,
        )
    # identical vectors (templated answers: "Yes.", "2") are clustered once, weighted by their
    # multiplicity; DBSCAN on duplicates is exactly DBSCAN on the weighted unique points
    distinct, first_index, inverse, weights = np.unique(
        np.asarray(vectors), axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    unique_labels, unique_core = _weighted_dbscan(
        distinct, weights.astype(np.float32), first_index, eps, min_samples, tile
    )
    labels = unique_labels[inverse]
    core = unique_core[inverse]
    return DbscanResult(labels=labels, core=core, eps=eps, min_samples=min_samples)


def _count_neighbours(
    tiles: _Tiles, weights: NDArray[np.float32], min_samples: int
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """Weighted neighbour counts (self included), and (point, neighbour) pairs that hold the
    whole neighbour list of every point whose final count is below ``min_samples``."""
    counts = weights.copy()  # every point is its own neighbour, with its duplicates
    above_diagonal = np.triu(np.ones((tiles.size, tiles.size), dtype=bool), k=1)
    limit = min_samples - 0.5  # weights are integers held exactly in float32
    points: list[NDArray[np.int64]] = []
    neighbours: list[NDArray[np.int64]] = []
    for row_start in tiles.starts():
        for col_start in range(row_start, tiles.ids.size, tiles.size):
            mask = tiles.neighbours(row_start, col_start)
            if row_start == col_start:  # a diagonal tile: count pairs i < j once
                mask &= above_diagonal[: mask.shape[0], : mask.shape[1]]
            rows = np.arange(row_start, row_start + mask.shape[0])
            cols = np.arange(col_start, col_start + mask.shape[1])
            as_float = mask.astype(np.float32)
            row_hits = as_float @ weights[cols]
            col_hits = weights[rows] @ as_float
            counts[rows] += row_hits
            counts[cols] += col_hits
            # keep the pairs of points still short of core: their lists must end up complete
            open_rows = np.flatnonzero((row_hits > 0) & (counts[rows] < limit))
            if open_rows.size:
                at, hit = _pairs(mask[open_rows])
                points.append(rows[open_rows[at]])
                neighbours.append(cols[hit])
            open_cols = np.flatnonzero((col_hits > 0) & (counts[cols] < limit))
            if open_cols.size:
                hit, at = _pairs(mask[:, open_cols])
                points.append(cols[open_cols[at]])
                neighbours.append(rows[hit])
    empty = np.zeros(0, dtype=np.int64)
    return (
        counts,
        np.concatenate(points) if points else empty,
        np.concatenate(neighbours) if neighbours else empty,
    )


def _weighted_dbscan(
    vectors: NDArray[np.floating],
    weights: NDArray[np.float32],
    first_index: NDArray[np.int64],
    eps: float,
    min_samples: int,
    tile: int,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """DBSCAN of distinct points with multiplicities; clusters are numbered by the smallest
    original index of their core points, as scikit-learn numbers them."""
    count = int(vectors.shape[0])
    everyone = _Tiles(vectors, np.arange(count, dtype=np.int64), eps, tile)
    counts, points, neighbours = _count_neighbours(everyone, weights, min_samples)
    core = counts >= min_samples - 0.5
    del everyone

    labels = np.full(count, -1, dtype=np.int64)
    core_ids = np.flatnonzero(core).astype(np.int64)
    if not core_ids.size:
        return labels, core
    cores = _Tiles(vectors, core_ids, eps, tile)
    union_find = _UnionFind(count)
    for row_start in cores.starts():
        rows = core_ids[row_start : row_start + tile]
        for col_start in range(row_start, core_ids.size, tile):
            cols = core_ids[col_start : col_start + tile]
            roots = union_find.find_all(np.concatenate([rows, cols]))
            if (roots == roots[0]).all():  # already one cluster: this tile cannot add anything
                continue
            members, representatives = _tile_forest(
                rows, cols, cores.neighbours(row_start, col_start)
            )
            if members.size:
                union_find.union_pairs(members, representatives)

    roots = union_find.find_all(core_ids)
    # scikit-learn discovers clusters in the order of their smallest core index
    smallest = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, roots, first_index[core_ids])
    distinct_roots = np.unique(roots)
    rank = np.empty(count, dtype=np.int64)
    rank[distinct_roots[np.argsort(smallest[distinct_roots])]] = np.arange(distinct_roots.size)
    labels[core_ids] = rank[roots]
    # border points: the lowest-numbered cluster among their core neighbours
    border_pairs = ~core[points] & core[neighbours]
    no_cluster = np.iinfo(np.int64).max
    best = np.full(count, no_cluster, dtype=np.int64)
    np.minimum.at(best, points[border_pairs], labels[neighbours[border_pairs]])
    border = best != no_cluster
    labels[border] = best[border]
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


def cosine_distance_matrix(vectors: NDArray[np.floating]) -> NDArray[np.float32]:
    """All pairwise cosine distances (``n x n`` float32; for a subsample, not for 158K rows)."""
    unit = normalise_rows(vectors)
    distances = unit @ unit.T
    np.subtract(1.0, distances, out=distances)
    np.clip(distances, 0.0, 2.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def merge_near_duplicates(distances: NDArray[np.float32], threshold: float) -> NDArray[np.int64]:
    """Indices of one representative (the first) per group of points joined by distances at
    most ``threshold`` (connected components, so a chain of near-copies is one group)."""
    count = distances.shape[0]
    if count == 0 or threshold <= 0:
        return np.arange(count, dtype=np.int64)
    rows, cols = _pairs(np.triu(distances <= threshold, k=1))
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component, return_index=True)
    return np.sort(first).astype(np.int64)


@dataclass(frozen=True)
class ClusterSweep:
    """DBSCAN's cluster count for every eps at once, exactly, for one ``min_samples``.

    A point is core at ``eps`` when its ``min_samples``-th distance (itself included) is at
    most ``eps``; clusters are the connected components of the core points joined by
    distances at most ``eps`` (border points join clusters, they never make one). So with the
    mutual reachability distance ``max(core_i, core_j, d_ij)`` and its minimum spanning tree
    (MST): ``clusters(eps) = #{core distance <= eps} - #{MST edge <= eps}``, the same count
    as ``cosine_dbscan(points, eps=eps, ...)``. Built in O(n^2) from the distance matrix.

    Example:
        >>> points = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
        >>> sweep = ClusterSweep.from_distances(cosine_distance_matrix(points), min_samples=2)
        >>> sweep.clusters_at(0.01), sweep.clusters_at(1.5)
        (2, 1)
    """

    core_distances: NDArray[np.float64]  # sorted
    edge_weights: NDArray[np.float64]  # sorted MST edges (mutual reachability)
    min_samples: int

    @classmethod
    def from_distances(cls, distances: NDArray[np.floating], *, min_samples: int) -> ClusterSweep:
        count = distances.shape[0]
        if count == 0:
            empty = np.zeros(0, dtype=np.float64)
            return cls(core_distances=empty, edge_weights=empty, min_samples=min_samples)
        if min_samples > count:
            core = np.full(count, np.inf)
        else:
            core = np.partition(distances, min_samples - 1, axis=1)[:, min_samples - 1]
            core = core.astype(np.float64)
        return cls(
            core_distances=np.sort(core),
            edge_weights=np.sort(_reachability_tree(distances, core)),
            min_samples=min_samples,
        )

    def clusters_at(self, eps: float) -> int:
        core = int(np.searchsorted(self.core_distances, eps, side="right"))
        return core - int(np.searchsorted(self.edge_weights, eps, side="right"))

    def counts(self, eps_values: NDArray[np.floating]) -> NDArray[np.int64]:
        """Cluster counts at each of ``eps_values``."""
        values = np.asarray(eps_values, dtype=np.float64)
        core = np.searchsorted(self.core_distances, values, side="right")
        edges = np.searchsorted(self.edge_weights, values, side="right")
        return (core - edges).astype(np.int64)

    def breakpoints(self) -> NDArray[np.float64]:
        """The eps values where the count changes (finite, sorted)."""
        values = np.concatenate([self.core_distances, self.edge_weights])
        return np.unique(values[np.isfinite(values)])


def _reachability_tree(
    distances: NDArray[np.floating], core: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Edge weights of the minimum spanning tree of the mutual reachability graph (Prim, dense:
    one vectorised row update per added point)."""
    count = distances.shape[0]
    in_tree = np.zeros(count, dtype=bool)
    best = np.full(count, np.inf)
    weights = np.empty(count - 1, dtype=np.float64)
    current = 0
    for step in range(count - 1):
        in_tree[current] = True
        row = np.maximum(distances[current].astype(np.float64), core)
        np.maximum(row, core[current], out=row)
        np.minimum(best, row, out=best)
        best[in_tree] = np.inf
        current = int(np.argmin(best))
        weights[step] = best[current]
    return weights


def most_clusters_eps(sweeps: list[ClusterSweep]) -> float:
    """The eps at which the sweeps together count the most clusters: the middle of the first
    plateau of the summed count (a point strictly inside it, so float rounding of a later
    DBSCAN at that eps cannot fall on a breakpoint). ``0.0`` when no eps gives a cluster."""
    breaks = np.unique(np.concatenate([s.breakpoints() for s in sweeps] or [np.zeros(0)]))
    if not breaks.size:
        return 0.0
    totals = np.sum([s.counts(breaks) for s in sweeps], axis=0)
    best = int(np.argmax(totals))
    if totals[best] <= 0:
        return 0.0
    upper = float(breaks[best + 1]) if best + 1 < breaks.size else float(breaks[best]) + 1e-3
    return (float(breaks[best]) + upper) / 2.0
