"""Pieces of recipes that several tests write: the coco_tiny collection source."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def coco_tiny_collect(coco_tiny: Path) -> dict[str, Any]:
    """A recipe's ``collect`` section over ../shared/data/coco_tiny (captions and instances)."""
    annotations = coco_tiny / "annotations"
    return {
        "sources": [
            {
                "kind": "coco",
                "images_dir": str(coco_tiny / "train2017"),
                "captions": str(annotations / "captions_train2017.json"),
                "instances": str(annotations / "instances_train2017.json"),
            }
        ]
    }
