"""The indicator table: the paper's Table 4 layout, one column per dataset.

Example:
    >>> rows = indicator_rows({"a": {"table": {"md": 30.7, "task_diversity": 9}}})
    >>> rows[0]
    ('MD', ['30.7'])

A value whose measurement degenerated carries its warning: ``0.0 [! one cluster holds 97%
of the responses]``; ``measured_with`` says what each value was measured with.
"""

from __future__ import annotations

from typing import Any

from vlit.quality.indicators.suite import TABLE_ROWS

NOT_COMPUTED = "not computed"


def format_value(value: float | int | None) -> str:
    """One decimal for figures, integers as they are, ``not computed`` for missing ones."""
    if value is None:
        return NOT_COMPUTED
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}"


def format_cell(report: dict[str, Any], key: str) -> str:
    """The formatted value, with the warning beside it when the value is degenerate."""
    text = format_value(report.get("table", {}).get(key))
    flag = (report.get("flags") or {}).get(key)
    return f"{text} [! {flag}]" if flag else text


def indicator_rows(reports: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(row title, one formatted cell per dataset) in Table 4 order."""
    return [
        (title, [format_cell(report, key) for report in reports.values()])
        for title, key in TABLE_ROWS
    ]


def measured_with(report: dict[str, Any], key: str) -> str:
    """What a dataset-level value was measured with (its ruler), or ``""``."""
    details = report.get("indicators", {})
    if report.get("table", {}).get(key) is None:
        return ""
    if key == "response_diversity":
        response = details.get("response_diversity", {})
        return (
            f"{response.get('embedder')}, eps {response.get('eps', 0.0):.3f} "
            f"({response.get('eps_source')}), min_samples {response.get('min_samples')}, "
            f"{response.get('points')} points of {response.get('subsampled')} distinct "
            f"responses (subsample size {response.get('ruler', {}).get('subsample_size')})"
        )
    if key in ("task_diversity", "instruction_diversity", "balance"):
        return f"labeller: {details.get('task_labels', {}).get('labeller')}"
    if key == "object_granularity":
        granularity = details.get("object_granularity", {})
        if granularity.get("source") == "annotations":
            return f"annotations of {granularity['annotated']['count']} samples"
        return f"spaCy parse of {granularity.get('parsed', {}).get('parsed')} instructions"
    if key == "instruction_complexity_proxy":
        return "words, clauses, reasoning words, turns"
    if key == "instruction_complexity":
        return f"LLM, {details.get('instruction_complexity_llm', {}).get('scored')} scored"
    return ""


def comparison_json(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"datasets": [...], "table": {key: {dataset: value}}}`` for ``--json``."""
    return {
        "datasets": list(reports),
        "flags": {name: report.get("flags") or {} for name, report in reports.items()},
        "rulers": {name: report.get("ruler") for name, report in reports.items()},
        "table": {
            key: {name: report.get("table", {}).get(key) for name, report in reports.items()}
            for _, key in TABLE_ROWS
        },
    }
