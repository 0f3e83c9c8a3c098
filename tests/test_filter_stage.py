"""The filter stage passes rows through as Arrow data: its output must be exactly what decoding
every sample, filtering and encoding it again gives, for any rows, reasons and shard sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlit.quality.filtering import FilterSequence
from vlit.rundir import RunDir
from vlit.schema import SAMPLE_SCHEMA, Sample, Turn
from vlit.stages import filter as filter_stage
from vlit.stages.filter import FilterSettings, build_filters

SETTINGS = FilterSettings(
    drop_lint=["refusal"], maxima={"ground_hallucination_rate": 0.5}, thresholds={"md": 20.0}
)
FAILURES = [
    None,
    "llm_request_failed",
    "unparseable: output cut off",  # a stored text of an older vlit
    "budget_spent: not generated (3 requests)",
]
DAMAGED = ['{"mode": ', "[1, 2]", "not json"]  # stored provenance/extra that fail a sample

scores_ = st.fixed_dictionaries(
    {},
    optional={
        "md": st.floats(0, 50),
        "lint_flags": st.just(0.0),
        "lint_refusal": st.sampled_from([0.0, 1.0]),
        "ground_hallucination_rate": st.floats(0, 1),
    },
)
row_ = st.builds(
    lambda i, scores, failure, provenance, extra, text: {
        **Sample(
            sample_id=f"s{i}",
            turns=[Turn("user", "What is here?"), Turn("assistant", text)],
            image="a.jpg",
            scores=scores,
            provenance={"mode": "conversation", "grounding": {"mentions": [text]}},
            extra={"id": i, "z": 1, "a": [text]},
        ).to_row(),
        "failure_reason": failure,
        **({"provenance": provenance} if provenance else {}),
        **({"extra": extra} if extra else {}),
    },
    st.integers(0, 10**6),
    scores_,
    st.sampled_from(FAILURES),
    st.sampled_from([None, *DAMAGED]),
    st.sampled_from([None, None, *DAMAGED]),
    st.text(max_size=30),
)


def reference(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept and dropped rows as decoding whole samples, filtering and encoding gives them."""
    sequence = FilterSequence(build_filters(SETTINGS, scores=filter_stage.ScoreValues()))
    samples = [Sample.from_row(row) for row in rows]
    kept, dropped = sequence.split(samples)
    return [s.to_row() for s in kept], [s.to_row() for s in dropped]


def stored(run: RunDir, stage: str) -> list[dict[str, Any]]:
    return [row for shard in run.read_shards(stage) for row in shard]


def as_stored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA).to_pylist()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(row_, max_size=40), shard_size=st.integers(1, 12))
def test_filtered_rows_equal_decoding_filtering_and_encoding(
    tmp_path_factory: Any, rows: list[dict[str, Any]], shard_size: int
) -> None:
    run = RunDir(tmp_path_factory.mktemp("run"))
    for index, row in enumerate(rows):
        row["sample_id"] = f"s{index}"
    with run.writer("scores", shard_size=shard_size) as writer:
        writer.add_rows(rows)
    summary = filter_stage.run(run, SETTINGS)
    kept, dropped = reference(rows)
    assert stored(run, "kept") == as_stored(kept)
    assert stored(run, "dropped") == as_stored(dropped)
    assert summary.kept == len(kept) and summary.dropped == len(dropped)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(
        st.sampled_from(["rows", "table"]).flatmap(
            lambda how: st.tuples(st.just(how), st.integers(0, 9))
        ),
        max_size=8,
    ),
    shard_size=st.integers(1, 6),
)
def test_tables_and_rows_are_cut_into_shards_in_order(
    tmp_path_factory: Any, pieces: list[tuple[str, int]], shard_size: int
) -> None:
    run = RunDir(tmp_path_factory.mktemp("run"))
    ids = iter(range(10**6))
    written: list[str] = []
    with run.writer("samples", shard_size=shard_size) as writer:
        for how, count in pieces:
            rows = [Sample(sample_id=f"s{next(ids)}").to_row() for _ in range(count)]
            written += [row["sample_id"] for row in rows]
            if how == "rows":
                writer.add_rows(rows)
            else:
                writer.add_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    assert [row["sample_id"] for row in stored(run, "samples")] == written
    sizes = [shard["rows"] for shard in run.manifest("samples").shards]  # type: ignore[union-attr]
    assert sum(sizes) == len(written) and all(0 < size <= shard_size for size in sizes[:-1])


def test_a_shard_of_an_older_schema_is_decoded_whole(tmp_path: Path) -> None:
    """A shard without a column this vlit writes (here ``labels``) is read the slow way and
    written in today's schema."""
    run = RunDir(tmp_path / "run")
    samples = [
        Sample(sample_id="keep", turns=[Turn("user", "Q?")], scores={"md": 30.0}),
        Sample(sample_id="low", turns=[Turn("user", "Q?")], scores={"md": 3.0}),
    ]
    run.write_samples("scores", samples)
    shard = run.stage_dir("scores") / run.manifest("scores").shards[0]["file"]  # type: ignore[union-attr]
    old = pq.read_table(shard).drop_columns(["labels"])
    pq.write_table(old, shard)
    summary = filter_stage.run(run, FilterSettings(min_md=20.0))
    assert (summary.kept, summary.dropped) == (1, 1)
    (kept,) = stored(run, "kept")
    assert kept["sample_id"] == "keep" and kept["labels"] == []
    assert stored(run, "dropped")[0]["drop_reason"].startswith("md_below_min")
