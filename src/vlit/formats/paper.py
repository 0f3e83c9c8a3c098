"""The release format of the paper's data (Li et al., 2023):

    {"image_source": "COCO 2014", "construction_time": "...",
     "annotations": [{"img_ids": "...", "instruction_type": "...", "conversations": [...]}]}

``conversations`` alternate ``User`` and ``AI`` turns. The paper's generator wrote them as one
object with repeated keys, which strict JSON parsers collapse to the last value; the writer
therefore uses a **list of one-key objects**, ``[{"User": "..."}, {"AI": "..."}, ...]``, which
every parser reads without loss. The reader accepts that, a list of pairs
(``[["User", "..."], ...]``), a list of exchanges (``[{"User": q, "AI": a}, ...]``) and the
repeated-key object (parsed keeping every key); each sample records which one it came in.

``instruction_type`` is the sample's ``mode``; ``img_ids`` (one id, or a list) its image id.
The format has no sample ids: the reader numbers annotations (``<file stem>-000000``) and the
writer leaves ids out. Images are found in the image folder by id (`ImageFolderIndex`).

Example:
    >>> samples = list(PaperReader().read(Path("coco_arc.json"), context))  # doctest: +SKIP
    >>> PaperWriter(image_source="COCO 2014").write(samples, Path("out.json"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from vlit.errors import ConfigError, InputFileError, RecordError
from vlit.fileio import atomic_output
from vlit.formats.base import (
    FIELDS,
    ID_GENERATED,
    IMPORT_PROVENANCE,
    KEY_ORDER,
    SOURCE_FORMAT,
    ImportContext,
    WriteCounts,
    import_provenance,
    invalid_passthrough,
    invalid_sample,
    key_order_extra,
    load_json_document,
    ordered,
    require_type,
    same_format,
)
from vlit.images import ImageFolderIndex
from vlit.jsonio import json_type_name
from vlit.schema import Role, Sample, Turn

SPEAKERS: dict[str, Role] = {"User": "user", "AI": "assistant"}
_NAMES: dict[Role, str] = {"user": "User", "assistant": "AI"}
STYLE = "conversation_style"
IMG_IDS = "img_ids"
FILE_META = "file_meta"
PAPER_FILE = "paper_file"
_ANNOTATION_KEYS = ["img_ids", "instruction_type", "conversations"]
_FILE_KEYS = ["image_source", "construction_time", "annotations"]


class RepeatedKeys(list[tuple[str, Any]]):
    """A JSON object that repeated a key, kept as its (key, value) pairs in order."""


def _keep_repeated_keys(pairs: list[tuple[str, Any]]) -> Any:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        return RepeatedKeys(pairs)
    return dict(pairs)


class PaperReader:
    """Reads the paper's released JSON into samples (see the module docstring for the shape)."""

    name: ClassVar[str] = "paper"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        document = _load(path)
        annotations = document.get("annotations")
        if not isinstance(annotations, list):
            raise InputFileError(
                f"`annotations` is {json_type_name(annotations)}, expected a list",
                file=str(path),
                fix="the paper's format is {image_source, construction_time, annotations: [...]}",
            )
        if isinstance(context.images, str):
            raise ConfigError(
                "the paper's format finds images by id in a local folder, not at a URL",
                fix="pass --images as a local folder (or a mount of the bucket)",
            )
        root = (context.images or path.parent).resolve()
        index_of_images = ImageFolderIndex(root)
        file_meta = {key: value for key, value in document.items() if key != "annotations"}
        file_meta_extra = {
            FILE_META: file_meta,
            **({KEY_ORDER: list(document)} if list(document) != _file_order(document) else {}),
        }
        for index, annotation in enumerate(annotations):
            sample_id = f"{path.stem}-{index:06d}"
            try:
                sample = self.parse(annotation, sample_id=sample_id)
            except RecordError as problem:
                yield invalid_sample(
                    record=_plain(annotation),
                    index=index,
                    problem=problem.problem,
                    source_format=self.name,
                    file=path,
                    sample_id=sample_id,
                )
                continue
            if sample.image_id is not None:
                found = index_of_images.find(sample.image_id)
                if found is None:
                    self.counts["images_not_found_by_id"] += 1
                sample.image = found or f"{sample.image_id}.jpg"
            sample.image_root = str(root)
            sample.extra[PAPER_FILE] = file_meta_extra
            sample.provenance = {IMPORT_PROVENANCE: import_provenance(self.name, path, index)}
            yield sample

    def parse(self, annotation: Any, *, sample_id: str) -> Sample:
        """One annotation as a sample; `RecordError` if its fields have the wrong shape."""
        if isinstance(annotation, RepeatedKeys):
            raise RecordError("the annotation repeats a key")
        require_type(annotation, dict, "the annotation")
        img_ids = annotation.get("img_ids")
        if isinstance(img_ids, list):
            for position, item in enumerate(img_ids):
                require_type(item, (str, int), f"`img_ids[{position}]`")
            image_id = str(img_ids[0]) if img_ids else None
        elif img_ids is None:
            image_id = None
        else:
            require_type(img_ids, (str, int), "`img_ids`")
            image_id = str(img_ids)
        mode = annotation.get("instruction_type", "")
        require_type(mode, str, "`instruction_type`")
        turns, style = parse_paper_conversation(annotation.get("conversations"))
        fields = {k: v for k, v in annotation.items() if k not in _ANNOTATION_KEYS}
        return Sample(
            sample_id=sample_id,
            turns=turns,
            image_id=image_id,
            mode=mode,
            extra={
                SOURCE_FORMAT: self.name,
                ID_GENERATED: True,
                STYLE: style,
                **({IMG_IDS: img_ids} if not isinstance(img_ids, str) else {}),
                **({"no_instruction_type": True} if "instruction_type" not in annotation else {}),
                **({FIELDS: _plain(fields)} if fields else {}),
                **key_order_extra(annotation, _ANNOTATION_KEYS),
            },
        )


