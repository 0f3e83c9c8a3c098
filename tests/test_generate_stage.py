"""The generate stage through a real OpenAI-compatible HTTP server (scripted answers)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llm_servers import Response, ScriptedServer
from vlit.collect import CocoCollector, JsonlCollector
from vlit.generate.generator import (
    FAILURE_LLM,
    SKIP_NO_ANNOTATION,
    SKIP_NO_IMAGE,
    SKIP_NO_REGION,
)
from vlit.generate.parse import FAILURE_NO_TURNS, FAILURE_REFUSAL, FAILURE_TRUNCATED
from vlit.llm.base import LlmBackend
from vlit.rundir import RunDir
from vlit.schema import ImageRecord, Sample
from vlit.stages import generate as generate_stage
from vlit.stages.generate import FAILURE_BUDGET, GenerateSettings

REPO = Path(__file__).resolve().parents[1]


def generate_run(
    run: RunDir, settings: GenerateSettings, backend: LlmBackend, **changes: Any
) -> dict[str, Any]:
    """The generate stage's summary as JSON, with some ``settings`` changed."""
    changed = GenerateSettings.model_validate(settings.model_dump() | changes)
    return generate_stage.run(run, changed, backend=backend).to_json()


@pytest.fixture(scope="module")
def records(coco_tiny: Path) -> list[ImageRecord]:
    return (
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
            instances=coco_tiny / "annotations" / "instances_train2017.json",
        )
        .collect()
        .records
    )


def _marker(record: ImageRecord) -> str:
    """A piece of the record's first caption, as the visual clue writes it."""
    return " ".join(record.captions[0].split())[4:36]


def _conversation(body: dict[str, Any], rollout: int) -> str:
    last = body["messages"][-1]["content"]
    mode = "negative" if "NOT in the picture" in last else "other"
    turns = [
        {"role": "user", "content": f"Question {body.get('seed')}/{rollout} ({mode})?"},
        {"role": "assistant", "content": f"Answer about: {last[24:70]}"},
        {"role": "user", "content": "Is there a giraffe?"},
        {"role": "assistant", "content": "No, there is no giraffe."},
    ]
    return json.dumps(turns)


def good_answers(body: dict[str, Any]) -> Response:
    n = int(body.get("n") or 1)
    return Response.text(*(_conversation(body, i) for i in range(n)))


def _run(path: Path, records: list[ImageRecord]) -> RunDir:
    run = RunDir(path)
    run.write_records(records)
    return run


def _samples(run: RunDir) -> list[Sample]:
    return list(run.read_samples("samples"))


