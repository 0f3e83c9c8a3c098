"""System prompts, in-context examples and request messages of the LLM generation modes.

The texts live in package data (``vlit/data/prompts/*.yaml``); a user can point a recipe at a
folder of their own files with the same names and layout (``generate.prompts_dir``).

Example:
    >>> library = PromptLibrary.load()
    >>> prompt = library.system_prompt("conversation")
    >>> prompt.prompt_id
    'conversation@5'
    >>> len(library.examples_for("negative")) >= 2
    True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vlit.errors import InputFileError
from vlit.generate.schemas import ConversationShape, conversation_shape, render_conversation
from vlit.jsonio import loads_yaml
from vlit.llm.base import Message
from vlit.schema import Turn

LLM_MODES: tuple[str, ...] = (
    "conversation",
    "region",
    "negative",
    "knowledge",
    "reasoning",
    "detailed",
)
"""Modes whose conversations an LLM writes (each has its own system prompt)."""

SYSTEM_PROMPTS_FILE = "system_prompts.yaml"
EXAMPLES_FILE = "examples.yaml"
ADAPTATION_FILE = "adaptation_templates.yaml"
VOCABULARY_FILE = "object_vocabulary.yaml"
DEFAULT_MAX_TOKENS = 1024  # the recipe's default generate.max_tokens

__all__ = ["LLM_MODES", "ModePrompt", "PromptLibrary", "render_conversation"]


@dataclass(frozen=True)
class ModePrompt:
    """The assembled system prompt of one mode, with what identifies it on provenance and the
    conversation shape its output-format instructions ask for."""

    mode: str
    text: str
    version: int
    shape: ConversationShape

    @property
    def prompt_id(self) -> str:
        return f"{self.mode}@{self.version}"

    @property
    def sha(self) -> str:
        """Short content hash: tells apart prompts edited without a version bump."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class ModeSpec:
    """One mode's prompt before the output format: its text and its conversation bounds."""

    mode: str
    body: str
    version: int
    pairs: tuple[int, int]
    answer_chars: int

    def prompt(self, max_tokens: int) -> ModePrompt:
        shape = conversation_shape(
            pairs=self.pairs, answer_chars=self.answer_chars, max_tokens=max_tokens
        )
        text = f"{self.body}\n\n{shape.instructions()}"
        return ModePrompt(mode=self.mode, text=text, version=self.version, shape=shape)


@dataclass(frozen=True)
class InContextExample:
    """A hand-written (visual clue, conversation) pair shown to the model before the request."""

    example_id: str
    modes: tuple[str, ...]
    clue: str
    turns: tuple[Turn, ...]
    region: str | None = None
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestTexts:
    """Headings of the user message around the visual clue."""

    clue_heading: str
    absent_heading: str
    closing: str


