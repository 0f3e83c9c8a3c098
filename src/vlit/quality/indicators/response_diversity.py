"""Response diversity (R): sentence embeddings of the responses, DBSCAN, log of the clusters.

One text per sample: its assistant turns joined (the embedder truncates long texts, MiniLM at
256 tokens). **What is clustered**: the distinct responses, where two responses are the same
when their ``response_key`` is (Unicode NFKC, casefolded, punctuation dropped, whitespace
collapsed), so copies that differ in punctuation, case, spacing or Unicode form are one
response, however many there are; a seeded random subsample of ``subsample_size`` of these keys
(default 5,000; all when fewer), so datasets of different sizes are measured on the same number
of points. The subsample is the keys with the smallest seeded 64-bit hashes (bottom-k), so a
stream of any size keeps only those keys and an 8-byte hash per response (for the distinct
count). Each kept key is embedded, and keys within cosine distance ``near_duplicate_distance``
(default 0.03) of each other are merged into one point, represented by the shortest. 0.03 is
measured (``benchmarks/bench_near_duplicate_distances.py``): at most 1% of the closest
*different* captions (another person's caption of the same COCO image, the nearest caption of
another image or LLaVA record) lie that close, with MiniLM and with WordLlama; at 0.05 it is up
to 2.4%. Wordier copies ("The image shows ..." added, a one-letter typo) lie 0.01 to 0.4 apart,
as far as different captions do, so no embedding distance tells them apart. So before
embedding, the subsample's keys are grouped by their characters (``near_copy_groups``: up to 4
words put before, one character edited, or byte 4-gram Jaccard at least ``near_copy_similarity``,
default 0.8, between keys of about the same length), and one member per group (the shortest,
then the most central) is embedded; measured in the same benchmark, this joins all prefix and
typo copies and at most 0.2% of different captions. Vectors come through ``EmbeddingCache``
(``RUN/embeddings/``).

**How eps is chosen** (``eps="auto"``): the eps at which DBSCAN finds the most clusters.
``ClusterSweep`` gives the exact cluster count for every eps at once (from the minimum spanning
tree of the mutual reachability distances), and the middle of the plateau with the highest
count is taken. Too small an eps leaves everything noise, too large an eps joins everything
into one cluster; in between, the count peaks where the data's dense groups are separate.
(The knee of the k-distance curve, used before, put eps where real caption data is one
cluster.) When several datasets are compared, eps is chosen once, at the most clusters of all
of them together (``most_clusters_eps``), and each is measured with it. A number for ``eps``
is used as given.

**R = natural log of the number of clusters; noise points are not a cluster.** The paper's R
of 2.2 to 2.5 means 9 to 12 clusters. When the clustering degenerates (no cluster, one cluster
holding most points, or nearly everything noise) ``degenerate`` says so.

Example:
    >>> embedder = load_embedder("wordllama")                       # doctest: +SKIP
    >>> indicator = ResponseDiversityIndicator(embedder=embedder)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import os
import re
import sys
import unicodedata
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from vlit.quality.dedup import central_members, near_copy_groups
from vlit.quality.indicators.clustering import (
    ClusterSweep,
    cosine_dbscan,
    cosine_distance_matrix,
    merge_near_duplicates,
    most_clusters_eps,
)
from vlit.quality.indicators.embeddings import Embedder, EmbeddingCache
from vlit.quality.indicators.text import responses
from vlit.schema import Sample

EPS_RULE = "most clusters"
CURVE_EPS = np.round(np.arange(0.0, 1.0001, 0.01), 2)  # the sweep as stored for the plot
LARGEST_CLUSTER_SHARE = 0.5  # above this share of the points, one cluster dominates
NOISE_SHARE = 0.95  # above this share, nearly everything is noise


def _punctuation(characters: range) -> re.Pattern[str]:
    """A pattern for runs of Unicode punctuation (categories P*) among ``characters``."""
    ranges: list[list[int]] = []
    for code in characters:
        if unicodedata.category(chr(code))[0] == "P":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    spans = "".join(re.escape(chr(low)) + "-" + re.escape(chr(high)) for low, high in ranges)
    return re.compile(f"[{spans}]+")


# ASCII punctuation to spaces, as a bytes table (much faster than a regex on ASCII text)
_ASCII_PUNCTUATION = bytes(
    32 if code < 128 and unicodedata.category(chr(code))[0] == "P" else code for code in range(256)
)
_ALL_PUNCTUATION = functools.cache(lambda: _punctuation(range(sys.maxunicode + 1)))


def response_key(text: str) -> str:
    """What a response says, for telling responses apart: Unicode NFKC, casefolded,
    punctuation replaced by spaces, whitespace collapsed (``"A dog runs!"`` -> ``"a dog runs"``).
    A response of punctuation only keeps its punctuation."""
    if text.isascii():  # NFKC leaves ASCII as it is, and casefold is lower
        folded = text.lower()
        spaced = folded.encode("ascii").translate(_ASCII_PUNCTUATION).decode("ascii")
    else:
        folded = unicodedata.normalize("NFKC", text).casefold()
        spaced = _ALL_PUNCTUATION().sub(" ", folded)
    return " ".join(spaced.split()) or " ".join(folded.split())


def log_clusters(count: int) -> float | None:
    """The paper's R: natural log of the cluster count (``None`` without any cluster)."""
    return math.log(count) if count > 0 else None


