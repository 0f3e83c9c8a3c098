"""LLM output -> conversation turns, whatever shape the model chose.

Accepted, in the order they are tried:

0. the output schema's exact shape (``vlit.generate.schemas``), when the caller gives it:
   format ``json-schema``, nothing repaired;
1. JSON, anywhere in the text (after chatter, inside a code fence): the paper's repeated-key
   object ``{"User": ..., "AI": ..., "User": ...}`` read pair by pair (a plain ``json.loads``
   would keep only the last "User"), lists of ``{"role"/"from": ..., "content"/"value": ...}``,
   lists of ``{"User": ..., "AI": ...}`` objects, wrappers such as ``{"conversation": [...]}``,
   and several objects one after another;
2. truncated JSON: the complete ``"key": "string"`` pairs before the cut;
3. speaker lines: ``User:``/``AI:``, ``Human:``/``Assistant:``, ``Q:``/``A:``, ``Question``/
   ``Answer``, with markdown bold, list bullets or numbering, multi-line turns.

Then the turns are made well-formed: empty turns dropped, consecutive turns of one speaker
merged, a leading answer and an unanswered final question dropped, and, when the output was cut
(``finish_reason == "length"`` or unterminated JSON), the cut turn dropped. What was changed is
listed in ``notes``. If no complete (user, assistant) pair is left, ``failure_reason`` says why.

Example:
    >>> parsed = parse_conversation('{"User": "Hi?", "AI": "Yes.", "User": "Why?", "AI": "So."}')
    >>> [turn.text for turn in parsed.turns]
    ['Hi?', 'Yes.', 'Why?', 'So.']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlit.reasons import (
    EMPTY,
    REFUSAL,
    UNPARSEABLE,
    UNPARSEABLE_NO_ANSWER,
    UNPARSEABLE_TRUNCATED,
    Reason,
)
from vlit.schema import Role, Turn

if TYPE_CHECKING:
    from vlit.generate.schemas import ConversationShape

FAILURE_EMPTY = Reason(EMPTY, "the model returned no text")
FAILURE_NO_TURNS = Reason(UNPARSEABLE, "no User/AI turns found")
FAILURE_TRUNCATED = Reason(UNPARSEABLE_TRUNCATED, "output cut off before the first complete answer")
FAILURE_NO_ANSWER = Reason(UNPARSEABLE_NO_ANSWER, "no question was answered")
FAILURE_REFUSAL = Reason(REFUSAL, "the model declined to write the conversation")

_ROLE_NAMES: dict[str, Role] = {
    "user": "user",
    "human": "user",
    "q": "user",
    "question": "user",
    "instruction": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "gpt": "assistant",
    "a": "assistant",
    "answer": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "response": "assistant",
}
_ROLE_KEYS = ("role", "from", "speaker", "author")
_CONTENT_KEYS = ("content", "value", "text", "message")
_CONTAINER_KEYS = ("conversation", "conversations", "dialogue", "dialog", "turns", "messages")

_LABELS = "|".join(sorted(_ROLE_NAMES, key=len, reverse=True))
_SPEAKER_LINE = re.compile(
    r"^\s*(?:[-*>]\s+)?(?:\d{1,2}[.)]\s*)?"  # bullet or numbering
    r"(?:\*\*|__|\*)?\s*"  # opening bold/italic
    rf"(?P<label>{_LABELS})\s*\d{{0,2}}\s*"  # speaker, optionally numbered (Q1)
    r"(?:\*\*|__|\*)?\s*[:：]\s*(?:\*\*|__|\*)?"  # colon, bold closing before or after it
    r"\s*(?P<text>.*)$",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?")
_KEY_STRING_PAIR = re.compile(
    r'"(?P<key>(?:[^"\\\n]|\\.){1,40})"\s*:\s*"(?P<value>(?:[^"\\]|\\.)*)"', re.DOTALL
)
_OPEN_STRING_TAIL = re.compile(r'"(?:[^"\\\n]|\\.){1,40}"\s*:\s*"(?:[^"\\]|\\.)*$', re.DOTALL)
_ROLE_KEY_HINT = re.compile(rf'"(?:{_LABELS}|role|from)"\s*:', re.IGNORECASE)
_TRAILING_CHATTER = re.compile(
    r"^\s*(?:i hope|hope this|let me know|feel free|note:|this conversation|in this conversation"
    r"|the above|these questions|this dialogue|---+\s*$|\*\*\*+\s*$|```)",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t|i'?m unable|i am unable"
    r"|as an ai\b|i'?m not able|i am not able)",
    re.IGNORECASE,
)
_REFUSAL_FINISH = ("refusal", "content_filter")  # what OpenAI-style servers report
_MAX_JSON_STARTS = 64


@dataclass(frozen=True)
class ParsedConversation:
    """The turns found in one generation, how they were found and what was repaired."""

    turns: list[Turn]
    format: str
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    failure_reason: Reason | None = None

    @property
    def ok(self) -> bool:
        return self.failure_reason is None


@dataclass
class _Raw:
    """Turns as found, before they are made well-formed."""

    turns: list[Turn]
    format: str
    cut: bool = False  # the structure shows that the text was cut off (unclosed JSON)
    notes: list[str] = field(default_factory=list)


class _Pairs(tuple[tuple[str, Any], ...]):
    """A JSON object as its (key, value) pairs in order, repeated keys included."""


def parse_conversation(
    text: str, *, finish_reason: str = "stop", shape: ConversationShape | None = None
) -> ParsedConversation:
    """Parse one LLM generation into alternating user/assistant turns (see module doc)."""
    if not text or not text.strip():
        return ParsedConversation([], "none", failure_reason=FAILURE_EMPTY)
    if shape is not None:
        exact = shape.read(text)
        if exact is not None:
            return ParsedConversation(exact, "json-schema")
    parsed = _parse_any_shape(text, finish_reason)
    if shape is not None:
        parsed.notes.insert(0, "does not match the output schema")
    return parsed


def _parse_any_shape(text: str, finish_reason: str) -> ParsedConversation:
    length_cut = finish_reason == "length"
    raw = _find_turns(text)
    if raw is None:
        reason = FAILURE_REFUSAL if _refused(text, finish_reason) else FAILURE_NO_TURNS
        if reason == FAILURE_NO_TURNS and length_cut:
            reason = FAILURE_TRUNCATED
        return ParsedConversation([], "none", truncated=length_cut, failure_reason=reason)
    # Speaker lines cut by the length limit end in a partial turn. JSON keeps only complete
    # strings, and a complete JSON value cannot have been cut (a length stop then cut chatter).
    partial_last = length_cut and raw.format == "lines"
    turns, notes = _well_formed(raw.turns, drop_last=partial_last)
    notes = raw.notes + notes
    truncated = raw.cut or partial_last  # the dialogue itself lost text
    if length_cut and not truncated:
        notes.append("stopped at the token limit after the dialogue was complete")
    if not turns:
        if truncated:
            reason = FAILURE_TRUNCATED
        elif _refused(text, finish_reason):
            reason = FAILURE_REFUSAL
        else:
            reason = FAILURE_NO_ANSWER
        return ParsedConversation([], raw.format, truncated, notes, reason)
    return ParsedConversation(turns, raw.format, truncated, notes)


def _refused(text: str, finish_reason: str) -> bool:
    return finish_reason in _REFUSAL_FINISH or bool(_REFUSAL.search(text[:300]))


# -- finding turns -----------------------------------------------------------------------------
def _find_turns(text: str) -> _Raw | None:
    candidates = []
    fenced = _fenced_block(text)
    if fenced is not None:
        candidates.append(fenced)
    candidates.append((text, []))
    for body, notes in candidates:
        raw = _strict_json(body)
        if raw is None or raw.cut:
            # Cut-off JSON: the complete pairs before the cut may hold more than the complete
            # objects do (an object whose last string was cut is lost whole to strict parsing).
            tolerant = _tolerant_json(body)
            if tolerant is not None and (raw is None or len(tolerant.turns) > len(raw.turns)):
                raw = tolerant
        if raw is None:
            raw = _speaker_lines(body)
        if raw is not None and raw.turns:
            raw.notes = notes + raw.notes
            return raw
    return None


def _fenced_block(text: str) -> tuple[str, list[str]] | None:
    """The content of the first code fence (to its end, or the end of the text if cut)."""
    opening = _FENCE.search(text)
    if opening is None:
        return None
    notes = []
    if text[: opening.start()].strip():
        notes.append("ignored text before the code block")
    rest = text[opening.end() :]
    closing = rest.find("```")
    if closing < 0:
        return rest, notes + ["code block not closed"]
    if rest[closing + 3 :].strip():
        notes.append("ignored text after the code block")
    return rest[:closing], notes


def _strict_json(text: str) -> _Raw | None:
    decoder = json.JSONDecoder(strict=False, object_pairs_hook=_Pairs)
    starts = [match.start() for match in re.finditer(r"[\[{]", text)][:_MAX_JSON_STARTS]
    for start in starts:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        turns = _turns_from_json(value)
        if not turns:
            continue
        # Inside a container that never closes (a cut-off array): the text was cut off.
        before = text[:start].strip()
        cut = before.endswith(("[", "{"))
        notes = ["ignored text before the dialogue"] if before and not cut else []
        # Several values in a row (one object per exchange, JSON-lines style).
        position = end
        while True:
            following = re.match(r"[\s,]*", text[position:])
            next_start = position + (following.end() if following else 0)
            if next_start >= len(text) or text[next_start] not in "[{":
                break
            try:
                value, end = decoder.raw_decode(text, next_start)
            except json.JSONDecodeError:
                break
            more = _turns_from_json(value)
            if not more:
                break
            turns.extend(more)
            position = end
        if cut:
            notes.append("JSON not closed: output cut off")
        elif text[position:].strip():
            notes.append("ignored text after the dialogue")
        return _Raw(turns, "json", cut=cut, notes=notes)
    return None


def _turns_from_json(value: Any) -> list[Turn]:
    if isinstance(value, list):
        turns: list[Turn] = []
        for item in value:
            if isinstance(item, str):
                lines = _speaker_lines(item)
                turns.extend(lines.turns if lines else [])
            else:
                turns.extend(_turns_from_json(item))
        return turns
    if not isinstance(value, _Pairs):
        return []
    names = [key.strip().lower() for key, _ in value]
    role_keys = sum(name in _ROLE_KEYS for name in names)
    content_keys = sum(name in _CONTENT_KEYS for name in names)
    if role_keys == 1 and content_keys == 1:  # one message, keys in any order
        keys = dict(zip(names, (item for _, item in value), strict=True))
        role_key = next(key for key in _ROLE_KEYS if key in keys)
        content_key = next(key for key in _CONTENT_KEYS if key in keys)
        role = _ROLE_NAMES.get(str(keys[role_key]).strip().lower())
        if role is None:  # e.g. a "system" message: not part of the dialogue
            return []
        return [Turn(role, _as_text(keys[content_key]))]
    # Otherwise read pair by pair: "User"/"AI" keys, and repeated role/content keys in one
    # object (small models write {"role": "user", "content": ..., "role": "assistant", ...}).
    turns = []
    pending: Role | None = None
    for name, (_, item) in zip(names, value, strict=True):
        role = _ROLE_NAMES.get(name)
        if role is not None:
            turns.append(Turn(role, _as_text(item)))
        elif name in _ROLE_KEYS:
            pending = _ROLE_NAMES.get(str(item).strip().lower())
        elif name in _CONTENT_KEYS and pending is not None:
            turns.append(Turn(pending, _as_text(item)))
            pending = None
        elif name in _CONTAINER_KEYS:
            turns.extend(_turns_from_json(item))
    return turns


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_as_text(item) for item in value)
    if value is None:
        return ""
    if isinstance(value, _Pairs):
        return "\n".join(f"{key}: {_as_text(item)}" for key, item in value)
    return str(value)


def _tolerant_json(text: str) -> _Raw | None:
    """Complete ``"key": "string"`` pairs of JSON that does not parse (usually: cut off)."""
    if not _ROLE_KEY_HINT.search(text):
        return None
    turns: list[Turn] = []
    pending_role: Role | None = None
    last_end = 0
    for match in _KEY_STRING_PAIR.finditer(text):
        key = match.group("key").strip().lower()
        value = _decode_string(match.group("value"))
        last_end = match.end()
        if key in _ROLE_NAMES:
            turns.append(Turn(_ROLE_NAMES[key], value))
        elif key in _ROLE_KEYS:
            pending_role = _ROLE_NAMES.get(value.strip().lower())
        elif key in _CONTENT_KEYS and pending_role is not None:
            turns.append(Turn(pending_role, value))
            pending_role = None
    if not turns:
        return None
    # Cut off if the text ends inside a string or before the closing bracket.
    tail = text[last_end:]
    cut = bool(_OPEN_STRING_TAIL.search(tail)) or not re.search(r"[}\]]", tail)
    notes = ["output is not valid JSON; read the complete key-value pairs"]
    return _Raw(turns, "json-tolerant", cut=cut, notes=notes)


def _decode_string(body: str) -> str:
    try:
        return str(json.loads(f'"{body}"', strict=False))
    except json.JSONDecodeError:
        # Invalid escapes such as \' appear in model output; keep the character.
        repaired = re.sub(r"\\([^\"\\/bfnrtu])", r"\1", body)
        try:
            return str(json.loads(f'"{repaired}"', strict=False))
        except json.JSONDecodeError:
            return body.replace('\\"', '"').replace("\\n", "\n")


def _speaker_lines(text: str) -> _Raw | None:
    turns: list[Turn] = []
    leading: list[str] = []
    current: list[str] = []
    role: Role | None = None
    for line in text.splitlines():
        match = _SPEAKER_LINE.match(line)
        if match:
            if role is not None:
                turns.append(Turn(role, "\n".join(current)))
            role = _ROLE_NAMES[match.group("label").lower()]
            current = [match.group("text")]
        elif role is None:
            leading.append(line)
        else:
            current.append(line)
    if role is None:
        return None
    last, trailing = _split_trailing_chatter(current)
    turns.append(Turn(role, "\n".join(last)))
    notes = []
    if any(line.strip() for line in leading):
        notes.append("ignored text before the dialogue")
    if trailing:
        notes.append("ignored text after the dialogue")
    return _Raw([Turn(t.role, _clean_line_text(t.text)) for t in turns], "lines", notes=notes)


def _split_trailing_chatter(lines: list[str]) -> tuple[list[str], list[str]]:
    """Cut the last turn at a separator, a fence, or a closing remark after a blank line."""
    for index, line in enumerate(lines):
        if index == 0:
            continue
        after_blank = not lines[index - 1].strip()
        if _TRAILING_CHATTER.match(line) and (after_blank or line.lstrip().startswith(("-", "`"))):
            return lines[:index], lines[index:]
    return lines, []


def _clean_line_text(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(?:\*\*|__)\s*", "", text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


# -- making turns well-formed ------------------------------------------------------------------
def _well_formed(turns: list[Turn], *, drop_last: bool) -> tuple[list[Turn], list[str]]:
    notes = []
    if drop_last and turns:
        turns = turns[:-1]
        notes.append("dropped the turn that was cut off")
    kept = [Turn(turn.role, turn.text.strip()) for turn in turns if turn.text.strip()]
    if len(kept) < len(turns):
        notes.append(f"dropped {len(turns) - len(kept)} empty turn(s)")
    merged: list[Turn] = []
    for turn in kept:
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, f"{merged[-1].text}\n{turn.text}")
            notes.append(f"merged consecutive {turn.role} turns")
        else:
            merged.append(turn)
    while merged and merged[0].role != "user":
        merged.pop(0)
        notes.append("dropped a leading assistant turn")
    if merged and merged[-1].role == "user":
        merged.pop()
        notes.append("dropped an unanswered final user turn")
    return merged, notes
