"""Why a sample failed or was dropped: a code and its details, a typed value.

Code reads and counts reasons by their ``code``; the text ``code: details`` exists only where a
reason leaves the program (a stored shard's column, an export, a report), and `Reason.parse` is
the one place that reads such text back (`vlit.schema.Sample.from_row`).

Example:
    >>> reason = Reason("md_below_min", "12.5")
    >>> str(reason)
    'md_below_min: 12.5'
    >>> Reason.parse(str(reason)) == reason
    True
"""

from __future__ import annotations

from dataclasses import dataclass

_SEPARATOR = ": "


@dataclass(frozen=True)
class Reason:
    """``code`` names the kind of failure or drop (what summaries count); ``detail`` says
    more about this sample (a value, a model's error)."""

    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        if not self.code or _SEPARATOR in self.code:
            raise ValueError(f"a reason's code must be non-empty without ': ', not {self.code!r}")

    def __str__(self) -> str:
        return f"{self.code}{_SEPARATOR}{self.detail}" if self.detail else self.code

    @classmethod
    def parse(cls, text: str) -> Reason:
        """The reason a stored text stands for (the inverse of ``str``)."""
        code, _, detail = text.partition(_SEPARATOR)
        return cls(code, detail) if code else cls("unknown", text)
