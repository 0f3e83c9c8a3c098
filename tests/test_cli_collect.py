"""`vlit collect coco|jsonl` and `vlit clue` from the command line: output, exit status, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlit.cli import main
from vlit.rundir import RunDir

VLIT = Path(sys.executable).parent / "vlit"


def _coco_args(coco_tiny: Path, out: Path, *extra: str) -> list[str]:
    return [
        "collect",
        "coco",
        "--images",
        str(coco_tiny / "train2017"),
        "--captions",
        str(coco_tiny / "annotations" / "captions_train2017.json"),
        "--instances",
        str(coco_tiny / "annotations" / "instances_train2017.json"),
        "--out",
        str(out),
        *extra,
    ]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return int(caught.value.code or 0)


@pytest.fixture(scope="module")
def tiny_run(coco_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    main(_coco_args(coco_tiny, out))
    return out


def test_collect_coco_json_prints_one_object_and_saves_it(coco_tiny, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    main(_coco_args(coco_tiny, out, "--json"))
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1
    summary = json.loads(stdout)
    assert (summary["images"], summary["captions"], summary["objects"]) == (50, 250, 470)
    run = RunDir(out)
    assert run.load_meta()["summaries"]["collect"] == summary
    assert len(list(run.read_records())) == 50


def test_collect_coco_table_for_people_hides_zero_counters(coco_tiny, tmp_path, capsys) -> None:
    main(_coco_args(coco_tiny, tmp_path / "run"))
    stdout = capsys.readouterr().out
    assert "crowd_annotations" in stdout and "images_without_objects" in stdout
    assert "vqa " in stdout  # a headline counter, shown even when zero
    assert "ocr_duplicates" not in stdout


def test_truncated_file_exits_2_with_one_line(coco_tiny, tmp_path, capsys) -> None:
    text = (coco_tiny / "annotations" / "instances_train2017.json").read_text()
    broken = tmp_path / "instances.json"
    broken.write_text(text[:5000])
    argv = _coco_args(coco_tiny, tmp_path / "run")
    argv[argv.index("--instances") + 1] = str(broken)
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "not valid JSON" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "run" / "records").exists()


def test_wrong_field_type_exits_2_naming_the_record(coco_tiny, tmp_path, capsys) -> None:
    data = json.loads((coco_tiny / "annotations" / "captions_train2017.json").read_text())
    data["annotations"][12]["image_id"] = None
    broken = tmp_path / "captions.json"
    broken.write_text(json.dumps(data))
    argv = _coco_args(coco_tiny, tmp_path / "run")
    argv[argv.index("--captions") + 1] = str(broken)
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"record annotations[12] (id {data['annotations'][12]['id']})" in err
    assert "'image_id' should be an integer or a non-empty string" in err


def test_captions_option_is_required(coco_tiny, tmp_path) -> None:
    argv = _coco_args(coco_tiny, tmp_path / "run")
    del argv[argv.index("--captions") : argv.index("--captions") + 2]
    assert _exit_code(argv) == 2


def test_only_one_vqa_file_exits_2(coco_tiny, tmp_path, capsys) -> None:
    argv = _coco_args(coco_tiny, tmp_path / "run", "--vqa-questions", str(tmp_path / "q.json"))
    assert _exit_code(argv) == 2
    assert "--vqa-annotations" in capsys.readouterr().err


def test_jsonl_in_a_subprocess_skips_escaping_paths(coco_tiny: Path, tmp_path: Path) -> None:
    lines = [
        {"image_id": 1, "file_name": "000000391895.jpg", "captions": ["A moped."]},
        {"image_id": 2, "file_name": "../../../../etc/passwd"},
        {"image_id": 3, "file_name": "/etc/passwd"},
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n{oops\n")
    out = tmp_path / "run"
    done = subprocess.run(
        [str(VLIT), "collect", "jsonl", str(jsonl), "--images", str(coco_tiny / "train2017"),
         "--out", str(out), "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 1 and summary["images_path_escaping_root"] == 2
    assert [entry["line"] for entry in summary["skipped_lines"]] == [2, 3, 4]
    assert [r.image_id for r in RunDir(out).read_records()] == ["1"]


def test_missing_jsonl_in_a_subprocess_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(VLIT), "collect", "jsonl", str(tmp_path / "none.jsonl"), "--images",
         str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "none.jsonl" in done.stderr
    assert "Traceback" not in done.stderr


def test_clue_prints_whole_image_and_region(tiny_run: Path, capsys) -> None:
    record = next(iter(RunDir(tiny_run).read_records()))
    main(["clue", str(tiny_run), "--image-id", record.image_id])
    whole = capsys.readouterr().out
    assert whole.startswith("People describe this picture as follows:")
    main(["clue", str(tiny_run), "--image-id", record.image_id, "--object", "0"])
    region = capsys.readouterr().out
    assert region.startswith(f"The object in the box is a {record.objects[0].category}")
    assert whole.strip() in region


def test_clue_errors_name_valid_ids_and_object_range(tiny_run: Path, capsys) -> None:
    assert _exit_code(["clue", str(tiny_run), "--image-id", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not in this run" in err and "one of its 50 image ids" in err
    record = next(iter(RunDir(tiny_run).read_records()))
    count = len(record.objects)
    assert _exit_code(["clue", str(tiny_run), "--image-id", record.image_id, "--object", "99"])
    err = capsys.readouterr().err
    assert f"has {count} object(s)" in err and f"from 0 to {count - 1}" in err