def test_counts_faults_and_rerun(
    tmp_path: Path, scripted_server: ScriptedServer, records: list[ImageRecord]
) -> None:
    chosen = records[:5]
    a, b, c, d, e = (_marker(record) for record in chosen)
    calls: Counter[str] = Counter()

    def faults(body: dict[str, Any]) -> Response | None:
        last = body["messages"][-1]["content"]
        negative = "NOT in the picture" in last
        n = int(body.get("n") or 1)
        if a in last and not negative:
            return Response.malformed()
        if b in last and not negative:
            good = _conversation(body, 0)
            return Response.text(
                good[: good.index("Is there")],  # cut inside the second question
                '[{"role": "user", "content": "How many',  # cut before any answer
                *(_conversation(body, i) for i in range(2, n)),
                finish_reason="length",
            )
        if b in last and negative:
            return Response.text(*["The picture shows people on a street."] * n)
        if c in last and not negative:
            return Response.refusal("I'm sorry, I can't help with that.")
        if d in last:
            calls[f"d-{negative}"] += 1
            if negative:
                return Response.status(500)
            if calls[f"d-{negative}"] == 1:
                return Response.status(429, retry_after=0)
        return None

    scripted_server.add_rule(faults)
    scripted_server.add_rule(good_answers)
    run = _run(tmp_path / "run", [*chosen, ImageRecord(image_id="bare", file_name="bare.jpg")])
    settings = GenerateSettings(modes={"conversation": 1.0, "negative": 1.0}, n=3)
    backend = scripted_server.backend(max_retries=1, backoff_base_s=0.01)
    summary = generate_run(run, settings, backend, concurrency=3)

    samples = _samples(run)
    ids = [s.sample_id for s in samples]
    assert len(ids) == len(set(ids)) == 5 * 2 * 3 + 2  # + the bare image, skipped per mode
    assert summary["samples"] == len(samples) and summary["images"] == 6
    failed = Counter(s.failure_reason for s in samples if not s.ok)
    assert failed == {
        FAILURE_LLM: 6,  # a: malformed body; d negative: HTTP 500 after the retry
        FAILURE_REFUSAL: 3,  # c
        FAILURE_NO_TURNS: 3,  # b negative: prose only
        FAILURE_TRUNCATED: 1,  # b: cut before the first answer
        SKIP_NO_ANNOTATION: 2,
    }
    assert summary["samples_failed"] == {reason.code: count for reason, count in failed.items()}
    assert summary["samples_ok"] == 30 - 13 and summary["samples_truncated"] == 1
    assert summary["rate_limited"] >= 1 and summary["requests"] == 10

    by_id = {s.sample_id: s for s in samples}
    cut = by_id[f"{chosen[1].image_id}:conversation:r0"]
    assert cut.ok and len(cut.turns) == 2 and cut.provenance["truncated"]
    assert "Is there" not in cut.provenance["raw_text"]
    lost = by_id[f"{chosen[1].image_id}:conversation:r1"]
    assert lost.provenance["raw_text"] == '[{"role": "user", "content": "How many'
    prose = by_id[f"{chosen[1].image_id}:negative:r2"]
    assert prose.provenance["raw_text"] == "The picture shows people on a street."
    error = by_id[f"{chosen[3].image_id}:negative:r0"]
    assert "500" in error.provenance["llm_error"]
    good = by_id[f"{chosen[4].image_id}:negative:r1"]
    assert good.ok and [t.role for t in good.turns] == ["user", "assistant"] * 2
    assert good.provenance["absent_objects"] and len(good.provenance["example_ids"]) == 2
    assert good.provenance["prompt_id"] == "negative@5"
    assert good.provenance["rollout"] == 1 and good.provenance["parameters"]["n"] == 3

    # Rerun: only the two requests that failed for good are asked again.
    sent = len(scripted_server.requests)
    again = generate_run(run, settings, backend, concurrency=3)
    assert again["from_journal"] == 8 and again["requests_sent"] == 2
    assert len(scripted_server.requests) - sent >= 2
    assert [s.to_row() for s in _samples(run)] == [s.to_row() for s in samples]


def test_rerun_sends_nothing_and_writes_the_same_bytes(
    tmp_path: Path, scripted_server: ScriptedServer, records: list[ImageRecord]
) -> None:
    scripted_server.add_rule(good_answers)
    run = _run(tmp_path / "run", records[:6])
    settings = GenerateSettings(
        modes={"conversation": 1.0, "region": 1.0, "detailed": 0.5, "adaptation": 1.0}, n=2
    )
    backend = scripted_server.backend()
    first = generate_run(run, settings, backend)
    content = _shard_bytes(run)
    sent = len(scripted_server.requests)
    assert sent == first["requests"] == first["requests_sent"]
    detailed = first["samples_ok_by_mode"].get("detailed", 0)
    assert 0 < detailed < 6 * 2  # about half of the images get the detailed mode
    second = generate_run(run, settings, backend)
    assert len(scripted_server.requests) == sent
    assert second["requests_sent"] == 0 and second["from_journal"] == first["requests"]
    assert _shard_bytes(run) == content

    samples = _samples(run)
    regions = [s for s in samples if s.mode == "region"]
    assert regions and all(s.ok for s in regions)
    for sample in regions:
        assert sample.image_path is not None and sample.image_path.is_file()
        assert sample.image_path.parent == run.images_dir.absolute() / "regions"
        assert "The object in the box is" in sample.provenance["visual_clue"]
        assert sample.provenance["source_image"].endswith(".jpg")
    assert any(s.mode == "adaptation" for s in samples)
    order = [(s.image_id, s.sample_id) for s in samples]
    assert [image for image, _ in order] == sorted(
        (image for image, _ in order), key=[r.image_id for r in records[:6]].index
    )


