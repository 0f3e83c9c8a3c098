"""One home per stage: each default written once, a setting followed from the recipe file to
the request, typed reasons through a stored shard, one runner contract."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from llm_servers import Response, ScriptedServer
from recipe_parts import coco_tiny_collect
from vlit.cli import app
from vlit.llm.base import ChatRequest, Message
from vlit.llm.config import LlmConfig
from vlit.llm.session import LlmSession
from vlit.reasons import Reason
from vlit.recipe import Recipe, load_recipe
from vlit.rundir import RunDir
from vlit.runners.base import Runner, RunnerSettings, Step, build_runner
from vlit.runners.local import LocalRunner
from vlit.schema import Sample, Turn
from vlit.stages.filter import FilterSettings
from vlit.stages.generate import GenerateSettings, LlmSettings
from vlit.stages.report import ReportSettings
from vlit.stages.run_all import run_recipe
from vlit.stages.score import JudgeSettings, ScoreSettings

SRC = Path(__file__).resolve().parents[1] / "src" / "vlit"

# CLI option (python name) -> (settings model, field), where the two names differ.
RENAMED: dict[str, dict[str, tuple[type[BaseModel], str]]] = {
    "generate": {
        "llm_api_key_env": (LlmSettings, "api_key_env"),
        "llm_token_limit_param": (LlmSettings, "token_limit_param"),
    },
    "score": {
        "clip": (ScoreSettings, "clip_model"),
        "judge_n": (JudgeSettings, "votes"),
        "llm_token_limit_param": (LlmSettings, "token_limit_param"),
        "llm_concurrency": (GenerateSettings, "concurrency"),
    },
    "report": {
        "embedder": (ReportSettings, "embedder"),
        "concurrency": (GenerateSettings, "concurrency"),
    },
}
# Switches that turn a setting off: `--no-lint` is False by default because `lint` is True.
NEGATED = {
    "score": {"no_lint": (ScoreSettings, "lint"), "no_grounding": (ScoreSettings, "grounding")}
}
# Options named like a setting that stand for something else: `--judge` switches the judge
# section on, `vlit report --html FILE` names a file (the recipe's `html` is whether to write one).
OTHER_MEANING = {("score", "judge"), ("report", "html")}
MODELS = {
    "generate": GenerateSettings,
    "score": ScoreSettings,
    "filter": FilterSettings,
    "report": ReportSettings,
}


def _default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].get_default(call_default_factory=True)


def _options(command: str) -> dict[str, Any]:
    """The command's parameters by their Python name."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    return {param.name: param for param in commands[command].params if param.name}


@pytest.mark.parametrize("command", sorted(MODELS))
def test_every_option_of_a_setting_defaults_to_its_settings_model(command: str) -> None:
    options = _options(command)
    model = MODELS[command]
    checked = {
        name: (model, name)
        for name in options
        if name in model.model_fields and (command, name) not in OTHER_MEANING
    } | RENAMED.get(command, {})
    assert len(checked) >= 3, checked  # the walk found the command's settings
    for name, (owner, field) in checked.items():
        default = options[name].default
        wanted = _default(owner, field)
        if name == "modes":
            wanted = ",".join(wanted)
        elif name == "drop_lint":  # a comma-separated list; none given is the empty list
            assert default is None and wanted == []
            continue
        elif name == "embedder":  # None: the model's default, unless --reuse-settings names one
            assert default is None
            continue
        assert default == wanted, f"vlit {command} --{name}: {default!r} != {owner.__name__}"
    for name, (owner, field) in NEGATED.get(command, {}).items():
        assert options[name].default is (not _default(owner, field))


def test_one_default_for_llm_concurrency() -> None:
    assert LlmConfig().concurrency == _default(GenerateSettings, "concurrency")
    assert _options("score")["llm_concurrency"].default == LlmConfig().concurrency


def test_the_recipe_is_made_of_the_stages_settings_models() -> None:
    sections = {name: field.annotation for name, field in Recipe.model_fields.items()}
    assert sections["generate"] is GenerateSettings and sections["llm"] is LlmSettings
    assert sections["runner"] is RunnerSettings
    assert sections["score"] == ScoreSettings | None
    assert sections["filter"] == FilterSettings | None
    assert sections["report"] == ReportSettings | None


def _recipe_file(tmp_path: Path, coco_tiny: Path, url: str, generate: dict[str, Any]) -> Path:
    data = {
        "run_dir": str(tmp_path / "run"),
        "collect": coco_tiny_collect(coco_tiny),
        "generate": {"modes": {"conversation": 0.1}, "n": 1, **generate},
        "llm": {"kind": "openai", "base_url": url, "model": "scripted"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), "utf-8")
    return path


