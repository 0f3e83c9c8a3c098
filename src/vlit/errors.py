"""Typed errors whose messages say which file, which record, and what to do about it."""

from __future__ import annotations


class VlitError(Exception):
    """Base of every error vlit raises on purpose.

    The string form is one line: ``<file>: record <record>: <problem>. Fix: <fix>``, with the
    parts that are unknown left out. The CLI prints it and exits with status 2.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.record = record
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.record is not None:
            parts.append(f"record {self.record}")
        parts.append(self.problem.rstrip("."))
        text = ": ".join(parts) + "."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return text


class InputFileError(VlitError):
    """A whole input file cannot be used (missing, truncated, not the expected format)."""


class RecordError(VlitError):
    """One record of an input is unusable; callers record it and go on."""


class ConfigError(VlitError):
    """A recipe or command-line option is invalid."""


class ModelUnavailableError(VlitError):
    """A model cannot be loaded (offline with no local copy, missing extra, bad path)."""


class LlmError(VlitError):
    """An LLM request failed for good (after retries) or the backend is misconfigured."""


class BudgetExhausted(VlitError):
    """The configured request or cost budget is spent; the run stops cleanly."""
