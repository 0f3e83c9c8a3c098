"""`vlit report` on runs built from the real LLaVA slice: every indicator, JSON, HTML."""

from __future__ import annotations

import itertools
import json
import pickle
import weakref
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llm_servers import ScriptedServer, indicator_model
from vlit.cli import app
from vlit.errors import InputFileError
from vlit.generate.generator import FAILURE_LLM
from vlit.reasons import Reason
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn


def _run_with_a_failed_and_a_dropped_sample(
    llava_slice: Path, tmp_path: Path, *, shard_size: int
) -> Path:
    """200 scored samples of the LLaVA slice in ``kept`` shards of ``shard_size``, the fourth
    failed and the fifth dropped."""
    root = _run_from_slice(llava_slice, tmp_path / "run", 200, scored=True)
    run = RunDir(root)
    samples = list(run.read_samples("kept"))
    samples[3].failure_reason = FAILURE_LLM
    samples[4].drop_reason = Reason("lint_refusal")
    run.write_samples("kept", samples, shard_size=shard_size)
    return root


def _held(root: Path) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    """Every usable sample of the run's ``kept`` and every ``dropped`` one in memory (the
    reference the streamed report must equal), and the failed and dropped ones counted."""
    from vlit.quality.indicators.suite import usable_batches

    run = RunDir(root)
    excluded = {"failed": 0, "dropped": 0}
    samples = [sample for batch in usable_batches(run, "kept", excluded) for sample in batch]
    dropped = list(run.read_samples("dropped")) if run.has_stage("dropped") else []
    return samples, dropped, excluded


def _run_from_slice(llava_slice: Path, root: Path, count: int, scored: bool) -> Path:
    records = json.loads(llava_slice.read_text())[:count]
    samples = []
    for i, record in enumerate(records):
        turns = [
            Turn("user" if c["from"] == "human" else "assistant", c["value"])
            for c in record["conversations"]
        ]
        scores = {"md": 0.25 + (i % 10) / 100, "correct": float(i % 4 != 0)} if scored else {}
        samples.append(
            Sample(str(record["id"]), turns=turns, image=record.get("image"), scores=scores)
        )
    run = RunDir(root)
    run.write_samples("kept", samples)
    evil = Sample(
        "evil",
        turns=[Turn("user", "<script>alert(1)</script> & co"), Turn("assistant", "<b>bold</b>")],
        drop_reason="lint:<leak>",
    )
    run.write_samples("dropped", [evil])
    return root


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.mark.model
def test_report_two_runs_minilm_html_and_json(llava_slice: Path, tmp_path: Path) -> None:
    first = _run_from_slice(llava_slice, tmp_path / "scored", 160, scored=True)
    second = _run_from_slice(llava_slice, tmp_path / "plain", 100, scored=False)
    html = tmp_path / "report.html"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "report",
            str(first),
            str(second),
            "--html",
            str(html),
            "--json",
            "--parse-limit",
            "100",
            "--eps",
            "auto",
        ],
    )
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout.strip().splitlines()[-1])
    assert table["datasets"] == ["scored", "plain"]
    assert table["table"]["md"]["scored"] == pytest.approx(29.5, abs=0.01)  # md 0.25..0.34 evenly
    assert table["table"]["correctness"]["scored"] == pytest.approx(75.0)
    assert table["table"]["md"]["plain"] is None
    for name in ("scored", "plain"):
        for key in (
            "task_diversity",
            "instruction_diversity",
            "response_diversity",
            "object_granularity",
            "instruction_complexity_proxy",
            "balance",
        ):
            assert table["table"][key][name] is not None, (key, name)
    saved = json.loads((first / "indicators.json").read_text())
    response = saved["indicators"]["response_diversity"]
    assert response["embedder"].startswith("transformer:minilm")
    assert response["clusters"] >= 1 and response["responses"] == 160
    assert len(response["sweep"]) == 101 and max(p["clusters"] for p in response["sweep"]) >= 1
    assert saved["ruler"]["eps"] == response["eps"] and "together" in response["eps_source"]
    assert saved["table"]["task_diversity"] >= 2
    assert list((first / "embeddings").glob("*.npz"))
    # the page parses, has inline SVG plots, no external resources, and escapes dataset text
    page = html.read_text()
    parser = _Collector()
    parser.feed(page)
    assert parser.tags.count("svg") >= 6
    assert "script" not in parser.tags and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "lint:&lt;leak&gt;" in page
    assert "not computed" in page
    # each R value shows its ruler, the same shared eps for both runs
    assert page.count(f"eps {response['eps']:.3f} (most clusters over 2 datasets") == 2
    assert "Response clusters against eps" in page
    assert 'src="http' not in page and 'href="http' not in page
    # the second report reuses the cached embeddings
    again = runner.invoke(app, ["report", str(first), "--json", "--parse-limit", "50"])
    assert again.exit_code == 0, again.output
    cached = json.loads((first / "indicators.json").read_text())
    assert cached["indicators"]["response_diversity"]["embedding_cache"]["misses"] == 0