def test_request_budget_then_resume(
    tmp_path: Path, scripted_server: ScriptedServer, records: list[ImageRecord]
) -> None:
    scripted_server.add_rule(good_answers)
    run = _run(tmp_path / "run", records[:4])
    settings = GenerateSettings(modes={"reasoning": 1.0}, n=2)
    backend = scripted_server.backend()
    limited = generate_run(run, settings, backend, max_requests=1)
    assert limited["budget_exhausted"] and limited["requests_sent"] == 1
    assert limited["samples_failed"] == {FAILURE_BUDGET.code: 6}
    full = generate_run(run, settings, backend, concurrency=1)
    assert not full["budget_exhausted"]
    assert full["requests_sent"] == 3 and full["from_journal"] == 1
    assert full["samples_ok"] == 8 and len(scripted_server.requests) == 4


def test_images_that_cannot_be_used_are_skipped(
    tmp_path: Path, scripted_server: ScriptedServer, records: list[ImageRecord], coco_tiny: Path
) -> None:
    scripted_server.add_rule(good_answers)
    no_boxes = next(r for r in records if not r.objects)
    lines = [
        {"image_id": "here", "file_name": records[0].file_name, "captions": ["A motorbike."]},
        {"image_id": "gone", "file_name": "gone.jpg", "captions": ["A dog on a beach."]},
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines), "utf-8")
    collected = JsonlCollector(jsonl_file=jsonl, images_dir=coco_tiny / "train2017").collect()
    assert collected.summary["images_missing_file"] == 1
    run = _run(tmp_path / "run", [no_boxes, *collected.records])
    settings = GenerateSettings(modes={"region": 1.0, "conversation": 1.0}, n=2)
    summary = generate_run(run, settings, scripted_server.backend())
    assert summary["samples_failed"] == {
        SKIP_NO_REGION.code: 2,  # no_boxes and "here" have no boxes at all
        SKIP_NO_IMAGE.code: 2,  # "gone": neither mode is asked for
    }
    assert summary["requests"] == 2 and len(scripted_server.requests) == 2
    assert summary["samples_ok_by_mode"] == {"conversation": 4}


def test_sigkill_then_rerun_gives_the_same_samples(
    tmp_path: Path, scripted_server: ScriptedServer, records: list[ImageRecord]
) -> None:
    slow = {"on": True}

    def answers(body: dict[str, Any]) -> Response:
        response = good_answers(body)
        if slow["on"]:
            return Response.text(*(response.texts or ()), delay_s=0.4)
        return response

    scripted_server.add_rule(answers)
    chosen = records[:12]
    command = [
        str(Path(sys.executable).parent / "vlit"),
        "generate",
        "RUN",
        "--modes",
        "conversation",
        "--llm-base-url",
        scripted_server.url,
        "--llm-model",
        "test-model",
        "--n",
        "2",
        "--concurrency",
        "2",
        "--json",
    ]

    def vlit(run: Path, *, wait: bool = True) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(run) if part == "RUN" else part for part in command],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if wait:
            assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
        return process

    killed = _run(tmp_path / "killed", chosen)
    process = vlit(killed.root, wait=False)
    deadline = time.monotonic() + 60
    while len(scripted_server.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = len(scripted_server.requests)
    assert 4 <= before < 12
    assert not killed.has_stage("samples")

    slow["on"] = False
    resumed = vlit(killed.root)
    summary = json.loads(resumed.stdout.read() if resumed.stdout else "")
    assert summary["from_journal"] >= 2 and summary["requests_sent"] <= 12 - 2
    assert summary["from_journal"] + summary["requests_sent"] == 12

    clean = _run(tmp_path / "clean", chosen)
    vlit(clean.root)
    killed_samples, clean_samples = _samples(killed), _samples(clean)
    assert len(killed_samples) == 24
    assert len({s.sample_id for s in killed_samples}) == 24
    assert [s.to_row() for s in killed_samples] == [s.to_row() for s in clean_samples]


def _shard_bytes(run: RunDir) -> list[bytes]:
    """The bytes of the committed samples shards (their names change with every write)."""
    manifest = run.manifest("samples")
    assert manifest is not None
    return [(run.stage_dir("samples") / shard["file"]).read_bytes() for shard in manifest.shards]
