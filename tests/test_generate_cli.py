"""`vlit generate` and `vlit run` as a user runs them (in process, real HTTP server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_servers import Response, ScriptedServer
from vlit.cli import main
from vlit.collect import CocoCollector
from vlit.rundir import RunDir


def _vlit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _answers(body: dict[str, Any]) -> Response:
    text = '[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]'
    return Response.text(*[text] * int(body.get("n") or 1))


@pytest.fixture
def run_with_records(tmp_path: Path, coco_tiny: Path) -> RunDir:
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
    run.write_records(records[:3])
    return run


def test_generate_json_summary(
    run_with_records: RunDir,
    scripted_server: ScriptedServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripted_server.add_rule(_answers)
    argv = ["generate", str(run_with_records.root), "--modes", "conversation,knowledge"]
    argv += ["--llm-base-url", scripted_server.url, "--llm-model", "m", "--n", "3"]
    argv += ["--temperature", "0.5", "--seed", "11", "--max-tokens", "200", "--json"]
    code, out, _ = _vlit(argv, capsys)
    assert code == 0
    summary = json.loads(out)  # exactly one JSON object on stdout
    assert summary["samples_ok"] == 3 * 2 * 3 and summary["requests_sent"] == 6
    body = scripted_server.requests[0]
    assert body["n"] == 3 and body["temperature"] == 0.5 and body["max_tokens"] == 200
    samples = list(run_with_records.read_samples("samples"))
    assert {s.provenance["recipe_seed"] for s in samples} == {11}
    assert RunDir(run_with_records.root).load_meta()["summaries"]["generate"]["samples"] == 18


def test_generate_errors_are_one_line(
    run_with_records: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _vlit(["generate", str(run_with_records.root), "--modes", "chat"], capsys)
    assert code == 2 and out == ""
    assert "unknown mode(s) ['chat']" in err and "conversation" in err
    code, _, err = _vlit(["generate", str(tmp_path / "empty"), "--modes", "adaptation"], capsys)
    assert code == 2 and "vlit collect" in err
    code, _, err = _vlit(["generate", str(run_with_records.root), "--n", "0"], capsys)
    assert code == 2 and "--n" in err


def test_run_recipe_command(
    tmp_path: Path,
    coco_tiny: Path,
    scripted_server: ScriptedServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripted_server.add_rule(_answers)
    recipe = {
        "run_dir": "out",
        "collect": {
            "sources": [
                {
                    "kind": "coco",
                    "images_dir": str(coco_tiny / "train2017"),
                    "captions": str(coco_tiny / "annotations" / "captions_train2017.json"),
                }
            ]
        },
        "generate": {"modes": {"detailed": 0.1}, "n": 1},
        "llm": {"kind": "openai", "base_url": scripted_server.url, "model": "m"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), "utf-8")
    code, out, _ = _vlit(["run", str(path), "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["collect"]["images"] == 50
    assert summary["generate"]["samples_ok"] == summary["generate"]["requests"] > 0
    assert (tmp_path / "out" / "recipe.resolved.yaml").is_file()

    recipe["generate"]["tempreature"] = 1.0
    path.write_text(yaml.safe_dump(recipe), "utf-8")
    code, out, err = _vlit(["run", str(path)], capsys)
    assert code == 2 and "generate.tempreature" in err and "temperature" in err
