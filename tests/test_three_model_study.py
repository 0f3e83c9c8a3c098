"""examples/three_model_study.py: the three-model study (tune, bench, correlate with ICC)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

if os.environ.get("VLIT_REQUIRE_OPENFLAMINGO"):  # `make test`'s OpenFlamingo run never skips
    import open_flamingo  # noqa: F401
else:
    pytest.importorskip("open_flamingo", reason="see README, OpenFlamingo: make setup installs it")

pytestmark = pytest.mark.model

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "three_model_study.py"


def test_study_runs_end_to_end_and_averages_over_the_three_models(
    coco_tiny: Path, tmp_path: Path
) -> None:
    import torch

    spec = importlib.util.spec_from_file_location("three_model_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    study_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = study_module.run_study(coco_tiny, tmp_path, steps=1, images=3)
    finally:
        torch.set_num_threads(threads)
    study = json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))
    families = ["blip-2", "llava", "openflamingo"]
    assert study["datasets"] == ["captions", "counts", "mixed"]
    assert {d: sorted(m) for d, m in study["models"].items()} == {
        d: families for d in study["datasets"]
    }
    # the study's accuracy per dataset and dimension is the mean over the three bench results
    for dataset in study["datasets"]:
        per_model = [
            json.loads((tmp_path / "results" / f"{dataset}-{f}.json").read_text("utf-8"))
            for f in families
        ]
        for result in per_model:
            assert result["overall"]["total"] == 9 and result["model"] in families
        for dimension, value in study["mean_accuracy_over_models"][dataset].items():
            if dimension in per_model[0]["dimensions"]:
                expected = sum(r["dimensions"][dimension]["accuracy"] for r in per_model) / 3
                assert value == pytest.approx(expected)
        assert set(study["icc"][dataset]) >= {"ICC(C,1)", "ICC(C,k)"}
    assert set(summary["icc_consistency"]) == set(study["datasets"])
    assert summary["indicators"] == 3 and summary["datasets"] == 3
    assert (tmp_path / "study.html").is_file()
