"""Response diversity (R): sentence embeddings of the responses, DBSCAN, log of the clusters.

One text per sample: its assistant turns joined (the embedder truncates long texts, MiniLM at
256 tokens). Vectors come through ``EmbeddingCache`` (``RUN/embeddings/``), so a second report
does not embed again. Clustering is exact cosine DBSCAN (``clustering.cosine_dbscan``, same
clusters as scikit-learn's brute force) with ``min_samples`` (default 5) and ``eps``: a number,
or ``"auto"`` (default) = the knee of the sorted k-distance curve (k = min_samples) of a seeded
sample of 2,000 points; the eps used is recorded.

**R = natural log of the number of clusters; noise points are not a cluster.** Why the natural
log: the paper's R of 2.2 to 2.5 then means 9 to 12 clusters, the scale DBSCAN finds at a knee
eps on template-heavy instruction data; with log10 it would mean 160 to 320 clusters and with
log2 5 to 6. The paper does not say which; we record ``log_base`` and the raw count.

Beside the full-data figure we report the same figure on a seeded random subsample of fixed size
(``subsample_size``, default 10,000), so datasets of different sizes compare, and the cluster
count on the subsample over a small eps range around the chosen eps.

Example:
    >>> embedder = load_embedder("wordllama")                       # doctest: +SKIP
    >>> indicator = ResponseDiversityIndicator(embedder=embedder)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from vlit.quality.indicators.clustering import cosine_dbscan, knee_eps, kth_neighbour_distances
from vlit.quality.indicators.embeddings import Embedder, EmbeddingCache
from vlit.quality.indicators.text import responses
from vlit.schema import Sample

EPS_RANGE_FACTORS = (0.6, 0.8, 1.0, 1.2, 1.4)


def log_clusters(count: int) -> float | None:
    """The paper's R: natural log of the cluster count (``None`` without any cluster)."""
    return math.log(count) if count > 0 else None


class ResponseDiversityIndicator:
    """Collects response texts; embeds and clusters them in ``result``."""

    name = "response_diversity"

    def __init__(
        self,
        *,
        embedder: Embedder,
        cache_dir: str | os.PathLike[str] | None = None,
        eps: float | str = "auto",
        min_samples: int = 5,
        subsample_size: int = 10_000,
        seed: int = 0,
    ) -> None:
        self.embedder = embedder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.eps = eps
        self.min_samples = min_samples
        self.subsample_size = subsample_size
        self.seed = seed
        self.texts: list[str] = []
        self.cache_hits = 0
        self.cache_misses = 0

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            text = " ".join(responses(sample))
            if text:
                self.texts.append(text)

    def merge(self, other: Self) -> None:
        self.texts.extend(other.texts)

    def embeddings(self) -> NDArray[np.float32]:
        cache = EmbeddingCache(self.cache_dir)
        vectors = cache.embed(self.embedder, self.texts)
        self.cache_hits, self.cache_misses = cache.hits, cache.misses
        return vectors

    def choose_eps(self, vectors: NDArray[np.float32]) -> tuple[float, str]:
        if isinstance(self.eps, int | float):
            return float(self.eps), "given"
        distances = kth_neighbour_distances(vectors, k=self.min_samples, seed=self.seed)
        return max(knee_eps(distances), 1e-6), "knee of the k-distance curve"

    def result(self) -> dict[str, Any]:
        if not self.texts:
            return {"clusters": 0, "log_clusters": None, "responses": 0}
        vectors = self.embeddings()
        eps, eps_source = self.choose_eps(vectors)
        full = cosine_dbscan(vectors, eps=eps, min_samples=self.min_samples)
        rng = np.random.default_rng(self.seed)
        size = min(self.subsample_size, len(self.texts))
        chosen = np.sort(rng.choice(len(self.texts), size=size, replace=False))
        subsample = vectors[chosen]
        sub = cosine_dbscan(subsample, eps=eps, min_samples=self.min_samples)
        eps_range = []
        for factor in EPS_RANGE_FACTORS:
            trial = eps * factor
            count = (
                sub.cluster_count
                if factor == 1.0
                else cosine_dbscan(subsample, eps=trial, min_samples=self.min_samples).cluster_count
            )
            eps_range.append({"eps": round(trial, 6), "clusters": count})
        return {
            "log_clusters": log_clusters(full.cluster_count),
            "log_base": "e",
            "clusters": full.cluster_count,
            "noise_points": full.noise_count,
            "responses": len(self.texts),
            "cluster_sizes": full.cluster_sizes(),
            "eps": eps,
            "eps_source": eps_source,
            "min_samples": self.min_samples,
            "embedder": self.embedder.model_id,
            "embedding_cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "subsample": {
                "size": size,
                "seed": self.seed,
                "clusters": sub.cluster_count,
                "log_clusters": log_clusters(sub.cluster_count),
                "noise_points": sub.noise_count,
            },
            "eps_range": eps_range,
        }
