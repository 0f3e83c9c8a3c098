"""The recipe: validation with useful errors, path resolution, the resolved copy, run_recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_servers import Response, ScriptedServer
from recipe_parts import coco_tiny_collect
from vlit.errors import ConfigError
from vlit.recipe import Recipe, load_recipe, parse_recipe
from vlit.rundir import RunDir
from vlit.stages import report as report_module
from vlit.stages import score as score_module
from vlit.stages.run_all import run_recipe
from vlit.stages.score import ScoreSettings, ScoreSummary

SECRET = "sk-vlit-test-9c41e7-do-not-leak"


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as error:
        parse_recipe(data, where="my.yaml")
    return str(error.value)


@pytest.mark.parametrize(
    ("data", "field", "valid", "suggestion"),
    [
        (
            {"run_dir": "r", "generate": {"temprature": 0.7}},
            "generate.temprature",
            "n,",
            "temperature",
        ),
        (
            {
                "run_dir": "r",
                "collect": {
                    "sources": [
                        {"kind": "coco", "images_dir": "i", "captions": "c", "instance": "x"}
                    ]
                },
            },
            "collect.sources.0.coco.instance",
            "vqa_questions",
            "instances",
        ),
        (
            {"run_dir": "r", "llm": {"base-url": "http://x"}},
            "llm.base-url",
            "api_key_env",
            "base_url",
        ),
        ({"run_dir": "r", "score": {"clipmodel": "x"}}, "score.clipmodel", "lint", "clip_model"),
        (
            {"run_dir": "r", "filter": {"threshold": {}}},
            "filter.threshold",
            "require_correct",
            "thresholds",
        ),
        ({"run_dir": "r", "generatе": {}}, "generatе", "run_dir", "generate"),  # Cyrillic e
    ],
)
def test_a_typo_names_the_field_and_the_valid_ones(
    data: dict[str, Any], field: str, valid: str, suggestion: str
) -> None:
    message = _error(data)
    assert message.startswith("my.yaml: ")
    assert f"unknown field '{field}'" in message
    assert valid in message.split("valid fields there:")[1]
    assert f"did you mean '{suggestion}'" in message


def test_values_are_checked() -> None:
    assert "unknown mode(s) ['captions']" in _error(
        {"run_dir": "r", "generate": {"modes": ["conversation", "captions"]}}
    )
    assert "shares must be in (0, 1]" in _error(
        {"run_dir": "r", "generate": {"modes": {"region": 1.5}}}
    )
    assert "generate.n" in _error({"run_dir": "r", "generate": {"n": 0}})
    assert "missing field 'run_dir'" in _error({})
    assert "'coco', 'jsonl'" in _error({"run_dir": "r", "collect": {"sources": [{"kind": "x"}]}})
    assert "llm.kind" in _error({"run_dir": "r", "llm": {"kind": "gpt"}})


def test_defaults_follow_the_paper() -> None:
    recipe = parse_recipe({"run_dir": "r"})
    settings = recipe.generate.generation()
    assert settings.temperature == 0.8 and settings.n == 5
    assert settings.examples_per_request == 2
    assert recipe.score is None and recipe.filter is None and recipe.report is None
    shares = parse_recipe(
        {"run_dir": "r", "generate": {"modes": {"conversation": 1.0, "region": 0.25}}}
    ).generate.generation()
    assert shares.modes == {"conversation": 1.0, "region": 0.25}


def test_relative_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.yaml").write_text(
        yaml.safe_dump(
            {
                "run_dir": "../runs/one",
                "collect": {
                    "sources": [{"kind": "jsonl", "jsonl_file": "mine.jsonl", "images_dir": "img"}]
                },
                "generate": {"prompts_dir": "prompts"},
            }
        ),
        "utf-8",
    )
    recipe = load_recipe(folder / "r.yaml")
    assert Path(recipe.run_dir).resolve() == (tmp_path / "runs" / "one").resolve()
    assert recipe.collect is not None
    source = recipe.collect.sources[0]
    assert Path(source.images_dir) == folder / "img"
    assert recipe.generate.prompts_dir == str(folder / "prompts")
    (folder / "bad.yaml").write_text("run_dir: [unclosed", "utf-8")
    with pytest.raises(ConfigError) as error:
        load_recipe(folder / "bad.yaml")
    assert "bad.yaml" in str(error.value) and "not valid YAML" in str(error.value)


def _write_recipe(tmp_path: Path, coco_tiny: Path, url: str, **generate: Any) -> Path:
    data = {
        "run_dir": "run",
        "collect": coco_tiny_collect(coco_tiny),
        "generate": {"modes": {"conversation": 0.2, "adaptation": 1.0}, "n": 2, **generate},
        "llm": {
            "kind": "openai",
            "base_url": url,
            "model": "scripted",
            "api_key_env": "VLIT_TEST_SECRET_KEY",
            "prices": {"prompt_per_1k": 0.5, "completion_per_1k": 1.5},
        },
        "score": {"clip_model": "clip-vit-base-patch32"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    return path


def test_run_recipe_end_to_end_without_leaking_the_key(
    tmp_path: Path,
    coco_tiny: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLIT_TEST_SECRET_KEY", SECRET)
    scripted_server.require_api_key = SECRET
    scripted_server.add_rule(
        lambda body: Response.text(
            *['[{"role": "user", "content": "What?"}, {"role": "assistant", "content": "A."}]']
            * int(body.get("n") or 1)
        )
    )
    recipe = load_recipe(_write_recipe(tmp_path, coco_tiny, scripted_server.url))
    progress: list[tuple[str, int, int | None]] = []
    summaries = run_recipe(recipe, progress=lambda *event: progress.append(event))

    assert summaries["collect"].to_json()["images"] == 50
    generate = summaries["generate"].to_json()
    assert 0 < generate["requests"] < 50  # about a fifth of the images get a conversation
    assert generate["samples_ok_by_mode"]["conversation"] == 2 * generate["requests"]
    assert generate["samples_ok_by_mode"]["adaptation"] > 300
    assert generate["cost"] == pytest.approx(
        (generate["tokens_in"] * 0.5 + generate["tokens_out"] * 1.5) / 1000
    )
    assert any(step.startswith("generating") for step, _, _ in progress)
    assert all(h.get("authorization") == f"Bearer {SECRET}" for h in scripted_server.headers)

    run = RunDir(recipe.run_dir)
    resolved = yaml.safe_load((run.root / "recipe.resolved.yaml").read_text("utf-8"))
    assert resolved["generate"]["temperature"] == 0.8
    assert resolved["resolved"]["vlit_version"]
    assert "pyarrow" in resolved["resolved"]["packages"]
    assert resolved["resolved"]["generator"]["model"] == "scripted"
    assert resolved["llm"]["api_key_env"] == "VLIT_TEST_SECRET_KEY"
    assert resolved["score"]["clip_model"] == "clip-vit-base-patch32"
    assert Recipe.model_validate({k: v for k, v in resolved.items() if k != "resolved"})

    files = [path for path in run.root.rglob("*") if path.is_file()]
    assert any(path.name == "journal.sqlite" for path in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path

    sent = len(scripted_server.requests)
    again = run_recipe(recipe)
    assert len(scripted_server.requests) == sent
    assert again["generate"].to_json()["requests_sent"] == 0


def test_later_stages_plug_in_by_section(
    tmp_path: Path,
    coco_tiny: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: list[ScoreSettings] = []

    def count_stage(run: RunDir, settings: ScoreSettings, runner: Any, **_: Any) -> ScoreSummary:
        given.append(settings)
        return ScoreSummary(input_stage="samples", samples=len(list(run.read_samples("samples"))))

    def report_stage(*_: Any) -> None:
        raise AssertionError("the recipe has no report section, so this stage must not run")

    monkeypatch.setattr(score_module, "run", count_stage)
    monkeypatch.setattr(report_module, "run", report_stage)
    path = _write_recipe(tmp_path, coco_tiny, scripted_server.url, modes=["adaptation"])
    summaries = run_recipe(load_recipe(path))
    assert list(summaries) == ["collect", "generate", "score"]
    generated = summaries["generate"].to_json()
    assert summaries["score"].to_json()["samples"] == generated["samples"]
    assert [settings.clip_model for settings in given] == ["clip-vit-base-patch32"]
    assert generated["model"] is None and not scripted_server.requests
