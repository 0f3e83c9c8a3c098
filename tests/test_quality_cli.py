"""`vlit score` and `vlit filter` end to end on a run directory with real COCO records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_servers import Response, ScriptedServer
from random_models import save_random_clip
from vlit.cli import main
from vlit.generate.parse import FAILURE_NO_TURNS
from vlit.rundir import RunDir
from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn

pytestmark = pytest.mark.model

IMAGE_ID = "391895"  # 1 motorcycle, 2 persons, 1 bicycle in the real annotations


def coco_record(coco_tiny: Path, image_id: str) -> ImageRecord:
    data = json.loads((coco_tiny / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    image = next(i for i in data["images"] if str(i["id"]) == image_id)
    return ImageRecord(
        image_id=image_id,
        file_name=image["file_name"],
        image_root=str(coco_tiny / "train2017"),
        captions=["A man with a red helmet on a small moped on a dirt road."],
        objects=[
            ObjectAnnotation(category=names[a["category_id"]], iscrowd=bool(a["iscrowd"]))
            for a in data["annotations"]
            if str(a["image_id"]) == image_id
        ],
    )


def make_run(tmp_path: Path, coco_tiny: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    record = coco_record(coco_tiny, IMAGE_ID)
    run.write_records([record])
    answers = {
        "clean": "A man in a red helmet rides a motorbike past a bicycle on a dirt road.",
        "hallucinated": "A man rides a motorcycle while a large dog chases two cats.",
        "refusal": "I'm sorry, but I cannot see the picture.",
        "wrong-count": "Five people stand around the motorcycle on the dirt road.",
    }
    samples = [
        Sample(
            sample_id=name,
            image_id=IMAGE_ID,
            image=record.file_name,
            image_root=record.image_root,
            turns=[Turn("user", "What is going on in this photo?"), Turn("assistant", text)],
            provenance={"visual_clue": f"[{name}] A man on a moped on a dirt road."},
        )
        for name, text in answers.items()
    ]
    samples.append(Sample(sample_id="failed", image_id=IMAGE_ID, failure_reason=FAILURE_NO_TURNS))
    run.write_samples("samples", samples)
    return run


def vlit_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # --json prints exactly one object
    return json.loads(out[0])


def test_score_then_filter(
    tmp_path: Path,
    coco_tiny: Path,
    capsys: pytest.CaptureFixture[str],
    scripted_server: ScriptedServer,
) -> None:
    run = make_run(tmp_path, coco_tiny)
    clip = save_random_clip(tmp_path / "clip", shape="tiny", seed=3)

    def judge_rule(body: dict) -> Response:
        wrong = "[hallucinated]" in body["messages"][-1]["content"]
        verdict = "incorrect" if wrong else "correct"
        return Response.text(*[f"Verdict: {verdict}\nReason: checked."] * 3)

    scripted_server.add_rule(judge_rule)
    summary = vlit_json(
        capsys,
        "score",
        str(run.root),
        "--clip",
        str(clip),
        "--clip-mode",
        "per_turn",
        "--decode-workers",
        "0",
        "--judge",
        "--llm-base-url",
        scripted_server.url,
        "--llm-model",
        "judge-model",
        "--json",
    )
    assert summary["samples"] == 5
    assert summary["md"]["status"] == "computed" and summary["md"]["scored"] == 4
    assert summary["md"]["not_computed_generation_failed"] == 1
    assert summary["md"]["text_mode"] == "per_turn"
    assert summary["grounding"]["with_hallucination"] == 1
    assert summary["grounding"]["with_count_error"] == 1
    assert summary["lint"]["samples_flagged"]["refusal"] == 1
    assert summary["correctness"]["incorrect"] == 1 and summary["correctness"]["correct"] == 3
    scored = {s.sample_id: s for s in run.read_samples("scores")}
    assert set(scored) == {"clean", "hallucinated", "refusal", "wrong-count", "failed"}
    assert scored["clean"].scores["md_min"] <= scored["clean"].scores["md"]
    assert scored["hallucinated"].scores["ground_hallucinated"] == 2  # dog, cat

    result = vlit_json(
        capsys,
        "filter",
        str(run.root),
        "--require-correct",
        "--max-hallucination",
        "0",
        "--max-count-errors",
        "0",
        "--drop-lint",
        "refusal,leak",
        "--min-md-quantile",
        "0.0",
        "--json",
    )
    assert result["total"] == 5 and result["kept"] == 1 and result["dropped"] == 4
    assert result["dropped_by_reason"] == {
        "count_errors": 1,
        "generation_failed": 1,
        "incorrect": 1,
        "lint_refusal": 1,
    }
    assert result["filters"]["generation"] == {
        "total": 5,
        "kept": 4,
        "dropped_generation_failed": 1,
    }
    kept = [s.sample_id for s in run.read_samples("kept")]
    dropped = {s.sample_id: s.drop_reason for s in run.read_samples("dropped")}
    assert kept == ["clean"]
    assert str(dropped["failed"]) == "generation_failed: unparseable: no User/AI turns found"
    assert str(dropped["refusal"]) == "lint_refusal"
    assert dropped["hallucinated"] is not None and dropped["hallucinated"].code == "incorrect"
    meta = run.load_meta()["summaries"]
    assert meta["filter"]["kept"] == 1 and meta["score"]["samples"] == 5


def test_unavailable_clip_model_is_reported_and_the_rest_runs(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, coco_tiny)
    summary = vlit_json(
        capsys, "score", str(run.root), "--clip", "openai/clip-vit-base-patch32", "--json"
    )
    assert summary["md"]["status"] == "not_computed"
    assert "openai/clip-vit-base-patch32" in summary["md"]["reason"]
    assert summary["grounding"]["checked"] == 4
    sample = next(s for s in run.read_samples("scores") if s.sample_id == "clean")
    assert "md" not in sample.scores
    assert sample.provenance["quality"]["md"]["status"] == "not_computed: model_unavailable"
    with pytest.raises(SystemExit) as exit_info:
        main(["filter", str(run.root), "--min-md", "20"])
    assert exit_info.value.code == 2
    assert "no sample has a matching degree" in capsys.readouterr().err


def test_bad_options_are_usage_errors(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, coco_tiny)
    for argv in (
        ["score", str(run.root), "--clip-mode", "sideways"],
        ["score", str(run.root), "--clip-decode", "gpu"],
        ["score", str(run.root), "--judge"],
        ["filter", str(run.root), "--drop-lint", "typo_flag"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "truncate, per_turn" in err and "--llm-base-url" in err and "typo_flag" in err
    assert "unknown --clip-decode 'gpu'" in err and "auto, workers, device" in err


def test_score_decoding_on_the_model_device(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, coco_tiny)
    clip = save_random_clip(tmp_path / "clip", shape="tiny", seed=3)
    summary = vlit_json(
        capsys,
        "score",
        str(run.root),
        "--clip",
        str(clip),
        "--clip-decode",
        "device",
        "--clip-batch-size",
        "2",
        "--no-grounding",
        "--json",
    )
    assert summary["md"]["scored"] == 4
    sample = next(s for s in run.read_samples("scores") if s.sample_id == "clean")
    assert sample.provenance["quality"]["md"]["decoder"] == "pil"  # no GPU here: PIL + torch


def test_spacy_model_from_a_folder_and_chair_figures(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlit.quality.grounding import load_spacy

    unpacked = tmp_path / "pipeline"
    load_spacy().to_disk(unpacked)  # an unpacked pipeline, loaded by path
    run = make_run(tmp_path, coco_tiny)
    summary = vlit_json(capsys, "score", str(run.root), "--spacy-model", str(unpacked), "--json")
    grounding = summary["grounding"]
    # mentioned: clean {person, motorcycle, bicycle}, hallucinated {person, motorcycle, dog,
    # cat}, wrong-count {person, motorcycle}; hallucinated: dog, cat in one sample of four
    assert grounding["chair_i"] == pytest.approx(2 / 9)
    assert grounding["chair_s"] == pytest.approx(1 / 4)
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(run.root), "--spacy-model", str(tmp_path / "no-such-pipeline")])
    assert exit_info.value.code == 2
    assert "no-such-pipeline" in capsys.readouterr().err
