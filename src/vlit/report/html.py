"""A self-contained HTML report: every style and plot inline (plots as SVG), no external file.

Sections: the comparison table (the paper's Table 4 layout, one column per dataset, each value
with what it was measured with beneath it) and the response cluster count against eps of
every dataset on one chart; then per
dataset the per-task counts, histograms of MD, correctness, complexity and O/G, the cluster
sizes of response diversity and instruction diversity per task, and a few example samples per
task and per drop reason. Every piece of dataset text is HTML-escaped.

Example:
    >>> html = render_html([DatasetView(name="demo", report=report, samples=samples)])
    ...                                                                     # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from vlit.quality.indicators.suite import TABLE_ROWS, add_group_examples, add_task_examples
from vlit.report.table import NOT_COMPUTED, format_value, indicator_rows, measured_with
from vlit.schema import Sample

EXAMPLES_PER_GROUP = 3
MAX_TURN_CHARS = 600

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
max-width:1200px}
h1,h2,h3{font-weight:600}table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.35rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plot{border:1px solid #eee;padding:.3rem}
.plot svg{width:420px;height:auto}.sample{border-left:3px solid #89a;padding:.3rem .8rem;
margin:.6rem 0;background:#fafafa}.role{font-weight:600;color:#456}.muted{color:#777}
.ruler{color:#777;font-size:.75em;max-width:18rem;margin-left:auto}pre{white-space:pre-wrap;background:#f6f6f6;padding:.6rem;font-size:.85em}
"""


@dataclass
class DatasetView:
    """One dataset in the report: its indicator report, its samples, its dropped samples."""

    name: str
    report: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    dropped: list[Sample] = field(default_factory=list)


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 5.0, height: float = 3.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot(1, 1, 1)


def bar_chart(title: str, counts: dict[str, int | float], *, ylabel: str = "samples") -> str:
    """An inline SVG bar chart (horizontal bars, largest first)."""
    figure, axes = _figure(5.0, max(2.0, 0.35 * len(counts) + 1.0))
    names = list(counts)[::-1]
    axes.barh(names, [counts[n] for n in names], color="#4c72b0")
    axes.set_title(title)
    axes.set_xlabel(ylabel)
    return _svg(figure)


def histogram(title: str, values: Sequence[float], *, xlabel: str, bins: int = 20) -> str:
    figure, axes = _figure()
    axes.hist(list(values), bins=bins, color="#55a868")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("samples")
    return _svg(figure)


def cluster_sizes_plot(title: str, sizes: Sequence[int]) -> str:
    figure, axes = _figure()
    axes.plot(range(1, len(sizes) + 1), list(sizes), marker="o", markersize=3, color="#c44e52")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel("cluster rank")
    axes.set_ylabel("size")
    return _svg(figure)


def sweep_plot(views: Sequence[DatasetView]) -> str | None:
    """Response cluster count against eps, one line per dataset, each eps used marked."""
    lines = []
    for view in views:
        response = view.report.get("indicators", {}).get("response_diversity") or {}
        if response.get("sweep"):
            lines.append((view.name, response["sweep"], response["eps"]))
    if not lines:
        return None
    figure, axes = _figure(6.0, 3.5)
    for name, points, eps in lines:
        drawn = axes.plot([p["eps"] for p in points], [p["clusters"] for p in points], label=name)
        axes.axvline(eps, color=drawn[0].get_color(), linestyle="--", linewidth=0.8)
    axes.set_title("Response clusters against eps (dashed: eps used)")
    axes.set_xlabel("eps (cosine distance)")
    axes.set_ylabel("clusters")
    axes.legend()
    return _svg(figure)