def test_report_errors_are_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path / "missing"), "--embedder", "none"])
    assert result.exit_code != 0
    result = runner.invoke(app, ["report", str(tmp_path), "--labeller", "taggpt"])
    assert result.exit_code != 0


@pytest.mark.model
def test_report_reuses_a_recorded_ruler_and_flags_degenerate_r(
    llava_slice: Path, tmp_path: Path
) -> None:
    first = _run_from_slice(llava_slice, tmp_path / "first", 120, scored=False)
    second = _run_from_slice(llava_slice, tmp_path / "second", 80, scored=False)
    runner = CliRunner()
    options = ["--json", "--parse-limit", "20", "--embedder", "wordllama"]
    assert runner.invoke(app, ["report", str(first), *options]).exit_code == 0
    ruler = json.loads((first / "indicators.json").read_text())["ruler"]
    assert ruler["embedder"].startswith("wordllama") and ruler["subsample_size"] == 5000
    reused = runner.invoke(
        app,
        ["report", str(second), "--json", "--parse-limit", "20"]
        + ["--reuse-settings", str(first / "indicators.json")],
    )
    assert reused.exit_code == 0, reused.output
    again = json.loads((second / "indicators.json").read_text())["ruler"]
    assert again["eps"] == ruler["eps"] and again["embedder"] == ruler["embedder"]
    assert again["eps_source"].startswith("reused from")
    # a tiny eps leaves every response noise: the table says so beside the value
    tiny = runner.invoke(app, ["report", str(second), *options, "--eps", "0.001"])
    assert tiny.exit_code == 0, tiny.output
    table = json.loads(tiny.stdout.strip().splitlines()[-1])
    assert "noise" in table["flags"]["second"]["response_diversity"]
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    refused = runner.invoke(app, ["report", str(second), "--reuse-settings", str(broken)])
    # one clear error naming the file (main() turns it into exit status 2)
    assert isinstance(refused.exception, InputFileError)
    assert "broken.json" in str(refused.exception) and "ruler" in str(refused.exception)


