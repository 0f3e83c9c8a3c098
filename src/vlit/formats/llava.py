"""LLaVA conversation JSON: ``[{id, image, conversations: [{from: human|gpt, value}]}]``.

The ``<image>`` token may stand before or after the text of the first human turn (both occur
in LLaVA's own data); samples keep clean text and the placement, so an import followed by an
export gives the same JSON. Records without ``image`` are text-only conversations. A
``.jsonl`` file with one such record per line is read the same way.

Byte-for-byte: the writer's defaults (``indent=4``, ASCII escapes) are the layout of LLaVA's
released files, so a file in that layout comes back byte-identical; any other layout comes back
as equal JSON (same parsed value, key order kept).

Example:
    >>> reader = LlavaReader()
    >>> samples = list(reader.read(Path("llava.json"), context))   # doctest: +SKIP
    >>> LlavaWriter().write(samples, Path("again.json"))           # doctest: +SKIP
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from vlit.errors import RecordError
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
from vlit.formats.image_token import (
    IMAGE_TOKEN,
    IMAGE_TOKEN_KEY,
    join_image_tokens,
    split_image_tokens,
)
from vlit.schema import Role, Sample, Turn

#: Source role names and the role they mean; the first name per role is what writers use.
CONVERSATION_ROLES: dict[str, Role] = {
    "human": "user",
    "gpt": "assistant",
    "user": "user",
    "assistant": "assistant",
}
ROLE_NAMES = "role_names"
TURN_FIELDS = "turn_fields"
IMAGES = "images"
_LLAVA_KEYS = ["id", "image", "conversations"]
_WRITE_NAMES: dict[Role, str] = {"user": "human", "assistant": "gpt"}


def parse_conversation_turns(
    conversations: Any, *, where: str = "conversations", allow_system: bool = False
) -> tuple[list[Turn], dict[str, Any]]:
    """Turns from a ``[{from, value}, ...]`` list, and the ``extra`` entries to restore it.

    Raises `RecordError` naming the turn when a field has the wrong type or an unknown role.
    With ``allow_system``, ``system`` turns are taken out and kept in ``extra["system"]``.
    """
    require_type(conversations, list, f"`{where}`")
    turns: list[Turn] = []
    role_names: list[str] = []
    turn_fields: dict[str, dict[str, Any]] = {}
    system: list[dict[str, Any]] = []
    for position, turn in enumerate(conversations):
        if not (
            type(turn) is dict and type(turn.get("from")) is str and type(turn.get("value")) is str
        ):  # only then build the messages: this loop runs for every turn of every record
            require_type(turn, dict, f"`{where}[{position}]`")
            require_type(turn.get("from"), str, f"`{where}[{position}].from`")
            require_type(turn.get("value"), str, f"`{where}[{position}].value`")
        speaker: str = turn["from"]
        value: str = turn["value"]
        others = unknown_fields(turn, ("from", "value")) if len(turn) > 2 else {}
        if allow_system and speaker == "system":
            system.append(
                {"index": position, "value": value, **({FIELDS: others} if others else {})}
            )
            continue
        role = CONVERSATION_ROLES.get(speaker)
        if role is None:
            raise RecordError(
                f"`{where}[{position}].from` is {speaker!r}; use one of "
                + ", ".join(repr(name) for name in CONVERSATION_ROLES)
                + (", 'system'" if allow_system else "")
            )
        if others:
            turn_fields[str(len(turns))] = others
        role_names.append(speaker)
        turns.append(Turn(role=role, text=value))
    extra: dict[str, Any] = {}
    if any(name != _WRITE_NAMES[turn.role] for name, turn in zip(role_names, turns, strict=True)):
        extra[ROLE_NAMES] = role_names
    if turn_fields:
        extra[TURN_FIELDS] = turn_fields
    if system:
        extra["system"] = system
    return turns, extra


def conversation_turns_to_json(sample: Sample, texts: list[str], *, own: bool) -> list[Any]:
    """``[{from, value}, ...]`` for a sample's turns (texts already carry image tokens)."""
    role_names = sample.extra.get(ROLE_NAMES) if own else None
    turn_fields = sample.extra.get(TURN_FIELDS, {}) if own else {}
    turns: list[Any] = []
    for position, (turn, text) in enumerate(zip(sample.turns, texts, strict=True)):
        name = _WRITE_NAMES[turn.role]
        if role_names and position < len(role_names):
            name = role_names[position]
        turns.append({"from": name, "value": text, **turn_fields.get(str(position), {})})
    for system in sample.extra.get("system", []) if own else []:
        entry = {"from": "system", "value": system["value"], **system.get(FIELDS, {})}
        turns.insert(min(int(system["index"]), len(turns)), entry)
    return turns


def split_tokens_of(turns: list[Turn], *, has_image: bool) -> tuple[list[Turn], dict[str, Any]]:
    """Turns without ``<image>`` tokens, and ``{"image_token": ...}`` to put them back.

    A record with an image but no token is recorded as such (`export_texts` then adds the
    token LLaVA needs).
    """
    texts, token = split_image_tokens([turn.text for turn in turns])
    clean = [Turn(role=turn.role, text=text) for turn, text in zip(turns, texts, strict=True)]
    if token is None and has_image:
        token = {"placement": "none"}
    return clean, ({IMAGE_TOKEN_KEY: token} if token else {})


