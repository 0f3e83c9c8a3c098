"""VQA v2: a questions file and an annotations file, joined by ``question_id``.

The official files are ``v2_OpenEnded_mscoco_<split>_questions.json`` (``{"questions": [
{"image_id", "question", "question_id"}]}``) and ``v2_mscoco_<split>_annotations.json``
(``{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...} x 10],
"multiple_choice_answer", "answer_type", ...}]}``). Each pair keeps the ten human answers and
their majority answer: the file's ``multiple_choice_answer`` where present, else the most
common answer (ties go to the alphabetically first, so the result never depends on order).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlit.collect._io import FieldChecker, load_json_file, normalise_text
from vlit.schema import VqaPair


def majority_answer(answers: list[str]) -> str:
    """The most common answer; ties go to the alphabetically first. Empty list gives ``""``.

    >>> majority_answer(["two", "2", "2", "two"])
    '2'
    """
    if not answers:
        return ""
    counts = Counter(answers)
    return min(counts, key=lambda answer: (-counts[answer], answer))


def load_vqa(
    questions_path: str | Path, annotations_path: str | Path, counts: Counter[str]
) -> dict[str, list[VqaPair]]:
    """Read both VQA v2 files and return the pairs per image id (as a string).

    Counts ``vqa_questions_without_answers`` (e.g. test-split questions),
    ``vqa_answers_without_question``, ``vqa_duplicate_question_ids`` and
    ``vqa_image_id_mismatch`` (question and annotation disagree; the question's id wins).
    """
    q_check = FieldChecker(questions_path, what="VQA v2 questions")
    questions = q_check.list_at(
        q_check.top_object(load_json_file(questions_path, what="VQA v2 questions"), ("questions",)),
        "questions",
    )
    a_check = FieldChecker(annotations_path, what="VQA v2 annotations")
    annotations = a_check.list_at(
        a_check.top_object(
            load_json_file(annotations_path, what="VQA v2 annotations"), ("annotations",)
        ),
        "annotations",
    )

    answers_by_question: dict[int, tuple[str, list[str], str, str | None]] = {}
    for index, raw in enumerate(annotations):
        record = f"annotations[{index}]"
        item = a_check.item(raw, record)
        question_id = a_check.integer(item, "question_id", record)
        record = f"annotations[{index}] (question_id {question_id})"
        image_id = a_check.image_id(item, record)
        raw_answers = item.get("answers")
        if not isinstance(raw_answers, list):
            raise a_check.fail(record, "'answers' should be a list of {\"answer\": ...} objects")
        answers = []
        for position, answer in enumerate(raw_answers):
            entry = a_check.item(answer, f"{record} answers[{position}]")
            text = a_check.string(entry, "answer", f"{record} answers[{position}]")
            answers.append(normalise_text(text))
        given = a_check.optional_string(item, "multiple_choice_answer", record)
        majority = normalise_text(given) if given else majority_answer(answers)
        answer_type = a_check.optional_string(item, "answer_type", record)
        if question_id in answers_by_question:
            counts["vqa_duplicate_annotation_question_ids"] += 1
            continue
        answers_by_question[question_id] = (image_id, answers, majority, answer_type)

    pairs: dict[str, list[VqaPair]] = {}
    seen: set[int] = set()
    for index, raw in enumerate(questions):
        record = f"questions[{index}]"
        item = q_check.item(raw, record)
        question_id = q_check.integer(item, "question_id", record)
        record = f"questions[{index}] (question_id {question_id})"
        image_id = q_check.image_id(item, record)
        question = q_check.string(item, "question", record)
        if question_id in seen:
            counts["vqa_duplicate_question_ids"] += 1
            continue
        seen.add(question_id)
        found = answers_by_question.get(question_id)
        if found is None:
            counts["vqa_questions_without_answers"] += 1
            continue
        answer_image_id, answers, majority, answer_type = found
        if answer_image_id != image_id:
            counts["vqa_image_id_mismatch"] += 1
        pairs.setdefault(image_id, []).append(
            VqaPair(
                question=normalise_text(question),
                answers=answers,
                majority_answer=majority,
                question_id=question_id,
                answer_type=answer_type,
            )
        )
    counts["vqa_answers_without_question"] += len(set(answers_by_question) - seen)
    return pairs
