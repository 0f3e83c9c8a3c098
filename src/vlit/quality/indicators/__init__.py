"""Dataset-level indicators (the paper's Table 4) and what they are built from.

One module per indicator; ``suite.compute_indicators`` runs them all. The registry below maps
the names used on the command line and in recipes to the indicator classes.
"""

from __future__ import annotations

from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.complexity import (
    ComplexityProxyIndicator,
    LlmComplexityScorer,
    ObjectGranularityIndicator,
)
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import RuleTaskLabeller, TagGptTagger
from vlit.quality.indicators.response_diversity import ResponseDiversityIndicator
from vlit.quality.indicators.scores import QualityScoresIndicator

INDICATORS: dict[str, type] = {
    "tasks": TaskDistributionIndicator,
    "instruction_diversity": InstructionDiversityIndicator,
    "response_diversity": ResponseDiversityIndicator,
    "object_granularity": ObjectGranularityIndicator,
    "instruction_complexity_proxy": ComplexityProxyIndicator,
    "quality_scores": QualityScoresIndicator,
}

LABELLERS: dict[str, type] = {"rules": RuleTaskLabeller, "taggpt": TagGptTagger}

__all__ = [
    "INDICATORS",
    "LABELLERS",
    "ComplexityProxyIndicator",
    "InstructionDiversityIndicator",
    "LlmComplexityScorer",
    "ObjectGranularityIndicator",
    "QualityScoresIndicator",
    "ResponseDiversityIndicator",
    "RuleTaskLabeller",
    "TagGptTagger",
    "TaskDistributionIndicator",
]
