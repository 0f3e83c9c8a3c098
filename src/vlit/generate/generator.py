"""Plan LLM requests for image records, and turn the answers into samples.

For every record and every mode it gets (see `GenerationSettings.modes`), the generator builds
one `ChatRequest` asking for ``n`` generations: the mode's system prompt, ``examples_per_request``
in-context examples drawn with a seeded generator, and the visual clue (region mode: the region
clue, and a copy of the image with the object's box drawn on it). Each generation becomes one
`Sample`; one that cannot be parsed is kept with ``failure_reason`` and its raw text.

Every choice is seeded from (recipe seed, image id, mode, object), so the same recipe gives the
same requests, which the journal then answers without sending anything again.

Example:
    >>> generator = ConversationGenerator(settings=GenerateSettings().generation(),
    ...                                   images_dir=run.images_dir, generator_info={})
    ... # doctest: +SKIP
    >>> planned = generator.plan(record)          # doctest: +SKIP
    >>> samples = generator.samples_from(planned[0], outcome)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlit.clue import region_clue, visual_clue
from vlit.errors import RecordError
from vlit.generate.adaptation import ADAPTATION_MODE, AnnotationAdapter, VqaStyle
from vlit.generate.parse import parse_conversation
from vlit.generate.prompts import LLM_MODES, PromptLibrary
from vlit.generate.regions import RegionRule, choose_regions, draw_region_box, region_image_name
from vlit.generate.schemas import ConversationShape
from vlit.generate.seeding import seeded_random, stable_seed
from vlit.llm.base import ChatRequest, Outcome, StructuredSetting
from vlit.reasons import (
    LLM_REQUEST_FAILED,
    MISSING_ROLLOUT,
    SKIPPED_NO_ANNOTATION,
    SKIPPED_NO_IMAGE,
    SKIPPED_NO_REGION,
    SKIPPED_REGION_IMAGE,
    Reason,
)
from vlit.schema import ImageRecord, Sample

#: Called as work goes on: (step description, items done, items in total or None).
ProgressCallback = Callable[[str, int, "int | None"], None]

FAILURE_LLM = Reason(LLM_REQUEST_FAILED)  # the error is in the provenance's ``llm_error``
FAILURE_MISSING_ROLLOUT = Reason(
    MISSING_ROLLOUT, "the LLM returned fewer generations than requested"
)
SKIP_NO_REGION = Reason(
    SKIPPED_NO_REGION, "no object is large enough for a region box (crowd and tiny skipped)"
)
SKIP_IMAGE = Reason(SKIPPED_REGION_IMAGE, "the image cannot be read to draw the region box")
SKIP_NO_ANNOTATION = Reason(
    SKIPPED_NO_ANNOTATION, "nothing is annotated for this image, so there is no clue"
)
SKIP_NO_IMAGE = Reason(SKIPPED_NO_IMAGE, "the image file is missing or unreadable")
#: Problems noted at collection that make a record's image unusable (see vlit.collect.common).
_IMAGE_PROBLEMS = ("missing_file", "unreadable_image")


@dataclass(frozen=True)
class GenerationSettings:
    """What the generator reads, made by `vlit.stages.generate.GenerateSettings.generation`
    (where every default is written).

    ``modes`` maps a mode name to the share of images that get it (1.0: every image);
    ``structured`` is the structured-output setting of the requests (``vlit.llm.base``).
    """

    modes: dict[str, float]
    n: int
    temperature: float
    max_tokens: int
    seed: int
    examples_per_request: int
    region_rule: RegionRule
    absent_objects: int
    prompts_dir: str | None
    adaptation_tasks: tuple[str, ...] | None
    adaptation_max_per_task: int
    adaptation_vqa_style: VqaStyle
    structured: StructuredSetting

    @property
    def llm_modes(self) -> list[str]:
        return [mode for mode in self.modes if mode in LLM_MODES]


@dataclass(frozen=True)
class PlannedRequest:
    """One request and what its generations need to become samples."""

    image_id: str
    mode: str
    object_index: int | None
    request: ChatRequest
    image: str
    image_root: str
    provenance: dict[str, Any]
    shape: ConversationShape | None = None

    def sample_id(self, rollout: int) -> str:
        obj = "" if self.object_index is None else f"o{self.object_index}:"
        return f"{self.image_id}:{self.mode}:{obj}r{rollout}"


class ConversationGenerator:
    """Plans the requests of the LLM modes (and runs adaptation) for one record at a time.

    ``images_dir`` is ``RUN/images`` (region copies go to its ``regions/`` folder);
    ``images_root`` is where samples say they are (default ``images_dir``; the URL of a staged
    run's ``images/``, so other hosts find them);
    ``generator_info`` is the backend's description, copied to every sample's provenance.
    """

    def __init__(
        self,
        *,
        settings: GenerationSettings,
        images_dir: Path,
        generator_info: dict[str, Any],
        library: PromptLibrary | None = None,
        images_root: str | None = None,
    ) -> None:
        self.settings = settings
        self.images_dir = images_dir
        self.images_root = images_root if images_root is not None else str(images_dir)
        self.generator_info = generator_info
        self.library = library or PromptLibrary.load(settings.prompts_dir)
        self.adapter = (
            AnnotationAdapter(
                seed=settings.seed,
                tasks=settings.adaptation_tasks,
                max_per_task=settings.adaptation_max_per_task,
                vqa_style=settings.adaptation_vqa_style,
                region_rule=settings.region_rule,
                prompts_dir=settings.prompts_dir,
            )
            if ADAPTATION_MODE in settings.modes
            else None
        )

    def modes_for(self, record: ImageRecord) -> list[str]:
        """The modes this record gets, in recipe order (a share below 1 is a seeded draw)."""
        chosen = []
        for mode, share in self.settings.modes.items():
            if share >= 1.0:
                chosen.append(mode)
            elif seeded_random(self.settings.seed, record.image_id, mode, "share").random() < share:
                chosen.append(mode)
        return chosen

    def plan(self, record: ImageRecord) -> list[PlannedRequest | Sample]:
        """Requests for the record's LLM modes; finished samples for adaptation and skips."""
        planned: list[PlannedRequest | Sample] = []
        image_unusable = any(problem.startswith(_IMAGE_PROBLEMS) for problem in record.problems)
        for mode in self.modes_for(record):
            if image_unusable:  # a conversation about an image nobody can see is no sample
                planned.append(_skipped(record, mode, SKIP_NO_IMAGE))
            elif mode == ADAPTATION_MODE:
                assert self.adapter is not None
                planned.extend(self.adapter.adapt(record))
            elif not _has_annotations(record):
                planned.append(_skipped(record, mode, SKIP_NO_ANNOTATION))
            elif mode == "region":
                planned.extend(self._plan_regions(record))
            else:
                planned.append(self._request(record, mode, visual_clue(record)))
        return planned

    def _plan_regions(self, record: ImageRecord) -> list[PlannedRequest | Sample]:
        indices = choose_regions(record, rule=self.settings.region_rule, seed=self.settings.seed)
        if not indices:
            return [_skipped(record, "region", SKIP_NO_REGION)]
        planned: list[PlannedRequest | Sample] = []
        for index in indices:
            bbox = record.objects[index].bbox
            assert bbox is not None  # chosen objects have boxes
            name = region_image_name(record.image_id, index)
            try:
                colour = draw_region_box(record.location, bbox, self.images_dir / name)
            except RecordError as error:
                planned.append(
                    _skipped(record, "region", SKIP_IMAGE, object_index=index, detail=str(error))
                )
                continue
            extra = {
                "object_index": index,
                "object_category": record.objects[index].category,
                "object_bbox": list(bbox),
                "box_colour": colour,
                "source_image": record.file_name,
            }
            planned.append(
                self._request(
                    record,
                    "region",
                    region_clue(record, index),
                    object_index=index,
                    image=(name, self.images_root),
                    extra=extra,
                )
            )
        return planned

    def _request(
        self,
        record: ImageRecord,
        mode: str,
        clue: str,
        *,
        object_index: int | None = None,
        image: tuple[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> PlannedRequest:
        settings = self.settings
        target = "" if object_index is None else object_index
        rng = seeded_random(settings.seed, record.image_id, mode, target, "examples")
        examples = self.library.draw_examples(mode, settings.examples_per_request, rng)
        absent: tuple[str, ...] = ()
        if mode == "negative":
            present = {obj.category for obj in record.objects}
            pool = [name for name in self.library.object_vocabulary if name not in present]
            absent_rng = seeded_random(settings.seed, record.image_id, "absent")
            absent = tuple(absent_rng.sample(pool, min(settings.absent_objects, len(pool))))
        messages = self.library.build_messages(
            mode, clue=clue, examples=examples, absent=absent, max_tokens=settings.max_tokens
        )
        prompt = self.library.system_prompt(mode, settings.max_tokens)
        request = ChatRequest(
            messages,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            n=settings.n,
            seed=stable_seed(settings.seed, record.image_id, mode, target) % 2**31,
            output=prompt.shape.output_schema(settings.structured),
        )
        provenance: dict[str, Any] = {
            "mode": mode,
            "generator": self.generator_info,
            "parameters": {
                "temperature": settings.temperature,
                "max_tokens": settings.max_tokens,
                "n": settings.n,
                "seed": request.seed,
                "structured": settings.structured,
            },
            "recipe_seed": settings.seed,
            "prompt_id": prompt.prompt_id,
            "prompt_version": prompt.version,
            "prompt_sha": prompt.sha,
            "examples_version": self.library.examples_version,
            "example_ids": [example.example_id for example in examples],
            "visual_clue": clue,
        }
        if absent:
            provenance["absent_objects"] = list(absent)
        provenance.update(extra or {})
        file_name, root = image if image is not None else (record.file_name, record.image_root)
        return PlannedRequest(
            image_id=record.image_id,
            mode=mode,
            object_index=object_index,
            request=request,
            image=file_name,
            image_root=root,
            provenance=provenance,
            shape=prompt.shape,
        )

    def samples_from(self, planned: PlannedRequest, outcome: Outcome) -> list[Sample]:
        """One sample per requested generation: parsed turns, or a recorded failure."""
        samples = []
        for rollout in range(planned.request.n):
            provenance = dict(planned.provenance, rollout=rollout)
            sample = Sample(
                sample_id=planned.sample_id(rollout),
                image_id=planned.image_id,
                image=planned.image,
                image_root=planned.image_root,
                mode=planned.mode,
                provenance=provenance,
            )
            if outcome.error is not None:
                sample.failure_reason = FAILURE_LLM
                provenance["llm_error"] = outcome.error
            elif rollout >= len(outcome.choices):
                sample.failure_reason = FAILURE_MISSING_ROLLOUT
            else:
                choice = outcome.choices[rollout]
                parsed = parse_conversation(
                    choice.text, finish_reason=choice.finish_reason, shape=planned.shape
                )
                provenance.update(
                    finish_reason=choice.finish_reason,
                    truncated=parsed.truncated,
                    parse_format=parsed.format,
                    parse_notes=parsed.notes,
                )
                if parsed.ok:
                    sample.turns = parsed.turns
                else:
                    sample.failure_reason = parsed.failure_reason
                if not parsed.ok or parsed.truncated:
                    provenance["raw_text"] = choice.text
            samples.append(sample)
        return samples


def _has_annotations(record: ImageRecord) -> bool:
    return bool(record.captions or record.objects or record.vqa or record.ocr)


def _skipped(
    record: ImageRecord,
    mode: str,
    reason: Reason,
    *,
    object_index: int | None = None,
    detail: str | None = None,
) -> Sample:
    target = "" if object_index is None else f"o{object_index}:"
    provenance: dict[str, Any] = {"mode": mode}
    if object_index is not None:
        provenance["object_index"] = object_index
    if detail:
        provenance["detail"] = detail
    return Sample(
        sample_id=f"{record.image_id}:{mode}:{target}skipped",
        image_id=record.image_id,
        image=record.file_name,
        image_root=record.image_root,
        mode=mode,
        provenance=provenance,
        failure_reason=reason,
    )
