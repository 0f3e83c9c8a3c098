"""Instruction diversity (I): Ego-Splitting clusters of each task's word co-occurrence graph.

Per task (from ``sample.labels``): every user turn of the task's samples is one instruction;
it becomes its content words (lowercase, function words, request verbs and image words removed, see
``text.content_words``); words co-occurring in one instruction are joined by an edge; the
graph goes through Ego-Splitting (``ego_splitting.py``) and the number of clusters is the
task's instruction diversity. Identical word sets add nothing to the graph and are kept once.

**The paper's I is the mean number of clusters over tasks** (``mean_clusters``); we also report
the total over tasks and every task's count, vocabulary size and isolated words (words that
never co-occur with another: by the definition they belong to no cluster).

Example:
    >>> indicator = InstructionDiversityIndicator()
    >>> indicator.update(samples)     # doctest: +SKIP
    >>> indicator.result()["mean_clusters"]   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Self

from vlit.quality.indicators.ego_splitting import cooccurrence_clusters
from vlit.quality.indicators.labels import OTHER
from vlit.quality.indicators.text import content_words, instructions
from vlit.schema import Sample


class InstructionDiversityIndicator:
    """Collects each task's distinct instruction word sets; clusters them in ``result``."""

    name = "instruction_diversity"

    def __init__(self, *, include_other: bool = False) -> None:
        self.include_other = include_other
        self.word_sets: dict[str, set[tuple[str, ...]]] = {}
        self.instructions: dict[str, int] = {}

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            tasks = [t for t in sample.labels if self.include_other or t != OTHER]
            if not tasks:
                continue
            word_sets = [tuple(sorted(set(content_words(text)))) for text in instructions(sample)]
            for task in tasks:
                self.word_sets.setdefault(task, set()).update(w for w in word_sets if w)
                self.instructions[task] = self.instructions.get(task, 0) + len(word_sets)

    def merge(self, other: Self) -> None:
        for task, sets in other.word_sets.items():
            self.word_sets.setdefault(task, set()).update(sets)
        for task, count in other.instructions.items():
            self.instructions[task] = self.instructions.get(task, 0) + count

    def result(self) -> dict[str, Any]:
        per_task: dict[str, dict[str, Any]] = {}
        for task in sorted(self.word_sets):
            clustering = cooccurrence_clusters(sorted(self.word_sets[task]))
            per_task[task] = {
                "clusters": clustering.cluster_count,
                "instructions": self.instructions.get(task, 0),
                "distinct_word_sets": len(self.word_sets[task]),
                "vocabulary": len(clustering.personas_per_node),
                "isolated_words": clustering.isolated_nodes,
                "cluster_sizes": [len(c) for c in clustering.clusters],
            }
        counts = [entry["clusters"] for entry in per_task.values()]
        return {
            "mean_clusters": sum(counts) / len(counts) if counts else None,
            "total_clusters": sum(counts),
            "tasks": len(counts),
            "per_task": per_task,
        }