def _plots(view: DatasetView) -> list[str]:
    details = view.report.get("indicators", {})
    plots: list[str] = []
    tasks = details.get("tasks", {}).get("task_counts") or {}
    if tasks:
        plots.append(bar_chart("Samples per task", tasks))
    scores = details.get("quality_scores", {}).get("histogram_values", {})
    if scores.get("md"):
        plots.append(histogram("Matching degree", scores["md"], xlabel="MD (cosine x 100)"))
    if scores.get("correct"):
        plots.append(histogram("Correctness", scores["correct"], xlabel="correct (0/1)", bins=2))
    llm = details.get("instruction_complexity_llm", {}).get("histogram_values")
    if llm:
        plots.append(histogram("Instruction complexity (LLM)", llm, xlabel="score 1-10"))
    proxy = details.get("instruction_complexity_proxy", {}).get("histogram_values")
    if proxy:
        plots.append(histogram("Instruction complexity (proxy)", proxy, xlabel="proxy 1-10"))
    objects = details.get("object_granularity", {}).get("histogram_values")
    if objects:
        plots.append(histogram("Objects per sample (O/G)", objects, xlabel="objects"))
    response = details.get("response_diversity") or {}
    if response.get("cluster_sizes"):
        plots.append(cluster_sizes_plot("Response clusters (DBSCAN)", response["cluster_sizes"]))
    per_task = details.get("instruction_diversity", {}).get("per_task") or {}
    if per_task:
        plots.append(
            bar_chart(
                "Instruction clusters per task (Ego-Splitting)",
                {task: entry["clusters"] for task, entry in per_task.items()},
                ylabel="clusters",
            )
        )
    return plots


def _sample_html(sample: Sample) -> str:
    parts = [f'<div class="sample"><div class="muted">{escape(sample.sample_id)}']
    if sample.image:
        parts.append(f" &middot; {escape(sample.image)}")
    if sample.drop_reason:
        parts.append(f" &middot; dropped: {escape(str(sample.drop_reason))}")
    parts.append("</div>")
    for turn in sample.turns[:4]:
        text = turn.text if len(turn.text) <= MAX_TURN_CHARS else turn.text[:MAX_TURN_CHARS] + "…"
        parts.append(f'<div><span class="role">{escape(turn.role)}:</span> {escape(text)}</div>')
    parts.append("</div>")
    return "".join(parts)


