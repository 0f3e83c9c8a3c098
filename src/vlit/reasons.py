"""Why a sample failed or was dropped: a code and its details, a typed value.

Code reads and counts reasons by their ``code``; the text ``code: details`` exists only where a
reason leaves the program (a stored shard's column, an export, a report), and `Reason.parse` is
the one place that reads such text back (`vlit.schema.Sample.from_row`).

The failure codes (``Sample.failure_reason.code``, the keys of generate's ``samples_failed``)
are the constants below, gathered in `FAILURE_CODES`. A sample with several problems keeps its
first failure's code; `with_problem` appends the others to its detail, after ``"; "``.

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


# -- failure codes: why a sample was not produced correctly ----------------------------------
BUDGET_SPENT = "budget_spent"  # the request budget was spent before the sample's request
LLM_REQUEST_FAILED = "llm_request_failed"  # the request failed after its retries
MISSING_ROLLOUT = "missing_rollout"  # the LLM returned fewer generations than requested
EMPTY = "empty"  # the model returned no text
REFUSAL = "refusal"  # the model declined to write the conversation
UNPARSEABLE = "unparseable"  # no User/AI turns found in the answer
UNPARSEABLE_TRUNCATED = "unparseable_truncated"  # cut off before the first complete answer
UNPARSEABLE_NO_ANSWER = "unparseable_no_answer"  # turns found, but no question was answered
SKIPPED_NO_IMAGE = "skipped_no_image"  # generation skipped: the image is missing
SKIPPED_NO_ANNOTATION = "skipped_no_annotation"  # skipped: nothing to build a clue from
SKIPPED_NO_REGION = "skipped_no_region"  # skipped: no object fits a region box
SKIPPED_REGION_IMAGE = "skipped_region_image"  # skipped: the region box cannot be drawn
INVALID_RECORD = "invalid_record"  # an imported record that cannot be read as a sample
IMAGE_UNREADABLE = "image_unreadable"  # an imported sample's image is empty or corrupt
IMAGE_PATH_ESCAPES = "image_path_escapes"  # an imported sample's image lies outside the root
UNDECODABLE_ROW = "undecodable_row"  # a stored row (or one of its fields) does not decode

FAILURE_CODES = (
    BUDGET_SPENT,
    LLM_REQUEST_FAILED,
    MISSING_ROLLOUT,
    EMPTY,
    REFUSAL,
    UNPARSEABLE,
    UNPARSEABLE_TRUNCATED,
    UNPARSEABLE_NO_ANSWER,
    SKIPPED_NO_IMAGE,
    SKIPPED_NO_ANNOTATION,
    SKIPPED_NO_REGION,
    SKIPPED_REGION_IMAGE,
    INVALID_RECORD,
    IMAGE_UNREADABLE,
    IMAGE_PATH_ESCAPES,
    UNDECODABLE_ROW,
)


def with_problem(reason: Reason | None, problem: Reason) -> Reason:
    """The failure of a sample that failed for ``reason`` (None: not yet) and also has
    ``problem``: ``reason``'s code, with ``problem`` appended to its detail once (its detail
    alone when the codes are the same, else its text).

    >>> first = Reason("undecodable_row", "stored extra is not a JSON object")
    >>> str(with_problem(first, Reason("image_unreadable", "x.jpg is empty")))
    'undecodable_row: stored extra is not a JSON object; image_unreadable: x.jpg is empty'
    """
    if reason is None:
        return problem
    added = problem.detail if problem.code == reason.code else str(problem)
    if added in reason.detail or problem == reason:
        return reason
    return Reason(reason.code, "; ".join(filter(None, [reason.detail, added])))
