"""The YAML recipe of a whole run (`vlit.stages.run_all.run_recipe` executes it stage by stage).

A recipe names the run directory, the annotation sources to collect, how to generate, which
LLM to use, and the settings of the later stages (score, filter, report). Every section is its
stage's settings model (``vlit/stages/<stage>.py``), a pydantic model that forbids unknown
keys: a typo is an error that names the field and lists the valid ones. Relative paths are
relative to the recipe file. ``run_dir``, the annotation files and the image folders may also
be URLs on object storage (``s3://bucket/runs/r1``; see `vlit.storage`).

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
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vlit import __version__
from vlit.errors import ConfigError, InputFileError
from vlit.fileio import write_text_atomic
from vlit.images import is_url
from vlit.jsonio import loads_yaml
from vlit.runners.base import RunnerSettings
from vlit.stages.base import Settings
from vlit.stages.collect import CocoSource, CollectSettings, JsonlSource
from vlit.stages.filter import FilterSettings
from vlit.stages.generate import GenerateSettings, LlmSettings
from vlit.stages.report import ReportSettings
from vlit.stages.score import ScoreSettings


class Recipe(Settings):
    """A whole run: where, from what, how to generate, with which LLM, then the later stages.
    Each section is its stage's settings model (`vlit.stages`)."""

    run_dir: str
    collect: CollectSettings | None = None  # None: RUN/records/ already exists
    generate: GenerateSettings = GenerateSettings()
    llm: LlmSettings = LlmSettings()
    score: ScoreSettings | None = None
    filter: FilterSettings | None = None
    report: ReportSettings | None = None
    runner: RunnerSettings = RunnerSettings()


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
            fix="correct the recipe (every section and field is documented in vlit/stages/)",
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
