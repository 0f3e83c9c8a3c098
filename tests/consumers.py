"""The loading rules of the frameworks vlit's exports are for, as our own validators.

Each ``*_problems`` function reads an exported file the way the consumer's own loading code does
and returns one line per row that the consumer would fail on, skip or silently mistrain on
(empty: every row loads). The rules, from each project's source:

- **LLaVA** (``llava/train/train.py``: ``LazySupervisedDataset.__getitem__``,
  ``preprocess_multimodal``, ``preprocess_v1``): the file is a JSON list; ``image`` is joined to
  ``--image_folder`` with ``os.path.join`` and opened with PIL (a list of paths is what the
  LLaVA-NeXT / OneVision loaders take); roles map through ``{"human", "gpt"}`` (another name is a
  KeyError) and, after a leading non-human turn is dropped, must alternate human/gpt (an
  ``assert``); the model replaces each ``<image>`` token with the features of the next image, so
  tokens and images must be as many (a text-only record with a token indexes an image that does
  not exist; an image without a token is silently never seen).
- **LLaMA-Factory** (``data/converter.py`` ``SharegptDatasetConverter`` / ``_find_medias``,
  ``data/mm_plugin.py`` ``_validate_input``): an optional leading system message; then roles
  user/assistant alternating from the user ("Invalid role tag": the example is skipped), an even
  number of messages ("Invalid message count": skipped); content is a string (the plugin counts
  ``<image>`` in it); ``images`` is a path or a list, each joined to ``media_dir`` when that file
  exists, otherwise used as it is, then opened; ``len(images)`` must equal the number of
  ``<image>`` tokens in all messages (a ValueError).
- **Otter** (``pipeline/mimicit_utils/mimicit_dataset.py``): ``orjson.loads(file)["data"]``;
  the images Parquet read with ``pandas.read_parquet`` (index = image id) and each image id of
  an instruction looked up with ``images.loc[id]["base64"]``, decoded with
  ``base64.urlsafe_b64decode`` and opened with PIL; ``rel_ins_ids`` (the in-context examples
  with ``populate_rel_ins``) are looked up in ``data``.
- **Hugging Face datasets**: ``load_dataset("parquet", data_files=...)``; ``image`` must be an
  ``Image`` feature and ``images`` a sequence of ``Image``; every image of every row decodes.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import datasets
import pandas
from PIL import Image

IMAGE_TOKEN = "<image>"
_LLAVA_ROLES = ("human", "gpt")


def _opens(path: str | Path) -> str | None:
    """Why PIL cannot open the image at ``path`` (as the loaders do), or None."""
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# -- LLaVA ---------------------------------------------------------------------------------------
def llava_problems(data_path: Path, image_folder: Path | None) -> list[str]:
    records = json.loads(data_path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        return [f"{data_path}: not a JSON list"]
    problems: list[str] = []
    for index, record in enumerate(records):
        where = f"record {index} ({record.get('id') if isinstance(record, dict) else '?'})"
        problems.extend(f"{where}: {problem}" for problem in _llava_record(record, image_folder))
    return problems


def _llava_record(record: Any, image_folder: Path | None) -> list[str]:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return ["no `conversations` list"]
    turns = record["conversations"]
    if not turns:
        return ["no turns"]
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return [f"turn {turn!r} has no string `value`"]
        if turn.get("from") not in _LLAVA_ROLES:
            return [f"role {turn.get('from')!r} is not human/gpt (KeyError in preprocess)"]
    source = turns[1:] if turns[0]["from"] != "human" else turns
    for position, turn in enumerate(source):
        if turn["from"] != _LLAVA_ROLES[position % 2]:
            return [f"turn {position} is {turn['from']!r}: roles do not alternate"]
    tokens = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if "image" not in record:
        return [f"text-only record with {tokens} {IMAGE_TOKEN} token(s)"] if tokens else []
    files = _image_list(record["image"])
    problems = []
    if tokens != len(files):
        problems.append(f"{tokens} {IMAGE_TOKEN} token(s) for {len(files)} image(s)")
    for file in files:
        if not isinstance(file, str):
            problems.append(f"image {file!r} is not a path")
            continue
        path = os.path.join(str(image_folder or ""), file)
        reason = _opens(path)
        if reason:
            problems.append(f"image {path}: {reason}")
    return problems


# -- LLaMA-Factory -------------------------------------------------------------------------------
def llamafactory_problems(data_path: Path, media_dir: Path | None) -> list[str]:
    records = json.loads(data_path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        return [f"{data_path}: not a JSON list"]
    problems: list[str] = []
    for index, record in enumerate(records):
        where = f"record {index} ({record.get('id') if isinstance(record, dict) else '?'})"
        problems.extend(f"{where}: {problem}" for problem in _sharegpt_record(record, media_dir))
    return problems


def _sharegpt_record(record: Any, media_dir: Path | None) -> list[str]:
    if not isinstance(record, dict):
        return ["not an object"]
    if "messages" in record:  # dataset_info tags: role/content, user/assistant/system
        messages, role, content, tags = record["messages"], "role", "content", ("user", "assistant")
        system = "system"
    else:  # LLaMA-Factory's sharegpt defaults: from/value, human/gpt/system
        messages, role, content = record.get("conversations"), "from", "value"
        tags, system = ("human", "gpt"), "system"
    if not isinstance(messages, list) or not messages:
        return ["no messages"]
    if messages[0].get(role) == system:
        messages = messages[1:]
    for position, message in enumerate(messages):
        if message.get(role) != tags[position % 2]:
            return [f"Invalid role tag at message {position}: {message.get(role)!r}"]
        if not isinstance(message.get(content), str):
            return [f"message {position} content is not a string"]
    if len(messages) % 2:
        return [f"Invalid message count ({len(messages)})"]
    images = _image_list(record.get("images"))
    tokens = sum(message[content].count(IMAGE_TOKEN) for message in messages)
    problems = []
    if tokens != len(images):
        problems.append(
            f"The number of images ({len(images)}) does not match the number of "
            f"{IMAGE_TOKEN} tokens ({tokens})"
        )
    for image in images:
        path = os.path.join(str(media_dir or ""), image)
        if not os.path.isfile(path):
            path = image  # "does not exist in `media_dir`. Use original path."
        reason = _opens(path)
        if reason:
            problems.append(f"image {image}: {reason}")
    return problems


# -- Otter (MIMIC-IT) ----------------------------------------------------------------------------
def otter_problems(instructions_path: Path, images_path: Path) -> list[str]:
    data = json.loads(instructions_path.read_bytes())["data"]
    images = pandas.read_parquet(images_path, columns=None)
    problems: list[str] = []
    for instruction_id, entry in data.items():
        where = f"instruction {instruction_id}"
        if not isinstance(entry.get("instruction"), str) or not isinstance(
            entry.get("answer"), str
        ):
            problems.append(f"{where}: no instruction/answer strings")
            continue
        for related in entry.get("rel_ins_ids") or []:
            if related not in data:
                problems.append(f"{where}: rel_ins_id {related} is not in data")
        for image_id in entry.get("image_ids") or []:
            try:
                encoded = images.loc[image_id]["base64"]
            except KeyError:
                problems.append(f"{where}: image {image_id} is not in the images parquet")
                continue
            reason = _opens(io.BytesIO(base64.urlsafe_b64decode(encoded)))
            if reason:
                problems.append(f"{where}: image {image_id}: {reason}")
    return problems


# -- Hugging Face datasets -----------------------------------------------------------------------
def datasets_problems(path: Path, cache_dir: Path) -> tuple[list[str], datasets.Dataset]:
    dataset = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(cache_dir)
    )
    problems: list[str] = []
    if dataset.features["image"] != datasets.Image():
        problems.append(f"`image` is {dataset.features['image']}, not an Image feature")
    listed = dataset.features["images"]
    inner = getattr(listed, "feature", None)
    if inner != datasets.Image():
        problems.append(f"`images` is {listed}, not a sequence of Image")
    for index in range(dataset.num_rows):
        try:
            row = dataset[index]  # decodes `image` and every item of `images`
            for image in [row["image"], *row["images"]]:
                if image is not None:
                    image.load()
        except (OSError, ValueError) as error:
            problems.append(f"row {index}: {type(error).__name__}: {error}")
    return problems, dataset


# -- data ----------------------------------------------------------------------------------------
def give_images(records_file: Path, folder: Path, photos: list[Path]) -> int:
    """Hard-link a real photo (cycling through ``photos``) at every image path of a LLaVA file
    whose images are not shipped, so its export is checked with images present."""
    count = 0
    for index, record in enumerate(json.loads(records_file.read_text(encoding="utf-8"))):
        for reference in _image_list(record.get("image")):
            target = folder / reference
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(photos[index % len(photos)], target)
                count += 1
    return count
