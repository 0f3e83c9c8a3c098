"""`--json` on the read-only commands prints exactly one JSON object on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlit.cli import main


@pytest.fixture()
def collected(tmp_path: Path, coco_tiny: Path) -> Path:
    run = tmp_path / "run"
    main(
        [
            "collect", "coco",
            "--images", str(coco_tiny / "train2017"),
            "--captions", str(coco_tiny / "annotations" / "captions_train2017.json"),
            "--instances", str(coco_tiny / "annotations" / "instances_train2017.json"),
            "--out", str(run), "--json",
        ]
    )  # fmt: skip
    return run


def test_clue_json(collected: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["clue", str(collected), "--image-id", "391895", "--object", "0", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert document["image_id"] == "391895" and document["object"] == 0
    assert "person" in document["clue"] and "\n" not in capsys.readouterr().out


def test_cat_json(collected: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["cat", str(collected), "--stage", "records", "--limit", "3", "--json"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert document["stage"] == "records" and document["count"] == 3
    assert len({row["image_id"] for row in document["rows"]}) == 3
