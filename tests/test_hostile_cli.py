"""Every command on hostile input: one line naming the file and the fix, exit 2, never a
traceback; one bad row is one bad row; nothing outside the image root reaches an output.

Commands run in process (`vlit.cli.main`, what the `vlit` script calls) for speed; a few run
as real subprocesses to check the exit status a shell sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hostile_inputs import (
    BOM,
    CORRUPT_JSON,
    CORRUPT_YAML,
    MARKUP,
    RUN_JSON_DAMAGE,
    UNUSABLE_JSONL,
    bomb_png,
    copy_images,
    damage_manifest,
    damage_run_json,
    leaking_references,
    leaking_samples_jsonl,
    llava_record,
    write_bad_provenance_row,
    write_wrong_columns,
)
from vlit.cli import main
from vlit.formats.base import ImportContext
from vlit.formats.jsonl import JsonlReader
from vlit.formats.parquet import ParquetWriter

SECRET = b"SECRET-7f3a9c-not-for-datasets"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def refused(self, *needles: str) -> str:
        """Assert exit 2 with one error line (the last line on stderr) holding ``needles``."""
        assert self.code == 2, (self.code, self.err[-2000:])
        assert "Traceback" not in self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.err[-2000:]
        for needle in needles:
            assert needle in errors[0], (needle, errors[0])
        return errors[0]

    def ok(self) -> dict[str, object]:
        assert self.code == 0, self.err[-2000:]
        assert "Traceback" not in self.err
        parsed: dict[str, object] = json.loads(self.out.strip().splitlines()[-1])
        return parsed


@pytest.fixture()
def vlit(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def run(*args: str | Path) -> Outcome:
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, coco_tiny: Path) -> Path:
    """Image folder ``images/`` with two photos, ``secret.txt`` outside it, and a scored and
    filtered run ``base/`` made from a LLaVA file about the photos."""
    root = tmp_path_factory.mktemp("hostile")
    names = copy_images(coco_tiny / "train2017", root / "images")
    (root / "secret.txt").write_bytes(SECRET)
    records = [llava_record(name, record_id=f"r{i}") for i, name in enumerate(names)]
    (root / "llava.json").write_text(json.dumps(records), "utf-8")
    for args in (
        ["import", root / "llava.json", "--format", "llava", "--images", root / "images"],
        ["score", root / "base"],
        ["filter", root / "base"],
    ):
        if args[0] == "import":
            args += ["--out", root / "base"]
        try:
            main([str(arg) for arg in args])
        except SystemExit as done:
            assert not done.code, args
    return root


def copy_run(world: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world / "base", run)
    (run / ".vlit.lock").unlink(missing_ok=True)
    return run


# -- whole files nobody can use -------------------------------------------------------------
JSON_COMMANDS = {
    "import llava": ["import", "{f}", "--format", "llava", "--images", "{images}", "--out", "{o}"],
    "import sharegpt": ["import", "{f}", "--format", "sharegpt", "--out", "{o}"],
    "import paper": ["import", "{f}", "--format", "paper", "--out", "{o}"],
    "import mimicit": ["import", "{f}", "--format", "mimicit", "--out", "{o}"],
    "import auto": ["import", "{f}", "--out", "{o}"],
    "collect coco": [
        "collect",
        "coco",
        "--images",
        "{images}",
        "--captions",
        "{f}",
        "--out",
        "{o}",
    ],
    "correlate": ["correlate", "--indicators", "{f}", "--results", "{f}"],
}


@pytest.mark.parametrize("name", sorted(CORRUPT_JSON))
def test_a_corrupt_json_file_is_one_line_and_exit_2_for_every_reader(
    vlit, world: Path, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"bad-{name}.json"
    path.write_bytes(CORRUPT_JSON[name])
    for command, template in JSON_COMMANDS.items():
        out = tmp_path / command.replace(" ", "-")
        args = [arg.format(f=path, images=world / "images", o=out) for arg in template]
        line = vlit(*args).refused(path.name)
        assert "Fix:" in line, (command, line)
        assert not (out / "samples" / "_manifest.json").exists(), command


@pytest.mark.parametrize("name", sorted(UNUSABLE_JSONL))
def test_jsonl_without_a_usable_line_is_refused_by_collect_and_import(
    vlit, world: Path, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(UNUSABLE_JSONL[name])
    collect = ["collect", "jsonl", path, "--images", world / "images", "--out", tmp_path / "c"]
    vlit(*collect).refused(path.name, "Fix:")
    vlit("import", path, "--format", "jsonl", "--out", tmp_path / "i").refused(path.name)
    assert not (tmp_path / "i" / "samples" / "_manifest.json").exists()


@pytest.mark.parametrize("name", sorted(CORRUPT_YAML))
def test_a_corrupt_recipe_is_one_line(vlit, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(CORRUPT_YAML[name])
    line = vlit("run", path).refused(path.name)
    if name == "unclosed":
        assert "line 2" in line  # the position survives the condensing to one line


def test_a_byte_order_mark_is_accepted_everywhere(vlit, world: Path, tmp_path: Path) -> None:
    images = world / "images"
    name = sorted(p.name for p in images.glob("*.jpg"))[0]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_bytes(BOM + json.dumps({"image_id": "1", "file_name": name}).encode() + b"\n")
    summary = vlit("collect", "jsonl", jsonl, "--images", images, "--out", tmp_path / "c", "--json")
    assert summary.ok()["images"] == 1 and summary.ok()["lines_skipped"] == 0
    llava = tmp_path / "bom.json"
    llava.write_bytes(BOM + json.dumps([llava_record(name)]).encode())
    args = ["import", llava, "--images", images, "--out", tmp_path / "l", "--json"]
    assert vlit(*args).ok()["records_invalid"] == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(BOM + b"run_dir: nowhere\ncollect: {sources: []}\nbogus_key: 1\n")
    # parsed (the BOM is not part of the first key): the error is about the unknown key
    vlit("run", recipe).refused("bogus_key")
    csv = tmp_path / "results.csv"
    csv.write_bytes(BOM + b"dataset,model,dimension,accuracy\nd1,m,overall,50\n")
    indicators = tmp_path / "ind.json"
    indicators.write_bytes(BOM + json.dumps({"dataset": "d1", "indicators": {"md": 1}}).encode())
    line = vlit("correlate", "--indicators", indicators, "--results", csv).refused()
    assert "header" not in line  # read as CSV; refused only for having too few datasets


def test_a_csv_field_over_the_limit_is_one_line(vlit, tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    big = "x" * 2_000_000
    csv.write_text(f"dataset,model,dimension,accuracy\n{big},m,overall,50\n", "utf-8")
    indicators = tmp_path / "ind.json"
    indicators.write_text(json.dumps({"dataset": "d1", "indicators": {"md": 1}}), "utf-8")
    line = vlit("correlate", "--indicators", indicators, "--results", csv).refused(
        "results.csv", "VLIT_MAX_FIELD_BYTES"
    )
    assert len(line) < 1000


# -- paths come only from the user ------------------------------------------------------------
def outputs_hold_secret(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return [p for p in files if SECRET in p.read_bytes()]


def test_no_file_outside_the_image_root_reaches_an_output(
    vlit, world: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    shutil.copytree(world / "images", images)
    references = leaking_references(world / "secret.txt", images)
    llava = tmp_path / "leak.json"
    good = sorted(p.name for p in images.glob("*.jpg"))[0]
    records = [llava_record(good, record_id="good")]
    records += [llava_record(ref, record_id=f"leak{i}") for i, ref in enumerate(references)]
    llava.write_text(json.dumps(records), "utf-8")
    summary = vlit("import", llava, "--images", images, "--out", tmp_path / "r1", "--json").ok()
    assert summary["path_escapes"] == len(references)
    for number, (name, suffix) in enumerate(
        [("parquet", "parquet"), ("llava", "json"), ("mimicit", "json"), ("jsonl", "jsonl")]
    ):
        out = tmp_path / f"out{number}" / f"data.{suffix}"
        args = ["export", tmp_path / "r1", "--format", name, "--out", out, "--include-failed"]
        args.append("--allow-missing")  # the refused images are missing from the export
        vlit(*args, "--json").ok()
    assert outputs_hold_secret(tmp_path) == []


def test_a_record_never_chooses_its_own_image_root(vlit, world: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_bytes(leaking_samples_jsonl(world / "secret.txt"))
    summary = vlit("import", jsonl, "--format", "jsonl", "--out", tmp_path / "r", "--json").ok()
    assert summary["images_present"] == 0  # looked up under the file's folder: not there
    samples = list(JsonlReader().read(jsonl, ImportContext(images=None, workdir=tmp_path)))
    assert {s.image_root for s in samples} == {str(tmp_path.resolve())}
    parquet = tmp_path / "samples.parquet"
    ParquetWriter().write(samples, parquet)  # a root column that says "/etc" etc.
    table = pq.read_table(parquet)
    assert set(table.column("image_root").to_pylist()) == {str(tmp_path.resolve())}
    out = tmp_path / "again"
    vlit("import", parquet, "--format", "parquet", "--out", out, "--json").ok()
    export = tmp_path / "export.parquet"
    args = ["export", out, "--format", "parquet", "--out", export, "--include-failed"]
    vlit(*args, "--allow-missing", "--json").ok()
    assert outputs_hold_secret(tmp_path) == []


def test_an_image_over_the_pixel_limit_is_one_unreadable_image(
    vlit, world: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    shutil.copytree(world / "images", images)
    (images / "bomb.png").write_bytes(bomb_png())
    good = sorted(p.name for p in images.glob("*.jpg"))[0]
    lines = [{"image_id": "bomb", "file_name": "bomb.png"}, {"image_id": "ok", "file_name": good}]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n", "utf-8")
    args = ["collect", "jsonl", jsonl, "--images", images, "--out", tmp_path / "c", "--json"]
    summary = vlit(*args).ok()
    assert summary["images"] == 2 and summary["images_unreadable"] == 1
    llava = tmp_path / "l.json"
    llava.write_text(json.dumps([llava_record("bomb.png"), llava_record(good, record_id="r2")]))
    args = ["import", llava, "--images", images, "--out", tmp_path / "i", "--verify-images"]
    summary = vlit(*args, "--json").ok()
    assert summary["images_unreadable"] == 1 and summary["images_verified"] == 1


# -- user text is text ------------------------------------------------------------------------
def test_markup_in_data_and_paths_prints_as_text(vlit, world: Path, tmp_path: Path) -> None:
    missing = tmp_path / "[" / "x]" / "missing [bold].json"
    vlit("import", missing, "--out", tmp_path / "r").refused("[/x]", "missing [bold].json")
    jsonl = tmp_path / "mine.jsonl"
    line = {
        "image_id": MARKUP,
        "file_name": "a.jpg",
        "objects": [{"category": "x", "bbox": "[/x]"}],
    }
    jsonl.write_text(json.dumps(line) + "\n", "utf-8")
    args = ["collect", "jsonl", jsonl, "--images", world / "images", "--out", tmp_path / "c"]
    vlit(*args).refused("line 1", "'bbox' should be")
    good = sorted(p.name for p in (world / "images").glob("*.jpg"))[0]
    llava = tmp_path / "m.json"
    llava.write_text(json.dumps([llava_record(good, record_id=MARKUP, text=MARKUP)]), "utf-8")
    out = vlit("import", llava, "--images", world / "images", "--out", tmp_path / "m")
    assert out.code == 0 and "Traceback" not in out.err
    assert MARKUP in vlit("cat", tmp_path / "m").out


# -- damaged run directories -------------------------------------------------------------------
WRITERS = [
    ["score", "{run}"],
    ["filter", "{run}"],
    ["report", "{run}", "--embedder", "none"],
    ["select", "{run}"],
]


@pytest.mark.parametrize("kind", RUN_JSON_DAMAGE)
def test_a_damaged_run_json_stops_writers_before_their_work(
    vlit, world: Path, tmp_path: Path, kind: str
) -> None:
    run = copy_run(world, tmp_path)
    damage_run_json(run, kind)
    before = sorted(p.name for p in (run / "scores").iterdir())
    for template in WRITERS:
        args = [arg.format(run=run) for arg in template]
        if args[0] == "select":
            args += ["--size", "1", "--embedder", "none"]
        vlit(*args).refused("run.json", "Fix:")
    assert sorted(p.name for p in (run / "scores").iterdir()) == before
    # readers do not need it
    vlit("export", run, "--format", "llava", "--out", tmp_path / "x.json", "--json").ok()
    assert vlit("cat", run).code == 0


@pytest.mark.parametrize("kind", ["truncated", "binary", "deep"])
def test_a_damaged_manifest_is_one_line(vlit, world: Path, tmp_path: Path, kind: str) -> None:
    run = copy_run(world, tmp_path)
    damage_manifest(run, "samples", kind)
    vlit("score", run).refused("_manifest.json", "Fix:")
    vlit("cat", run, "--stage", "samples").refused("_manifest.json")
    vlit("export", run, "--stage", "samples", "--format", "jsonl", "--out", tmp_path / "x.jsonl")


def test_a_shard_with_wrong_columns_names_the_shard(vlit, world: Path, tmp_path: Path) -> None:
    run = copy_run(world, tmp_path)
    write_wrong_columns(run, "samples")
    line = vlit("score", run).refused("sample_id", "Fix:")
    assert ".parquet" in line
    vlit("cat", run, "--stage", "samples").refused(".parquet")
    export = ["export", run, "--stage", "samples", "--format", "llava", "--out", tmp_path / "e"]
    vlit(*export).refused(".parquet")


def test_one_undecodable_row_is_one_failed_sample(vlit, world: Path, tmp_path: Path) -> None:
    run = copy_run(world, tmp_path)
    name = sorted(p.name for p in (world / "images").glob("*.jpg"))[0]
    write_bad_provenance_row(run, images=world / "images", image=name)
    summary = vlit("score", run, "--json").ok()
    assert summary["samples"] == 3
    rows = [json.loads(line) for line in vlit("cat", run, "--stage", "scores").out.splitlines()]
    failed = {row["sample_id"]: row["failure_reason"] for row in rows if row["failure_reason"]}
    assert list(failed) == ["s1"] and "provenance" in failed["s1"] and "extra" in failed["s1"]
    filtered = vlit("filter", run, "--json").ok()
    assert filtered["kept"] == 2 and filtered["dropped"] == 1


# -- outputs ------------------------------------------------------------------------------------
def test_outputs_that_cannot_be_written_are_one_line(vlit, world: Path, tmp_path: Path) -> None:
    run = copy_run(world, tmp_path)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    vlit("export", run, "--format", "llava", "--out", folder).refused(str(folder))
    vlit("report", run, "--html", folder).refused(str(folder))
    a_file = tmp_path / "a-file"
    a_file.write_text("x", "utf-8")
    images = world / "images"
    llava = world / "llava.json"
    vlit("import", llava, "--images", images, "--out", a_file).refused(str(a_file))
    vlit("score", a_file).refused(str(a_file))
    under_file = a_file / "out.json"
    vlit("export", run, "--format", "llava", "--out", under_file).refused(str(a_file))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "x.json"
        vlit("export", run, "--format", "llava", "--out", out).refused("permission denied")


def test_bench_without_its_image_folder_stops_before_the_model(vlit, tmp_path: Path) -> None:
    questions = tmp_path / "q.json"
    questions.write_text("[]", "utf-8")
    args = ["bench", questions, "--images", tmp_path / "none", "--model", "no/such-model"]
    vlit(*args).refused("none", "--images")


# -- the exit status a shell sees ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["deep", "not_utf8"])
def test_in_a_subprocess_the_exit_status_is_2_and_stderr_one_line(
    world: Path, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.json"
    path.write_bytes(CORRUPT_JSON[name])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlit",
            "import",
            str(path),
            "--format",
            "llava",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0]
