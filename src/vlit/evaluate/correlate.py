"""Do the data indicators predict how well a model tuned on the data does? (paper, Section 5)

Inputs:

- **indicator tables**, one per dataset: ``{"dataset": NAME, "indicators": {NAME: VALUE}}``
  where a value is a number or an object with a numeric ``"value"``; a list of such objects in
  one file; or the ``indicators.json`` that ``vlit report`` writes in a run directory (its flat
  ``"table"`` of indicators is used; without a ``dataset`` key the directory's name is).
- **benchmark results** of models tuned on those datasets: CSV with columns ``dataset, model,
  dimension, accuracy``; JSON with a list of such rows (or ``{"results": [...]}``); or the
  ``RESULTS.json`` that ``vlit bench --dataset NAME --out RESULTS.json`` writes (its dimensions
  plus ``Overall``).

Outputs: per dataset and dimension the accuracy averaged over the models (as the paper
correlates), plus "Mean of dimensions" (each model's unweighted mean over its dimensions;
SEED-Bench's "Overall" weighs dimensions by their question counts and is used when given); per
indicator and dimension Pearson's r and Spearman's rho across datasets with their two-sided
p-values; per dataset the six ICC forms with the dimensions as targets and the models as raters
(read ICC(C,1) / ICC(C,k), the consistency forms = Shrout & Fleiss ICC(3,1) / ICC(3,k)); a heat
map and an HTML page.

Example:
    >>> study = correlate(load_indicator_tables(["a.json", "b.json", "c.json"]),
    ...                   load_benchmark_results(["results.csv"]))      # doctest: +SKIP
    >>> study.correlation("Task diversity", "Overall").pearson_r          # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlit.errors import ConfigError, InputFileError
from vlit.evaluate.icc import IccEstimate, intraclass_correlation
from vlit.jsonio import decode_utf8, loads_json
from vlit.limits import FIELD_BYTES_VARIABLE, max_field_bytes

OVERALL = "Overall"
MEAN_OF_DIMENSIONS = "Mean of dimensions"
# Names that summarise other dimensions: correlated, but not ICC targets.
AGGREGATE_DIMENSIONS = frozenset({OVERALL, "overall", MEAN_OF_DIMENSIONS})
CORRELATION_METHODS: tuple[str, ...] = ("pearson", "spearman")


@dataclass
class DatasetIndicators:
    dataset: str
    indicators: dict[str, float]
    source: str = ""


@dataclass(frozen=True)
class ResultRow:
    dataset: str
    model: str
    dimension: str
    accuracy: float


@dataclass(frozen=True)
class CorrelationRow:
    """One indicator against one dimension, across ``n`` datasets."""

    indicator: str
    dimension: str
    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float

    def to_json(self) -> dict[str, Any]:
        return {
            "indicator": self.indicator,
            "dimension": self.dimension,
            "n": self.n,
            "pearson_r": _finite(self.pearson_r),
            "pearson_p": _finite(self.pearson_p),
            "spearman_rho": _finite(self.spearman_rho),
            "spearman_p": _finite(self.spearman_p),
        }


@dataclass
class CorrelationStudy:
    datasets: list[str]
    models: dict[str, list[str]]
    indicators: list[str]
    dimensions: list[str]
    mean_accuracy: dict[str, dict[str, float]]
    indicator_values: dict[str, dict[str, float]]
    correlations: list[CorrelationRow]
    icc: dict[str, dict[str, IccEstimate]]
    notes: list[str] = field(default_factory=list)

    def correlation(self, indicator: str, dimension: str) -> CorrelationRow:
        for row in self.correlations:
            if row.indicator == indicator and row.dimension == dimension:
                return row
        raise KeyError((indicator, dimension))

    def to_json(self) -> dict[str, Any]:
        return {
            "datasets": self.datasets,
            "models": self.models,
            "indicators": self.indicators,
            "dimensions": self.dimensions,
            "mean_accuracy_over_models": self.mean_accuracy,
            "indicator_values": self.indicator_values,
            "correlations": [row.to_json() for row in self.correlations],
            "icc": {
                dataset: {form: _icc_json(estimate) for form, estimate in forms.items()}
                for dataset, forms in self.icc.items()
            },
            "notes": self.notes,
        }

    def summary(self) -> dict[str, Any]:
        best = sorted(
            (r for r in self.correlations if math.isfinite(r.pearson_r)),
            key=lambda r: -abs(r.pearson_r),
        )[:5]
        return {
            "datasets": len(self.datasets),
            "indicators": len(self.indicators),
            "dimensions": len(self.dimensions),
            "pairs": len(self.correlations),
            "strongest_pearson": [
                f"{r.indicator} ~ {r.dimension}: r={r.pearson_r:+.2f} (p={r.pearson_p:.3f})"
                for r in best
            ],
            "icc_consistency": {
                dataset: {
                    "ICC(C,1)": _finite(forms["ICC(C,1)"].value),
                    "ICC(C,k)": _finite(forms["ICC(C,k)"].value),
                }
                for dataset, forms in self.icc.items()
            },
            "notes": self.notes,
        }


# -- reading ---------------------------------------------------------------------------------


def load_indicator_tables(paths: Sequence[str | Path]) -> list[DatasetIndicators]:
    """Read indicator tables (see the module docstring); one dataset may appear only once."""
    tables: list[DatasetIndicators] = []
    for path in map(Path, paths):
        data = _read_json(path)
        entries = data if isinstance(data, list) else [data]
        for position, entry in enumerate(entries):
            tables.append(_indicator_entry(entry, path, position))
    names = [t.dataset for t in tables]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputFileError(
            f"dataset(s) {', '.join(duplicates)} appear in more than one indicator table",
            file=", ".join(str(p) for p in paths),
            fix="give each dataset one table (set its 'dataset' name)",
        )
    return tables


def _indicator_entry(entry: Any, path: Path, position: int) -> DatasetIndicators:
    if not isinstance(entry, dict):
        raise InputFileError(
            "an indicator table must be a JSON object",
            file=str(path),
            record=position,
            fix='write {"dataset": NAME, "indicators": {NAME: VALUE}}',
        )
    # vlit report's indicators.json keeps the flat numbers in "table" (details in "indicators")
    raw = entry["table"] if isinstance(entry.get("table"), dict) else entry.get("indicators", entry)
    if not isinstance(raw, dict):
        raise InputFileError(
            "'indicators' must be an object of name -> value",
            file=str(path),
            record=position,
            fix='write {"dataset": NAME, "indicators": {NAME: VALUE}}',
        )
    name = entry.get("dataset") or entry.get("name") or entry.get("run")
    if not isinstance(name, str) or not name:
        name = path.resolve().parent.name  # vlit report writes RUN/indicators.json
    values = {key: number for key, value in raw.items() if (number := _number(value)) is not None}
    if not values:
        raise InputFileError(
            f"no numeric indicator in the table of dataset '{name}'",
            file=str(path),
            record=position,
            fix="give indicator values as numbers or as objects with a numeric 'value'",
        )
    return DatasetIndicators(dataset=name, indicators=values, source=str(path))


def _number(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def load_benchmark_results(paths: Sequence[str | Path]) -> list[ResultRow]:
    """Read benchmark results (CSV, JSON rows, or ``vlit bench`` output files)."""
    rows: list[ResultRow] = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".csv":
            rows.extend(_csv_results(path))
        else:
            rows.extend(_json_results(path))
    if not rows:
        raise InputFileError(
            "no benchmark results found",
            file=", ".join(str(p) for p in paths),
            fix="give rows of dataset, model, dimension, accuracy",
        )
    return rows


def _csv_results(path: Path) -> list[ResultRow]:
    text = decode_utf8(_read_bytes(path, "results file"), file=path, what="results CSV")
    limit = max_field_bytes()
    previous = csv.field_size_limit(limit)
    try:
        reader = csv.DictReader(io.StringIO(text))
        required = {"dataset", "model", "dimension", "accuracy"}
        if not required <= set(reader.fieldnames or []):
            raise InputFileError(
                f"CSV header must have columns {', '.join(sorted(required))}",
                file=str(path),
                fix="write a header line: dataset,model,dimension,accuracy",
            )
        return [_result_row(row, path, line) for line, row in enumerate(reader, start=2)]
    except csv.Error as error:
        raise InputFileError(
            f"not a readable CSV ({error}; fields are limited to {limit} bytes)",
            file=str(path),
            record=f"line {reader.line_num}",
            fix=f"repair that line (or raise {FIELD_BYTES_VARIABLE} for a longer field)",
        ) from error
    finally:
        csv.field_size_limit(previous)


def _json_results(path: Path) -> list[ResultRow]:
    data = _read_json(path)
    if isinstance(data, dict) and "dimensions" in data and "overall" in data:
        return _bench_file_rows(data, path)
    if isinstance(data, dict):
        data = data.get("results")
    if not isinstance(data, list):
        raise InputFileError(
            "expected a list of result rows, {'results': [...]}, or a `vlit bench` output",
            file=str(path),
            fix="write rows with dataset, model, dimension, accuracy",
        )
    return [_result_row(row, path, index) for index, row in enumerate(data)]


def _bench_file_rows(data: dict[str, Any], path: Path) -> list[ResultRow]:
    dataset, model = data.get("dataset"), data.get("model")
    if not dataset or not model:
        raise InputFileError(
            "this `vlit bench` output has no dataset name",
            file=str(path),
            fix='rerun `vlit bench ... --dataset NAME` or add "dataset": NAME to the file',
        )
    try:
        rows = [
            ResultRow(str(dataset), str(model), str(name), float(entry["accuracy"]))
            for name, entry in data["dimensions"].items()
        ]
        overall = float(data["overall"]["accuracy"])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise InputFileError(
            f"this `vlit bench` output is damaged ({type(error).__name__}: {error})",
            file=str(path),
            fix="rerun `vlit bench` to write it again",
        ) from error
    rows.append(ResultRow(str(dataset), str(model), OVERALL, overall))
    return rows


def _result_row(row: Any, path: Path, record: int) -> ResultRow:
    if not isinstance(row, dict):
        raise InputFileError(
            "result row is not an object",
            file=str(path),
            record=record,
            fix="write each row as an object with dataset, model, dimension and accuracy",
        )
    missing = [k for k in ("dataset", "model", "dimension", "accuracy") if row.get(k) in (None, "")]
    if missing:
        raise InputFileError(
            f"result row lacks {', '.join(missing)}",
            file=str(path),
            record=record,
            fix="every row needs dataset, model, dimension and accuracy",
        )
    try:
        accuracy = float(row["accuracy"])
    except (TypeError, ValueError) as error:
        raise InputFileError(
            f"accuracy '{row['accuracy']}' is not a number",
            file=str(path),
            record=record,
            fix="write the accuracy as a number (percent)",
        ) from error
    return ResultRow(str(row["dataset"]), str(row["model"]), str(row["dimension"]), accuracy)


def _read_json(path: Path) -> Any:
    return loads_json(_read_bytes(path, "file"), file=path, what="JSON")


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputFileError(
            f"cannot read the {what} ({error.strerror or type(error).__name__})",
            file=str(path),
            fix="check the path",
        ) from error


# -- the study -------------------------------------------------------------------------------


def correlate(
    tables: Iterable[DatasetIndicators], results: Iterable[ResultRow]
) -> CorrelationStudy:
    """Correlate every indicator with every dimension's model-averaged accuracy."""
    from scipy import stats

    tables = list(tables)
    notes: list[str] = []
    by_dataset: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in results:
        if row.dimension in by_dataset[row.dataset][row.model]:
            notes.append(
                f"{row.dataset} / {row.model} / {row.dimension} given twice; the last one is used"
            )
        by_dataset[row.dataset][row.model][row.dimension] = row.accuracy
    for per_model in by_dataset.values():
        for scores in per_model.values():
            values = [v for d, v in scores.items() if d not in AGGREGATE_DIMENSIONS]
            if values and MEAN_OF_DIMENSIONS not in scores:
                scores[MEAN_OF_DIMENSIONS] = float(np.mean(values))
    indicator_sets = {t.dataset: t.indicators for t in tables}
    datasets = sorted(set(indicator_sets) & set(by_dataset))
    for name in sorted(set(indicator_sets) ^ set(by_dataset)):
        side = "benchmark results" if name in indicator_sets else "an indicator table"
        notes.append(f"dataset '{name}' has no {side}; left out")
    if len(datasets) < 3:
        raise ConfigError(
            f"correlations need at least 3 datasets with both indicators and results, "
            f"got {len(datasets)} ({', '.join(datasets) or 'none'})",
            fix="check that the dataset names in the indicator tables and the results match",
        )
    mean_accuracy: dict[str, dict[str, float]] = {}
    models: dict[str, list[str]] = {}
    for dataset in datasets:
        per_model = by_dataset[dataset]
        models[dataset] = sorted(per_model)
        dimensions = sorted({d for scores in per_model.values() for d in scores})
        mean_accuracy[dataset] = {
            d: float(np.mean([s[d] for s in per_model.values() if d in s])) for d in dimensions
        }
    if len({tuple(m) for m in models.values()}) > 1:
        notes.append("the datasets were not all evaluated with the same models")
    dimensions = _ordered_dimensions(mean_accuracy)
    indicators = sorted({name for d in datasets for name in indicator_sets[d]})
    rows: list[CorrelationRow] = []
    for indicator in indicators:
        for dimension in dimensions:
            pairs = [
                (indicator_sets[d][indicator], mean_accuracy[d][dimension])
                for d in datasets
                if indicator in indicator_sets[d] and dimension in mean_accuracy[d]
            ]
            rows.append(_correlation_row(indicator, dimension, pairs, stats, notes))
    icc: dict[str, dict[str, IccEstimate]] = {}
    for dataset in datasets:
        table = _icc_table(by_dataset[dataset])
        if table is None:
            notes.append(f"no ICC for '{dataset}': needs 2+ models on 2+ shared dimensions")
        else:
            icc[dataset] = intraclass_correlation(table)
    return CorrelationStudy(
        datasets=datasets,
        models=models,
        indicators=indicators,
        dimensions=dimensions,
        mean_accuracy=mean_accuracy,
        indicator_values={d: indicator_sets[d] for d in datasets},
        correlations=rows,
        icc=icc,
        notes=notes,
    )


