"""Filters: keep/drop with reasons, counts, quantile thresholds, unscored samples kept."""

from __future__ import annotations

import pytest

from vlit.errors import ConfigError
from vlit.generate.generator import FAILURE_LLM
from vlit.quality.filtering import (
    FailedGenerationFilter,
    FilterSequence,
    LintFilter,
    MaxScoreFilter,
    MinScoreFilter,
    QuantileThreshold,
    RequireCorrectFilter,
    ScoreValues,
)
from vlit.reasons import Reason
from vlit.schema import Sample, Turn
from vlit.stages.filter import FilterSettings, build_filters


def scored(sample_id: str, **scores: float) -> Sample:
    return Sample(
        sample_id=sample_id,
        turns=[Turn("user", "Q?"), Turn("assistant", "A.")],
        scores={k: float(v) for k, v in scores.items()},
    )


def test_chain_counts_and_first_drop_wins() -> None:
    failed = scored("failed")
    failed.failure_reason = FAILURE_LLM
    samples = [
        scored("good", md=30, correct=1, correct_share=1, lint_flags=0),
        scored("low", md=10, correct=1, lint_flags=0),
        scored("wrong", md=40, correct=0, correct_share=0.33, lint_flags=0),
        scored("refuses", md=35, correct=0, lint_flags=1, lint_refusal=1),
        scored("unjudged", md=31, lint_flags=0),
        failed,
    ]
    chain = FilterSequence(
        [
            FailedGenerationFilter(),
            MinScoreFilter(score="md", minimum=20),
            LintFilter(flags=["refusal"]),
            RequireCorrectFilter(),
        ]
    )
    kept, dropped = chain.split(samples)
    assert [s.sample_id for s in kept] == ["good", "unjudged"]
    reasons = {s.sample_id: s.drop_reason for s in dropped}
    assert reasons == {
        "low": Reason("md_below_min", "10"),
        "wrong": Reason("incorrect", "0.33 of the valid votes said correct"),
        "refuses": Reason("lint_refusal"),  # lint runs before correctness: the first drop wins
        "failed": Reason("generation_failed", "llm_request_failed"),
    }
    assert str(reasons["failed"]) == "generation_failed: llm_request_failed"
    summary = chain.summary()
    assert summary["generation"] == {"total": 6, "kept": 5, "dropped_generation_failed": 1}
    assert summary["md_min"] == {"total": 5, "kept": 4, "dropped_md_below_min": 1}
    assert summary["correctness"] == {
        "total": 3,
        "kept": 2,
        "kept_unscored": 1,
        "dropped_incorrect": 1,
    }


def test_quantile_threshold_uses_the_runs_own_scores() -> None:
    samples = [scored(str(i), md=float(i)) for i in range(1, 11)]
    failed = scored("failed", md=-100)
    failed.failure_reason = FAILURE_LLM
    samples.append(failed)  # failed samples do not shift the quantile
    assert QuantileThreshold(0.3).resolve(samples, "md") == pytest.approx(3.7)
    filters = build_filters(FilterSettings(min_md_quantile=0.3), ScoreValues.of_samples(samples))
    kept, _ = FilterSequence(filters).split(samples)
    assert [s.sample_id for s in kept] == ["4", "5", "6", "7", "8", "9", "10"]
    with pytest.raises(ConfigError, match="outside"):
        QuantileThreshold(1.5)
    with pytest.raises(ConfigError, match="no sample has a 'md_min'"):
        QuantileThreshold(0.5).resolve(samples, "md_min")


def test_max_filters_and_option_checks() -> None:
    samples = [
        scored("a", ground_hallucination_rate=0.0),
        scored("b", ground_hallucination_rate=0.5),
        scored("c"),
    ]
    step = MaxScoreFilter(score="ground_hallucination_rate", maximum=0.25, reason="hallucination")
    kept, dropped = FilterSequence([step]).split(samples)
    assert [s.sample_id for s in kept] == ["a", "c"]
    assert dropped[0].drop_reason == Reason("hallucination", "0.5")
    assert step.counts["kept_unscored"] == 1
    with pytest.raises(ConfigError, match="both"):
        build_filters(FilterSettings(min_md=1, min_md_quantile=0.1), samples)
    with pytest.raises(ConfigError, match="unknown lint flag"):
        LintFilter(flags=["refusals"])
    assert len(LintFilter(flags=["all"]).flags) > 10
