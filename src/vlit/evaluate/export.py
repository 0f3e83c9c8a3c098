"""Training files for other tuning frameworks, from a run's samples.

- ``llava``: the conversation JSON that LLaVA's ``train.py`` reads (``--data_path``): a list of
  ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`` with ``<image>\\n``
  before the first question; ``image`` is resolved against ``--image_folder``.
- ``llamafactory``: LLaMA-Factory's sharegpt layout (``{"messages": [{"role", "content"}],
  "images": [...]}`` with one ``<image>`` per image) plus the ``dataset_info.json`` entry that
  registers it.

Samples with several images keep them all (LLaVA-NeXT's ``image`` list, LLaMA-Factory's
``images``), with one ``<image>`` token per image. Image paths: when all samples share one image
folder, paths are written relative to it and the folder is reported (pass it as LLaVA's
``--image_folder`` / LLaMA-Factory's ``media_dir``); otherwise absolute paths are written, which
both frameworks accept as they are.

Example:
    >>> export_for_training("runs/demo", format="llava", out="export/")   # doctest: +SKIP
    ExportSummary(format='llava', written=120, ...)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vlit.errors import ConfigError, InputFileError, RecordError
from vlit.evaluate.tuning import check_turns, read_training_samples
from vlit.fileio import write_text_atomic
from vlit.formats.export_images import sample_images
from vlit.jsonio import loads_json
from vlit.schema import Sample

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class ExportSummary:
    format: str
    written: int
    skipped: dict[str, int]
    files: list[str]
    image_folder: str | None
    sample_stage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "sample_stage": self.sample_stage,
            "written": self.written,
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": self.skipped,
            "files": self.files,
            "image_folder": self.image_folder,
            **self.extra,
        }


class TrainingFileWriter(Protocol):
    name: str

    def record(self, sample: Sample, images: list[str]) -> dict[str, Any]: ...

    def write(self, records: list[dict[str, Any]], out: Path, dataset_name: str) -> list[str]: ...


def _clean(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


class LlavaTrainingWriter:
    """LLaVA's conversation JSON (one file, ``llava_train.json``)."""

    name = "llava"

    def record(self, sample: Sample, images: list[str]) -> dict[str, Any]:
        conversations = []
        for index, turn in enumerate(sample.turns):
            text = _clean(turn.text)
            if index == 0:
                text = f"{IMAGE_PLACEHOLDER}\n" * len(images) + text
            conversations.append({"from": "human" if turn.role == "user" else "gpt", "value": text})
        image: str | list[str] = images[0] if len(images) == 1 else images  # LLaVA-NeXT: a list
        return {"id": sample.sample_id, "image": image, "conversations": conversations}

    def write(self, records: list[dict[str, Any]], out: Path, dataset_name: str) -> list[str]:
        path = out / "llava_train.json"
        _write_json(path, records)
        return [str(path)]


class LlamaFactoryWriter:
    """LLaMA-Factory's sharegpt ``messages``/``images`` file plus its ``dataset_info.json``."""

    name = "llamafactory"

    def record(self, sample: Sample, images: list[str]) -> dict[str, Any]:
        messages = []
        for index, turn in enumerate(sample.turns):
            text = _clean(turn.text)
            if index == 0:
                text = IMAGE_PLACEHOLDER * len(images) + text
            messages.append({"role": turn.role, "content": text})
        return {"messages": messages, "images": images}

    def write(self, records: list[dict[str, Any]], out: Path, dataset_name: str) -> list[str]:
        data = out / f"{dataset_name}.json"
        _write_json(data, records)
        info_path = out / "dataset_info.json"
        info = (
            loads_json(info_path.read_bytes(), file=info_path, what="dataset_info.json")
            if info_path.is_file()
            else {}
        )
        if not isinstance(info, dict):
            raise InputFileError(
                "dataset_info.json is not an object of dataset name -> settings",
                file=str(info_path),
                fix="repair it, or export into another --out folder",
            )
        info[dataset_name] = {
            "file_name": data.name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
        _write_json(info_path, info)
        return [str(data), str(info_path)]


#: Why ``--format openflamingo`` writes nothing (checked against open_flamingo 2.0.1's train.py).
OPENFLAMINGO_EXPORT_REFUSAL = (
    "open_flamingo's training script cannot train on conversations: train.py steps through a "
    "LAION image-caption webdataset and an MMC4 interleaved webdataset together (both "
    "--laion_shards and --mmc4_shards, zipped batch by batch; MMC4 shards also need image-text "
    "CLIP similarities) and takes the loss on every text token, so the user turns of a "
    "conversation would be trained as if they were answers"
)

TRAINING_EXPORT_FORMATS: dict[str, type[LlavaTrainingWriter] | type[LlamaFactoryWriter]] = {
    "llava": LlavaTrainingWriter,
    "llamafactory": LlamaFactoryWriter,
}


def export_for_training(
    run: str | Path, *, format: str, out: str | Path, dataset_name: str | None = None
) -> ExportSummary:
    """Write the run's kept (else latest) samples in a tuning framework's format to ``out``.

    Samples without an image, whose image file is missing, with a failed generation or a
    malformed conversation are skipped and counted.
    """
    if format == "openflamingo":
        raise ConfigError(
            OPENFLAMINGO_EXPORT_REFUSAL,
            fix="tune OpenFlamingo with `vlit tune RUN --model OPENFLAMINGO_DIR` (it trains the "
            "same modules, on the assistant tokens only)",
        )
    if format not in TRAINING_EXPORT_FORMATS:
        raise ConfigError(
            f"unknown training format '{format}'",
            fix=f"use one of: {', '.join(TRAINING_EXPORT_FORMATS)}",
        )
    writer = TRAINING_EXPORT_FORMATS[format]()
    stage, samples = read_training_samples(run)
    skipped: Counter[str] = Counter()
    usable: list[Sample] = []
    for sample in samples:
        reason = _problem(sample)
        if reason:
            skipped[reason] += 1
        else:
            usable.append(sample)
    roots = {str(Path(s.image_root).resolve()) for s in usable}
    shared_root = roots.pop() if len(roots) == 1 else None
    records = [
        writer.record(
            sample,
            [
                reference if shared_root is not None else str(Path(root, reference).resolve())
                for root, reference in _images(sample)
            ],
        )
        for sample in usable
    ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = dataset_name or f"vlit_{Path(run).resolve().name}"
    files = writer.write(records, out, name)
    extra = {"dataset_name": name} if format == "llamafactory" else {}
    return ExportSummary(
        format=format,
        written=len(records),
        skipped=dict(skipped),
        files=files,
        image_folder=shared_root,
        sample_stage=stage,
        extra=extra,
    )


def _problem(sample: Sample) -> str:
    if not sample.ok:
        return "generation failed"
    if sample.image is None:
        return "no image"
    if not all(Path(root, reference).is_file() for root, reference in _images(sample)):
        return "image missing"
    try:
        check_turns(sample)
    except RecordError:
        return "malformed conversation"
    return ""


def _images(sample: Sample) -> list[tuple[str, str]]:
    """(root, reference) of every image of the sample (several survive: LLaVA-NeXT, MIMIC-IT)."""
    return [(sample.image_root, reference) for reference in sample_images(sample)]


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))
