"""What every stage module shares: the settings base, the summary base, and the reuse rule.

A stage's settings model is its recipe section and the source of its CLI options' defaults,
so each default is written once. A stage's summary is a typed model,
turned to JSON (`Summary.to_json`) only where it leaves the program: ``run.json`` and the
``--json`` output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from vlit.generate.generator import ProgressCallback
from vlit.rundir import RunDir

S = TypeVar("S", bound="Summary")


class Settings(BaseModel):
    """Base of every stage's settings (and recipe section): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Summary(BaseModel):
    """Base of a stage's summary; ``up_to_date`` is set when `vlit run` reused the stage."""

    model_config = ConfigDict(extra="forbid")

    #: Fields left out of the JSON when they are None (sections a run may not have).
    omitted_when_none: ClassVar[tuple[str, ...]] = ()

    up_to_date: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data (``run.json``, ``--json``)."""
        data = self.model_dump(mode="json")
        for name in ("up_to_date", *self.omitted_when_none):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    def save(self, run: RunDir, stage: str) -> Self:
        """Record the summary in ``run.json`` under ``stage``; return it."""
        run.save_summary(stage, self.to_json())
        return self


def reused(
    kind: type[S], run: RunDir, outputs: tuple[str, ...], settings: dict[str, Any], name: str
) -> S | None:
    """The saved summary of stage ``name`` when its ``outputs`` are committed, current and made
    with ``settings`` (`vlit run` refreshes only what is stale); None otherwise, or when the
    saved summary is not one of ``kind``."""
    if not all(run.is_up_to_date(stage, settings) for stage in outputs):
        return None
    previous = run.load_meta().get("summaries", {}).get(name)
    if not isinstance(previous, dict):
        return None
    try:
        return kind.model_validate({**previous, "up_to_date": True})
    except ValidationError:  # saved by another version of vlit: run the stage again
        return None


def batch_counter(progress: ProgressCallback | None, step: str) -> Callable[[int], None] | None:
    """A callback counting samples done into ``progress`` under ``step``."""
    if progress is None:
        return None
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress(step, done, None)

    return advance
