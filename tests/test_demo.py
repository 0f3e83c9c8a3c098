"""`vlit demo`'s chain end to end: collect -> generate -> score -> filter -> report.

The demo itself runs the embedded SmolLM2 (minutes on CPU); here the same recipe runs with its
LLM pointed at a scripted OpenAI-compatible server on 127.0.0.1, so every later stage (the real
score, filter and report stages) runs on real demo photos and annotations within seconds.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from llm_servers import Response, ScriptedServer
from vlit.demo import demo_recipe, kept_by_origin
from vlit.recipe import Recipe
from vlit.rundir import RunDir
from vlit.stages.generate import LlmSettings
from vlit.stages.run_all import run_recipe


def _answers(body: dict[str, Any]) -> Response:
    """Two rollouts: a clean conversation, and one that names an object that is not there."""
    clean = [
        {"User": "What stands out in this picture?"},
        {"AI": "The main subject is in plain view, well lit and in focus."},
    ]
    hallucinated = [
        {"User": "What animals can you see?"},
        {"AI": "A giraffe and an elephant stand next to each other."},
    ]
    texts = [json.dumps(clean), json.dumps(hallucinated)]
    return Response.text(*texts[: int(body.get("n") or 1)])


def _run(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Each stage's summary, as JSON."""
    return {name: summary.to_json() for name, summary in run_recipe(recipe).items()}


def test_demo_recipe_runs_every_stage(tmp_path: Path, scripted_server: ScriptedServer) -> None:
    scripted_server.add_rule(_answers)
    recipe = demo_recipe(tmp_path / "demo")
    recipe = recipe.model_copy(
        update={"llm": LlmSettings(kind="openai", base_url=scripted_server.url, model="scripted")}
    )
    summaries = _run(recipe)

    assert list(summaries) == ["collect", "generate", "score", "filter", "report"]
    assert summaries["collect"]["images"] == 7
    generate = summaries["generate"]
    assert generate["requests_sent"] == len(scripted_server.requests) > 0
    llm_samples = generate["samples_ok"] - generate["samples_ok_by_mode"]["adaptation"]
    assert llm_samples == 2 * generate["requests_sent"]  # n = 2 rollouts per request
    # The planted giraffe is caught by grounding on every image that has annotated objects,
    # and the filter drops exactly those samples, with their reason.
    filtered = summaries["filter"]
    assert filtered["dropped_by_reason"].get("hallucination", 0) >= generate["requests_sent"] // 2
    run = RunDir(recipe.run_dir)
    dropped = list(run.read_samples("dropped"))
    assert all(s.drop_reason for s in dropped)
    # Only an image with no annotated objects (nothing to check against) keeps its giraffe.
    objects = {record.image_id: record.objects for record in run.read_records()}
    kept_giraffes = [s for s in run.read_samples("kept") if "giraffe" in s.turns[-1].text]
    assert all(not objects[s.image_id or ""] for s in kept_giraffes)
    # What the demo prints: kept conversations the LLM wrote next to template samples.
    kept = kept_by_origin(run)
    assert kept["llm_written"] + kept["template"] == filtered["kept"]
    assert kept["llm_written"] > 0 and kept["template"] > 0
    assert kept["examples"]["llm"]["turns"][0]["text"] == "What stands out in this picture?"
    assert ":adaptation:" in kept["examples"]["template"]["sample_id"]
    # The report stage wrote the indicators and a self-contained HTML page.
    table = summaries["report"]["indicators"]
    assert table["md"] is None and table["task_diversity"] >= 3
    assert json.loads((run.root / "indicators.json").read_text())["table"] == table
    HTMLParser().feed((run.root / "report.html").read_text(encoding="utf-8"))
    # A rerun answers every request from the journal.
    sent = len(scripted_server.requests)
    again = _run(recipe)
    assert len(scripted_server.requests) == sent and again["generate"]["requests_sent"] == 0
    assert again["filter"]["kept"] == filtered["kept"]


def test_the_demo_examples_print_without_markup_tags(capsys: pytest.CaptureFixture[str]) -> None:
    """Markup is off in vlit's consoles, so a heading is styled, never written as ``[bold]``."""
    from vlit.cli.demo_commands import _print_examples

    turns = [{"role": "user", "text": "Is [b]this[/b] bold?"}, {"role": "assistant", "text": "No."}]
    kept = {
        "llm_written": 1,
        "template": 0,
        "examples": {"llm": {"sample_id": "1:conversation:r0", "turns": turns}},
    }
    _print_examples(kept)
    printed = capsys.readouterr().out
    assert "An LLM-written conversation (1:conversation:r0):" in printed
    assert "[bold]" not in printed and "User: Is [b]this[/b] bold?" in printed
