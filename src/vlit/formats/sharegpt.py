"""ShareGPT-style conversations, in both flavours found in the wild, detected per record:

- ``messages`` (the OpenAI / LLaMA-Factory flavour):
  ``{"messages": [{"role": "user"|"assistant"|"system", "content": ...}], "images": [...]}``;
  ``content`` is a string (with ``<image>`` tokens) or a list of typed parts
  (``{"type": "text", "text": ...}``, ``{"type": "image", ...}``),
- ``conversations`` (the older flavour):
  ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "images": [...]}``.

System messages are kept in ``extra["system"]`` with their position and written back there.
The writer uses each sample's own flavour, and ``messages`` for samples made elsewhere. JSON
arrays and JSON lines (``.jsonl``) are both read; the writer writes a JSON array.

Example:
    >>> samples = list(ShareGptReader().read(Path("data.json"), context))   # doctest: +SKIP
    >>> ShareGptWriter(flavour="messages").write(samples, Path("out.json"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from vlit.errors import ConfigError, RecordError
from vlit.formats.base import (
    FIELDS,
    IMPORT_PROVENANCE,
    KEY_ORDER,
    SOURCE_FORMAT,
    ImportContext,
    WriteCounts,
    import_provenance,
    invalid_passthrough,
    key_order_extra,
    ordered,
    parse_json_records,
    require_type,
    restore_id,
    same_format,
    sample_id_for,
    unknown_fields,
    write_record_array,
)
from vlit.formats.export_images import sample_images
from vlit.formats.llava import (
    IMAGES,
    TURN_FIELDS,
    conversation_turns_to_json,
    export_texts,
    image_id_of,
    image_reference,
    parse_conversation_turns,
    split_tokens_of,
)
from vlit.schema import Role, Sample, Turn

Flavour = Literal["messages", "conversations"]
FLAVOURS: tuple[Flavour, ...] = ("messages", "conversations")
FLAVOUR = "sharegpt_flavour"
CONTENT_PARTS = "content_parts"
IMAGE_KEY = "image_key"
IMAGES_IN_CONTENT = "images_in_content"
_MESSAGE_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant"}
_IMAGE_PART_TYPES = ("image", "image_url")


class ShareGptReader:
    """Reads ShareGPT-style files (either flavour, detected per record) into samples."""

    name: ClassVar[str] = "sharegpt"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        root = context.image_root(path.parent)
        samples = parse_json_records(
            path,
            source_format=self.name,
            what="a ShareGPT file",
            fix_type="ShareGPT data is a JSON list of {messages} or {conversations} records; "
            "for another format pass --format (or --format auto)",
            parse=lambda record, index: self.parse(record, index=index, stem=path.stem),
        )
        for index, sample, parsed in samples:
            if parsed:
                self.counts[f"flavour_{sample.extra[FLAVOUR]}"] += 1
                sample.image_root = root
                sample.provenance = {IMPORT_PROVENANCE: import_provenance(self.name, path, index)}
            yield sample

    def parse(self, record: Any, *, index: int, stem: str) -> Sample:
        """One record as a sample; `RecordError` if its fields have the wrong shape."""
        require_type(record, dict, "the record")
        flavour: Flavour
        if "messages" in record:
            flavour = "messages"
            turns, extra = _parse_messages(record["messages"])
        elif "conversations" in record:
            flavour = "conversations"
            turns, extra = parse_conversation_turns(record["conversations"], allow_system=True)
        else:
            raise RecordError("the record has neither `messages` nor `conversations`")
        image_key = "images" if "images" in record else "image"
        image, image_extra = image_reference(record.get(image_key), image_key)
        if image is None and CONTENT_PARTS in extra:
            image, image_extra = _images_in_parts(extra[CONTENT_PARTS])
        in_parts = bool(image_extra.get(IMAGES_IN_CONTENT))
        turns, token_extra = split_tokens_of(turns, has_image=image is not None and not in_parts)
        sample_id, id_extra = sample_id_for(record.get("id"), stem=stem, index=index)
        fields = unknown_fields(record, ("id", flavour, image_key))
        conventional = ["id", flavour, image_key]
        return Sample(
            sample_id=sample_id,
            turns=turns,
            image=image,
            image_id=image_id_of(image),
            extra={
                SOURCE_FORMAT: self.name,
                FLAVOUR: flavour,
                **({IMAGE_KEY: image_key} if image_key in record and image_key != "images" else {}),
                **id_extra,
                **image_extra,
                **token_extra,
                **extra,
                **({FIELDS: fields} if fields else {}),
                **key_order_extra(record, conventional),
            },
        )


def _parse_messages(messages: Any) -> tuple[list[Turn], dict[str, Any]]:
    require_type(messages, list, "`messages`")
    turns: list[Turn] = []
    system: list[dict[str, Any]] = []
    parts: dict[str, list[Any]] = {}
    turn_fields: dict[str, dict[str, Any]] = {}
    for position, message in enumerate(messages):
        where = f"`messages[{position}]"
        require_type(message, dict, where + "`")
        role = message.get("role")
        content = message.get("content")
        require_type(role, str, where + ".role`")
        require_type(content, (str, list), where + ".content`")
        others = unknown_fields(message, ("role", "content"))
        if role == "system":
            system.append(
                {"index": position, "value": content, **({FIELDS: others} if others else {})}
            )
            continue
        if role not in _MESSAGE_ROLES:
            raise RecordError(f"{where}.role` is {role!r}; use 'user', 'assistant' or 'system'")
        text = content
        if isinstance(content, list):
            text = _text_of_parts(content, where + ".content")
            parts[str(len(turns))] = content
        if others:
            turn_fields[str(len(turns))] = others
        turns.append(Turn(role=_MESSAGE_ROLES[role], text=text))
    extra: dict[str, Any] = {}
    if system:
        extra["system"] = system
    if parts:
        extra[CONTENT_PARTS] = parts
    if turn_fields:
        extra[TURN_FIELDS] = turn_fields
    return turns, extra


def _text_of_parts(parts: list[Any], where: str) -> str:
    texts = []
    for position, part in enumerate(parts):
        require_type(part, dict, f"{where}[{position}]`")
        if part.get("type") == "text":
            require_type(part.get("text"), str, f"{where}[{position}].text`")
            texts.append(part["text"])
    return "\n".join(texts)


def _images_in_parts(parts: dict[str, list[Any]]) -> tuple[str | None, dict[str, Any]]:
    """Image paths named inside content parts (not inline ``data:`` URLs)."""
    found: list[str] = []
    for message_parts in parts.values():
        for part in message_parts:
            if part.get("type") not in _IMAGE_PART_TYPES:
                continue
            value = part.get("image", part.get("image_url"))
            if isinstance(value, dict):
                value = value.get("url")
            if isinstance(value, str) and value and not value.startswith("data:"):
                found.append(value)
    if not found:
        return None, {}
    return found[0], {IMAGES_IN_CONTENT: True, **({IMAGES: found} if len(found) > 1 else {})}


class ShareGptWriter:
    """Writes samples as a ShareGPT-style JSON array, streaming, atomically.

    ``flavour`` forces one flavour for every sample; by default samples read from ShareGPT
    keep theirs and all others are written as ``messages``.
    """

    name: ClassVar[str] = "sharegpt"

    def __init__(
        self, *, flavour: str | None = None, indent: int | None = 2, ensure_ascii: bool = False
    ) -> None:
        if flavour is not None and flavour not in FLAVOURS:
            raise ConfigError(
                f"unknown ShareGPT flavour {flavour!r}", fix=f"use one of: {', '.join(FLAVOURS)}"
            )
        self.flavour = flavour
        self.indent = indent
        self.ensure_ascii = ensure_ascii

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        return write_record_array(
            samples, path, self.record, indent=self.indent, ensure_ascii=self.ensure_ascii
        )

    def record(self, sample: Sample, counts: WriteCounts) -> Any:
        """The ShareGPT record for one sample (``None``, counted, if it cannot be expressed)."""
        invalid, raw = invalid_passthrough(sample, self.name, counts)
        if invalid:
            return raw
        own = same_format(sample, self.name)
        flavour = self.flavour or (sample.extra.get(FLAVOUR) if own else None) or "messages"
        texts = None
        if not sample.extra.get(IMAGES_IN_CONTENT):
            texts = export_texts(sample, counts)
            if texts is None:
                return None
        record: dict[str, Any] = {}
        record_id = restore_id(sample)
        if record_id is not None:
            record["id"] = record_id
        if flavour == "conversations":
            record["conversations"] = conversation_turns_to_json(
                sample, texts or [turn.text for turn in sample.turns], own=own
            )
        else:
            record["messages"] = _messages_json(sample, texts, own=own)
        image_key = str(sample.extra.get(IMAGE_KEY, "images")) if own else "images"
        if not sample.extra.get(IMAGES_IN_CONTENT):
            images = sample.extra.get(IMAGES)
            if isinstance(images, list):
                record[image_key] = [sample.image, *images[1:]] if sample.image else images
            elif sample.image is not None:
                references = sample_images(sample)
                record[image_key] = sample.image if own else references
        if own:
            record.update(sample.extra.get(FIELDS, {}))
        counts.samples += 1
        counts.turns += len(sample.turns)
        return ordered(record, sample.extra.get(KEY_ORDER) if own else None)


def _messages_json(sample: Sample, texts: list[str] | None, *, own: bool) -> list[Any]:
    parts: dict[str, list[Any]] = sample.extra.get(CONTENT_PARTS, {}) if own else {}
    turn_fields: dict[str, dict[str, Any]] = sample.extra.get(TURN_FIELDS, {}) if own else {}
    messages: list[Any] = []
    for position, turn in enumerate(sample.turns):
        text = texts[position] if texts is not None else turn.text
        original = parts.get(str(position))
        content: Any = text if original is None else _restore_parts(original, turn.text)
        messages.append(
            {"role": turn.role, "content": content, **turn_fields.get(str(position), {})}
        )
    for system in sample.extra.get("system", []) if own else []:
        entry = {"role": "system", "content": system["value"], **system.get(FIELDS, {})}
        messages.insert(min(int(system["index"]), len(messages)), entry)
    return messages


def _restore_parts(original: list[Any], text: str) -> list[Any]:
    """The original content parts, with ``text`` in place of their text if it was changed."""
    if "\n".join(p["text"] for p in original if p.get("type") == "text") == text:
        return original
    restored: list[Any] = []
    for part in original:
        if part.get("type") != "text":
            restored.append(part)
        elif not any(p.get("type") == "text" for p in restored):
            restored.append({**part, "text": text})
    if not any(part.get("type") == "text" for part in restored):
        restored.append({"type": "text", "text": text})
    return restored