def degeneracy(clusters: int, noise: int, largest: int, points: int) -> str | None:
    """Why a clustering says little about diversity, or ``None`` when it looks sound."""
    if points == 0:
        return None
    if clusters == 0:
        return "no cluster: every response is noise"
    if largest > LARGEST_CLUSTER_SHARE * points:
        return f"one cluster holds {100 * largest / points:.0f}% of the responses"
    if noise > NOISE_SHARE * points:
        return f"{100 * noise / points:.0f}% of the responses are noise"
    return None


@dataclass
class ResponsePoints:
    """The clustered points: unit vectors of the merged subsample and their distances."""

    vectors: NDArray[np.float32]
    distances: NDArray[np.float32]
    distinct_texts: int
    subsampled: int


class ResponseDiversityIndicator:
    """Collects response texts; embeds and clusters them in ``result``."""

    name = "response_diversity"

    def __init__(
        self,
        *,
        embedder: Embedder,
        cache_dir: str | os.PathLike[str] | None = None,
        eps: float | str = "auto",
        eps_source: str | None = None,
        min_samples: int = 5,
        subsample_size: int = 5_000,
        near_duplicate_distance: float = 0.03,
        near_copy_similarity: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.embedder = embedder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.eps = eps
        self.eps_source = eps_source
        self.min_samples = min_samples
        self.subsample_size = subsample_size
        self.near_duplicate_distance = near_duplicate_distance
        self.near_copy_similarity = near_copy_similarity
        self.seed = seed
        self.hashes = array("Q")  # one per response, for the count of distinct keys
        self.kept: dict[int, str] = {}  # the subsample so far: the smallest hashes' keys
        self._largest: list[int] = []  # heap of the kept hashes, negated
        self.cache_hits = 0
        self.cache_misses = 0
        self._points: ResponsePoints | None = None

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            text = " ".join(responses(sample))
            if text:
                key = response_key(text)
                self._add(self._hash(key), key)
        self._points = None

    def __getstate__(self) -> dict[str, Any]:
        """The state without the embedder (a Ray worker only updates; the driver's copy, which
        merges and embeds, keeps its own)."""
        return {**self.__dict__, "embedder": None, "_points": None}

    def merge(self, other: Self) -> None:
        self.hashes.extend(other.hashes)
        for key, text in other.kept.items():
            self._keep(key, text)
        self._points = None

    def _hash(self, text: str) -> int:
        salt = self.seed.to_bytes(8, "little", signed=True)
        digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8, salt=salt)
        return int.from_bytes(digest.digest(), "little")

    def _add(self, key: int, text: str) -> None:
        self.hashes.append(key)
        self._keep(key, text)

    def _keep(self, key: int, text: str) -> None:
        if key in self.kept or self.subsample_size <= 0:
            return
        if len(self.kept) < self.subsample_size:
            self.kept[key] = text
            heapq.heappush(self._largest, -key)
        elif key < -self._largest[0]:
            del self.kept[-heapq.heapreplace(self._largest, -key)]
            self.kept[key] = text

    @property
    def responses(self) -> int:
        return len(self.hashes)

    def points(self) -> ResponsePoints:
        """Distinct keys, subsampled, embedded, near-duplicates merged (computed once)."""
        if self._points is not None:
            return self._points
        # shortest, then earliest kept, first: a group of near-copies is represented by its
        # shortest key, and among equally short ones by the earliest (the original of its typos)
        order = {key: rank for rank, key in enumerate(self.kept.values())}
        chosen = sorted(self.kept.values(), key=lambda key: (len(key), order[key]))
        size = len(chosen)
        distinct = len(np.unique(np.frombuffer(self.hashes, dtype=np.uint64)))
        groups = near_copy_groups(chosen, similarity=self.near_copy_similarity)
        chosen = [chosen[i] for i in central_members(chosen, groups)]
        cache = EmbeddingCache(self.cache_dir)
        vectors = cache.embed(self.embedder, chosen)
        self.cache_hits, self.cache_misses = cache.hits, cache.misses
        distances = cosine_distance_matrix(vectors) if size else np.zeros((0, 0), np.float32)
        keep = merge_near_duplicates(distances, self.near_duplicate_distance)
        self._points = ResponsePoints(
            vectors=vectors[keep],
            distances=distances[np.ix_(keep, keep)],
            distinct_texts=distinct,
            subsampled=size,
        )
        return self._points

    def sweep(self) -> ClusterSweep:
        """Cluster count of these responses for every eps."""
        return ClusterSweep.from_distances(self.points().distances, min_samples=self.min_samples)

    def result(self) -> dict[str, Any]:
        if not self.responses:
            return {"clusters": 0, "log_clusters": None, "responses": 0, "degenerate": None}
        points = self.points()
        sweep = self.sweep()
        if isinstance(self.eps, int | float):
            eps, source = float(self.eps), self.eps_source or "given"
        else:
            eps, source = most_clusters_eps([sweep]), f"{EPS_RULE} (this dataset)"
        clustering = cosine_dbscan(points.vectors, eps=eps, min_samples=self.min_samples)
        sizes = clustering.cluster_sizes()
        count = len(points.vectors)
        ruler = {
            "embedder": self.embedder.model_id,
            "eps": eps,
            "eps_source": source,
            "min_samples": self.min_samples,
            "subsample_size": self.subsample_size,
            "near_duplicate_distance": self.near_duplicate_distance,
            "near_copy_similarity": self.near_copy_similarity,
            "seed": self.seed,
        }
        return {
            "log_clusters": log_clusters(clustering.cluster_count),
            "log_base": "e",
            "clusters": clustering.cluster_count,
            "noise_points": clustering.noise_count,
            "points": count,
            "responses": self.responses,
            "distinct_responses": points.distinct_texts,
            "subsampled": points.subsampled,
            "merged_near_duplicates": points.subsampled - count,
            "cluster_sizes": sizes,
            "degenerate": degeneracy(
                clustering.cluster_count, clustering.noise_count, sizes[0] if sizes else 0, count
            ),
            "eps": eps,
            "eps_source": source,
            "min_samples": self.min_samples,
            "embedder": self.embedder.model_id,
            "embedding_cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "ruler": ruler,
            "sweep": [
                {"eps": float(e), "clusters": int(c)}
                for e, c in zip(CURVE_EPS, sweep.counts(CURVE_EPS), strict=True)
            ],
        }


def shared_eps(indicators: list[ResponseDiversityIndicator]) -> float:
    """One eps for several datasets: where they together have the most clusters."""
    return most_clusters_eps([i.sweep() for i in indicators if i.responses])
