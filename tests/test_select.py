"""`vlit select`: respects N, keeps quality, removes near-duplicates, improves balance."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlit.cli import app
from vlit.generate.generator import FAILURE_LLM
from vlit.quality.indicators import suite
from vlit.quality.indicators.balance import balance_statistics
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn
from vlit.selection import plan_selection, select_to_budget, water_fill

QUESTIONS = {
    "counting": "How many {0} can you see?",
    "color_attribute": "What colour is the {0}?",
    "location_spatial": "Where is the {0} placed?",
    "brief_description": "Give a short caption of the {0}.",
}
THINGS = ["dog", "cat", "bus", "kite", "chair", "boat", "cup", "lamp", "tree", "bike"]


def _samples(llava_slice: Path) -> list[Sample]:
    """Real LLaVA captions as answers, with a deliberately unbalanced task mix."""
    captions = [r["conversations"][1]["value"] for r in json.loads(llava_slice.read_text())]
    plan = {"brief_description": 300, "counting": 60, "color_attribute": 30, "location_spatial": 10}
    samples, k = [], 0
    for task, count in plan.items():
        for i in range(count):
            question = QUESTIONS[task].format(THINGS[i % len(THINGS)])
            samples.append(
                Sample(
                    f"{task}-{i}",
                    turns=[Turn("user", question), Turn("assistant", captions[k])],
                    scores={"md": (k * 37 % 100) / 400, "correct": float(k % 5 > 0)},
                )
            )
            k += 1
    # exact and near duplicates of one sample, with worse scores
    for j in range(5):
        copy = Sample(
            f"dup-{j}",
            turns=[Turn(t.role, t.text) for t in samples[0].turns],
            scores={"md": 0.0, "correct": 0.0},
        )
        samples.append(copy)
    return samples


def test_water_fill_is_even_and_respects_the_budget() -> None:
    quotas = water_fill({"a": 300, "b": 60, "c": 30, "d": 10}, 100)
    assert sum(quotas.values()) == 100 and quotas["d"] == 10
    assert max(quotas.values()) - min(q for t, q in quotas.items() if t != "d") <= 1


def test_selection_improves_balance_and_quality(llava_slice: Path) -> None:
    samples = _samples(llava_slice)
    result = select_to_budget(samples, size=120, seed=3)
    assert len(result.selected) == 120
    before = balance_statistics(result.summary["tasks_before"])
    after = balance_statistics(result.summary["tasks_after"])
    assert after["share_variance"] < before["share_variance"] / 4
    assert result.summary["near_duplicates"] >= 5
    assert not any(s.sample_id.startswith("dup-") for s in result.selected)
    assert result.summary["mean_quality_after"] > result.summary["mean_quality_before"]
    # deterministic for the seed
    again = select_to_budget(_samples(llava_slice), size=120, seed=3)
    assert [s.sample_id for s in again.selected] == [s.sample_id for s in result.selected]


def test_select_command_writes_selection_and_reports_before_after(
    llava_slice: Path, tmp_path: Path
) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(llava_slice))
    out = tmp_path / "picked"
    result = CliRunner().invoke(
        app,
        [
            "select",
            str(run.root),
            "--size",
            "80",
            "--out",
            str(out),
            "--json",
            "--embedder",
            "wordllama",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["selection"]["selected"] == 80
    assert summary["before"]["balance"] > summary["after"]["balance"]
    assert summary["before"]["task_diversity"] == summary["after"]["task_diversity"] == 4
    assert summary["after"]["response_diversity"] is not None
    assert len(list(RunDir(out).read_samples("samples"))) == 80
    inside = CliRunner().invoke(
        app, ["select", str(run.root), "--size", "30", "--json", "--embedder", "none"]
    )
    assert inside.exit_code == 0, inside.output
    assert len(list(run.read_samples("selected"))) == 30


def test_select_command_reads_and_writes_shard_by_shard(
    llava_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine input shards, a failed and a dropped sample: the command never reads the whole stage
    at once, and picks what `select_to_budget` picks from the usable samples in memory."""
    samples = _samples(llava_slice)
    samples[7].failure_reason = FAILURE_LLM
    samples[8].drop_reason = "lint: refusal"
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", samples, shard_size=50)
    usable = [s for i, s in enumerate(_samples(llava_slice)) if i not in (7, 8)]
    expected = select_to_budget(usable, size=60, seed=5)

    def whole_stage(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the whole stage was loaded")

    with monkeypatch.context() as patched:
        patched.setattr(RunDir, "read_samples", whole_stage)
        patched.setattr(suite, "load_run", whole_stage)
        argv = ["select", str(run.root), "--size", "60", "--seed", "5", "--json"]
        result = CliRunner().invoke(app, [*argv, "--embedder", "none"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["selection"] == expected.summary
    written = list(run.read_samples("selected"))
    assert [s.sample_id for s in written] == [s.sample_id for s in expected.selected]
    assert [s.labels for s in written] == [s.labels for s in expected.selected]
    assert summary["before"]["task_diversity"] == 4


def test_selection_keeps_about_a_hundred_bytes_per_sample(llava_slice: Path) -> None:
    """Samples made on the fly: what grows with N is what `plan_selection` keeps per sample
    (scores, task, band keys), not the samples (a selection holding them: several KB each)."""
    captions = [r["conversations"][1]["value"] for r in json.loads(llava_slice.read_text())]

    def batches(size: int) -> Iterator[list[Sample]]:
        rng = random.Random(size)
        for start in range(0, size, 250):
            yield [
                Sample(
                    f"s{i}",
                    turns=[Turn("user", rng.choice(list(QUESTIONS.values())).format("dog")),
                           Turn("assistant", " ".join(rng.sample(captions, 2)))],
                    scores={"md": rng.random()},
                )
                for i in range(start, min(start + 250, size))
            ]  # fmt: skip

    plan_selection(batches(10), size=5)  # imports
    peaks = []
    for size in (500, 2_000):
        tracemalloc.start()
        plan_selection(batches(size), size=100)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    per_sample = (peaks[1] - peaks[0]) / 1_500
    assert per_sample < 400, per_sample
