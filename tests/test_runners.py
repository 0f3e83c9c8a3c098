"""The local and the Ray runner give the same output on the same input (issue: scale-out).

The same scoring/filtering run and the same dataset indicators are computed on both runners (a
pytest parameter); Ray is started locally in the test with ``num_cpus=2``. The input is real:
the COCO annotations of ../shared/data/coco_tiny, with conversations made by annotation
adaptation (no LLM) plus planted hallucinations, so grounding and lint have something to find.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import ray

from vlit.collect import CocoCollector
from vlit.generate.generator import GenerationSettings
from vlit.generate.stage import generate_run
from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.complexity import ComplexityProxyIndicator
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.scores import QualityScoresIndicator
from vlit.quality.pipeline import FilterOptions, ScoreOptions, filter_run, score_run
from vlit.rundir import RunDir
from vlit.runners.local import compute_indicators
from vlit.schema import Sample, Turn


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
    generate_run(run, settings=GenerationSettings(modes={"adaptation": 1.0}), backend=None)
    samples = list(run.read_samples("samples"))
    # Plant errors on every fifth sample: an object that is not annotated, and a refusal.
    for index, sample in enumerate(samples[::5]):
        sample.turns = [
            Turn("user", "What can you see here?"),
            Turn("assistant", "I'm sorry, but there is a giraffe and an elephant next to a zebra.")
            if index % 2
            else Turn("assistant", "A giraffe stands beside two elephants."),
        ]
    run.write_samples("samples", samples)
    return root


def _score_and_filter(source: Path, target: Path, runner: str) -> dict[str, Any]:
    shutil.copytree(source, target)
    run = RunDir(target)
    summary = score_run(run, ScoreOptions(runner=runner))  # type: ignore[arg-type]
    filter_run(run, FilterOptions(max_hallucination=0.0, drop_lint=("refusal",)))
    outputs: dict[str, Any] = {
        stage: [sample.to_row() for sample in run.read_samples(stage)]
        for stage in ("scores", "kept", "dropped")
    }
    # the stages' counters, summed over the Ray workers on that runner
    outputs["counters"] = {key: summary[key] for key in ("lint", "grounding")}
    return outputs


@pytest.mark.model
def test_score_and_filter_are_identical_on_both_runners(
    adapted_run: Path, tmp_path: Path, ray_cluster: Any
) -> None:
    local = _score_and_filter(adapted_run, tmp_path / "local", "local")
    on_ray = _score_and_filter(adapted_run, tmp_path / "ray", "ray")
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


def test_the_report_suite_on_ray_equals_the_local_suite(adapted_run: Path, ray_cluster: Any) -> None:
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
