"""The local and the Ray runner give the same output on the same input (issue: scale-out).

The same scoring/filtering run and the same report are computed on both runners (a pytest
parameter); Ray is started locally in the test with ``num_cpus=2``. The input is real:
the COCO annotations of ../shared/data/coco_tiny, with conversations made by annotation
adaptation (no LLM) plus planted hallucinations, so grounding and lint have something to find.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import ray

from llm_servers import Response, ScriptedServer, indicator_model
from vlit.collect import CocoCollector
from vlit.generate.generator import FAILURE_LLM
from vlit.llm.config import LlmConfig
from vlit.quality.judge import clue_for, judge_messages, render_conversation
from vlit.reasons import Reason
from vlit.rundir import RunDir
from vlit.runners import ray_runner
from vlit.runners.base import RunnerSettings, build_runner
from vlit.schema import Sample, Turn
from vlit.stages import filter as filter_stage
from vlit.stages import generate as generate_stage
from vlit.stages import score as score_stage
from vlit.stages.filter import FilterSettings
from vlit.stages.generate import GenerateSettings
from vlit.stages.score import JudgeSettings, ScoreSettings
from vlit.storage import StagedRunDir

#: A shard a Ray worker wrote: ``shard-<token>-<write task>-<write id>-<part>.parquet``.
RAY_SHARD = re.compile(r"shard-\w+-\d{6}-[\w-]+\.parquet")


@pytest.fixture(scope="module")
def ray_cluster(s3: Any) -> Any:
    """A local Ray whose workers have the S3 server's endpoint and credentials (a cluster's
    nodes have their object store's), so they read and write a run on S3 themselves."""
    from vlit.runners.ray_runner import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory: pytest.TempPathFactory, coco_tiny: Path) -> Path:
    root = tmp_path_factory.mktemp("runners") / "base"
    run = RunDir(root)
    result = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
    ).collect()
    run.write_records(result.records)
    generate_stage.run(run, GenerateSettings(modes=["adaptation"]))
    samples = list(run.read_samples("samples"))
    # Plant errors on every fifth sample: an object that is not annotated, and a refusal.
    for index, sample in enumerate(samples[::5]):
        sample.turns = [
            Turn("user", "What can you see here?"),
            Turn("assistant", "I'm sorry, but there is a giraffe and an elephant next to a zebra.")
            if index % 2
            else Turn("assistant", "A giraffe stands beside two elephants."),
        ]
    run.write_samples("samples", samples, shard_size=70)  # several shards: order across them
    return root


def _score_and_filter(source: Path, target: Path, runner: str) -> dict[str, Any]:
    shutil.copytree(source, target)
    run = RunDir(target)
    chosen = build_runner(RunnerSettings(kind=runner))  # type: ignore[arg-type]
    summary = score_stage.run(run, ScoreSettings(), chosen).to_json()
    filter_stage.run(run, FilterSettings(max_hallucination=0.0, drop_lint=["refusal"]))
    outputs: dict[str, Any] = {
        stage: [sample.to_row() for sample in run.read_samples(stage)]
        for stage in ("scores", "kept", "dropped")
    }
    # the stages' counters, summed over the Ray workers on that runner
    outputs["counters"] = {key: summary[key] for key in ("lint", "grounding")}
    outputs["score_shards"] = [
        (shard["file"], shard["rows"]) for shard in run.manifest("scores").shards
    ]
    return outputs


