"""A run directory and the recipe's input files on object storage (issue: scale-out).

The bucket is served by moto's S3 server on 127.0.0.1 (a real HTTP server speaking the S3 API,
fixture ``s3`` in conftest.py) and read through s3fs. A recipe whose run directory, annotation
files and images are all on S3 must give what the same recipe gives on local disk, leave every
file of the run in the bucket, and resume from the bucket on a machine that has none of it.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llm_servers import Response, ScriptedServer
from random_models import save_random_clip
from recipe_parts import coco_tiny_collect
from vlit.cli import app
from vlit.errors import ConfigError, InputFileError, VlitError
from vlit.recipe import Recipe, load_recipe, parse_recipe
from vlit.rundir import RunDir
from vlit.stages import collect as collect_stage
from vlit.stages import score as score_module
from vlit.stages.run_all import run_recipe
from vlit.storage import STAGING_ENV, StagedRunDir, fetch_input

BUCKET = "vlit-runs"
RUN_URL = f"s3://{BUCKET}/runs/r1"


def _summaries(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Each stage's summary, as JSON."""
    return {name: summary.to_json() for name, summary in run_recipe(recipe).items()}


@pytest.fixture(scope="module")
def coco_on_s3(s3: Any, coco_tiny: Path) -> dict[str, Any]:
    """coco_tiny's annotation files and its 50 photos under ``s3://vlit-runs/coco``; the
    recipe's ``collect`` section that names them by URL."""
    s3.mkdir(BUCKET)
    s3.put(str(coco_tiny / "annotations"), f"{BUCKET}/coco/annotations", recursive=True)
    s3.put(str(coco_tiny / "train2017"), f"{BUCKET}/coco/train2017", recursive=True)
    return {
        "sources": [
            {
                "kind": "coco",
                "images_dir": f"s3://{BUCKET}/coco/train2017",
                "captions": f"s3://{BUCKET}/coco/annotations/captions_train2017.json",
                "instances": f"s3://{BUCKET}/coco/annotations/instances_train2017.json",
            }
        ]
    }


def _recipe(run_dir: str, collect: dict[str, Any], url: str, clip: Path | None = None) -> Recipe:
    return parse_recipe(
        {
            "run_dir": run_dir,
            "collect": collect,
            "generate": {
                "modes": {"conversation": 0.2, "region": 0.2},
                "n": 2,
            },
            "llm": {"kind": "openai", "base_url": url, "model": "scripted"},
            "score": {"lint": True, "grounding": True, "clip_model": clip and str(clip)},
            "filter": {"max_hallucination": 0.0},
            "report": {"embedder": "none"},
        }
    )


def _answer_with_a_conversation(server: ScriptedServer) -> None:
    conversation = (
        '[{"role": "user", "content": "What is in the picture?"},'
        ' {"role": "assistant", "content": "There is a person in the picture."}]'
    )
    server.add_rule(lambda body: Response.text(*[conversation] * int(body.get("n") or 1)))


def _outcome(run: RunDir) -> dict[str, list[tuple[Any, ...]]]:
    """What a run decided, sample by sample (paths of staged copies left out)."""
    return {
        stage: sorted(
            (s.sample_id, [t.text for t in s.turns], s.scores, s.failure_reason, s.drop_reason)
            for s in run.read_samples(stage)
        )
        for stage in ("scores", "kept", "dropped")
    }


def _bucket_files(s3: Any, url: str) -> set[str]:
    root = url.removeprefix("s3://")
    s3.invalidate_cache(root)
    return {name.removeprefix(root + "/") for name in s3.find(root)}


