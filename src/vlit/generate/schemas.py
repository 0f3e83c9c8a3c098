"""The JSON shape of each LLM answer, defined once: prompt instructions, constraint and parser.

Three shapes:

* a **conversation** (the generation modes): ``{"conversation": [{"user": ..., "assistant":
  ...}, ...]}``, with the number of pairs and the length of every question and answer bounded
  by the mode's settings (its pair range and answer length) and by ``max_tokens``, so that a
  constrained model finishes the structure before the token limit;
* a **judge verdict**: ``{"verdict": "correct" | "incorrect", "reason": ...}``, the reason
  bounded so that it fits the judge's ``max_tokens``;
* a **complexity score**: a bare integer from 1 to 10.

Each shape gives its JSON schema (sent as ``response_format`` or compiled into a token mask),
the words that ask for it in the prompt, and a strict reader that accepts exactly that shape.

Example:
    >>> shape = conversation_shape(pairs=(3, 5), answer_chars=600, max_tokens=1024)
    >>> (shape.min_pairs, shape.max_pairs)
    (3, 5)
    >>> turns = shape.read('{"conversation": [{"user": "Hi?", "assistant": "Hello."}]}')
    >>> turns is None  # fewer pairs than the shape asks for
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vlit.errors import ConfigError
from vlit.llm.base import JSON_SEPARATORS, OutputSchema, StructuredSetting
from vlit.schema import Turn

CONVERSATION_KEY = "conversation"

# Token costs used to fit a conversation into max_tokens. The JSON frame and the keys of a pair
# cost about this many tokens (SmolLM2 and GPT-style tokenizers); prose takes about 4 characters
# a token, what a small constrained model writes about 3 (measured on SmolLM2-135M).
_FRAME_TOKENS = 8
_PAIR_TOKENS = 14
_CHARS_PER_TOKEN = 3.0
_MIN_CHARS_PER_PAIR = 120  # below this a pair says nothing: drop a pair instead
_MAX_QUESTION_CHARS = 240
_MIN_TEXT_CHARS = 2
#: Every question and answer ends a sentence, so a constrained model near its length limit
#: closes the sentence instead of being cut off mid-word.
SENTENCE_PATTERN = r"^[\s\S]*[.?!]$"
_SENTENCE_ENDS = (".", "?", "!")


@dataclass(frozen=True)
class ConversationShape:
    """A conversation of ``min_pairs``..``max_pairs`` (question, answer) pairs, with questions
    of at most ``max_question_chars`` and answers of at most ``max_answer_chars`` characters."""

    min_pairs: int
    max_pairs: int
    max_question_chars: int
    max_answer_chars: int

    def schema(self) -> dict[str, Any]:
        """The JSON schema of this conversation."""

        def text(limit: int) -> dict[str, Any]:
            return {
                "type": "string",
                "minLength": _MIN_TEXT_CHARS,
                "maxLength": limit,
                "pattern": SENTENCE_PATTERN,
            }

        pair = {
            "type": "object",
            "properties": {
                "user": text(self.max_question_chars),
                "assistant": text(self.max_answer_chars),
            },
            "required": ["user", "assistant"],
            "additionalProperties": False,
        }
        return {
            "type": "object",
            "properties": {
                CONVERSATION_KEY: {
                    "type": "array",
                    "items": pair,
                    "minItems": self.min_pairs,
                    "maxItems": self.max_pairs,
                }
            },
            "required": [CONVERSATION_KEY],
            "additionalProperties": False,
        }

    def output_schema(self, setting: StructuredSetting) -> OutputSchema:
        return OutputSchema.of(CONVERSATION_KEY, self.schema(), setting)

    def instructions(self) -> str:
        """The prompt's words asking for this shape."""
        if self.min_pairs == self.max_pairs:
            count = f"exactly {self.min_pairs}"
        else:
            count = f"{self.min_pairs} to {self.max_pairs}"
        pairs = "pair" if self.max_pairs == 1 else "pairs"
        example = render_conversation([Turn("user", "..."), Turn("assistant", "...")])
        return (
            "Reply with the conversation only, as one JSON object and nothing before or after "
            f"it:\n{example[:-2]}, ...]}}\nWrite {count} question-answer {pairs} in the list. "
            f"Keep every question under {self.max_question_chars} characters and every answer "
            f'under {self.max_answer_chars} characters. Use "\\n" inside a string for a line '
            "break."
        )

    def read(self, text: str) -> list[Turn] | None:
        """The turns of ``text`` if it is exactly this shape (JSON, bounds included), else None."""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {CONVERSATION_KEY}:
            return None
        pairs = value[CONVERSATION_KEY]
        if not isinstance(pairs, list) or not self.min_pairs <= len(pairs) <= self.max_pairs:
            return None
        turns: list[Turn] = []
        for pair in pairs:
            if not isinstance(pair, dict) or set(pair) != {"user", "assistant"}:
                return None
            question, answer = pair["user"], pair["assistant"]
            if not (_bounded(question, self.max_question_chars)):
                return None
            if not (_bounded(answer, self.max_answer_chars)):
                return None
            turns += [Turn("user", question.strip()), Turn("assistant", answer.strip())]
        return turns