def texts_with_tokens(sample: Sample) -> list[str]:
    """The sample's turn texts with the ``<image>`` token(s) put back."""
    image_count = len(sample_images(sample))
    first_user = next(
        (position for position, turn in enumerate(sample.turns) if turn.role == "user"), 0
    )
    return join_image_tokens(
        [turn.text for turn in sample.turns],
        sample.extra.get(IMAGE_TOKEN_KEY),
        image_count=image_count,
        first_user_turn=first_user,
    )


def export_texts(sample: Sample, counts: WriteCounts) -> list[str] | None:
    """The turn texts to write, with exactly one ``<image>`` token per image.

    An image without a token gets one at the start of the first user turn (as LLaVA's
    preprocessing puts it); a text with more tokens than the sample has images is an error
    (``None``, counted and noted): LLaVA and LLaMA-Factory would fail on it.
    """
    texts = texts_with_tokens(sample)
    images = len(sample_images(sample))
    tokens = sum(text.count(IMAGE_TOKEN) for text in texts)
    if tokens > images:
        counts.image_token_mismatch += 1
        counts.note(
            f"{sample.sample_id}: the text has {tokens} {IMAGE_TOKEN} token(s) for "
            f"{images} image(s)"
        )
        return None
    if tokens < images and texts:
        first_user = next(
            (position for position, turn in enumerate(sample.turns) if turn.role == "user"), 0
        )
        texts[first_user] = (IMAGE_TOKEN + "\n") * (images - tokens) + texts[first_user]
        counts.image_tokens_added += images - tokens
    return texts


def image_reference(value: Any, where: str) -> tuple[str | None, dict[str, Any]]:
    """The sample image from a record's image field (a path, or a list of paths)."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    require_type(value, list, f"`{where}`")
    for position, item in enumerate(value):
        require_type(item, str, f"`{where}[{position}]`")
    return (value[0] if value else None), {IMAGES: list(value)}


def image_value(sample: Sample) -> Any:
    """What to write as the record's image field: a path, or the original list of paths."""
    images = sample.extra.get(IMAGES)
    if isinstance(images, list):
        if images and sample.image is not None:
            return [sample.image, *images[1:]]
        return images
    references = sample_images(sample)  # e.g. the image files of a MIMIC-IT sample
    return references if len(references) > 1 else sample.image


def image_id_of(reference: str | None) -> str | None:
    """The file stem of an image reference: LLaVA's files are named by their image id."""
    if not reference:
        return None
    return posixpath.splitext(posixpath.basename(reference))[0]


class LlavaReader:
    """Reads LLaVA conversation JSON (or JSON lines) into samples."""

    name: ClassVar[str] = "llava"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        root = context.image_root(path.parent)
        samples = parse_json_records(
            path,
            source_format=self.name,
            what="a LLaVA file",
            fix_type="LLaVA data is a JSON list of {id, image, conversations}; "
            "for another format pass --format (or --format auto)",
            parse=lambda record, index: self.parse(record, index=index, stem=path.stem),
        )
        for index, sample, parsed in samples:
            if parsed:
                sample.image_root = root
                sample.provenance = {IMPORT_PROVENANCE: import_provenance(self.name, path, index)}
            yield sample

    def parse(self, record: Any, *, index: int, stem: str) -> Sample:
        """One record as a sample; `RecordError` if a field has the wrong type."""
        require_type(record, dict, "the record")
        turns, extra = parse_conversation_turns(record.get("conversations"))
        image, image_extra = image_reference(record.get("image"), "image")
        turns, token_extra = split_tokens_of(turns, has_image=image is not None)
        sample_id, id_extra = sample_id_for(record.get("id"), stem=stem, index=index)
        fields = unknown_fields(record, _LLAVA_KEYS)
        return Sample(
            sample_id=sample_id,
            turns=turns,
            image=image,
            image_id=image_id_of(image),
            extra={
                SOURCE_FORMAT: self.name,
                **id_extra,
                **image_extra,
                **token_extra,
                **extra,
                **({FIELDS: fields} if fields else {}),
                **key_order_extra(record, _LLAVA_KEYS),
                **({"image_null": True} if "image" in record and record["image"] is None else {}),
            },
        )


class LlavaWriter:
    """Writes samples as LLaVA conversation JSON, streaming, atomically."""

    name: ClassVar[str] = "llava"

    def __init__(self, *, indent: int | None = 4, ensure_ascii: bool = True) -> None:
        self.indent = indent
        self.ensure_ascii = ensure_ascii

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        return write_record_array(
            samples, path, self.record, indent=self.indent, ensure_ascii=self.ensure_ascii
        )

    def record(self, sample: Sample, counts: WriteCounts) -> Any:
        """The LLaVA record for one sample (``None``, counted, if it cannot be expressed)."""
        invalid, raw = invalid_passthrough(sample, self.name, counts)
        if invalid:
            return raw
        own = same_format(sample, self.name)
        texts = export_texts(sample, counts)
        if texts is None:
            return None
        record: dict[str, Any] = {}
        record_id = restore_id(sample)
        if record_id is not None:
            record["id"] = record_id
        image = image_value(sample)
        if image is not None or (own and sample.extra.get("image_null")):
            record["image"] = image
        record["conversations"] = conversation_turns_to_json(sample, texts, own=own)
        if own:
            record.update(sample.extra.get(FIELDS, {}))
        counts.samples += 1
        counts.turns += len(sample.turns)
        return ordered(record, sample.extra.get(KEY_ORDER) if own else None)