def examples_by_task(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """The first few samples of each task (first label): all the report shows of a dataset."""
    by_task: dict[str, list[Sample]] = {}
    add_task_examples(by_task, samples, EXAMPLES_PER_GROUP)
    return by_task


def examples_by_reason(dropped: Iterable[Sample]) -> dict[str, list[Sample]]:
    """The first few dropped samples of each drop reason code (each shows its whole reason)."""
    by_reason: dict[str, list[Sample]] = {}
    add_group_examples(by_reason, dropped, _reason_code, EXAMPLES_PER_GROUP)
    return by_reason


def _reason_code(sample: Sample) -> str:
    return sample.drop_reason.code if sample.drop_reason is not None else "unknown"


class DroppedExamples:
    """The dropped samples the report shows, folded over the ``dropped`` stage on a runner
    (a `vlit.runners.base.Feed`): the first few of each drop reason code."""

    def __init__(self) -> None:
        self.by_reason: dict[str, list[Sample]] = {}

    def update_shard(self, shard: list[Sample], index: int = 0) -> None:
        add_group_examples(self.by_reason, shard, _reason_code, EXAMPLES_PER_GROUP)

    def merge(self, other: DroppedExamples) -> None:
        add_group_examples(self.by_reason, other.samples(), _reason_code, EXAMPLES_PER_GROUP)

    def samples(self) -> list[Sample]:
        return [sample for group in self.by_reason.values() for sample in group]


def _examples(view: DatasetView) -> str:
    by_task = examples_by_task(view.samples)
    by_reason = examples_by_reason(view.dropped)
    html = ["<h3>Examples per task</h3>"]
    for task, group in sorted(by_task.items()):
        html.append(f"<h4>{escape(task)}</h4>" + "".join(_sample_html(s) for s in group))
    html.append("<h3>Examples per drop reason</h3>")
    if not by_reason:
        html.append('<p class="muted">No dropped samples in this run.</p>')
    for reason, group in sorted(by_reason.items()):
        html.append(f"<h4>{escape(reason)}</h4>" + "".join(_sample_html(s) for s in group))
    return "".join(html)


def render_html(views: Sequence[DatasetView], *, title: str = "vlit dataset report") -> str:
    """The whole report as one HTML string."""
    reports = {view.name: view.report for view in views}
    head = "".join(f"<th>{escape(name)}</th>" for name in reports)
    rows = "".join(
        f"<tr><td>{escape(title_)}</td>"
        + "".join(
            f"<td>{escape(cell)}{_ruler_html(report, key)}</td>"
            for cell, report in zip(cells, reports.values(), strict=True)
        )
        + "</tr>"
        for (title_, cells), (_, key) in zip(indicator_rows(reports), TABLE_ROWS, strict=True)
    )
    sweep = sweep_plot(views)
    samples_row = "".join(f"<td>{view.report.get('samples', 0)}</td>" for view in views)
    body = [
        f"<h1>{escape(title)}</h1>",
        "<h2>Indicators (the paper's Table 4 layout)</h2>",
        f"<table><thead><tr><th>indicator</th>{head}</tr></thead><tbody>"
        f"<tr><td>samples</td>{samples_row}</tr>{rows}</tbody></table>",
        '<p class="muted">MD = mean CLIP cosine x 100; C = % judged correct; T = task labels; '
        "I = mean Ego-Splitting clusters per task; R = ln(DBSCAN clusters), noise excluded; "
        "O/G = objects per sample; I-complexity (LLM) = mean 1-10 LLM score, (proxy) = "
        "deterministic proxy; balance = population variance of the per-task shares in %. "
        "Under each value: what it was measured with.</p>",
    ]
    if sweep is not None:
        body.append(f'<div class="plots"><div class="plot">{sweep}</div></div>')
    for view in views:
        details = view.report.get("indicators", {})
        body.append(f"<h2>{escape(view.name)}</h2>")
        response = details.get("response_diversity") or {}
        facts = {
            "stage": view.report.get("stage"),
            "samples": view.report.get("samples"),
            "labeller": details.get("task_labels", {}).get("labeller"),
            "embedder": response.get("embedder", NOT_COMPUTED),
            "eps": response.get("eps"),
            "eps chosen by": response.get("eps_source"),
            "R warning": response.get("degenerate"),
            "response clusters": response.get("clusters"),
            "noise points": response.get("noise_points"),
            "O/G source": details.get("object_granularity", {}).get("source"),
            "CHAIR_i (hallucinated / mentioned objects)": details.get("quality_scores", {}).get(
                "chair_i"
            ),
            "CHAIR_s (samples with a hallucination)": details.get("quality_scores", {}).get(
                "chair_s"
            ),
        }
        body.append(
            "<table>"
            + "".join(
                f"<tr><td>{escape(k)}</td><td>{escape(_cell(v))}</td></tr>"
                for k, v in facts.items()
            )
            + "</table>"
        )
        body.append(
            '<div class="plots">'
            + "".join(f'<div class="plot">{svg}</div>' for svg in _plots(view))
            + "</div>"
        )
        body.append(_examples(view))
        body.append(
            "<details><summary>settings and timings</summary><pre>"
            + escape(
                json.dumps(
                    {
                        "settings": view.report.get("settings"),
                        "timings_s": view.report.get("timings"),
                    },
                    indent=2,
                )
            )
            + "</pre></details>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


def _ruler_html(report: dict[str, Any], key: str) -> str:
    note = measured_with(report, key)
    return f'<div class="ruler">{escape(note)}</div>' if note else ""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format_value(value) if abs(value) >= 1 else f"{value:.4f}"
    return "-" if value is None else str(value)
