"""What every command shares: the console, progress bars, and the --json summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vlit.errors import ConfigError
from vlit.generate.generator import ProgressCallback
from vlit.rundir import RunDir

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Markup off: file names, ids and messages come from users' data, and "[/x]" in them must
# print as it is (rich would read it as a closing tag and fail).
console = Console(stderr=True, markup=False)
stdout = Console(markup=False)


def progress_bar() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for --json)."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def step_progress() -> Iterator[ProgressCallback]:
    """A progress callback ``(step, done, total)`` drawing one bar per step."""
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield report


def validated(model: type[M], values: dict[str, Any], *, command: str = "generate") -> M:
    """Option values checked with the stage's settings model, so errors read as the recipe's."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(_option_problem(item) for item in error.errors())
        fix = f"correct the option (see `vlit {command} --help`)"
        raise ConfigError(problems, fix=fix) from None


def _option_problem(item: Any) -> str:
    option = "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
    if item["type"] == "literal_error":
        choices = str(item["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
        return f"unknown {option} {item['input']!r}; use one of: {choices}"
    return f"{option}: {str(item['msg']).removeprefix('Value error, ')}"


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def stage_rows(run: RunDir, stage: str) -> int | None:
    """How many rows a committed stage holds (from its manifest), for a progress bar's total."""
    manifest = run.manifest(stage)
    return manifest.rows if manifest is not None else None


def emit_summary(title: str, summary: dict[str, Any], *, as_json: bool) -> None:
    """Print a command's counts: one JSON object on stdout, or a table for people."""
    if as_json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return
    table = Table(title=title, show_header=False)
    for key, value in _flatten(summary):
        table.add_row(key, str(value))
    stdout.print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, prefix=f"{name}.")
        else:
            yield name, value


TokenLimitParamOption = Annotated[
    str,
    typer.Option(
        "--llm-token-limit-param",
        help="Request field for the token limit: max_tokens or max_completion_tokens.",
    ),
]
