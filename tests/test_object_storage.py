"""Images on object storage: import and MD scoring from an S3 bucket (issue: scale-out).

The bucket is served by moto's S3 server on 127.0.0.1 (a real HTTP server speaking the S3 API)
and read through s3fs, as a Ray worker on another host would read it. The same LLaVA file is
imported once with the local image folder and once with the bucket; the matching degree must
be the same number either way, on the local runner and on Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from random_models import save_random_clip
from vlit.cli import app
from vlit.rundir import RunDir
from vlit.runners.base import RunnerSettings, build_runner
from vlit.stages import score as score_stage
from vlit.stages.score import ScoreSettings

BUCKET = "vlit-images"


@pytest.fixture(scope="module")
def bucket(s3: Any, coco_tiny: Path) -> str:
    """``s3://vlit-images/train2017`` holding 8 coco_tiny photos, an empty and a corrupt one."""
    s3.mkdir(BUCKET)
    for photo in sorted((coco_tiny / "train2017").glob("*.jpg"))[:8]:
        s3.put_file(str(photo), f"{BUCKET}/train2017/{photo.name}")
    s3.pipe(f"{BUCKET}/train2017/empty.jpg", b"")
    s3.pipe(f"{BUCKET}/train2017/corrupt.jpg", b"\xff\xd8\xff\xe0 not a jpeg")
    return f"s3://{BUCKET}/train2017"


def _llava_file(folder: Path, photos: list[str]) -> Path:
    references = [*photos, "missing.jpg", "empty.jpg", "corrupt.jpg", "../outside.jpg"]
    records = [
        {
            "id": f"s{index}",
            "image": reference,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": f"Answer {index}: a street with a bus and people."},
            ],
        }
        for index, reference in enumerate(references)
    ]
    path = folder / "llava.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _import(dataset: Path, images: str, out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["import", str(dataset), "--out", str(out), "--images", images, "--json"]
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _md(run: Path, checkpoint: Path, runner: str) -> dict[str, Any]:
    settings = ScoreSettings(
        clip_model=str(checkpoint), grounding=False, lint=False, decode_workers=1
    )
    chosen = build_runner(RunnerSettings(kind=runner))  # type: ignore[arg-type]
    score_stage.run(RunDir(run), settings, chosen)
    return {
        sample.sample_id: sample.scores.get("md", sample.provenance["quality"]["md"]["status"])
        for sample in RunDir(run).read_samples("scores")
    }


@pytest.mark.model
def test_images_in_a_bucket_import_and_score_like_local_files(
    bucket: str, coco_tiny: Path, tmp_path: Path
) -> None:
    photos = sorted(p.name for p in (coco_tiny / "train2017").glob("*.jpg"))[:8]
    dataset = _llava_file(tmp_path, photos)
    remote = _import(dataset, bucket, tmp_path / "remote")
    local = _import(dataset, str(coco_tiny / "train2017"), tmp_path / "local")
    assert remote["samples"] == local["samples"] == 12
    assert (remote["images_present"], remote["images_missing"]) == (9, 1)  # corrupt is present
    assert (remote["images_unreadable"], remote["path_escapes"]) == (1, 1)  # empty; "../"
    imported = {s.sample_id: s for s in RunDir(tmp_path / "remote").read_samples("samples")}
    assert imported["s0"].image_location == f"{bucket}/{photos[0]}"

    # export embeds the objects' bytes, as it embeds local files
    exported = tmp_path / "with_images.parquet"
    result = CliRunner().invoke(
        app,
        ["export", str(tmp_path / "remote"), "--format", "parquet", "--out", str(exported)],
    )
    assert "missing.jpg" in str(result.exception) and not exported.exists()  # found by listing
    result = CliRunner().invoke(
        app,
        ["export", str(tmp_path / "remote"), "--format", "parquet", "--out", str(exported)]
        + ["--allow-missing"],
    )
    assert result.exit_code == 0, result.output
    rows = {row["sample_id"]: row for row in pq.read_table(exported).to_pylist()}
    assert rows["s0"]["image"]["bytes"] == (coco_tiny / "train2017" / photos[0]).read_bytes()
    assert rows["s8"]["image"] is None  # its object is missing: written without it

    checkpoint = save_random_clip(tmp_path / "clip", shape="tiny", seed=3)
    from_bucket = _md(tmp_path / "remote", checkpoint, "local")
    from_disk = _md(tmp_path / "local", checkpoint, "local")
    for index in range(8):  # the same pixels, so the same score
        assert isinstance(from_bucket[f"s{index}"], float)
        assert from_bucket[f"s{index}"] == pytest.approx(from_disk[f"s{index}"], abs=1e-4)
    for missing_or_corrupt in ("s8", "s10"):  # named in the reason, the run went on
        assert str(from_bucket[missing_or_corrupt]).startswith("not_computed: image_unreadable")
    assert "missing.jpg" in str(from_bucket["s8"])

    from vlit.runners.ray_runner import init_ray

    init_ray(num_cpus=2)  # workers inherit the endpoint and credentials from this process
    try:
        on_ray = _md(tmp_path / "remote", checkpoint, "ray")
    finally:
        ray.shutdown()
    for key, value in from_bucket.items():
        if isinstance(value, float):
            assert on_ray[key] == pytest.approx(value, abs=1e-4)
        else:
            assert on_ray[key] == value