def _ordered_dimensions(mean_accuracy: dict[str, dict[str, float]]) -> list[str]:
    from vlit.evaluate.seed_bench import SEED_BENCH_IMAGE_DIMENSIONS

    present = {d for scores in mean_accuracy.values() for d in scores}
    order = [*SEED_BENCH_IMAGE_DIMENSIONS.values()]
    known = [d for d in order if d in present]
    others = sorted(d for d in present if d not in order and d not in AGGREGATE_DIMENSIONS)
    aggregates = sorted(d for d in present if d in AGGREGATE_DIMENSIONS)
    return known + others + aggregates


def _correlation_row(
    indicator: str,
    dimension: str,
    pairs: list[tuple[float, float]],
    stats: Any,
    notes: list[str],
) -> CorrelationRow:
    nan = float("nan")
    if len(pairs) < 3:
        notes.append(f"{indicator} ~ {dimension}: only {len(pairs)} datasets; no correlation")
        return CorrelationRow(indicator, dimension, len(pairs), nan, nan, nan, nan)
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "indicator" if np.ptp(x) == 0 else "accuracy"
        notes.append(f"{indicator} ~ {dimension}: the {which} is constant; no correlation")
        return CorrelationRow(indicator, dimension, len(pairs), nan, nan, nan, nan)
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    return CorrelationRow(
        indicator=indicator,
        dimension=dimension,
        n=len(pairs),
        pearson_r=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        spearman_rho=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
    )