@pytest.mark.model
def test_score_and_filter_are_identical_on_both_runners(
    adapted_run: Path, tmp_path: Path, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _score_and_filter(adapted_run, tmp_path / "local", "local")
    # the input's shards hold 70 rows: Ray's files are cut at the shard size, not merged
    monkeypatch.setattr(ray_runner, "DEFAULT_SHARD_SIZE", 30)
    on_ray = _score_and_filter(adapted_run, tmp_path / "ray", "ray")
    # On Ray the workers wrote the scores' shards themselves (named by write task, not by the
    # driver's writer), and the manifest lists them.
    local_names = [name for name, _ in local.pop("score_shards")]
    ray_names, ray_rows = zip(*on_ray.pop("score_shards"), strict=True)
    assert all(re.fullmatch(r"shard-\w+-\d{5}\.parquet", name) for name in local_names)
    assert ray_names and all(RAY_SHARD.fullmatch(n) for n in ray_names)
    assert max(ray_rows) <= 30 and len(ray_rows) >= len(local["scores"]) / 30
    assert local == on_ray
    # The comparison is not vacuous: grounding and lint scored every sample and dropped some.
    scores = [dict(row["scores"]) for row in local["scores"]]
    assert all("lint_flags" in row for row in scores)
    assert any(name.startswith("ground_") for row in scores for name in row)
    reasons = {row["drop_reason"].split(":")[0] for row in local["dropped"]}
    assert len(local["dropped"]) >= 10 and len(reasons) >= 2, reasons
    assert len(local["kept"]) + len(local["dropped"]) == len(local["scores"])
    assert local["counters"]["grounding"]["with_hallucination"] >= 10


@pytest.mark.model
def test_score_on_ray_with_the_run_on_s3_decodes_no_sample_here(
    adapted_run: Path,
    tmp_path: Path,
    ray_cluster: Any,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run on S3: the workers read the samples' shards from the bucket and write the
    scores' shards there; this process decodes no sample (each reader of samples fails here),
    fetches the shards into its staged copy as files without uploading them back, and the
    scores are the local runner's. A machine with an empty staging folder pulls the same."""
    local = tmp_path / "local"
    shutil.copytree(adapted_run, local)
    score_stage.run(RunDir(local), ScoreSettings(), build_runner())
    expected = [sample.to_row() for sample in RunDir(local).read_samples("scores")]

    s3.mkdir("scored")
    here = StagedRunDir("s3://scored/run", staging=tmp_path / "here")
    shutil.copytree(adapted_run, here.root)
    here.push()

    def refused(*_: Any, **__: Any) -> Any:
        raise AssertionError("the driver decoded samples")

    with monkeypatch.context() as patched:
        for reader in ("read_sample_shard", "read_sample_shards", "read_sample_tables"):
            patched.setattr(RunDir, reader, refused)
        summary = score_stage.run(here, ScoreSettings(), build_runner(RunnerSettings(kind="ray")))
    assert summary.to_json()["grounding"]["with_hallucination"] >= 10
    shards = [shard["file"] for shard in here.check_current("scores").shards]
    assert shards and all(RAY_SHARD.fullmatch(n) for n in shards)
    assert all((here.root / "scores" / name).is_file() for name in shards)  # fetched here
    uploaded: list[str] = []
    put_file = here._storage.put_file

    def recorded_put(local_path: str, remote_path: str) -> None:
        uploaded.append(remote_path)
        put_file(local_path, remote_path)

    with monkeypatch.context() as patched:
        patched.setattr(here._storage, "put_file", recorded_put)
        here.push()
    assert uploaded and not [name for name in uploaded if name.endswith(".parquet")], uploaded
    assert [sample.to_row() for sample in here.read_samples("scores")] == expected

    there = StagedRunDir("s3://scored/run", staging=tmp_path / "there")
    there.pull()
    assert [sample.to_row() for sample in there.read_samples("scores")] == expected


def test_a_model_step_may_hold_every_cpu_of_the_cluster(tmp_path: Path, ray_cluster: Any) -> None:
    """The tasks that read and write the shards ask for no CPU, so a model step holding both
    CPUs of the test cluster does not leave them waiting: the run ends, through the files."""
    from vlit.quality.lint import SampleLinter
    from vlit.runners.base import Resources

    step = SampleLinter()
    step.resources = Resources(cpus=2.0, batch_size=4, uses_model=True)
    run = RunDir(tmp_path / "run")
    samples = [Sample(sample_id=f"s{i}", turns=[Turn("user", f"Q{i}?")]) for i in range(23)]
    run.write_samples("samples", samples, shard_size=5)
    with run.writer("scores", inputs=("samples",), settings={}, command="test") as writer:
        build_runner(RunnerSettings(kind="ray")).map_stage([step], run, "samples", writer)
    scored = list(run.read_samples("scores"))
    assert [sample.sample_id for sample in scored] == [f"s{i}" for i in range(23)]
    assert all("lint_flags" in sample.scores for sample in scored)
    assert all(RAY_SHARD.fullmatch(shard["file"]) for shard in run.check_current("scores").shards)


def test_the_report_on_ray_equals_the_local_report(
    adapted_run: Path,
    tmp_path: Path,
    ray_cluster: Any,
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight shards, a failed and a dropped sample: the Ray workers read the shards themselves
    (this process reads none, of ``kept`` or of ``dropped``), from the run's folder or, for a
    run on S3, from the bucket, and the merged report is the local one. The HTML's dropped
    examples are the first three of each drop reason code."""
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.report.build import report_run

    embedder = load_embedder("wordllama")
    reader = RunDir.read_sample_shards
    read: list[str] = []

    def recorded(self: RunDir, stage: str) -> Any:
        read.append(stage)
        return reader(self, stage)

    written: dict[str, dict[str, Any]] = {}
    shown: dict[str, list[str]] = {}
    shown_dropped: dict[str, list[str]] = {}
    dropped = [
        Sample(
            sample_id=f"low{i}",
            turns=[Turn("user", "Q?")],
            drop_reason=Reason("md_below_min", f"{i}.5"),
        )
        for i in range(5)
    ] + [
        Sample(sample_id="refusal", turns=[Turn("user", "Q?")], drop_reason=Reason("lint_refusal"))
    ]
    s3.mkdir("report")
    for kind in ("local", "ray", "ray, run on s3"):
        folder = tmp_path / kind.replace(", ", "-").replace(" ", "_")
        root = folder / "run"
        shutil.copytree(adapted_run, root)
        on_s3 = kind.endswith("s3")
        run = StagedRunDir(f"s3://report/{folder.name}", staging=folder) if on_s3 else RunDir(root)
        samples = list(run.read_samples("samples"))
        samples[2].failure_reason = FAILURE_LLM
        samples[5].drop_reason = Reason("lint_refusal")
        run.write_samples("kept", samples, shard_size=-(-len(samples) // 8))
        assert len(run.check_current("kept").shards) == 8
        run.write_samples("dropped", dropped, shard_size=2)
        runner = build_runner(RunnerSettings(kind=kind.split(",")[0]))  # type: ignore[arg-type]
        read.clear()
        with monkeypatch.context() as patched:
            patched.setattr(RunDir, "read_sample_shards", recorded)
            view = report_run(run, embedder=embedder, runner=runner, name="run")
        assert ("kept" in read) == ("dropped" in read) == (kind == "local"), read
        shown[kind] = [sample.sample_id for sample in view.samples]
        shown_dropped[kind] = [sample.sample_id for sample in view.dropped]
        written[kind] = json.loads((root / "indicators.json").read_text())
        assert written[kind].pop("run") == str(root)
        written[kind].pop("timings")
    assert written["ray"] == written["local"] == written["ray, run on s3"]
    assert shown["ray"] == shown["local"] == shown["ray, run on s3"]
    assert len(shown["local"]) >= 6
    assert shown_dropped["ray"] == shown_dropped["local"] == shown_dropped["ray, run on s3"]
    assert shown_dropped["local"] == ["low0", "low1", "low2", "refusal"]
    assert written["local"]["excluded"] == {"failed": 1, "dropped": 1}
    assert written["local"]["samples"] == len(samples) - 2
    assert written["local"]["table"]["response_diversity"] is not None
    granularity = written["local"]["indicators"]["object_granularity"]
    assert granularity["source"] == "annotations" and granularity["object_granularity"] > 0


def test_the_llm_report_on_ray_equals_the_local_report(
    adapted_run: Path, tmp_path: Path, ray_cluster: Any, scripted_server: ScriptedServer
) -> None:
    """TagGPT labels and the LLM complexity: the LLM is asked from this process shard by
    shard, the labels go to the Ray workers with the feed, and the report is the local one."""
    from vlit.llm.journal import LlmJournal
    from vlit.llm.session import LlmSession
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.report.build import report_run

    scripted_server.add_rule(indicator_model)
    embedder = load_embedder("wordllama")
    written: dict[str, dict[str, Any]] = {}
    shown: dict[str, list[tuple[str, list[str]]]] = {}
    for kind in ("local", "ray"):
        root = tmp_path / kind
        shutil.copytree(adapted_run, root)
        run = RunDir(root)
        samples = list(run.read_samples("samples"))
        samples[2].failure_reason = FAILURE_LLM
        run.write_samples("kept", samples, shard_size=-(-len(samples) // 8))
        session = LlmSession(scripted_server.backend(), journal=LlmJournal(run.journal_path))
        view = report_run(
            run,
            embedder=embedder,
            runner=build_runner(RunnerSettings(kind=kind)),  # type: ignore[arg-type]
            session=session,
            use_taggpt=True,
            complexity_samples=10,
            name="run",
        )
        shown[kind] = [(sample.sample_id, sample.labels) for sample in view.samples]
        written[kind] = json.loads((root / "indicators.json").read_text())
        assert written[kind].pop("run") == str(root)
        written[kind].pop("timings")
    assert written["ray"] == written["local"]
    assert shown["ray"] == shown["local"]
    labels = written["local"]["indicators"]["task_labels"]
    assert labels["labeller"] == "taggpt" and len(labels["kept_tags"]) >= 2
    assert labels["untagged_samples"] < written["local"]["samples"] // 2
    assert written["local"]["indicators"]["instruction_complexity_llm"]["scored"] == 10


def test_the_judge_on_ray_shares_one_journal_and_replays_it(
    adapted_run: Path, tmp_path: Path, ray_cluster: Any, scripted_server: ScriptedServer
) -> None:
    def verdict(body: dict[str, Any]) -> Response:
        planted = "giraffe" in body["messages"][-1]["content"]
        text = "Verdict: incorrect\nReason: no giraffe." if planted else "Verdict: correct"
        return Response.text(text, text, text)

    scripted_server.add_rule(verdict)
    llm = LlmConfig(base_url=scripted_server.url, model=scripted_server.model)
    judged: dict[str, list[dict[str, float]]] = {}
    sent: dict[str, int] = {}
    for runner in ("local", "ray", "ray again"):
        target = tmp_path / runner.split()[0]
        if not target.exists():
            shutil.copytree(adapted_run, target)
        settings = ScoreSettings(judge=JudgeSettings(), lint=False, grounding=False)
        chosen = build_runner(RunnerSettings(kind=runner.split()[0]))  # type: ignore[arg-type]
        before = scripted_server.received()
        summary = score_stage.run(RunDir(target), settings, chosen, judge_llm=llm).to_json()
        sent[runner] = scripted_server.received() - before
        judged[runner] = [dict(s.scores) for s in RunDir(target).read_samples("scores")]
        assert summary["correctness"]["judged"] == len(judged[runner])
    assert judged["ray"] == judged["local"] == judged["ray again"]
    # one request (3 votes) per distinct conversation+clue: duplicates share one answer
    run = RunDir(adapted_run)
    records = {record.image_id: record for record in run.read_records()}
    distinct = set()
    for sample in run.read_samples("samples"):
        clue, _ = clue_for(sample, records)
        distinct.add(repr(judge_messages(str(clue), render_conversation(sample))))
    assert sent["ray"] == sent["local"] == len(distinct) < len(judged["local"])
    assert sent["ray again"] == 0  # every answer came from the journal the workers shared
    correct = [row["correct"] for row in judged["local"]]
    assert 0 < sum(correct) < len(correct)  # planted samples were judged incorrect