@pytest.mark.model
def test_a_run_on_s3_gives_the_local_result_and_resumes_on_a_fresh_machine(
    s3: Any,
    coco_on_s3: dict[str, Any],
    coco_tiny: Path,
    tmp_path: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _answer_with_a_conversation(scripted_server)
    clip = save_random_clip(tmp_path / "clip", shape="tiny", seed=3)
    local = _summaries(
        _recipe(str(tmp_path / "local"), coco_tiny_collect(coco_tiny), scripted_server.url, clip)
    )
    sent_locally = len(scripted_server.requests)

    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "machine-1"))
    remote = _summaries(_recipe(RUN_URL, coco_on_s3, scripted_server.url, clip))
    assert len(scripted_server.requests) == 2 * sent_locally  # the same requests once more
    assert remote["generate"] == local["generate"]
    assert remote["filter"] == local["filter"]
    assert remote["collect"]["images"] == local["collect"]["images"] == 50
    remote_counts, local_counts = (
        {
            k: v
            for k, v in summary["collect"]["sources"][0].items()
            if k not in ("images_dir", "sources")
        }
        for summary in (remote, local)
    )
    assert remote_counts == local_counts  # every image found and read through s3fs
    given = coco_on_s3["sources"][0]
    assert remote["collect"]["sources"][0]["sources"] == {
        "captions": given["captions"],
        "instances": given["instances"],
    }
    assert remote["collect"]["sources"][0]["images_dir"] == given["images_dir"]
    assert remote_counts["images_missing_file"] == remote_counts["images_unreadable"] == 0
    assert remote["report"]["indicators_file"] == f"{RUN_URL}/indicators.json"

    stored = _bucket_files(s3, RUN_URL)
    for name in (
        "run.json",
        "recipe.resolved.yaml",
        "journal.sqlite",
        "indicators.json",
        "report.html",
    ):
        assert name in stored, name
    stages = ("records", "samples", "scores", "kept", "dropped")
    assert {f"{stage}/_manifest.json" for stage in stages} <= stored
    regions = [s for s in RunDir(tmp_path / "local").read_samples("scores") if s.mode == "region"]
    assert len(regions) == 22
    assert {s.image_root for s in regions} == {str(tmp_path / "local" / "images")}

    fresh = StagedRunDir(RUN_URL, staging=tmp_path / "reader")
    assert fresh.pull() == len(stored)
    for stage in stages:  # every shard a manifest lists is in the bucket, and no other shard
        manifest = fresh.manifest(stage)
        assert manifest is not None
        listed = {f"{stage}/{shard['file']}" for shard in manifest.shards}
        assert listed == {name for name in stored if name.startswith(f"{stage}/shard-")}
    assert _outcome(fresh) == _outcome(RunDir(tmp_path / "local"))
    assert all(isinstance(s.scores["md"], float) for s in fresh.read_samples("scores"))
    for sample in fresh.read_samples("scores"):  # what another host reads: the bucket's copy
        if sample.mode == "region":
            assert sample.image_root == f"{RUN_URL}/images"
            assert sample.image_location in {f"s3://{BUCKET}/runs/r1/{name}" for name in stored}
    kept = [s.sample_id for s in fresh.read_samples("kept")]
    dropped = [s.sample_id for s in fresh.read_samples("dropped")]
    assert (len(kept), len(dropped)) == (24, 16)  # "a person" is a hallucination where none is
    resolved = yaml.safe_load((fresh.root / "recipe.resolved.yaml").read_text("utf-8"))
    assert resolved["run_dir"] == RUN_URL
    source = resolved["collect"]["sources"][0]
    assert {key: source[key] for key in coco_on_s3["sources"][0]} == coco_on_s3["sources"][0]

    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "machine-2"))  # nothing staged there
    again = _summaries(_recipe(RUN_URL, coco_on_s3, scripted_server.url, clip))
    assert len(scripted_server.requests) == 2 * sent_locally  # all answers from the journal
    assert again["generate"]["requests_sent"] == 0
    assert again["generate"]["from_journal"] == local["generate"]["requests"]
    reread = StagedRunDir(RUN_URL, staging=tmp_path / "reader-2")
    reread.pull()
    assert _outcome(reread) == _outcome(RunDir(tmp_path / "local"))


def test_a_failing_stage_still_pushes_the_work_done(
    s3: Any,
    coco_on_s3: dict[str, Any],
    tmp_path: Path,
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_score(*_: Any, **__: Any) -> None:
        raise VlitError("the scorer broke", fix="nothing: a test")

    url = f"s3://{BUCKET}/runs/failing"
    _answer_with_a_conversation(scripted_server)
    monkeypatch.setattr(score_module, "run", broken_score)
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "machine-1"))
    with pytest.raises(VlitError, match="the scorer broke"):
        run_recipe(_recipe(url, coco_on_s3, scripted_server.url))
    sent = len(scripted_server.requests)
    assert sent == 20
    stored = _bucket_files(s3, url)
    assert {"journal.sqlite", "samples/_manifest.json", "run.json"} <= stored
    assert not any(name.startswith("scores/") for name in stored)

    monkeypatch.undo()
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "machine-2"))
    again = _summaries(_recipe(url, coco_on_s3, scripted_server.url))
    assert len(scripted_server.requests) == sent  # the pushed journal answered every request
    assert again["generate"]["from_journal"] == 20
    assert "scores/_manifest.json" in _bucket_files(s3, url)


