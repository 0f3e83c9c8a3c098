"""Collection: annotation sources joined per image id into ImageRecords.

`CocoCollector` reads COCO captions and instances with VQA v2, COCO-Text and attributes;
`JsonlCollector` reads your own images described one JSON object per line.
"""

from __future__ import annotations

from vlit.collect.coco import COCO_COUNTERS, CocoCollector
from vlit.collect.common import CollectResult
from vlit.collect.jsonl import JSONL_COUNTERS, JsonlCollector

__all__ = ["COCO_COUNTERS", "JSONL_COUNTERS", "CocoCollector", "CollectResult", "JsonlCollector"]
