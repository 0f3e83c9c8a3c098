"""The indicator table: the paper's Table 4 layout, one column per dataset.

Example:
    >>> rows = indicator_rows({"a": {"table": {"md": 30.7, "task_diversity": 9}}})
    >>> rows[0]
    ('MD', ['30.7'])
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


def indicator_rows(reports: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(row title, one formatted cell per dataset) in Table 4 order."""
    return [
        (title, [format_value(report.get("table", {}).get(key)) for report in reports.values()])
        for title, key in TABLE_ROWS
    ]


def comparison_json(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"datasets": [...], "table": {key: {dataset: value}}}`` for ``--json``."""
    return {
        "datasets": list(reports),
        "table": {
            key: {name: report.get("table", {}).get(key) for name, report in reports.items()}
            for _, key in TABLE_ROWS
        },
    }