def test_report_reads_the_run_shard_by_shard(
    llava_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight shards, a failed and a dropped sample: `vlit report` never holds the whole stage,
    and its indicators and HTML examples are those computed over the samples in memory."""
    from vlit.quality.indicators import suite
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.report.html import DatasetView, render_html

    root = _run_with_a_failed_and_a_dropped_sample(llava_slice, tmp_path, shard_size=25)
    samples, dropped, excluded = _held(root)
    assert excluded == {"failed": 1, "dropped": 1}
    settings = suite.IndicatorSettings()
    expected = suite.compute_indicators(
        samples, embedder=load_embedder("wordllama"), settings=settings
    )
    expected_html = render_html([DatasetView("run", expected, samples, dropped)])

    def whole_stage(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the whole stage was loaded")

    html = tmp_path / "report.html"
    with monkeypatch.context() as patched:
        patched.setattr(RunDir, "read_samples", whole_stage)
        patched.setattr(suite, "compute_indicators", whole_stage)
        argv = ["report", str(root), "--json", "--embedder", "wordllama", "--html", str(html)]
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    written = json.loads((root / "indicators.json").read_text())
    assert written["table"] == expected["table"]
    assert written["excluded"] == excluded and written["samples"] == 198

    def examples(page: str) -> str:
        return page.split("<h3>Examples per task</h3>")[1].split("<details>")[0]

    assert examples(html.read_text()) == examples(expected_html)
    assert "alert(1)" in examples(expected_html)  # the dropped stage's example


@pytest.mark.model
def test_the_llm_report_reads_the_run_shard_by_shard(
    llava_slice: Path,
    tmp_path: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten shards, a failed and a dropped sample, TagGPT labels and the LLM complexity of 10
    samples: `vlit report` holds at most two shards, the chosen samples and the examples it
    shows, and writes the indicators and HTML examples computed over the samples in memory
    (the same labels, the same scored samples). Feeds updated on copies, shard by shard, and
    merged (as the Ray workers do) give the same report."""
    from vlit import rundir
    from vlit.llm.journal import LlmJournal
    from vlit.llm.session import LlmSession
    from vlit.quality.indicators import suite
    from vlit.quality.indicators.complexity import LlmComplexityScorer
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.quality.indicators.labels import TagGptTagger
    from vlit.report.html import DatasetView, examples_by_task, render_html

    scripted_server.add_rule(indicator_model)
    root = _run_with_a_failed_and_a_dropped_sample(llava_slice, tmp_path, shard_size=20)
    run = RunDir(root)
    samples, dropped, excluded = _held(root)
    embedder = load_embedder("wordllama")
    session = LlmSession(
        scripted_server.backend(), journal=LlmJournal(tmp_path / "expected.sqlite")
    )
    expected = suite.compute_indicators(
        samples,
        embedder=embedder,
        tagger=TagGptTagger(session=session, embedder=embedder),
        complexity_scorer=LlmComplexityScorer(session=session, max_samples=10),
    )
    expected_html = render_html([DatasetView("run", expected, samples, dropped)])
    shown = sum(len(group) for group in examples_by_task(samples).values())
    asked = scripted_server.received()

    alive = most_alive = 0
    from_row = rundir._sample_from_row

    def gone() -> None:
        nonlocal alive
        alive -= 1

    def counted(*args: Any) -> Sample:
        nonlocal alive, most_alive
        sample = from_row(*args)
        weakref.finalize(sample, gone)
        alive += 1
        most_alive = max(most_alive, alive)
        return sample

    def whole_stage(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the whole stage was loaded")

    html = tmp_path / "report.html"
    argv = ["report", str(root), "--json", "--embedder", "wordllama", "--html", str(html)]
    argv += ["--labeller", "taggpt", "--complexity-samples", "10"]
    argv += ["--llm-base-url", scripted_server.url, "--llm-model", scripted_server.model]
    with monkeypatch.context() as patched:
        patched.setattr(RunDir, "read_samples", whole_stage)
        patched.setattr(suite, "compute_indicators", whole_stage)
        patched.setattr(rundir, "_sample_from_row", counted)
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    # one tagging request per usable sample, one complexity request per chosen sample
    assert scripted_server.received() - asked == asked == 198 + 10
    # two shards at once (the one read, the one before), the chosen, the examples shown (+1 dropped)
    assert most_alive <= 2 * 20 + 10 + shown + 1 < 198, most_alive
    written = json.loads((root / "indicators.json").read_text())
    wanted = suite.without_histograms(expected)
    for report in (written, wanted):
        report.pop("timings")
        report["indicators"]["response_diversity"].pop("embedding_cache")
    assert {key: written[key] for key in wanted} == wanted
    assert written["indicators"]["task_labels"]["labeller"] == "taggpt"
    assert written["indicators"]["task_labels"]["dropped_rare_tags"] > 0
    assert written["indicators"]["instruction_complexity_llm"]["scored"] == 10
    assert written["excluded"] == excluded and written["samples"] == 198

    def examples(page: str) -> str:
        return page.split("<h3>Examples per task</h3>")[1].split("<details>")[0]

    assert examples(html.read_text()) == examples(expected_html)
    assert "summar" in examples(expected_html)  # grouped by TagGPT labels

    labels = suite.tag_stage(TagGptTagger(session=session, embedder=embedder), run, "kept")
    merged = suite.IndicatorFeed(embedder=embedder, labels=labels)
    unfed = pickle.dumps(merged)  # what Ray hands each task (without the embedder)
    for index, shard in enumerate(run.read_sample_shards("kept")):
        part = pickle.loads(unfed)
        part.update_shard(shard, index)
        merged.merge(part)
    report = suite.without_histograms(merged.report())
    report.pop("timings")
    report["indicators"]["response_diversity"].pop("embedding_cache")
    assert report["indicators"] == {
        k: v for k, v in wanted["indicators"].items() if k != "instruction_complexity_llm"
    }


@pytest.fixture(scope="module")
def wordllama() -> Any:
    from vlit.quality.indicators.embeddings import load_embedder

    return load_embedder("wordllama")


@settings(max_examples=6, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_feeds_of_any_partition_merge_to_the_feed_of_the_whole(
    llava_slice: Path, wordllama: Any, cuts: list[int]
) -> None:
    """Split 60 samples at ``cuts`` into consecutive batches (empty ones too), feed each to a
    feed of its own and merge them in order: the report, the excluded counts and the examples
    are those of one feed given every batch."""
    from vlit.quality.indicators.suite import IndicatorFeed, IndicatorSettings

    def samples() -> list[Sample]:
        records = json.loads(llava_slice.read_text())[:60]
        made = [
            Sample(
                str(record["id"]),
                turns=[
                    Turn("user" if c["from"] == "human" else "assistant", c["value"])
                    for c in record["conversations"]
                ],
                scores={"md": 0.2 + (i % 7) / 50, "correct": float(i % 3 != 0)},
            )
            for i, record in enumerate(records)
        ]
        made[7].failure_reason = FAILURE_LLM
        made[11].drop_reason = "lint: refusal"
        return made

    def feed() -> IndicatorFeed:
        # a subsample and a parse sample smaller than the data: the merged ones must match too
        chosen = IndicatorSettings(subsample_size=25, parse_limit=20)
        return IndicatorFeed(embedder=wordllama, settings=chosen, examples_per_task=2)

    whole = feed()
    parts = feed()
    edges = [0, *sorted(cuts), 60]
    for start, end in itertools.pairwise(edges):
        whole.update_shard(samples()[start:end])
        part = feed()
        part.update_shard(samples()[start:end])
        parts.merge(part)

    def seen(fed: IndicatorFeed) -> tuple[dict[str, Any], dict[str, int], list[str]]:
        report = fed.report()
        report.pop("timings")
        ids = [s.sample_id for group in fed.examples.values() for s in group]
        return report, fed.excluded, ids

    assert seen(parts) == seen(whole)
    report, excluded, ids = seen(whole)
    assert excluded == {"failed": 1, "dropped": 1} and report["samples"] == 58
    assert len(ids) >= 4 and report["table"]["response_diversity"] is not None
