"""Dataset means of the per-sample quality scores: matching degree (MD), correctness (C) and
hallucination rate, as written into ``sample.scores`` by the per-sample scorers, and CHAIR_i /
CHAIR_s (Rohrbach et al., 2018) over the samples grounding checked: hallucinated / mentioned
objects summed over samples, and the share of samples with a hallucinated object.

MD is reported as in the paper's table, cosine x 100 (stored scores in [-1, 1] are multiplied
by 100; scores already above 1 are taken as given). C is the percentage of samples judged
correct (mean of the 0/1 ``correct`` score x 100). Missing scores are counted, never guessed.

Example:
    >>> indicator = QualityScoresIndicator()
    >>> indicator.update([Sample("a", scores={"md": 0.31, "correct": 1.0})])
    >>> round(indicator.result()["md"], 1)
    31.0
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from vlit.schema import Sample

MD_KEY = "md"
CORRECT_KEY = "correct"
HALLUCINATION_KEYS = ("hallucination_rate", "hallucination")


class QualityScoresIndicator:
    """Collects MD, correctness and hallucination scores; means and histograms."""

    name = "quality_scores"

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {"md": [], "correct": [], "hallucination": []}
        self.samples = 0
        self.chair = {"checked": 0.0, "mentioned": 0.0, "hallucinated": 0.0, "with": 0.0}

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            self.samples += 1
            if MD_KEY in sample.scores:
                self.values["md"].append(sample.scores[MD_KEY])
            if CORRECT_KEY in sample.scores:
                self.values["correct"].append(sample.scores[CORRECT_KEY])
            if "ground_mentioned" in sample.scores:
                hallucinated = sample.scores.get("ground_hallucinated", 0.0)
                self.chair["checked"] += 1
                self.chair["mentioned"] += sample.scores["ground_mentioned"]
                self.chair["hallucinated"] += hallucinated
                self.chair["with"] += hallucinated > 0
            for key in HALLUCINATION_KEYS:
                if key in sample.scores:
                    self.values["hallucination"].append(sample.scores[key])
                    break

    def merge(self, other: Self) -> None:
        for key, values in other.values.items():
            self.values[key].extend(values)
        self.samples += other.samples
        for key, value in other.chair.items():
            self.chair[key] += value

    def result(self) -> dict[str, Any]:
        md = np.asarray(self.values["md"], dtype=np.float64)
        md_scale = 100.0 if md.size and np.abs(md).max() <= 1.0 else 1.0
        correct = np.asarray(self.values["correct"], dtype=np.float64)
        hallucination = np.asarray(self.values["hallucination"], dtype=np.float64)
        chair = self.chair
        return {
            "md": float(md.mean() * md_scale) if md.size else None,
            "md_scale": md_scale,
            "correctness": float(correct.mean() * 100.0) if correct.size else None,
            "hallucination_rate": float(hallucination.mean()) if hallucination.size else None,
            "chair_i": chair["hallucinated"] / chair["mentioned"] if chair["mentioned"] else None,
            "chair_s": chair["with"] / chair["checked"] if chair["checked"] else None,
            "scored": {key: len(values) for key, values in self.values.items()},
            "samples": self.samples,
            "histogram_values": {
                "md": (md * md_scale).tolist(),
                "correct": correct.tolist(),
                "hallucination": hallucination.tolist(),
            },
        }
