"""The parser against a table of LLM outputs in the shapes models really produce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlit.generate.parse import (
    FAILURE_EMPTY,
    FAILURE_NO_ANSWER,
    FAILURE_NO_TURNS,
    FAILURE_REFUSAL,
    FAILURE_TRUNCATED,
    parse_conversation,
)
from vlit.reasons import Reason

PAPER_STYLE = (
    '{"User": "What is the man riding?", "AI": "He is riding a motorcycle on a dirt road.", '
    '"User": "What is he wearing on his head?", "AI": "A red helmet.", '
    '"User": "Is he riding on a paved highway?", "AI": "No, the road is made of dirt."}'
)

# (name, model output, finish_reason, expected (role initial, text) pairs, truncated)
CASES = [
    (
        "paper repeated keys",
        PAPER_STYLE,
        "stop",
        [
            ("u", "What is the man riding?"),
            ("a", "He is riding a motorcycle on a dirt road."),
            ("u", "What is he wearing on his head?"),
            ("a", "A red helmet."),
            ("u", "Is he riding on a paved highway?"),
            ("a", "No, the road is made of dirt."),
        ],
        False,
    ),
    (
        "our format: role/content list",
        '[\n{"role": "user", "content": "How many giraffes?"},\n'
        '{"role": "assistant", "content": "Two giraffes.\\nOne is eating."}\n]',
        "stop",
        [("u", "How many giraffes?"), ("a", "Two giraffes.\nOne is eating.")],
        False,
    ),
    (
        "sharegpt from/value with a system message",
        '[{"from": "system", "value": "be nice"}, {"from": "human", "value": "Q?"}, '
        '{"from": "gpt", "value": "A."}]',
        "stop",
        [("u", "Q?"), ("a", "A.")],
        False,
    ),
    (
        "list of User/AI objects",
        '[{"User": "Is it raining?", "AI": "Yes."}, {"User": "Why?", "AI": "Umbrellas."}]',
        "stop",
        [("u", "Is it raining?"), ("a", "Yes."), ("u", "Why?"), ("a", "Umbrellas.")],
        False,
    ),
    (
        "chatter and a fenced block",
        "Sure! Here is a conversation about the image:\n\n```json\n"
        '{"User": "What colour is the bus?", "AI": "It is red."}\n```\n\nLet me know!',
        "stop",
        [("u", "What colour is the bus?"), ("a", "It is red.")],
        False,
    ),
    (
        "wrapper object with raw newlines inside strings",
        '{"conversation": [{"role": "user", "content": "Describe it."}, '
        '{"role": "assistant", "content": "A kitchen.\nTwo bottles stand on the table."}]}',
        "stop",
        [("u", "Describe it."), ("a", "A kitchen.\nTwo bottles stand on the table.")],
        False,
    ),
    (
        "one object per line (JSON lines)",
        '{"User": "q1", "AI": "a1"}\n{"User": "q2", "AI": "a2"}\n',
        "stop",
        [("u", "q1"), ("a", "a1"), ("u", "q2"), ("a", "a2")],
        False,
    ),
    (
        "number as an answer",
        '{"User": "How many dogs?", "AI": 2}',
        "stop",
        [("u", "How many dogs?"), ("a", "2")],
        False,
    ),
    (
        "repeated keys cut off inside an answer",
        '{"User": "How many cups?", "AI": "Three cups.", "User": "Where are they?", '
        '"AI": "They stand on the',
        "length",
        [("u", "How many cups?"), ("a", "Three cups.")],
        True,
    ),
    (
        "role list cut off (no finish reason reported)",
        '[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, '
        '{"role": "user", "content": "Q2"}, {"role": "assis',
        "stop",
        [("u", "Q1"), ("a", "A1")],
        True,
    ),
    (
        "invalid escape in JSON",
        '{"User": "What\\\'s on the sign?", "AI": "It says \\"STOP\\".", "User": "Why?"',
        "stop",
        [("u", "What's on the sign?"), ("a", 'It says "STOP".')],
        True,
    ),
    (
        "User/AI lines with multi-line answers and trailing chatter",
        "Here is the dialogue.\nUser: How many people are there?\nAI: Two people.\n"
        "One rides a motorcycle.\n\nUser: Is it night?\nAI: No, it is daytime.\n\n"
        "I hope this conversation helps!",
        "stop",
        [
            ("u", "How many people are there?"),
            ("a", "Two people.\nOne rides a motorcycle."),
            ("u", "Is it night?"),
            ("a", "No, it is daytime."),
        ],
        False,
    ),
    (
        "Human/Assistant with markdown bold",
        "**Human:** What is on the plate?\n**Assistant:** A slice of pizza.\n"
        "**Human**: Is it vegetarian?\n**Assistant**: Yes, it only has vegetables.",
        "stop",
        [
            ("u", "What is on the plate?"),
            ("a", "A slice of pizza."),
            ("u", "Is it vegetarian?"),
            ("a", "Yes, it only has vegetables."),
        ],
        False,
    ),
    (
        "numbered Q/A",
        "Q1: What animal is this?\nA1: A cat.\nQ2: Where is it?\nA2: On a sofa.",
        "stop",
        [
            ("u", "What animal is this?"),
            ("a", "A cat."),
            ("u", "Where is it?"),
            ("a", "On a sofa."),
        ],
        False,
    ),
    (
        "bulleted Question/Answer",
        "- Question: Is there a dog?\n- Answer: No, there is a cat.",
        "stop",
        [("u", "Is there a dog?"), ("a", "No, there is a cat.")],
        False,
    ),
    (
        "lines cut by the length limit",
        "User: What is he holding?\nAI: A kite.\nUser: What colour is it?\nAI: It is bright",
        "length",
        [("u", "What is he holding?"), ("a", "A kite.")],
        True,
    ),
    (
        "starts with the assistant, repeated speaker",
        "AI: Hello! Let's talk.\nUser: What is this?\nUser: Please answer.\nAI: A train.",
        "stop",
        [("u", "What is this?\nPlease answer."), ("a", "A train.")],
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "finish_reason", "expected", "truncated"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_parse_table(
    name: str,
    text: str,
    finish_reason: str,
    expected: list[tuple[str, str]],
    truncated: bool,
) -> None:
    parsed = parse_conversation(text, finish_reason=finish_reason)
    assert parsed.ok, (name, parsed)
    assert [(turn.role[0], turn.text) for turn in parsed.turns] == expected
    assert parsed.truncated is truncated
    roles = [turn.role for turn in parsed.turns]
    assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_paper_format_loses_turns_under_plain_json() -> None:
    # Why the pair-preserving parse matters: a plain dict keeps only the last "User"/"AI".
    assert len(json.loads(PAPER_STYLE)) == 2
    assert len(parse_conversation(PAPER_STYLE).turns) == 6


FAILURES = [
    ("", "stop", FAILURE_EMPTY),
    ("   \n ", "stop", FAILURE_EMPTY),
    ("I'm sorry, but I can't create content about images I cannot see.", "stop", FAILURE_REFUSAL),
    ("The image shows a man riding a motorcycle on a dirt road.", "stop", FAILURE_NO_TURNS),
    ('{"User": "How many people are', "length", FAILURE_TRUNCATED),
    ("The picture shows a kitchen with two bottles of wine and a", "length", FAILURE_TRUNCATED),
    ("User: What is in the picture?\nUser: Anything?", "stop", FAILURE_NO_ANSWER),
    ('{"caption": "a dog", "objects": ["dog"]}', "stop", FAILURE_NO_TURNS),
]


@pytest.mark.parametrize(("text", "finish_reason", "reason"), FAILURES)
def test_failures_are_named(text: str, finish_reason: str, reason: Reason) -> None:
    parsed = parse_conversation(text, finish_reason=finish_reason)
    assert not parsed.ok
    assert parsed.failure_reason == reason
    assert parsed.turns == []


def test_notes_record_repairs() -> None:
    parsed = parse_conversation("Intro text\nUser: a?\nAI: b\nUser: c?")
    assert "ignored text before the dialogue" in parsed.notes
    assert "dropped an unanswered final user turn" in parsed.notes
    assert parsed.format == "lines"


SMOLLM2 = json.loads(
    (Path(__file__).parent / "data" / "generate_smollm2_outputs.json").read_text("utf-8")
)["outputs"]


@pytest.mark.parametrize("output", SMOLLM2, ids=[f"smollm2-{i}" for i in range(len(SMOLLM2))])
def test_real_smollm2_generations(output: dict[str, Any]) -> None:
    parsed = parse_conversation(output["text"], finish_reason=output["finish_reason"])
    assert [turn.role for turn in parsed.turns] == output["expected_roles"]
    expected = output["expected_failure"]  # a failure's stored text
    assert parsed.failure_reason == (None if expected is None else Reason.parse(expected))
    assert parsed.truncated == output["expected_truncated"]
    for turn in parsed.turns:  # every kept turn is a complete string of the output
        assert json.dumps(turn.text, ensure_ascii=False)[1:-1] in output["text"]


def test_repeated_role_keys_in_one_object_are_all_kept() -> None:
    # SmolLM2 writes several messages into one object; pairing role and content keeps them.
    text = (
        '[{"role": "user", "content": "What are they doing?"},'
        ' {"role": "assistant", "content": "Cutting a cake.",'
        ' "role": "user", "content": "Who cuts it?", "role": "assistant", "content": "A woman."}]'
    )
    parsed = parse_conversation(text)
    assert [t.text for t in parsed.turns] == [
        "What are they doing?",
        "Cutting a cake.",
        "Who cuts it?",
        "A woman.",
    ]
    assert not parsed.truncated