def parse_paper_conversation(conversation: Any) -> tuple[list[Turn], str]:
    """Turns from any accepted representation, and the name of that representation."""
    if isinstance(conversation, RepeatedKeys):
        return [
            _turn(speaker, text, position) for position, (speaker, text) in enumerate(conversation)
        ], "repeated_keys"
    if isinstance(conversation, dict):
        return [
            _turn(speaker, text, position)
            for position, (speaker, text) in enumerate(conversation.items())
        ], "object"
    require_type(conversation, list, "`conversations`")
    if not conversation:
        return [], "objects"
    turns: list[Turn] = []
    if all(isinstance(item, list) for item in conversation):
        for position, item in enumerate(conversation):
            if len(item) != 2:
                raise RecordError(f"`conversations[{position}]` is not a [speaker, text] pair")
            turns.append(_turn(item[0], item[1], position))
        return turns, "pairs"
    for position, item in enumerate(conversation):
        if isinstance(item, RepeatedKeys):
            raise RecordError(f"`conversations[{position}]` repeats a speaker")
        require_type(item, dict, f"`conversations[{position}]`")
        for speaker, text in item.items():
            turns.append(_turn(speaker, text, len(turns)))
    single = all(len(item) == 1 for item in conversation)
    return turns, "objects" if single else "exchanges"


def _turn(speaker: Any, text: Any, position: int) -> Turn:
    role = SPEAKERS.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise RecordError(f"turn {position} has speaker {speaker!r}; use 'User' or 'AI'")
    require_type(text, str, f"the text of turn {position}")
    return Turn(role=role, text=text)


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = load_json_document(
        path,
        expected=dict,
        what="the paper's format",
        fix_type="the paper's format is {image_source, construction_time, annotations: [...]}; "
        "for another format pass --format (or --format auto)",
        object_pairs_hook=_keep_repeated_keys,
    )
    return document


def _plain(value: Any) -> Any:
    """``value`` with repeated-key objects as lists of pairs (JSON-serialisable, lossless)."""
    if isinstance(value, RepeatedKeys):
        return [[key, _plain(item)] for key, item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _file_order(document: dict[str, Any]) -> list[str]:
    return [key for key in _FILE_KEYS if key in document] + [
        key for key in document if key not in _FILE_KEYS
    ]


class PaperWriter:
    """Writes samples in the paper's format, conversations as ``[{"User": ...}, {"AI": ...}]``.

    ``image_source`` and ``construction_time`` fill the file header unless the samples were
    read from this format (their header is kept).
    """

    name: ClassVar[str] = "paper"

    def __init__(
        self, *, image_source: str = "", construction_time: str = "", indent: int | None = 4
    ) -> None:
        self.image_source = image_source
        self.construction_time = construction_time
        self.indent = indent

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        counts = WriteCounts(files=[str(path)])
        header: dict[str, Any] | None = None
        annotations: list[Any] = []
        for sample in samples:
            invalid, raw = invalid_passthrough(sample, self.name, counts)
            if invalid:
                if raw is not None:
                    annotations.append(raw)
                continue
            own = same_format(sample, self.name)
            if header is None and own:
                header = sample.extra.get(PAPER_FILE)
            annotations.append(self.annotation(sample, own=own))
            counts.samples += 1
            counts.turns += len(sample.turns)
        header = header or {}
        file_meta = header.get(FILE_META) or {
            "image_source": self.image_source,
            "construction_time": self.construction_time,
        }
        document = ordered({**file_meta, "annotations": annotations}, header.get(KEY_ORDER))
        with atomic_output(path) as handle:
            json.dump(document, handle, indent=self.indent, ensure_ascii=False)
        return counts

    def annotation(self, sample: Sample, *, own: bool) -> dict[str, Any]:
        """The annotation object for one sample."""
        style = sample.extra.get(STYLE, "objects") if own else "objects"
        img_ids = sample.extra.get(IMG_IDS) if own and IMG_IDS in sample.extra else None
        if img_ids is None or (isinstance(img_ids, list) and not img_ids and sample.image_id):
            img_ids = sample.image_id
        annotation: dict[str, Any] = {"img_ids": img_ids}
        if not (own and sample.extra.get("no_instruction_type")):
            annotation["instruction_type"] = sample.mode or "conversation"
        annotation["conversations"] = _conversation_json(sample.turns, style)
        if own:
            annotation.update(sample.extra.get(FIELDS, {}))
        return ordered(annotation, sample.extra.get(KEY_ORDER) if own else None)


def _conversation_json(turns: list[Turn], style: str) -> Any:
    named = [(_NAMES[turn.role], turn.text) for turn in turns]
    if style == "pairs":
        return [[speaker, text] for speaker, text in named]
    if style == "object" and len({speaker for speaker, _ in named}) == len(named):
        return dict(named)
    if style == "exchanges":
        exchanges: list[dict[str, str]] = []
        for speaker, text in named:
            if not exchanges or speaker in exchanges[-1]:
                exchanges.append({})
            exchanges[-1][speaker] = text
        return exchanges
    return [{speaker: text} for speaker, text in named]