def _icc_table(per_model: dict[str, dict[str, float]]) -> list[list[float]] | None:
    model_names = sorted(per_model)
    shared = set.intersection(*(set(scores) for scores in per_model.values()))
    targets = sorted(d for d in shared if d not in AGGREGATE_DIMENSIONS)
    if len(model_names) < 2 or len(targets) < 2:
        return None
    return [[per_model[m][d] for m in model_names] for d in targets]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _icc_json(estimate: IccEstimate) -> dict[str, Any]:
    row = estimate.to_json()
    return {key: _finite(v) if isinstance(v, float) else v for key, v in row.items()}


# -- output ----------------------------------------------------------------------------------


def write_table(study: CorrelationStudy, path: str | Path) -> Path:
    """The correlation table as CSV (``.csv``) or the whole study as JSON (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        fields = list(CorrelationRow.__dataclass_fields__)
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in study.correlations:
            writer.writerow(row.to_json())
        path.write_text(buffer.getvalue(), encoding="utf-8")
    else:
        path.write_text(json.dumps(study.to_json(), indent=2), encoding="utf-8")
    return path


def heat_map_figure(study: CorrelationStudy, *, method: str = "pearson") -> Any:
    """A matplotlib Figure: indicators x dimensions, coloured by the correlation."""
    if method not in CORRELATION_METHODS:
        raise ConfigError(
            f"unknown method '{method}'", fix=f"use one of: {', '.join(CORRELATION_METHODS)}"
        )
    from matplotlib.figure import Figure

    values = np.full((len(study.indicators), len(study.dimensions)), np.nan)
    p_values = np.full_like(values, np.nan)
    for row in study.correlations:
        i, j = study.indicators.index(row.indicator), study.dimensions.index(row.dimension)
        values[i, j] = row.pearson_r if method == "pearson" else row.spearman_rho
        p_values[i, j] = row.pearson_p if method == "pearson" else row.spearman_p
    width = 1.6 + 0.9 * len(study.dimensions)
    height = 1.8 + 0.5 * len(study.indicators)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-1, vmax=1)
    axes.set_facecolor("#dddddd")
    axes.set_xticks(range(len(study.dimensions)), study.dimensions, rotation=40, ha="right")
    axes.set_yticks(range(len(study.indicators)), study.indicators)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if math.isfinite(values[i, j]):
                star = "*" if p_values[i, j] < 0.05 else ""
                axes.text(j, i, f"{values[i, j]:+.2f}{star}", ha="center", va="center", fontsize=8)
    symbol = "r" if method == "pearson" else "rho"
    axes.set_title(
        f"{method.title()} {symbol}: indicator vs accuracy (mean over models), "
        f"n={len(study.datasets)} datasets; * p<0.05",
        fontsize=9,
    )
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def write_heat_map(study: CorrelationStudy, path: str | Path, *, method: str = "pearson") -> Path:
    """Save the heat map; the suffix picks the format (.png, .svg, .pdf)."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(
            f"cannot tell the figure format from '{path.name}'", fix="end the name in .png or .svg"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    heat_map_figure(study, method=method).savefig(path, dpi=150)
    return path


