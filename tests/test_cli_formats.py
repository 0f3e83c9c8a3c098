"""`vlit import`, `vlit export`, `vlit cat` through the real command line.

Bad input must give exit status 2 and ONE line naming the file, the place and the fix (no
traceback); bad records, escaping paths and broken images are kept, counted, and the run goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers import give_images
from vlit.cli import main
from vlit.rundir import RunDir
from vlit.schema import ImageRecord, Sample, Turn

VLIT = str(Path(sys.executable).with_name("vlit"))


def run_vlit(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `vlit` script in a subprocess (what a user runs)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [VLIT, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def vlit_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run `vlit ... --json` in this process; the one JSON object it printed."""
    main([*args, "--json"])
    out = capsys.readouterr().out
    summary: dict[str, Any] = json.loads(out)
    return summary


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Fix:" in lines[0]
    return lines[0]


def test_truncated_json_is_exit_2_with_one_line(llava_slice: Path, tmp_path: Path) -> None:
    data = llava_slice.read_bytes()
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(data[: len(data) // 2])
    result = run_vlit("import", str(truncated), "--format", "llava", "--out", str(tmp_path / "r"))
    line = assert_one_line_error(result, str(truncated), "line ", "column ", "truncated")
    assert line.startswith("error: ")
    assert not (tmp_path / "r" / "samples").exists()  # nothing half-written

    debug = run_vlit(
        "--debug", "import", str(truncated), "--format", "llava", "--out", str(tmp_path / "r")
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_wrong_top_level_type_is_exit_2(tmp_path: Path) -> None:
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"id": "1", "conversations": []}), encoding="utf-8")
    result = run_vlit("import", str(single), "--format", "llava", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, str(single), "top level is an object", "list of records")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('[{"id": "1", "conversations": [}]', encoding="utf-8")
    result = run_vlit("import", str(invalid), "--format", "auto", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_unknown_format_lists_the_valid_ones(llava_slice: Path, tmp_path: Path) -> None:
    result = run_vlit("import", str(llava_slice), "--format", "csv", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "unknown format 'csv'", "llava, sharegpt, mimicit, paper")


def test_bad_records_are_kept_and_counted(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]
    records = [
        {"id": "good", "image": "a.jpg", "conversations": good_turns},
        {"id": "string", "image": "a.jpg", "conversations": "human: hi"},
        {"id": "number", "image": "a.jpg", "conversations": [{"from": "human", "value": 3}]},
    ]
    source = tmp_path / "records.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    summary = vlit_json(
        capsys, "import", str(source), "--format", "llava", "--out", str(tmp_path / "r")
    )
    assert summary["samples"] == 3 and summary["records_invalid"] == 2
    assert summary["samples_failed"] == 2 and summary["images_missing"] == 1
    samples = {s.sample_id: s for s in RunDir(tmp_path / "r").read_samples("samples")}
    assert "`conversations` is a string" in str(samples["string"].failure_reason)
    assert "`conversations[0].value` is a number" in str(samples["number"].failure_reason)
    assert samples["good"].ok

    # export skips failed samples unless asked, and can write them back verbatim
    (tmp_path / "a.jpg").write_bytes((coco_tiny / "train2017" / "000000005802.jpg").read_bytes())
    out = tmp_path / "out.json"
    exported = vlit_json(
        capsys, "export", str(tmp_path / "r"), "--format", "llava", "--out", str(out)
    )
    assert exported["samples"] == 1 and exported["skipped_failed"] == 2
    assert exported["stage"] == "samples"
    vlit_json(
        capsys,
        "export",
        str(tmp_path / "r"),
        "--format",
        "llava",
        "--out",
        str(out),
        "--include-failed",
    )
    assert json.loads(out.read_text()) == records


def test_image_paths_escaping_the_root_are_failures(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    photo = coco_tiny / "train2017" / "000000005802.jpg"
    (images / "ok.jpg").write_bytes(photo.read_bytes())
    (images / "link.jpg").symlink_to(photo)  # resolves outside the image root
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Food."}]
    references = ["ok.jpg", "../../etc/passwd", "/etc/passwd", "link.jpg", "absent.jpg"]
    records = [
        {"id": str(n), "image": ref, "conversations": turns} for n, ref in enumerate(references)
    ]
    source = tmp_path / "paths.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    summary = vlit_json(
        capsys,
        "import",
        str(source),
        "--format",
        "llava",
        "--images",
        str(images),
        "--out",
        str(tmp_path / "r"),
    )
    assert summary["path_escapes"] == 3 and summary["images_missing"] == 1
    assert summary["images_present"] == 1 and summary["samples"] == 5
    samples = list(RunDir(tmp_path / "r").read_samples("samples"))
    assert samples[0].image_root == str(images.resolve())
    for sample in samples[1:4]:
        assert str(sample.failure_reason).startswith(
            "image_path_escapes: image path escapes the image root: "
        )
        assert sample.provenance["image_status"] == "escapes"
    assert samples[4].ok and samples[4].provenance["image_status"] == "missing"