def test_push_uploads_only_what_changed_and_deletes_what_was_deleted(
    s3: Any, coco_on_s3: dict[str, Any], tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/runs/sync"
    run = StagedRunDir(url, staging=tmp_path / "a")
    assert run.pull() == 0 and run.push() == 0  # nothing there, nothing here
    (run.root / "notes").mkdir(parents=True)
    (run.root / "notes" / "one.txt").write_text("one", "utf-8")
    (run.root / "two.txt").write_text("two", "utf-8")
    assert run.push() == 2
    assert run.push() == 0
    (run.root / "two.txt").write_text("two, longer", "utf-8")
    (run.root / "notes" / "one.txt").unlink()
    assert run.push() == 1
    assert _bucket_files(s3, url) == {"two.txt"}
    assert s3.cat(f"{BUCKET}/runs/sync/two.txt") == b"two, longer"

    (run.root / "two.txt").write_text("unpushed", "utf-8")  # a crashed run's last work
    assert run.pull() == 0 and (run.root / "two.txt").read_text("utf-8") == "unpushed"

    other = StagedRunDir(url, staging=tmp_path / "b")  # another machine
    assert other.pull() == 1 and other.pull() == 0
    (other.root / "two.txt").write_text("two, from b", "utf-8")
    assert other.push() == 1
    assert run.pull() == 1  # the remote changed since run's last sync: it wins
    assert (run.root / "two.txt").read_text("utf-8") == "two, from b"
    (other.root / "two.txt").unlink()
    assert other.push() == 0
    assert run.pull() == 0 and not (run.root / "two.txt").exists()  # deleted remotely


def test_a_missing_input_object_names_the_url_and_the_fix(
    s3: Any, coco_on_s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    missing = f"s3://{BUCKET}/coco/annotations/captions_val2017.json"
    source = dict(coco_on_s3["sources"][0], captions=missing)
    recipe = parse_recipe({"run_dir": str(tmp_path / "run"), "collect": {"sources": [source]}})
    with pytest.raises(InputFileError) as error:
        run_recipe(recipe)
    assert str(error.value) == (
        f"{missing}: input file not found on object storage. Fix: check the URL (bucket, "
        "folder, file name) and that your credentials can read it."
    )
    with pytest.raises(InputFileError) as error:
        fetch_input(f"s3://{BUCKET}/coco/annotations")
    assert "is a folder" in str(error.value)

    no_bucket = parse_recipe({"run_dir": "s3://no-such-bucket/r1", "collect": coco_on_s3})
    with pytest.raises(InputFileError) as error:
        run_recipe(no_bucket)
    assert str(error.value).startswith(
        "s3://no-such-bucket/r1/recipe.resolved.yaml: cannot push the run directory"
    )
    assert not (tmp_path / "staging" / "inputs").exists()  # failed before collecting

    missing_images = dict(coco_on_s3["sources"][0], images_dir=f"s3://{BUCKET}/coco/val2017")
    recipe = parse_recipe(
        {"run_dir": str(tmp_path / "run"), "collect": {"sources": [missing_images]}}
    )
    with pytest.raises(InputFileError) as error:
        run_recipe(recipe)
    assert str(error.value).startswith(f"s3://{BUCKET}/coco/val2017: the image folder does not")


def test_a_url_without_its_fsspec_backend_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = importlib.import_module("fsspec.registry")  # the module, not fsspec.registry
    monkeypatch.delitem(registry._registry, "gs", raising=False)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed, installed or not
    recipe = parse_recipe({"run_dir": "gs://bucket/runs/r1"})
    with pytest.raises(ConfigError) as error:
        run_recipe(recipe)
    assert str(error.value).startswith("gs://bucket/runs/r1: cannot open gs:// URLs")
    assert str(error.value).endswith("Fix: pip install vlit[gcs].")


def test_recipe_paths_are_resolved_but_urls_kept(tmp_path: Path) -> None:
    recipe_file = tmp_path / "recipe.yaml"
    source = {"kind": "jsonl", "jsonl_file": "s3://b/mine.jsonl", "images_dir": "photos"}
    recipe_file.write_text(
        yaml.safe_dump({"run_dir": "gs://b/runs/r1", "collect": {"sources": [source]}}), "utf-8"
    )
    recipe = load_recipe(recipe_file)
    assert recipe.run_dir == "gs://b/runs/r1"
    assert recipe.collect is not None
    resolved = recipe.collect.sources[0]
    assert resolved.model_dump() == {
        "kind": "jsonl",
        "jsonl_file": "s3://b/mine.jsonl",
        "images_dir": str(tmp_path / "photos"),
        "check_images": True,
    }


def _cli(*arguments: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def test_each_command_takes_a_run_on_s3_from_any_machine(
    s3: Any, coco_on_s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{BUCKET}/runs/cli"
    recipe = tmp_path / "recipe.yaml"
    data = {"run_dir": url, "collect": coco_on_s3, "generate": {"modes": ["adaptation"]}}
    recipe.write_text(yaml.safe_dump(data), "utf-8")
    steps = [
        ("run", str(recipe)),
        ("generate", url, "--modes", "adaptation"),
        ("score", url, "--no-grounding"),
        ("filter", url),
        ("export", url, "--format", "llava", "--out", str(tmp_path / "llava.json")),
        ("report", url, "--embedder", "none"),
    ]
    summaries = {}
    for machine, (command, *arguments) in enumerate(steps):
        monkeypatch.setenv(STAGING_ENV, str(tmp_path / f"machine-{machine}"))  # nothing staged
        summaries[command] = _cli(command, *arguments)

    samples = summaries["run"]["generate"]["samples"]
    assert summaries["generate"]["samples"] == samples
    assert summaries["score"]["samples"] == samples
    assert summaries["filter"]["kept"] == samples
    assert summaries["export"]["run"] == url
    assert len(json.loads((tmp_path / "llava.json").read_text("utf-8"))) == samples
    assert summaries["report"]["datasets"] == ["cli"]

    final = StagedRunDir(url, staging=tmp_path / "reader")
    final.pull()
    every_step = {"collect", "generate", "score", "filter", "export"}
    assert set(final.load_meta()["summaries"]) == every_step  # each pulled the one before
    indicators = json.loads((final.root / "indicators.json").read_text("utf-8"))
    assert (indicators["stage"], indicators["samples"]) == ("kept", samples)
    assert {key: {"cli": value} for key, value in indicators["table"].items()} == (
        summaries["report"]["table"]
    )
    assert len(list(final.read_samples("kept"))) == samples


def test_a_jsonl_source_on_s3_counts_a_missing_image_like_a_local_one(
    s3: Any,
    coco_on_s3: dict[str, Any],
    coco_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    photos = sorted(p.name for p in (coco_tiny / "train2017").glob("*.jpg"))[:2]
    lines = [
        {"image_id": f"i{index}", "file_name": name, "captions": [f"Photo {index}."]}
        for index, name in enumerate([*photos, "missing.jpg"])
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    s3.pipe(f"{BUCKET}/mine/images.jsonl", text.encode("utf-8"))
    (tmp_path / "images.jsonl").write_text(text, "utf-8")
    summaries = {}
    for where, jsonl_file, images_dir in (
        ("remote", f"s3://{BUCKET}/mine/images.jsonl", f"s3://{BUCKET}/coco/train2017/"),
        ("local", str(tmp_path / "images.jsonl"), str(coco_tiny / "train2017")),
    ):
        source = {"kind": "jsonl", "jsonl_file": jsonl_file, "images_dir": images_dir}
        section = parse_recipe({"run_dir": "r", "collect": {"sources": [source]}}).collect
        assert section is not None
        run = RunDir(tmp_path / where)
        summaries[where] = collect_stage.run(run, section).sources[0]
        records = {r.image_id: r for r in run.read_records()}
        assert (records["i0"].width, records["i0"].height) == (640, 479)  # from the header
        assert records["i2"].problems == [
            f"missing_file: no image file at {images_dir.rstrip('/')}/missing.jpg"
        ]
    remote, local = summaries["remote"], summaries["local"]
    assert remote["sources"] == {"jsonl": f"s3://{BUCKET}/mine/images.jsonl"}
    assert remote["images_dir"] == f"s3://{BUCKET}/coco/train2017"
    assert {k: v for k, v in remote.items() if k not in ("sources", "images_dir")} == {
        k: v for k, v in local.items() if k not in ("sources", "images_dir")
    }
    assert (remote["images"], remote["images_missing_file"]) == (3, 1)


def test_collect_coco_reads_and_writes_urls_like_local_paths(
    s3: Any,
    coco_on_s3: dict[str, Any],
    coco_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    source = coco_on_s3["sources"][0]
    url = f"s3://{BUCKET}/runs/collected"
    remote = _cli(
        "collect", "coco", "--images", source["images_dir"], "--captions", source["captions"],
        "--instances", source["instances"], "--out", url,
    )  # fmt: skip
    local = _cli(
        "collect", "coco", "--images", str(coco_tiny / "train2017"),
        "--captions", str(coco_tiny / "annotations" / "captions_train2017.json"),
        "--instances", str(coco_tiny / "annotations" / "instances_train2017.json"),
        "--out", str(tmp_path / "local"),
    )  # fmt: skip
    assert remote["run_dir"] == url
    assert remote["sources"] == {"captions": source["captions"], "instances": source["instances"]}
    assert remote["images"] == local["images"] == 50
    reader = StagedRunDir(url, staging=tmp_path / "reader")
    reader.pull()
    on_s3 = [(r.image_id, r.captions, len(r.objects)) for r in reader.read_records()]
    on_disk = [
        (r.image_id, r.captions, len(r.objects)) for r in RunDir(tmp_path / "local").read_records()
    ]
    assert on_s3 == on_disk