def write_html(study: CorrelationStudy, path: str | Path, *, method: str = "pearson") -> Path:
    """One self-contained page: heat map (inline SVG), correlations, mean accuracy, ICC."""
    buffer = io.StringIO()
    heat_map_figure(study, method=method).savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>vlit correlation study</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child{text-align:left}</style></head><body>",
        "<h1>Indicators vs benchmark accuracy</h1>",
        f"<p>{len(study.datasets)} datasets: {html.escape(', '.join(study.datasets))}. "
        "Accuracy is averaged over the models tuned on each dataset.</p>",
        svg,
        "<h2>Correlations</h2>",
        _html_table(
            ["indicator", "dimension", "n", "Pearson r", "p", "Spearman rho", "p"],
            [
                [
                    r.indicator,
                    r.dimension,
                    str(r.n),
                    _fmt(r.pearson_r),
                    _fmt(r.pearson_p, 3),
                    _fmt(r.spearman_rho),
                    _fmt(r.spearman_p, 3),
                ]
                for r in study.correlations
            ],
        ),
        "<h2>Accuracy (mean over models)</h2>",
        _html_table(
            ["dataset", *study.dimensions],
            [
                [
                    d,
                    *(
                        _fmt(study.mean_accuracy[d].get(x, float("nan")), 1)
                        for x in study.dimensions
                    ),
                ]
                for d in study.datasets
            ],
        ),
        "<h2>Consistency across models (ICC; targets = dimensions, raters = models)</h2>",
        _html_table(
            ["dataset", "form", "Shrout & Fleiss", "ICC", "95% CI", "F", "p"],
            [
                [
                    dataset,
                    e.form,
                    e.shrout_fleiss_name,
                    _fmt(e.value, 3),
                    f"[{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]",
                    _fmt(e.f_statistic),
                    _fmt(e.p_value, 3),
                ]
                for dataset, forms in study.icc.items()
                for e in forms.values()
            ],
        ),
    ]
    if study.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{html.escape(note)}</li>" for note in study.notes)
        parts.append("</ul>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
