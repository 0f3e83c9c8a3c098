"""Ego-Splitting on graphs solved by hand (see the module docstring for the derivations)."""

from __future__ import annotations

import itertools

import networkx as nx

from vlit.quality.indicators.ego_splitting import (
    cooccurrence_clusters,
    cooccurrence_graph,
    ego_splitting,
)


def _clusters(graph: nx.Graph) -> list[set[str]]:
    return sorted((set(c) for c in ego_splitting(graph).clusters), key=sorted)


def test_triangle_is_one_cluster() -> None:
    result = ego_splitting(nx.Graph([("a", "b"), ("b", "c"), ("a", "c")]))
    assert [set(c) for c in result.clusters] == [{"a", "b", "c"}]
    assert result.personas_per_node == {"a": 1, "b": 1, "c": 1}


def test_bow_tie_centre_gets_two_personas_and_two_clusters() -> None:
    graph = nx.Graph([("a", "b"), ("a", "c"), ("b", "c"), ("c", "d"), ("c", "e"), ("d", "e")])
    result = ego_splitting(graph)
    assert result.personas_per_node["c"] == 2
    assert all(result.personas_per_node[n] == 1 for n in "abde")
    assert _clusters(graph) == [{"a", "b", "c"}, {"c", "d", "e"}]


def test_two_cliques_sharing_one_node() -> None:
    left = [(u, v) for u, v in itertools.combinations(["x", "l1", "l2", "l3"], 2)]
    right = [(u, v) for u, v in itertools.combinations(["x", "r1", "r2", "r3", "r4"], 2)]
    graph = nx.Graph(left + right)
    result = ego_splitting(graph)
    assert result.personas_per_node["x"] == 2
    assert _clusters(graph) == [{"l1", "l2", "l3", "x"}, {"r1", "r2", "r3", "r4", "x"}]


def test_star_gives_one_cluster_per_leaf() -> None:
    # centre's ego-net minus itself = k unconnected leaves -> k personas; each leaf has one
    # persona {centre}; edge (centre, leaf) joins persona_i of the centre with that leaf only
    graph = nx.star_graph(5)  # centre 0, leaves 1..5
    result = ego_splitting(graph)
    assert result.personas_per_node[0] == 5
    assert sorted(sorted(c) for c in result.clusters) == [[0, leaf] for leaf in range(1, 6)]


def test_path_splits_the_middle_node() -> None:
    assert _clusters(nx.Graph([("a", "b"), ("b", "c")])) == [{"a", "b"}, {"b", "c"}]


def test_isolated_nodes_have_no_persona_and_no_cluster() -> None:
    graph = nx.Graph([("a", "b"), ("b", "c"), ("a", "c")])
    graph.add_nodes_from(["lonely", "alone"])
    result = ego_splitting(graph)
    assert result.cluster_count == 1
    assert result.isolated_nodes == 2
    assert result.personas_per_node["lonely"] == 0
    assert not any("lonely" in c for c in result.clusters)


def test_cooccurrence_graph_and_fast_path_agree() -> None:
    instructions = [
        ["dog", "ball", "grass"],
        ["dog", "leash"],
        ["cat", "sofa"],
        ["cat", "window", "sun"],
        ["bus"],  # one word: a node, no edge, no cluster
        ["dog", "ball", "grass"],
    ]
    graph = cooccurrence_graph(instructions)
    assert graph["dog"]["ball"]["weight"] == 2
    assert graph.degree["bus"] == 0
    slow = sorted(sorted(c) for c in ego_splitting(graph).clusters)
    fast = cooccurrence_clusters(instructions)
    assert sorted(sorted(c) for c in fast.clusters) == slow
    assert fast.isolated_nodes == 1
    # dog: ego {ball, grass, leash}: ball-grass joined, leash apart -> 2 personas
    assert fast.personas_per_node["dog"] == 2
    # cat: {sofa} and {window, sun} -> 2 personas -> clusters {cat, sofa}, {cat, window, sun}
    assert {"cat", "sofa"} in [set(c) for c in fast.clusters]


def test_random_graphs_match_networkx_reference() -> None:
    """Our neighbour-set persona search against a plain networkx rendering of the definition."""
    for trial in range(5):
        graph = nx.gnp_random_graph(40, 0.12, seed=trial)
        persona: dict[tuple[int, int], tuple[int, int]] = {}
        for node in graph:
            ego = graph.subgraph(set(graph[node]))
            for k, component in enumerate(nx.connected_components(ego)):
                for neighbour in component:
                    persona[(node, neighbour)] = (node, k)
        persona_graph = nx.Graph()
        persona_graph.add_nodes_from(set(persona.values()))
        persona_graph.add_edges_from((persona[(u, v)], persona[(v, u)]) for u, v in graph.edges)
        expected = sorted(
            sorted({owner for owner, _ in comp}) for comp in nx.connected_components(persona_graph)
        )
        got = sorted(sorted(c) for c in ego_splitting(graph).clusters)
        assert got == expected
