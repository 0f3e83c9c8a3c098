"""A short real generation with the embedded SmolLM2-135M (in process, on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vlit.collect import CocoCollector
from vlit.llm.config import build_backend
from vlit.rundir import RunDir
from vlit.stages import generate as generate_stage
from vlit.stages.generate import GenerateSettings, LlmSettings


def test_without_a_url_the_embedded_model_is_the_generator() -> None:
    backend = build_backend(LlmSettings().to_config(concurrency=1))
    assert backend.describe()["kind"] == "local"
    assert "SmolLM2-135M" in backend.model_name


@pytest.mark.model
def test_one_image_one_mode_two_rollouts(
    tmp_path: Path, coco_tiny: Path, smollm_backend: Any
) -> None:
    records = (
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
            instances=coco_tiny / "annotations" / "instances_train2017.json",
        )
        .collect()
        .records
    )
    run = RunDir(tmp_path / "run")
    run.write_records(records[:1])
    settings = GenerateSettings(modes=["conversation"], n=2, max_tokens=40, examples_per_request=1)
    summary = generate_stage.run(run, settings, backend=smollm_backend).to_json()
    samples = list(run.read_samples("samples"))
    assert len(samples) == 2 and summary["requests_sent"] == 1
    assert summary["tokens_in"] > 300 and 0 < summary["tokens_out"] <= 2 * 40
    for sample in samples:
        assert "SmolLM2-135M" in sample.provenance["generator"]["model"]
        assert sample.provenance["finish_reason"] in ("stop", "length")
        if sample.ok:
            assert sample.turns[0].role == "user" and sample.turns[-1].role == "assistant"
        else:
            assert sample.failure_reason and sample.provenance["raw_text"].strip()
    # The two rollouts are different draws from the model.
    texts = [s.provenance.get("raw_text") or [t.text for t in s.turns] for s in samples]
    assert texts[0] != texts[1]
    again = generate_stage.run(run, settings, backend=smollm_backend).to_json()
    assert again["requests_sent"] == 0 and again["from_journal"] == 1
    assert [s.to_row() for s in run.read_samples("samples")] == [s.to_row() for s in samples]
