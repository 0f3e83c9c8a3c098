"""Annotation adaptation: instruction templates filled from the annotations, no LLM.

The survey's cheap baseline. For each task an instruction is drawn (seeded) from a pool of our
own phrasings and the annotation itself is the response. Tasks:

- ``brief_caption``: one caption; ``detailed_caption``: all captions joined into a paragraph;
- ``vqa``: the question with its majority answer, either marked "answer briefly" (the short
  answer kept) or with the answer expanded into a sentence;
- ``counting``: instance counts, crowd excluded (a category with a crowd box is not counted);
- ``object_presence``: yes for a category in the image, no for one that is absent;
- ``region_caption``: what is in a box (coordinates normalised to 0..1 in the instruction);
- ``grounding``: the box of a category that occurs exactly once;
- ``ocr``: the legible text.

Example:
    >>> adapter = AnnotationAdapter(seed=0)
    >>> samples = adapter.adapt(record)     # doctest: +SKIP
    >>> samples[0].provenance["task"]       # doctest: +SKIP
    'brief_caption'
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlit.errors import ConfigError, InputFileError
from vlit.generate.prompts import ADAPTATION_FILE, VOCABULARY_FILE, read_prompt_data
from vlit.generate.regions import RegionRule, eligible_objects
from vlit.generate.seeding import seeded_random
from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn

ADAPTATION_MODE = "adaptation"
VqaStyle = Literal["brief", "expanded", "mixed"]

_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_IRREGULAR_PLURALS = {
    "person": "people",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
}


class AnnotationAdapter:
    """Turn one image record's annotations into single-turn samples, one per task instance.

    ``max_per_task`` bounds how many samples one task makes per image (e.g. counting questions
    about at most that many categories). ``tasks`` restricts the tasks (default: all).
    """

    def __init__(
        self,
        *,
        seed: int,
        tasks: tuple[str, ...] | None = None,
        max_per_task: int = 2,
        vqa_style: VqaStyle = "mixed",
        region_rule: RegionRule | None = None,
        prompts_dir: str | Path | None = None,
    ) -> None:
        self.seed = seed
        self.max_per_task = max_per_task
        self.vqa_style = vqa_style
        self.region_rule = region_rule or RegionRule()
        data = read_prompt_data(ADAPTATION_FILE, prompts_dir)
        self.templates: dict[str, dict[str, list[str]]] = data.get("tasks") or {}
        self.version = int(data.get("version", 0))
        self.box_note = str(data.get("box_note", ""))
        self.vocabulary = tuple(read_prompt_data(VOCABULARY_FILE, prompts_dir)["objects"])
        self._tasks: dict[str, Callable[[ImageRecord, random.Random], list[_Made]]] = {
            "brief_caption": self._brief_caption,
            "detailed_caption": self._detailed_caption,
            "vqa": self._vqa,
            "counting": self._counting,
            "object_presence": self._object_presence,
            "region_caption": self._region_caption,
            "grounding": self._grounding,
            "ocr": self._ocr,
        }
        missing = [task for task in self._tasks if task not in self.templates]
        if missing:
            raise InputFileError(
                f"no templates for task(s) {', '.join(missing)}",
                file=ADAPTATION_FILE,
                fix="add a pool of instructions for each task",
            )
        chosen = tasks if tasks is not None else tuple(self._tasks)
        unknown = [task for task in chosen if task not in self._tasks]
        if unknown:
            raise ConfigError(
                f"unknown adaptation task(s) {', '.join(unknown)}",
                fix=f"use some of: {', '.join(self._tasks)}",
            )
        self.tasks = chosen

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def adapt(self, record: ImageRecord) -> list[Sample]:
        """All samples of the enabled tasks for one record, in task order."""
        samples = []
        for task in self.tasks:
            rng = seeded_random(self.seed, record.image_id, ADAPTATION_MODE, task)
            for index, made in enumerate(self._tasks[task](record, rng)):
                samples.append(
                    Sample(
                        sample_id=f"{record.image_id}:{ADAPTATION_MODE}:{task}:{index}",
                        turns=[Turn("user", made.instruction), Turn("assistant", made.response)],
                        image_id=record.image_id,
                        image=record.file_name,
                        image_root=record.image_root,
                        mode=ADAPTATION_MODE,
                        provenance={
                            "mode": ADAPTATION_MODE,
                            "task": task,
                            "templates_version": self.version,
                            "template_index": made.template_index,
                            "recipe_seed": self.seed,
                            "source": made.source,
                        },
                    )
                )
        return samples

    # -- tasks -----------------------------------------------------------------------------------
    def _brief_caption(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        captions = _clean_captions(record.captions)
        if not captions:
            return []
        caption = rng.choice(captions)
        return [self._make("brief_caption", rng, {"caption": caption}, {"caption": caption})]

    def _detailed_caption(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        captions = _clean_captions(record.captions)
        if len(captions) < 2:
            return []
        paragraph = " ".join(captions)
        return [
            self._make(
                "detailed_caption", rng, {"paragraph": paragraph}, {"captions": len(captions)}
            )
        ]

    def _vqa(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        pool = self.templates["vqa"]
        made = []
        answered = [pair for pair in record.vqa if pair.majority_answer.strip()]
        for pair in answered[: self.max_per_task]:
            answer = " ".join(pair.majority_answer.split())
            question = " ".join(pair.question.split())
            style = self.vqa_style
            if style == "mixed":
                style = rng.choice(("brief", "expanded"))
            if style == "brief":
                index = rng.randrange(len(pool["brief_markers"]))
                instruction = f"{question} {pool['brief_markers'][index]}"
                response = answer
            else:
                index = -1
                instruction = question
                kind = {"yes": "expanded_yes", "no": "expanded_no"}.get(
                    answer.lower(), "expanded_other"
                )
                response = rng.choice(pool[kind]).format(answer=answer)
            made.append(
                _Made(
                    instruction,
                    response,
                    index,
                    {"question_id": pair.question_id, "answer": answer, "style": style},
                )
            )
        return made

    def _counting(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        counts = Counter(obj.category for obj in record.objects if not obj.iscrowd)
        crowded = {obj.category for obj in record.objects if obj.iscrowd}
        categories = sorted(name for name in counts if name not in crowded)
        made = []
        for name in rng.sample(categories, min(self.max_per_task, len(categories))):
            count = counts[name]
            fields = _noun_fields(name) | {"count": str(count), "count_words": _words(count)}
            responses = "responses_one" if count == 1 else "responses_many"
            made.append(
                self._make("counting", rng, fields, {"category": name, "count": count}, responses)
            )
        return made

    def _object_presence(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        present = sorted({obj.category for obj in record.objects})
        absent = [name for name in self.vocabulary if name not in present]
        made = []
        for name in rng.sample(present, min(self.max_per_task, len(present))):
            made.append(
                self._make(
                    "object_presence",
                    rng,
                    _noun_fields(name),
                    {"category": name, "present": True},
                    "responses_yes",
                )
            )
        # Only when the image has annotated objects do we know what is absent from it.
        if present:
            for name in rng.sample(absent, min(self.max_per_task, len(absent))):
                made.append(
                    self._make(
                        "object_presence",
                        rng,
                        _noun_fields(name),
                        {"category": name, "present": False},
                        "responses_no",
                    )
                )
        return made

    def _region_caption(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        width, height = record.width, record.height
        if not width or not height:
            return []
        indices = eligible_objects(record, self.region_rule)
        made = []
        for index in sorted(rng.sample(indices, min(self.max_per_task, len(indices)))):
            obj = record.objects[index]
            assert obj.bbox is not None  # eligible objects have boxes
            description = _describe_object(obj)
            fields = {
                "box": _normalised_box(obj.bbox, width, height),
                "box_note": self.box_note,
                "description": description,
                "Description": description[:1].upper() + description[1:],
            }
            made.append(self._make("region_caption", rng, fields, {"object_index": index}))
        return made

    def _grounding(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        width, height = record.width, record.height
        if not width or not height:
            return []
        counts = Counter(obj.category for obj in record.objects)
        single = sorted(
            index
            for index, obj in enumerate(record.objects)
            if counts[obj.category] == 1 and not obj.iscrowd and obj.bbox is not None
        )
        made = []
        for index in sorted(rng.sample(single, min(self.max_per_task, len(single)))):
            obj = record.objects[index]
            assert obj.bbox is not None  # chosen among objects with boxes
            fields = _noun_fields(obj.category) | {
                "box": _normalised_box(obj.bbox, width, height),
                "box_note": self.box_note,
            }
            made.append(self._make("grounding", rng, fields, {"object_index": index}))
        return made

    def _ocr(self, record: ImageRecord, rng: random.Random) -> list[_Made]:
        texts = list(dict.fromkeys(t.text.strip() for t in record.ocr if t.legible and t.text))
        texts = [text for text in texts if text]
        if not texts:
            return []
        if len(texts) == 1:
            return [self._make("ocr", rng, {"texts": texts[0]}, {"texts": 1}, "responses_one")]
        joined = ", ".join(f'"{text}"' for text in texts)
        return [self._make("ocr", rng, {"texts": joined}, {"texts": len(texts)}, "responses_many")]

    def _make(
        self,
        task: str,
        rng: random.Random,
        fields: dict[str, str],
        source: dict[str, Any],
        responses: str = "responses",
    ) -> _Made:
        pool = self.templates[task]
        index = rng.randrange(len(pool["instructions"]))
        instruction = pool["instructions"][index].format_map(fields)
        response = rng.choice(pool[responses]).format_map(fields)
        return _Made(" ".join(instruction.split()), response.strip(), index, source)


@dataclass(frozen=True)
class _Made:
    """One instruction-response pair before it becomes a Sample."""

    instruction: str
    response: str
    template_index: int
    source: dict[str, Any]


def _clean_captions(captions: list[str]) -> list[str]:
    cleaned = []
    for caption in captions:
        text = " ".join(caption.split())
        if not text:
            continue
        text = text[0].upper() + text[1:]
        if text[-1] not in ".!?":
            text += "."
        cleaned.append(text)
    return list(dict.fromkeys(cleaned))


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) object name: ``wine glass`` -> ``wine glasses``."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def _with_article(noun: str) -> str:
    article = "an" if noun[:1].lower() in "aeiou" else "a"
    return f"{article} {noun}"


def _noun_fields(name: str) -> dict[str, str]:
    return {"noun": name, "nouns": plural(name), "a_noun": _with_article(name)}


def _words(count: int) -> str:
    return _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)


def _describe_object(obj: ObjectAnnotation) -> str:
    words = [attribute.strip() for attribute in obj.attributes if attribute.strip()][:3]
    return _with_article(" ".join([*words, obj.category]))


def _normalised_box(bbox: list[float], width: int, height: int) -> str:
    x, y, w, h = bbox
    corners = (x / width, y / height, (x + w) / width, (y + h) / height)
    return "[" + ", ".join(f"{min(1.0, max(0.0, value)):.2f}" for value in corners) + "]"