def test_unreadable_images_are_failures(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    data = (coco_tiny / "train2017" / "000000005802.jpg").read_bytes()
    (images / "good.jpg").write_bytes(data)
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (images / "garbage.jpg").write_bytes(os.urandom(2048))
    (images / "empty.jpg").write_bytes(b"")
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Food."}]
    names = ["good.jpg", "truncated.jpg", "garbage.jpg", "empty.jpg"]
    records = [{"id": name, "image": name, "conversations": turns} for name in names]
    source = tmp_path / "images.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    args = ["import", str(source), "--images", str(images)]
    quick = vlit_json(capsys, *args, "--out", str(tmp_path / "quick"))
    assert quick["images_unreadable"] == 1  # only the empty file, without decoding
    full = vlit_json(capsys, *args, "--out", str(tmp_path / "full"), "--verify-images")
    assert full["images_unreadable"] == 3 and full["images_verified"] == 1
    samples = {s.sample_id: s for s in RunDir(tmp_path / "full").read_samples("samples")}
    assert samples["good.jpg"].ok
    assert "truncated" in str(samples["truncated.jpg"].failure_reason)
    assert str(samples["garbage.jpg"].failure_reason).startswith("image_unreadable: ")


def test_slice_import_export_through_cli_is_lossless(
    llava_slice: Path, coco_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    summary = vlit_json(capsys, "import", str(llava_slice), "--out", str(run))  # auto
    assert summary["format"] == "llava" and summary["samples"] == 2183
    assert summary["images_missing"] == 2183 and summary["samples_failed"] == 0
    assert RunDir(run).load_meta()["summaries"]["import"]["samples"] == 2183
    out = tmp_path / "again.json"
    with pytest.raises(SystemExit) as raised:  # its images are not shipped: not trainable
        main(["export", str(run), "--format", "llava", "--out", str(out)])
    assert raised.value.code == 2 and not out.exists()
    assert "2183 image(s) of this export are missing" in capsys.readouterr().err
    images = tmp_path / "images"
    give_images(llava_slice, images, sorted((coco_tiny / "train2017").glob("*.jpg")))
    vlit_json(
        capsys,
        "import",
        str(llava_slice),
        "--images",
        str(images),
        "--out",
        str(run),
        "--overwrite",
    )
    exported = vlit_json(capsys, "export", str(run), "--format", "llava", "--out", str(out))
    assert out.read_bytes() == llava_slice.read_bytes()
    assert exported["image_root"] == str(images.resolve()) and exported["images_missing"] == 0

    main(["cat", str(run), "--limit", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["sample_id"] == "000019465"

    with pytest.raises(SystemExit) as raised:  # already has samples: refuse to clobber
        main(["import", str(llava_slice), "--out", str(run)])
    assert raised.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_stage_choice(
    llava_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    vlit_json(capsys, "import", str(llava_slice), "--out", str(run))
    samples = list(RunDir(run).read_samples("samples"))
    RunDir(run).write_samples("kept", samples[:10])
    kept = vlit_json(
        capsys, "export", str(run), "--format", "jsonl", "--out", str(tmp_path / "k.jsonl")
    )
    assert kept["stage"] == "kept" and kept["samples"] == 10
    with pytest.raises(SystemExit) as raised:
        main(["export", str(run), "--format", "jsonl", "--out", "x.jsonl", "--stage", "dropped"])
    assert raised.value.code == 2
    assert "no committed 'dropped' stage" in capsys.readouterr().err


def test_mimicit_export_then_import_through_cli(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = sorted((coco_tiny / "train2017").glob("*.jpg"))[:3]
    turns = [
        {"from": "human", "value": "<image>\nWhat is here?"},
        {"from": "gpt", "value": "A photo."},
    ]
    records = [{"id": p.stem, "image": p.name, "conversations": turns} for p in photos]
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    vlit_json(
        capsys,
        "import",
        str(source),
        "--images",
        str(coco_tiny / "train2017"),
        "--out",
        str(tmp_path / "a"),
    )
    out = tmp_path / "COCO_instructions.json"
    exported = vlit_json(
        capsys, "export", str(tmp_path / "a"), "--format", "mimicit", "--out", str(out)
    )
    assert exported["images_embedded"] == 3 and (tmp_path / "COCO_images.parquet").is_file()
    imported = vlit_json(
        capsys, "import", str(out), "--out", str(tmp_path / "b"), "--verify-images"
    )
    assert imported["format"] == "mimicit" and imported["images_verified"] == 3
    for photo, sample in zip(photos, RunDir(tmp_path / "b").read_samples("samples"), strict=True):
        assert sample.sample_id == photo.stem
        assert sample.image_path is not None
        assert sample.image_path.read_bytes() == photo.read_bytes()
        assert str(tmp_path / "b" / "images") in sample.image_root


def test_wrong_format_for_the_file_says_which_it_looks_like(tmp_path: Path) -> None:
    source = tmp_path / "chat.json"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    source.write_text(json.dumps([{"messages": messages}]), encoding="utf-8")
    result = run_vlit("import", str(source), "--format", "llava", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "looks like sharegpt", "--format sharegpt")


def test_cat_prints_records_and_samples(
    tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDir(tmp_path / "run")
    record = ImageRecord(
        image_id="5802",
        file_name="000000005802.jpg",
        image_root=str(coco_tiny / "train2017"),
        captions=["A plate of food."],
    )
    run.write_records([record])
    main(["cat", str(run.root)])  # only records so far: they are the default
    (line,) = capsys.readouterr().out.splitlines()
    assert ImageRecord.from_row(json.loads(line)) == record

    sample = Sample(sample_id="a", turns=[Turn("user", "Hi"), Turn("assistant", "Hello")])
    run.write_samples("samples", [sample])
    main(["cat", str(run.root)])
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["turns"] == [
        {"role": "user", "text": "Hi"},
        {"role": "assistant", "text": "Hello"},
    ]
    main(["cat", str(run.root), "--stage", "records"])
    assert json.loads(capsys.readouterr().out)["image_id"] == "5802"
    with pytest.raises(SystemExit) as raised:
        main(["cat", str(tmp_path / "nowhere")])
    assert raised.value.code == 2 and "run directory not found" in capsys.readouterr().err
