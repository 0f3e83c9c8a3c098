"""`vlit correlate`: indicator ~ accuracy correlations, ICC, heat map."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pingouin
import pytest
from PIL import Image
from scipy import stats

from vlit.errors import ConfigError, InputFileError
from vlit.evaluate.correlate import (
    correlate,
    load_benchmark_results,
    load_indicator_tables,
    write_heat_map,
    write_html,
    write_table,
)
from vlit.evaluate.icc import intraclass_correlation
from vlit.evaluate.seed_bench import SEED_BENCH_IMAGE_DIMENSIONS

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4 gives the ICCs.
SHROUT_FLEISS_RATINGS = [
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
]
SHROUT_FLEISS_TABLE_4 = {
    "ICC(1,1)": 0.17,
    "ICC(A,1)": 0.29,  # their ICC(2,1)
    "ICC(C,1)": 0.71,  # their ICC(3,1)
    "ICC(1,k)": 0.44,
    "ICC(A,k)": 0.62,  # their ICC(2,4)
    "ICC(C,k)": 0.91,  # their ICC(3,4)
}

DATASETS = ["llava_instruct", "mimic_it", "ours", "ours_qc"]
MODELS = ["llava-7b", "blip2", "openflamingo-3b"]
DIMENSIONS = list(SEED_BENCH_IMAGE_DIMENSIONS.values())


def test_icc_reproduces_the_published_worked_example() -> None:
    estimates = intraclass_correlation(SHROUT_FLEISS_RATINGS)
    for form, published in SHROUT_FLEISS_TABLE_4.items():
        assert round(estimates[form].value, 2) == published, form
    assert estimates["ICC(C,1)"].shrout_fleiss_name == "ICC(3,1)"


@pytest.mark.parametrize("seed", [0, 1])
def test_icc_matches_pingouin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # 9 dimensions x 3 models: a shared dimension effect, a model offset, noise
    table = rng.normal(30, 5, size=(9, 1)) + np.array([0.0, -2.0, 1.5]) + rng.normal(0, 2, (9, 3))
    ours = intraclass_correlation(table)
    long = pd.DataFrame(
        [(t, r, table[t, r]) for t in range(table.shape[0]) for r in range(table.shape[1])],
        columns=["target", "rater", "rating"],
    )
    theirs = pingouin.intraclass_corr(long, targets="target", raters="rater", ratings="rating")
    theirs = theirs.set_index("Type")
    for form, estimate in ours.items():
        row = theirs.loc[form]
        assert estimate.value == pytest.approx(row["ICC"], abs=1e-9)
        assert estimate.f_statistic == pytest.approx(row["F"], rel=1e-9)
        assert (estimate.df1, estimate.df2) == (row["df1"], row["df2"])
        assert estimate.p_value == pytest.approx(row["pval"], rel=1e-6, abs=1e-12)
        assert [estimate.ci_low, estimate.ci_high] == pytest.approx(list(row["CI95"]), abs=5e-3)


def test_icc_rejects_a_table_it_cannot_use() -> None:
    with pytest.raises(ConfigError, match="2 targets and 2 raters"):
        intraclass_correlation([[1.0, 2.0, 3.0]])
    with pytest.raises(ConfigError, match="complete"):
        intraclass_correlation([[1.0, 2.0], [float("nan"), 3.0]])


@pytest.fixture()
def study_files(tmp_path: Path) -> dict[str, object]:
    rng = np.random.default_rng(7)
    diversity = {"llava_instruct": 14.5, "mimic_it": 13.3, "ours": 20.5, "ours_qc": 22.6}
    balance = {"llava_instruct": 14.6, "mimic_it": 10.5, "ours": 16.8, "ours_qc": 12.3}
    accuracy: dict[tuple[str, str, str], float] = {}
    for dataset in DATASETS:
        for m, model in enumerate(MODELS):
            for d, dimension in enumerate(DIMENSIONS):
                value = 20 + 0.4 * diversity[dataset] + d - 1.5 * m + rng.normal(0, 1.5)
                accuracy[(dataset, model, dimension)] = round(float(value), 2)
    # three ways to give indicator tables: the simple table, a list, and vlit report's file
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "dataset": "llava_instruct",
                "indicators": {
                    "instruction_diversity": diversity["llava_instruct"],
                    "balance": {"value": balance["llava_instruct"], "better": "lower"},
                    "note": "text values are ignored",
                },
            }
        ),
        encoding="utf-8",
    )
    (tmp_path / "b.json").write_text(
        json.dumps(
            [
                {
                    "dataset": name,
                    "indicators": {
                        "instruction_diversity": diversity[name],
                        "balance": balance[name],
                    },
                }
                for name in ("mimic_it", "ours")
            ]
        ),
        encoding="utf-8",
    )
    run = tmp_path / "ours_qc"
    run.mkdir()
    (run / "indicators.json").write_text(
        json.dumps(
            {  # the shape `vlit report` writes: flat "table", nested details, no "dataset"
                "table": {
                    "instruction_diversity": diversity["ours_qc"],
                    "balance": balance["ours_qc"],
                    "instruction_complexity": None,
                },
                "indicators": {"instruction_diversity": {"mean_clusters": 1.0, "per_task": {}}},
            }
        ),
        encoding="utf-8",
    )
    # results: one CSV for three datasets, `vlit bench` outputs for the fourth
    with (tmp_path / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "dimension", "accuracy"])
        for (dataset, model, dimension), value in accuracy.items():
            if dataset != "ours_qc":
                writer.writerow([dataset, model, dimension, value])
    bench_files = []
    for model in MODELS:
        dims = {
            dimension: {"accuracy": accuracy[("ours_qc", model, dimension)], "total": 10}
            for dimension in DIMENSIONS
        }
        path = tmp_path / f"bench_{model}.json"
        path.write_text(
            json.dumps(
                {
                    "model": model,
                    "dataset": "ours_qc",
                    "dimensions": dims,
                    "overall": {"accuracy": float(np.mean([d["accuracy"] for d in dims.values()]))},
                }
            ),
            encoding="utf-8",
        )
        bench_files.append(path)
    return {
        "tables": [tmp_path / "a.json", tmp_path / "b.json", run / "indicators.json"],
        "results": [tmp_path / "results.csv", *bench_files],
        "accuracy": accuracy,
        "diversity": diversity,
    }


def test_correlations_match_a_hand_computation(study_files: dict) -> None:
    tables = load_indicator_tables(study_files["tables"])
    assert sorted(t.dataset for t in tables) == sorted(DATASETS)
    assert all(set(t.indicators) == {"instruction_diversity", "balance"} for t in tables)
    study = correlate(tables, load_benchmark_results(study_files["results"]))
    accuracy, diversity = study_files["accuracy"], study_files["diversity"]
    assert study.datasets == sorted(DATASETS)
    assert study.dimensions[:9] == DIMENSIONS
    for dimension in DIMENSIONS:
        means = [np.mean([accuracy[(d, m, dimension)] for m in MODELS]) for d in study.datasets]
        for dataset, mean in zip(study.datasets, means, strict=True):
            assert study.mean_accuracy[dataset][dimension] == pytest.approx(mean)
        x = np.array([diversity[d] for d in study.datasets])
        y = np.array(means)
        row = study.correlation("instruction_diversity", dimension)
        r = np.corrcoef(x, y)[0, 1]
        assert row.n == 4
        assert row.pearson_r == pytest.approx(r)
        t = r * np.sqrt((4 - 2) / (1 - r**2))
        assert row.pearson_p == pytest.approx(2 * stats.t.sf(abs(t), 2))
        ranks_x, ranks_y = x.argsort().argsort(), y.argsort().argsort()
        assert row.spearman_rho == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1])
    # the data were made so that diversity drives accuracy
    assert study.correlation("instruction_diversity", "Mean of dimensions").pearson_r > 0.9
    # only one dataset's results give SEED-Bench's "Overall": no correlation, and a note
    assert study.correlation("instruction_diversity", "Overall").n == 1
    assert any("Overall: only 1 datasets" in note for note in study.notes)
    # the ICC of one dataset is the ICC of its dimensions x models table
    table = [[accuracy[("mimic_it", m, d)] for m in sorted(MODELS)] for d in sorted(DIMENSIONS)]
    expected = intraclass_correlation(table)
    assert study.icc["mimic_it"]["ICC(C,1)"].value == pytest.approx(expected["ICC(C,1)"].value)
    assert study.icc["mimic_it"]["ICC(C,k)"].value == pytest.approx(expected["ICC(C,k)"].value)


def test_outputs_heat_map_html_and_table(study_files: dict, tmp_path: Path) -> None:
    study = correlate(
        load_indicator_tables(study_files["tables"]),
        load_benchmark_results(study_files["results"]),
    )
    png = write_heat_map(study, tmp_path / "heat.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600
    svg = write_heat_map(study, tmp_path / "heat.svg", method="spearman").read_text()
    assert "<svg" in svg and "instruction_diversity" in svg
    page = write_html(study, tmp_path / "study.html").read_text(encoding="utf-8")
    assert page.count("<table>") == 3 and "ICC(C,k)" in page and "Instances Counting" in page
    rows = list(csv.DictReader(write_table(study, tmp_path / "table.csv").open(encoding="utf-8")))
    assert len(rows) == 2 * len(study.dimensions) == 2 * 11
    full = json.loads(write_table(study, tmp_path / "study.json").read_text(encoding="utf-8"))
    assert set(full["icc"]) == set(DATASETS)
    with pytest.raises(ConfigError, match=".png or .svg"):
        write_heat_map(study, tmp_path / "heat.bmp")


def test_cli_correlate(study_files: dict, tmp_path: Path, capsys) -> None:
    from vlit.cli import main

    tables = [str(p) for p in study_files["tables"]]
    results = [str(p) for p in study_files["results"]]
    main(
        ["correlate", "--indicators", *tables, "--png", str(tmp_path / "h.png"),
         "--html", str(tmp_path / "h.html"), "--out", str(tmp_path / "t.csv"), "--json"]
        + [arg for path in results for arg in ("--results", path)]
    )  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["datasets"] == 4 and summary["indicators"] == 2
    assert set(summary["icc_consistency"]) == set(DATASETS)
    assert (tmp_path / "h.png").is_file() and (tmp_path / "h.html").is_file()
    assert len(summary["study"]["correlations"]) == 2 * 11


def test_bad_inputs_are_named(study_files: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("data,model,acc\nx,y,1\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="bad.csv.*dataset,model,dimension,accuracy"):
        load_benchmark_results([bad])
    nameless = tmp_path / "bench.json"
    nameless.write_text(json.dumps({"model": "m", "dimensions": {}, "overall": {}}), "utf-8")
    with pytest.raises(InputFileError, match="--dataset NAME"):
        load_benchmark_results([nameless])
    tables = load_indicator_tables(study_files["tables"])[:2]
    with pytest.raises(ConfigError, match="at least 3 datasets"):
        correlate(tables, load_benchmark_results(study_files["results"]))
    with pytest.raises(InputFileError, match="more than one"):
        load_indicator_tables([study_files["tables"][0], study_files["tables"][0]])
