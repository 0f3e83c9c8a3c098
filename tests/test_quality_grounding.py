"""Grounding against the real COCO annotations of coco_tiny, with planted errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from grounding_corpus import coco_records as build_coco_records
from vlit.generate.parse import FAILURE_NO_TURNS
from vlit.quality.grounding import AnnotationGrounding, ocr_claim_matches, ocr_claims
from vlit.quality.grounding.vocabulary import COCO_CATEGORIES, COCO_SYNONYMS, lookup_phrase
from vlit.schema import ImageRecord, OcrText, Sample, Turn

pytestmark = pytest.mark.model  # loads the real spaCy pipeline


@pytest.fixture(scope="session")
def coco_records(coco_tiny: Path) -> dict[str, ImageRecord]:
    """ImageRecords built straight from the official instances JSON (no vlit collector)."""
    return build_coco_records(coco_tiny)


@pytest.fixture(scope="session")
def grounding(coco_records: dict[str, ImageRecord]) -> AnnotationGrounding:
    stage = AnnotationGrounding(records=coco_records)
    stage.setup()
    return stage


def sample(image_id: str, *pairs: tuple[str, str], sample_id: str = "s") -> Sample:
    turns = []
    for question, answer in pairs:
        turns += [Turn("user", question), Turn("assistant", answer)]
    return Sample(sample_id=sample_id, image_id=image_id, turns=turns)


def grounded(stage: AnnotationGrounding, item: Sample) -> tuple[dict, dict]:
    [result] = stage([item])
    return result.scores, result.provenance["quality"]["grounding"]


def test_vocabulary_covers_all_80_categories_and_maps_synonyms() -> None:
    assert len(COCO_CATEGORIES) == 80
    assert all(COCO_SYNONYMS[c] for c in COCO_CATEGORIES)
    assert lookup_phrase("moped") == ("motorcycle", "synonym")
    assert lookup_phrase("sofa") == ("couch", "synonym")
    assert lookup_phrase("players") == ("person", "subtype")
    assert lookup_phrase("people") == ("person", "synonym")
    assert lookup_phrase("helmet") is None


def test_clean_conversations_are_not_flagged(grounding: AnnotationGrounding) -> None:
    # 391895: 1 motorcycle, 2 persons, 1 bicycle (real annotations)
    scores, details = grounded(
        grounding,
        sample(
            "391895",
            ("What is happening?", "A man in a red helmet rides a moped down a dirt road."),
            ("Who else is there?", "Two people are visible, and a bicycle is nearby."),
            ("Is there a cat?", "No, there is no cat anywhere in the scene."),
            ("What is he wearing?", "He wears an orange shirt and there is no dog either."),
        ),
    )
    assert details["status"] == "checked"
    assert set(details["mentioned"]) == {"person", "motorcycle", "bicycle"}
    assert scores["ground_hallucinated"] == 0
    assert scores["ground_hallucination_rate"] == 0
    assert scores["ground_count_claims"] == 1 and scores["ground_count_errors"] == 0
    assert scores["ground_absent_claims"] == 2 and scores["ground_false_absent"] == 0


def test_planted_hallucination_wrong_count_and_false_absent(
    grounding: AnnotationGrounding,
) -> None:
    scores, details = grounded(
        grounding,
        sample(
            "391895",
            ("What is happening?", "A man rides a motorcycle while a dog runs beside him."),
            ("How many people?", "There are three people on the road."),
            ("Any bicycles?", "There is no bicycle in the picture."),
        ),
    )
    assert details["hallucinated"] == ["dog"]
    assert scores["ground_hallucinated"] == 1
    assert scores["ground_hallucination_rate"] == pytest.approx(1 / 3)  # dog / {person, moto, dog}
    assert details["count_errors"] == [
        {"category": "person", "words": "people", "claimed": 3, "annotated": 2}
    ]
    assert details["false_absent"] == ["bicycle"]


def test_counts_with_subtypes_crowds_and_approximations(grounding: AnnotationGrounding) -> None:
    # 384553: 1 person, 2 elephants
    scores, details = grounded(
        grounding, sample("384553", ("Describe it.", "Two elephants walk beside one man."))
    )
    # "one man" beside an action verb is one of them, not a total: no count claim
    assert scores["ground_count_claims"] == 1 and scores["ground_count_errors"] == 0
    scores, _ = grounded(
        grounding, sample("384553", ("Describe it.", "There are two elephants and one man."))
    )
    assert scores["ground_count_claims"] == 2 and scores["ground_count_errors"] == 0
    scores, details = grounded(
        grounding, sample("384553", ("Describe it.", "Three elephants walk beside two women."))
    )
    assert {e["category"] for e in details["count_errors"]} == {"elephant", "person"}
    scores, _ = grounded(
        grounding, sample("384553", ("Describe it.", "At least three elephants are visible."))
    )
    assert scores["ground_count_claims"] == 0
    # 184613: 9 cows, persons include a crowd box: person counts are unknowable
    scores, details = grounded(
        grounding,
        sample("184613", ("Describe it.", "Nine cows graze while five people hold an umbrella.")),
    )
    assert details["counts_unknowable"] == ["person"]
    assert scores["ground_count_claims"] == 1 and scores["ground_count_errors"] == 0
    scores, details = grounded(
        grounding, sample("184613", ("How many cows?", "I can count ten cows in the field."))
    )
    assert details["count_errors"][0]["claimed"] == 10
    assert details["count_errors"][0]["annotated"] == 9


def test_yes_no_answers_to_existence_questions(grounding: AnnotationGrounding) -> None:
    # 173350: 2 dogs, 1 toilet
    scores, details = grounded(
        grounding,
        sample(
            "173350",
            ("Is there a cat in the bathroom?", "No, only the two dogs are there."),
            ("Is there a toilet in the room?", "No."),
            ("Are there any dogs?", "Yes, they sit by the door."),
        ),
    )
    assert details["false_absent"] == ["toilet"]
    assert scores["ground_absent_claims"] == 2  # cat (true) and toilet (false)
    assert scores["ground_hallucinated"] == 0
    assert scores["ground_count_errors"] == 0


def test_phrases_win_over_words(grounding: AnnotationGrounding) -> None:
    _, details = grounded(
        grounding, sample("12448", ("What is there?", "A girl hugs a teddy bear and a hot dog."))
    )
    assert details["mentioned"] == ["hot dog", "person", "teddy bear"]
    assert details["hallucinated"] == ["hot dog"]


def test_ocr_claims_against_ocr_annotations(coco_records: dict[str, ImageRecord]) -> None:
    record = coco_records["483108"]
    with_text = ImageRecord(
        image_id="483108-ocr",
        file_name=record.file_name,
        objects=list(record.objects),
        ocr=[OcrText(text="STOP"), OcrText(text="Main St")],
    )
    stage = AnnotationGrounding(records={"483108-ocr": with_text})
    scores, details = grounded(
        stage,
        sample(
            "483108-ocr",
            ("What does the sign say?", 'The red sign says "STOP".'),
            ("And the street sign?", "The street sign reads MAIN ST."),
            ("Any other text?", 'A banner with the words "Grand Opening" hangs above.'),
        ),
    )
    assert scores["ground_ocr_claims"] == 3
    assert details["ocr_mismatches"] == ["Grand Opening"]
    assert ocr_claims("It was a 'quiet' day with no writing.") == ["quiet"]
    assert ocr_claims("A 'quiet' day.") == []  # no text cue: not an OCR claim
    assert ocr_claim_matches("STOPP", ["stop"]) is True


def test_unannotated_and_failed_samples_are_not_checked(
    grounding: AnnotationGrounding, coco_records: dict[str, ImageRecord]
) -> None:
    bare = ImageRecord(image_id="bare", file_name="x.jpg")  # no instances file listed it
    stage = AnnotationGrounding(records={**coco_records, "bare": bare})
    stage.nlp = grounding.nlp
    unknown = sample("no-such-image", ("Q?", "A dog."), sample_id="a")
    empty = sample("bare", ("Q?", "A dog."), sample_id="b")
    failed = sample("391895", ("Q?", "A dog."), sample_id="c")
    failed.failure_reason = FAILURE_NO_TURNS
    results = stage([unknown, empty, failed])
    statuses = [r.provenance["quality"]["grounding"]["status"] for r in results]
    assert statuses == [
        "not_checked: no_record",
        "not_checked: no_annotations",
        "not_checked: generation_failed",
    ]
    assert all("ground_hallucinated" not in r.scores for r in results)


def test_an_image_listed_without_objects_is_checked(grounding: AnnotationGrounding) -> None:
    # 262284: listed by the instances file with no annotation: nothing of the 80 is there
    scores, details = grounded(
        grounding,
        sample("262284", ("Describe it.", "A cat sits by the toilet; there is no sink.")),
    )
    assert details["status"] == "checked"
    assert details["hallucinated"] == ["cat", "toilet"]
    assert scores["ground_false_absent"] == 0 and scores["ground_absent_claims"] == 1