@pytest.mark.parametrize("written", [0.35, None])
def test_temperature_goes_from_the_recipe_file_to_every_request(
    tmp_path: Path, coco_tiny: Path, scripted_server: ScriptedServer, written: float | None
) -> None:
    scripted_server.add_rule(
        lambda body: Response.text(
            '[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]'
        )
    )
    section = {} if written is None else {"temperature": written}
    recipe = load_recipe(_recipe_file(tmp_path, coco_tiny, scripted_server.url, section))
    wanted = written if written is not None else _default(GenerateSettings, "temperature")
    assert recipe.generate.temperature == wanted
    assert recipe.generate.generation().temperature == wanted  # what the generator reads
    run_recipe(recipe)
    assert scripted_server.requests
    assert {body["temperature"] for body in scripted_server.requests} == {wanted}
    samples = list(RunDir(recipe.run_dir).read_samples("samples"))
    llm_made = [s for s in samples if "parameters" in s.provenance]
    assert llm_made and {s.provenance["parameters"]["temperature"] for s in llm_made} == {wanted}


codes = st.text(min_size=1, max_size=20).filter(lambda code: ": " not in code)


@settings(max_examples=60, deadline=None)
@given(code=codes, detail=st.text(max_size=40))
def test_a_reason_reads_back_from_its_text(code: str, detail: str) -> None:
    reason = Reason(code, detail)
    assert Reason.parse(str(reason)) == reason


def test_typed_reasons_round_trip_through_a_stored_shard(tmp_path: Path) -> None:
    reasons = [
        Reason("md_below_min", "12.5"),
        Reason("generation_failed", "unparseable: no User/AI turns found"),
        Reason("lint_refusal"),
        Reason("a:b", ":: c"),
        None,
    ]
    samples = [
        Sample(sample_id=f"s{index}", turns=[Turn("user", "Q?")], drop_reason=reason)
        for index, reason in enumerate(reasons)
    ]
    run = RunDir(tmp_path / "run")
    run.write_samples("dropped", samples)
    back = [sample.drop_reason for sample in run.read_samples("dropped")]
    assert back == reasons
    stored = next(run.read_columns("dropped", ["drop_reason"]))["drop_reason"]
    assert list(stored) == [None if r is None else str(r) for r in reasons]
    with pytest.raises(ValueError, match="code"):
        Reason("md: low")


def test_the_budget_stop_is_a_flag_not_a_wording(scripted_server: ScriptedServer) -> None:
    scripted_server.add_rule(lambda body: Response.text("budget exhausted: not from the budget"))
    session = LlmSession(scripted_server.backend(), max_requests=1)
    requests = [ChatRequest([Message("user", f"Hi {i}")]) for i in range(2)]
    answered, refused = session.run(requests)
    assert answered.ok and not answered.budget_refused
    assert answered.choices[0].text.startswith("budget exhausted")
    assert refused.budget_refused and refused.error is not None


class _Counting:
    """A step that counts the samples it sees."""

    name = "counting"

    def __init__(self) -> None:
        from collections import Counter

        from vlit.runners.base import Resources

        self.resources = Resources(batch_size=3)
        self.counts: Counter[str] = Counter()

    def setup(self) -> None:
        self.counts["setup"] += 1

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        self.counts["seen"] += len(batch)
        return batch


def test_the_local_runner_keeps_the_contract(tmp_path: Path) -> None:
    runner = build_runner()
    assert isinstance(runner, LocalRunner) and isinstance(runner, Runner)
    step = _Counting()
    assert isinstance(step, Step)
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", [Sample(sample_id=f"s{i}") for i in range(7)])
    done: list[int] = []
    with run.writer("scores", inputs=("samples",), settings={}, command="test") as writer:
        runner.map_stage([step], run, "samples", writer, on_batch=done.append)
    assert [s.sample_id for s in run.read_samples("scores")] == [f"s{i}" for i in range(7)]
    assert step.counts == {"setup": 1, "seen": 7} and done == [3, 3, 1]


def test_quality_and_stage_code_has_no_runner_branches() -> None:
    """Runners are reached through the contract only (`vlit.runners.base.Runner`)."""
    branches = re.compile(
        r"ray_runner|ray_journal|runner\s*==|\.kind\s*==\s*[\"']ray|isinstance\([^)]*Runner"
    )
    found = [
        f"{path.relative_to(SRC)}:{number}"
        for folder in ("quality", "stages", "report")
        for path in sorted((SRC / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1)
        if branches.search(line)
    ]
    assert found == []
