"""Ego-Splitting overlapping clustering (Epasto, Lattanzi, Paes Leme 2017), written on networkx.

The definition we implement, step by step:

1. For every node ``u``: take its ego-net *minus ``u``* (the subgraph induced by the neighbours
   of ``u``) and find its connected components. Each component is one **persona** of ``u``.
2. Build the **persona graph**: every original edge ``(u, v)`` becomes an edge between the persona
   of ``u`` whose component contains ``v`` and the persona of ``v`` whose component contains
   ``u`` (both exist, since ``v`` is a neighbour of ``u`` and vice versa).
3. The connected components of the persona graph, mapped back to original nodes, are the
   (overlapping) clusters. A node belongs to as many clusters as it has personas in different
   components.

Consequence of the definition for **isolated nodes**: their ego-net minus themselves is empty,
so they have no persona and belong to **no cluster** (they are reported separately as
``isolated_nodes``). For the same reason an instruction with a single content word adds a node
but no cluster.

Hand-solved examples (tested): a triangle gives 1 cluster; a path ``a-b-c`` gives 2 clusters
``{a, b}`` and ``{b, c}``; a star with k leaves gives k clusters ``{centre, leaf}``; a bow-tie
(two triangles sharing the centre) gives 2 clusters; two cliques sharing one node give 2.

The persona search uses neighbour sets and shrinks the set of unvisited neighbours as it goes,
so a hub of degree d costs about d set operations, not d squared.

Example:
    >>> import networkx as nx
    >>> result = ego_splitting(nx.Graph([("a", "b"), ("b", "c"), ("a", "c")]))
    >>> [sorted(cluster) for cluster in result.clusters]
    [['a', 'b', 'c']]
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import combinations

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class EgoSplittingResult:
    """Clusters (sets of original nodes, largest first) and persona statistics."""

    clusters: list[frozenset[Hashable]]
    personas_per_node: dict[Hashable, int] = field(default_factory=dict)
    isolated_nodes: int = 0

    @property
    def cluster_count(self) -> int:
        return len(self.clusters)


def ego_splitting(graph: nx.Graph) -> EgoSplittingResult:
    """Run Ego-Splitting on an undirected graph (self-loops are ignored)."""
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    neighbours: list[set[int]] = [set() for _ in nodes]
    for u, v in graph.edges:
        if u != v:
            neighbours[index[u]].add(index[v])
            neighbours[index[v]].add(index[u])
    clusters_by_index, personas, isolated = _ego_split_indices(neighbours)
    clusters = [frozenset(nodes[i] for i in members) for members in clusters_by_index]
    return EgoSplittingResult(
        clusters=clusters,
        personas_per_node={nodes[i]: count for i, count in enumerate(personas)},
        isolated_nodes=isolated,
    )


def _ego_split_indices(
    neighbours: list[set[int]],
) -> tuple[list[list[int]], list[int], int]:
    """Ego-Splitting on integer nodes given as neighbour sets (the fast core)."""
    node_count = len(neighbours)
    # persona_of[u][v] = local persona number of u whose component holds neighbour v
    persona_of: list[dict[int, int]] = []
    personas_per_node: list[int] = []
    for u in range(node_count):
        ego = neighbours[u]
        local: dict[int, int] = {}
        unvisited = set(ego)
        component = 0
        while unvisited:
            start = unvisited.pop()
            local[start] = component
            frontier = [start]
            while frontier:
                x = frontier.pop()
                reached = neighbours[x] & unvisited  # neighbours of x inside the ego-net
                if reached:
                    unvisited -= reached
                    for y in reached:
                        local[y] = component
                    frontier.extend(reached)
            component += 1
        persona_of.append(local)
        personas_per_node.append(component)
    offsets = np.zeros(node_count + 1, dtype=np.int64)
    np.cumsum(personas_per_node, out=offsets[1:])
    persona_count = int(offsets[-1])
    isolated = sum(1 for ego in neighbours if not ego)
    if persona_count == 0:
        return [], personas_per_node, isolated
    sources: list[int] = []
    targets: list[int] = []
    for u in range(node_count):
        base_u = int(offsets[u])
        for v, persona_u in persona_of[u].items():
            if u < v:
                sources.append(base_u + persona_u)
                targets.append(int(offsets[v]) + persona_of[v][u])
    persona_graph = coo_matrix(
        (np.ones(len(sources), dtype=np.int8), (sources, targets)),
        shape=(persona_count, persona_count),
    )
    _, labels = connected_components(persona_graph, directed=False)
    owner = np.repeat(np.arange(node_count), personas_per_node)
    members: dict[int, set[int]] = {}
    for persona, label in enumerate(labels.tolist()):
        members.setdefault(label, set()).add(int(owner[persona]))
    clusters = sorted((sorted(group) for group in members.values()), key=lambda g: (-len(g), g))
    return clusters, personas_per_node, isolated


def cooccurrence_graph(token_lists: Iterable[Iterable[str]]) -> nx.Graph:
    """Word co-occurrence graph: words are nodes, an edge joins two words of one instruction.

    Edge attribute ``weight`` counts the instructions in which the pair co-occurs; every word
    seen is a node, including words of one-word instructions (which stay isolated).
    """
    graph = nx.Graph()
    for tokens in token_lists:
        words = sorted(set(tokens))
        graph.add_nodes_from(words)
        for u, v in combinations(words, 2):
            if graph.has_edge(u, v):
                graph[u][v]["weight"] += 1
            else:
                graph.add_edge(u, v, weight=1)
    return graph


def cooccurrence_clusters(token_lists: Iterable[Iterable[str]]) -> EgoSplittingResult:
    """Ego-Splitting clusters of the co-occurrence graph of ``token_lists``.

    Same result as ``ego_splitting(cooccurrence_graph(token_lists))`` but builds the neighbour
    sets directly (no networkx objects), which is what the indicator uses at scale.
    """
    vocabulary: dict[str, int] = {}
    neighbours: list[set[int]] = []
    for tokens in token_lists:
        ids = []
        for word in set(tokens):
            node = vocabulary.get(word)
            if node is None:
                node = vocabulary[word] = len(neighbours)
                neighbours.append(set())
            ids.append(node)
        if len(ids) > 1:
            for node in ids:
                neighbours[node].update(ids)
    for node, ego in enumerate(neighbours):
        ego.discard(node)
    words = list(vocabulary)
    clusters_by_index, personas, isolated = _ego_split_indices(neighbours)
    return EgoSplittingResult(
        clusters=[frozenset(words[i] for i in members) for members in clusters_by_index],
        personas_per_node={words[i]: count for i, count in enumerate(personas)},
        isolated_nodes=isolated,
    )