def conversation_shape(
    *, pairs: tuple[int, int], answer_chars: int, max_tokens: int
) -> ConversationShape:
    """The shape of a mode's conversation that fits in ``max_tokens``.

    ``pairs`` and ``answer_chars`` are the mode's own bounds. When ``max_tokens`` is too small
    for the mode's most pairs at a useful length, fewer pairs are allowed (down to one), then
    shorter texts.
    """
    low, high = pairs

    def chars_per_pair(count: int) -> int:
        return int(((max_tokens - _FRAME_TOKENS) / count - _PAIR_TOKENS) * _CHARS_PER_TOKEN)

    most = high
    while most > 1 and chars_per_pair(most) < _MIN_CHARS_PER_PAIR:
        most -= 1
    budget = max(chars_per_pair(most), 4 * _MIN_TEXT_CHARS)
    question = min(_MAX_QUESTION_CHARS, max(_MIN_TEXT_CHARS * 2, budget // 3))
    answer = min(answer_chars, max(_MIN_TEXT_CHARS * 2, budget - question))
    return ConversationShape(
        min_pairs=min(low, most),
        max_pairs=most,
        max_question_chars=question,
        max_answer_chars=answer,
    )


def render_conversation(turns: tuple[Turn, ...] | list[Turn]) -> str:
    """Turns written in the conversation shape (what in-context examples show the model).

    >>> render_conversation([Turn("user", "Hi?"), Turn("assistant", "Yes.")])
    '{"conversation": [{"user": "Hi?", "assistant": "Yes."}]}'
    """
    pairs: list[dict[str, str]] = []
    for turn in turns:
        if turn.role == "user" or not pairs or "assistant" in pairs[-1]:
            pairs.append({})
        pairs[-1][turn.role] = turn.text
    # The separators a constrained model writes, so the examples show exactly that JSON.
    return json.dumps({CONVERSATION_KEY: pairs}, ensure_ascii=False, separators=JSON_SEPARATORS)


def _bounded(value: Any, limit: int) -> bool:
    return (
        isinstance(value, str)
        and _MIN_TEXT_CHARS <= len(value) <= limit
        and value.endswith(_SENTENCE_ENDS)
    )


# -- judge verdict and complexity score --------------------------------------------------------
VERDICTS = ("correct", "incorrect")
_VERDICT_FRAME_TOKENS = 16  # {"verdict": "incorrect", "reason": "..."} without the reason
_MAX_REASON_CHARS = 300
_MIN_REASON_CHARS = 8


@dataclass(frozen=True)
class VerdictShape:
    """A judge verdict: ``{"verdict": "correct" | "incorrect", "reason": ...}`` with a reason
    of at most ``max_reason_chars`` characters."""

    max_reason_chars: int = _MAX_REASON_CHARS

    def schema(self) -> dict[str, Any]:
        """The JSON schema of a verdict."""
        return {
            "type": "object",
            "properties": {
                "verdict": {"type": "string", "enum": list(VERDICTS)},
                "reason": {"type": "string", "minLength": 1, "maxLength": self.max_reason_chars},
            },
            "required": ["verdict", "reason"],
            "additionalProperties": False,
        }

    def output_schema(self, setting: StructuredSetting) -> OutputSchema:
        return OutputSchema.of("verdict", self.schema(), setting)

    def instructions(self) -> str:
        """The prompt's words asking for a verdict."""
        return (
            "Answer with one JSON object and nothing before or after it:\n"
            f"{self.render('correct', 'one short sentence naming the decisive detail')}\n"
            f'with "correct" or "incorrect", and a reason under {self.max_reason_chars} '
            "characters."
        )

    def render(self, verdict: str, reason: str) -> str:
        """A verdict written in this shape (what the judge's examples show).

        >>> VerdictShape().render("correct", "All given.")
        '{"verdict": "correct", "reason": "All given."}'
        """
        value = {"verdict": verdict, "reason": reason}
        return json.dumps(value, ensure_ascii=False, separators=JSON_SEPARATORS)

    def read(self, text: str) -> tuple[str, str] | None:
        """``(verdict, reason)`` if ``text`` is exactly this shape, else None.

        >>> VerdictShape().read('{"verdict": "incorrect", "reason": "There is no dog."}')
        ('incorrect', 'There is no dog.')
        """
        value = _json_value(text)
        if not isinstance(value, dict) or set(value) != {"verdict", "reason"}:
            return None
        verdict, reason = value["verdict"], value["reason"]
        if verdict not in VERDICTS or not isinstance(reason, str):
            return None
        if not 1 <= len(reason) <= self.max_reason_chars:
            return None
        return verdict, reason.strip()


def verdict_shape(max_tokens: int) -> VerdictShape:
    """The verdict shape whose reason fits in ``max_tokens`` (at most 300 characters)."""
    room = int((max_tokens - _VERDICT_FRAME_TOKENS) * _CHARS_PER_TOKEN)
    return VerdictShape(max_reason_chars=max(_MIN_REASON_CHARS, min(_MAX_REASON_CHARS, room)))


#: A complexity score is a bare integer, so that its first token is the number's first digit
#: (the scorer reads the expected score from that token's probabilities).
COMPLEXITY_RANGE = (1, 10)
COMPLEXITY_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": COMPLEXITY_RANGE[0],
    "maximum": COMPLEXITY_RANGE[1],
}
COMPLEXITY_INSTRUCTIONS = (
    f"Answer with the number only: one whole number from {COMPLEXITY_RANGE[0]} to "
    f"{COMPLEXITY_RANGE[1]}."
)


def complexity_output(setting: StructuredSetting) -> OutputSchema:
    """The complexity score's schema for a request (``json_object`` cannot hold a number)."""
    if setting == "json_object":
        raise ConfigError(
            "a complexity score is a bare number, which a JSON object cannot be",
            fix="use the structured setting auto, json_schema or off",
        )
    return OutputSchema.of("complexity", COMPLEXITY_SCHEMA, setting)


def read_complexity(text: str) -> int | None:
    """The score of an answer in the complexity shape (a bare integer in range), else None.

    >>> read_complexity("7"), read_complexity("11"), read_complexity("7 out of 10")
    (7, None, None)
    """
    value = _json_value(text)
    low, high = COMPLEXITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
