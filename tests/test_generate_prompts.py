"""System prompts, in-context examples and request messages of the LLM modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from vlit.errors import InputFileError
from vlit.generate.parse import parse_conversation
from vlit.generate.prompts import LLM_MODES, PromptLibrary, render_conversation
from vlit.generate.seeding import seeded_random, stable_seed


@pytest.fixture(scope="module")
def library() -> PromptLibrary:
    return PromptLibrary.load()


def test_every_mode_has_its_own_prompt_with_the_rules(library: PromptLibrary) -> None:
    texts = {mode: library.system_prompt(mode).text for mode in LLM_MODES}
    assert len(set(texts.values())) == len(LLM_MODES)
    for mode, text in texts.items():
        lowered = text.lower()
        assert "the user speaks first" in lowered, mode
        assert "ever mentions notes, captions, descriptions" in lowered, mode
        assert '{"conversation": [{"user": ' in text and "json object" in lowered, mode
        assert "step by step" in lowered, mode
    assert "object in the box" in texts["region"]
    assert "NOT in the picture" not in texts["conversation"]
    assert '"no"' in texts["conversation"] and '"No"' in texts["negative"]
    assert "brands" in texts["knowledge"]
    ids = {library.system_prompt(mode).prompt_id for mode in LLM_MODES}
    assert len(ids) == len(LLM_MODES)


def test_examples_cover_modes_and_hard_cases(library: PromptLibrary) -> None:
    assert len(library.examples) >= 10
    assert len({example.example_id for example in library.examples}) == len(library.examples)
    for mode in LLM_MODES:
        assert len(library.examples_for(mode)) >= 2, mode
    data = yaml.safe_load(
        resources.files("vlit").joinpath("data/prompts/examples.yaml").read_text("utf-8")
    )
    covered = {tag for item in data["examples"] for tag in item.get("covers", [])}
    assert {"negative", "counts", "ocr", "knowledge", "region"} <= covered


def test_examples_follow_the_output_format_and_parse_back(library: PromptLibrary) -> None:
    for example in library.examples:
        rendered = render_conversation(example.turns)
        parsed = parse_conversation(rendered)
        assert parsed.ok and parsed.format == "json"
        assert parsed.turns == list(example.turns), example.example_id
        assert example.turns[0].role == "user"
        for turn in example.turns:
            lowered = turn.text.lower()
            for leak in ("the description", "the caption", "the text you", "the notes"):
                assert leak not in lowered, (example.example_id, leak)


def test_messages_put_examples_before_the_request(library: PromptLibrary) -> None:
    rng = seeded_random(0, "42", "negative", "", "examples")
    examples = library.draw_examples("negative", 2, rng)
    messages = library.build_messages(
        "negative", clue="A cat on a sofa.", examples=examples, absent=("dog", "kite")
    )
    assert [m.role for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[0].content == library.system_prompt("negative").text
    assert "A cat on a sofa." in messages[-1].content
    assert "dog, kite" in messages[-1].content
    for example, user in zip(examples, messages[1:-1:2], strict=True):
        assert example.clue in user.content
        assert ", ".join(example.absent) in user.content
    region = library.build_messages(
        "region", clue="The object in the box is a dog.", examples=library.examples_for("region")
    )
    for message, example in zip(region[1:-1:2], library.examples_for("region"), strict=True):
        assert example.region is not None and message.content.index(example.region) < (
            message.content.index(example.clue)
        )


def test_example_draw_is_seeded_and_varies(library: PromptLibrary) -> None:
    def draw(image_id: str) -> list[str]:
        rng = seeded_random(7, image_id, "conversation", "", "examples")
        return [e.example_id for e in library.draw_examples("conversation", 2, rng)]

    assert draw("1") == draw("1")
    assert len({tuple(draw(str(i))) for i in range(30)}) > 5


def test_seeds_do_not_depend_on_the_process_hash_salt() -> None:
    code = (
        "from vlit.generate.seeding import stable_seed, seeded_random;"
        "print(stable_seed(3, '391895', 'region', 2), seeded_random(3, 'x').random())"
    )
    outputs = set()
    for salt in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=salt)
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    expected = f"{stable_seed(3, '391895', 'region', 2)} {seeded_random(3, 'x').random()}"
    assert outputs == {expected}
    assert stable_seed("a", "bc") != stable_seed("ab", "c")


def test_a_prompts_folder_of_ones_own(tmp_path: Path) -> None:
    source = resources.files("vlit").joinpath("data/prompts")
    for name in ("system_prompts.yaml", "examples.yaml", "object_vocabulary.yaml"):
        (tmp_path / name).write_text(source.joinpath(name).read_text("utf-8"), "utf-8")
    data = yaml.safe_load((tmp_path / "system_prompts.yaml").read_text("utf-8"))
    data["modes"]["detailed"]["focus"] = "Describe the photo for a blind reader."
    (tmp_path / "system_prompts.yaml").write_text(yaml.safe_dump(data), "utf-8")
    mine = PromptLibrary.load(tmp_path)
    assert "blind reader" in mine.system_prompt("detailed").text
    assert mine.system_prompt("detailed").sha != PromptLibrary.load().system_prompt("detailed").sha

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path, broken, ignore=shutil.ignore_patterns("broken"))
    examples = yaml.safe_load((broken / "examples.yaml").read_text("utf-8"))
    examples["examples"] = [e for e in examples["examples"] if "detailed" not in e["modes"]]
    (broken / "examples.yaml").write_text(json.dumps(examples), "utf-8")
    with pytest.raises(InputFileError) as error:
        PromptLibrary.load(broken)
    assert "examples.yaml" in str(error.value) and "detailed" in str(error.value)
