"""The local and the Ray runner give the same output on the same input (issue: scale-out).

The same scoring/filtering run and the same dataset indicators are computed on both runners (a
pytest parameter); Ray is started locally in the test with ``num_cpus=2``. The input is real:
the COCO annotations of ../shared/data/coco_tiny, with conversations made by annotation
adaptation (no LLM) plus planted hallucinations, so grounding and lint have something to find.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import ray

from llm_servers import Response, ScriptedServer
from vlit.collect import CocoCollector
from vlit.llm.config import LlmConfig
from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.complexity import ComplexityProxyIndicator
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.scores import QualityScoresIndicator
from vlit.quality.judge import clue_for, judge_messages, render_conversation
from vlit.rundir import RunDir
from vlit.runners.base import RunnerSettings, build_runner
from vlit.runners.local import compute_indicators
from vlit.schema import Sample, Turn
from vlit.stages import filter as filter_stage
from vlit.stages import generate as generate_stage
from vlit.stages import score as score_stage
from vlit.stages.filter import FilterSettings
from vlit.stages.generate import GenerateSettings
from vlit.stages.score import JudgeSettings, ScoreSettings


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
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
    outputs["score_shards"] = [shard["file"] for shard in run.manifest("scores").shards]
    return outputs


@pytest.mark.model
def test_score_and_filter_are_identical_on_both_runners(
    adapted_run: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    local = _score_and_filter(adapted_run, tmp_path / "local", "local")
    on_ray = _score_and_filter(adapted_run, tmp_path / "ray", "ray")
    # On Ray the workers wrote the scores' shards themselves (named by write task, not by the
    # driver's writer), and the manifest lists them.
    local_names, ray_names = local.pop("score_shards"), on_ray.pop("score_shards")
    assert all(re.fullmatch(r"shard-\w+-\d{5}\.parquet", name) for name in local_names)
    assert ray_names and all(re.fullmatch(r"shard-\w+-\d{6}-[\w-]+\.parquet", n) for n in ray_names)
    assert local == on_ray
    # The comparison is not vacuous: grounding and lint scored every sample and dropped some.
    scores = [dict(row["scores"]) for row in local["scores"]]
    assert all("lint_flags" in row for row in scores)
    assert any(name.startswith("ground_") for row in scores for name in row)
    reasons = {row["drop_reason"].split(":")[0] for row in local["dropped"]}
    assert len(local["dropped"]) >= 10 and len(reasons) >= 2, reasons
    assert len(local["kept"]) + len(local["dropped"]) == len(local["scores"])
    assert local["counters"]["grounding"]["with_hallucination"] >= 10


def _indicators() -> list[Any]:
    return [
        TaskDistributionIndicator(),
        InstructionDiversityIndicator(),
        ComplexityProxyIndicator(),
        QualityScoresIndicator(),
    ]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_dataset_indicators_merge_to_the_local_result(
    adapted_run: Path, ray_cluster: Any, parallelism: int
) -> None:
    from vlit.runners.ray_runner import compute_indicators_ray

    samples: list[Sample] = list(RunDir(adapted_run).read_samples("samples"))
    RuleTaskLabeller()(samples)
    local = compute_indicators(_indicators(), samples, batch_size=37)
    on_ray = compute_indicators_ray(_indicators(), samples, parallelism=parallelism)
    assert on_ray == local
    assert local["tasks"]["task_diversity"] >= 3 and local["tasks"]["samples"] == len(samples)


def test_the_report_suite_on_ray_equals_the_local_suite(
    adapted_run: Path, ray_cluster: Any
) -> None:
    from vlit.quality.indicators.suite import compute_indicators as indicator_suite
    from vlit.quality.indicators.suite import load_run

    reports = {}
    for runner in ("local", "ray"):
        loaded = load_run(adapted_run)
        reports[runner] = indicator_suite(
            loaded.samples, embedder=None, records=loaded.records, runner=runner
        )
    assert reports["ray"]["indicators"] == reports["local"]["indicators"]
    assert reports["ray"]["table"] == reports["local"]["table"]
    assert "ray_workers" in reports["ray"]["timings"]
    granularity = reports["local"]["indicators"]["object_granularity"]
    assert granularity["source"] == "annotations" and granularity["object_granularity"] > 0


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