class PromptLibrary:
    """Every text the LLM modes send, loaded and checked once.

    Use :meth:`load` (package data, or a folder of the user's own YAML files).
    """

    def __init__(
        self,
        *,
        specs: dict[str, ModeSpec],
        examples: tuple[InContextExample, ...],
        request_texts: RequestTexts,
        examples_version: int,
        object_vocabulary: tuple[str, ...],
        source: str,
    ) -> None:
        self.specs = specs
        self.examples = examples
        self.request_texts = request_texts
        self.examples_version = examples_version
        self.object_vocabulary = object_vocabulary
        self.source = source

    @classmethod
    def load(cls, directory: str | Path | None = None) -> PromptLibrary:
        """Load the package's prompts, or those in ``directory`` (same file names)."""
        system = _read_yaml(SYSTEM_PROMPTS_FILE, directory)
        examples_data = _read_yaml(EXAMPLES_FILE, directory)
        vocabulary = _read_yaml(VOCABULARY_FILE, directory)
        source = str(directory) if directory is not None else "vlit/data/prompts"
        specs, request_texts = _assemble_prompts(system, _where(SYSTEM_PROMPTS_FILE, directory))
        examples = _parse_examples(examples_data, _where(EXAMPLES_FILE, directory))
        objects = vocabulary.get("objects")
        if not isinstance(objects, list) or not objects:
            raise InputFileError(
                "missing the list 'objects'",
                file=_where(VOCABULARY_FILE, directory),
                fix="list object names under 'objects:'",
            )
        return cls(
            specs=specs,
            examples=examples,
            request_texts=request_texts,
            examples_version=int(examples_data.get("version", 0)),
            object_vocabulary=tuple(str(name) for name in objects),
            source=source,
        )

    def system_prompt(self, mode: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> ModePrompt:
        """The mode's system prompt, its output shape fitted to ``max_tokens``."""
        return self.specs[mode].prompt(max_tokens)

    def examples_for(self, mode: str) -> list[InContextExample]:
        return [example for example in self.examples if mode in example.modes]

    def draw_examples(self, mode: str, count: int, rng: random.Random) -> list[InContextExample]:
        """``count`` distinct examples of ``mode``, in the order drawn (seeded by ``rng``)."""
        pool = self.examples_for(mode)
        return rng.sample(pool, min(count, len(pool)))

    def user_message(self, clue: str, *, absent: tuple[str, ...] = ()) -> str:
        """The request text: the clue (region mode: starting with the boxed object), the
        absent objects (negative mode), and the closing line."""
        texts = self.request_texts
        parts = [f"{texts.clue_heading}\n{clue.strip()}"]
        if absent:
            parts.append(f"{texts.absent_heading}\n{', '.join(absent)}")
        parts.append(texts.closing)
        return "\n\n".join(parts)

    def build_messages(
        self,
        mode: str,
        *,
        clue: str,
        examples: list[InContextExample],
        absent: tuple[str, ...] = (),
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> list[Message]:
        """System prompt, then each example as a (user, assistant) exchange, then the request.

        In region mode ``clue`` is the region clue (the boxed object, then the whole picture).
        """
        messages = [Message("system", self.system_prompt(mode, max_tokens).text)]
        for example in examples:
            example_clue = example.clue
            if mode == "region" and example.region is not None:
                example_clue = f"{example.region}\n{example.clue}"
            example_absent = example.absent if mode == "negative" else ()
            messages.append(Message("user", self.user_message(example_clue, absent=example_absent)))
            messages.append(Message("assistant", render_conversation(example.turns)))
        messages.append(Message("user", self.user_message(clue, absent=absent)))
        return messages


def read_prompt_data(name: str, directory: str | Path | None = None) -> dict[str, Any]:
    """One YAML file of prompt data (package data unless ``directory`` is given)."""
    return _read_yaml(name, directory)


def _where(name: str, directory: str | Path | None) -> str:
    return str(Path(directory) / name) if directory is not None else f"vlit/data/prompts/{name}"


def _read_yaml(name: str, directory: str | Path | None) -> dict[str, Any]:
    where = _where(name, directory)
    try:
        if directory is None:
            text = resources.files("vlit").joinpath("data", "prompts", name).read_text("utf-8")
        else:
            text = (Path(directory) / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputFileError(
            f"cannot read prompt file ({error})",
            file=where,
            fix=f"put a {name} in the prompts folder (copy the one shipped in vlit/data/prompts)",
        ) from error
    data = loads_yaml(text, file=where, what="prompt file")
    if not isinstance(data, dict):
        raise InputFileError("expected a YAML mapping at the top", file=where, fix="see vlit's own")
    return data


def _assemble_prompts(data: dict[str, Any], where: str) -> tuple[dict[str, ModeSpec], RequestTexts]:
    try:
        version = int(data["version"])
        preamble = str(data["preamble"]).strip()
        common_rules = [str(rule).strip() for rule in data["common_rules"]]
        modes = data["modes"]
        request = data["request"]
        request_texts = RequestTexts(
            clue_heading=str(request["clue_heading"]),
            absent_heading=str(request["absent_heading"]),
            closing=str(request["closing"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InputFileError(
            f"missing or malformed entry {error}",
            file=where,
            fix="keep the keys version, preamble, common_rules, modes, request",
        ) from error
    missing = [mode for mode in LLM_MODES if mode not in modes]
    if missing:
        raise InputFileError(
            f"no prompt for mode(s) {', '.join(missing)}",
            file=where,
            fix=f"add an entry under 'modes' for each of: {', '.join(LLM_MODES)}",
        )
    specs = {}
    for mode in LLM_MODES:
        spec = modes[mode]
        rules = common_rules + [str(rule).strip() for rule in spec.get("rules", [])]
        numbered = "\n".join(f"{index}. {rule}" for index, rule in enumerate(rules, start=1))
        parts = [preamble, str(spec["focus"]).strip(), f"Rules:\n{numbered}"]
        if spec.get("length"):
            parts.append(str(spec["length"]).strip())
        try:
            low, high = (int(count) for count in spec["pairs"])
            answer_chars = int(spec["answer_chars"])
        except (KeyError, TypeError, ValueError):
            low = high = answer_chars = 0
        if not 1 <= low <= high or answer_chars < 20:
            raise InputFileError(
                f"mode '{mode}' needs pairs: [least, most] (1 <= least <= most) and "
                "answer_chars (>= 20)",
                file=where,
                record=mode,
                fix="e.g. pairs: [3, 5] and answer_chars: 600",
            )
        specs[mode] = ModeSpec(
            mode=mode,
            body="\n\n".join(parts),
            version=version,
            pairs=(low, high),
            answer_chars=answer_chars,
        )
    return specs, request_texts


def _parse_examples(data: dict[str, Any], where: str) -> tuple[InContextExample, ...]:
    examples = []
    seen: set[str] = set()
    for position, item in enumerate(data.get("examples") or []):
        try:
            example_id = str(item["id"])
            modes = tuple(str(mode) for mode in item["modes"])
            turns: list[Turn] = []
            for exchange in item["conversation"]:
                turns.append(Turn("user", str(exchange["user"]).strip()))
                turns.append(Turn("assistant", str(exchange["assistant"]).strip()))
            example = InContextExample(
                example_id=example_id,
                modes=modes,
                clue=str(item["clue"]).strip(),
                turns=tuple(turns),
                region=str(item["region"]).strip() if item.get("region") else None,
                absent=tuple(str(name) for name in item.get("absent") or ()),
            )
        except (KeyError, TypeError) as error:
            raise InputFileError(
                f"example {position} lacks {error}",
                file=where,
                record=position,
                fix="give every example id, modes, clue and conversation (user/assistant pairs)",
            ) from error
        unknown = [mode for mode in modes if mode not in LLM_MODES]
        if unknown or example_id in seen:
            problem = f"unknown mode(s) {unknown}" if unknown else "duplicate id"
            raise InputFileError(
                problem,
                file=where,
                record=example_id,
                fix=f"use unique ids and modes among: {', '.join(LLM_MODES)}",
            )
        if "region" in modes and example.region is None:
            raise InputFileError(
                "a region example needs 'region' (the boxed object)",
                file=where,
                record=example_id,
                fix="add region: <what is in the box and where>",
            )
        if "negative" in modes and not example.absent:
            raise InputFileError(
                "a negative example needs 'absent' (things not in the picture)",
                file=where,
                record=example_id,
                fix="add absent: [name, ...]",
            )
        seen.add(example_id)
        examples.append(example)
    for mode in LLM_MODES:
        if not any(mode in example.modes for example in examples):
            raise InputFileError(
                f"no in-context example for mode '{mode}'",
                file=where,
                fix=f"add at least one example whose modes include {mode}",
            )
    return tuple(examples)
