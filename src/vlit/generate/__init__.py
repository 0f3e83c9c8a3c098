"""Instruction-response generation: modes, prompts, in-context examples, parsing, adaptation
(the stage over a run directory is `vlit.stages.generate`).

- `prompts`: the system prompt of each LLM mode, the in-context examples, the request message;
- `generator`: requests planned per image and mode, answers turned into samples;
- `parse`: LLM output -> turns, with the raw text kept when that fails;
- `regions`: which boxes become region conversations, and the image copy with the box drawn;
- `adaptation`: the no-LLM baseline (instruction templates filled from annotations);
- `seeding`: seeds that are the same in every process.
"""

from __future__ import annotations

from vlit.generate.adaptation import ADAPTATION_MODE, AnnotationAdapter
from vlit.generate.generator import ConversationGenerator, GenerationSettings
from vlit.generate.parse import ParsedConversation, parse_conversation
from vlit.generate.prompts import LLM_MODES, PromptLibrary
from vlit.generate.regions import RegionRule

__all__ = [
    "ADAPTATION_MODE",
    "LLM_MODES",
    "AnnotationAdapter",
    "ConversationGenerator",
    "GenerationSettings",
    "ParsedConversation",
    "PromptLibrary",
    "RegionRule",
    "parse_conversation",
]
