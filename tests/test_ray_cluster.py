"""`vlit run --runner ray --address HOST:PORT` on a Ray cluster started apart from the run.

A head node is started with `ray start --head` (token authentication off, as a test cluster
needs no secrets); `vlit run` connects to it as a driver from its own process, scores and
filters there, and must give the same kept/dropped samples and scores as a local run of the same
recipe. An address where nothing listens fails at once with the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from random_models import save_random_clip
from recipe_parts import coco_tiny_collect
from vlit.rundir import RunDir

VLIT = Path(sys.executable).parent / "vlit"
NO_AUTH = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    # its own temp dir (short: Ray's socket paths must fit 107 bytes), so the head's
    # "current cluster" file does not outlive it in /tmp/ray for later tests to find
    temp_dir = tempfile.mkdtemp(prefix="vray", dir="/tmp")
    with log.open("w") as output:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
                "--block",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=NO_AUTH,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text() and time.monotonic() < deadline:
            assert head.poll() is None, log.read_text()
            time.sleep(0.5)
        assert "Ray runtime started" in log.read_text(), log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _recipe(folder: Path, coco_tiny: Path, clip: Path, runner: dict[str, Any]) -> Path:
    recipe = {
        "run_dir": "run",
        "collect": coco_tiny_collect(coco_tiny),
        "generate": {"modes": {"adaptation": 1.0}},
        "score": {"clip_model": str(clip)},
        "filter": {"max_hallucination": 0.0, "min_md_quantile": 0.1},
        "runner": runner,
    }
    folder.mkdir(parents=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _vlit_run(recipe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VLIT), "run", str(recipe), "--json", *extra],
        capture_output=True,
        text=True,
        env=NO_AUTH,
        timeout=300,
    )


@pytest.mark.model
def test_vlit_run_on_a_cluster_at_an_address(
    ray_head: str, coco_tiny: Path, tmp_path: Path
) -> None:
    clip = save_random_clip(tmp_path / "clip", shape="tiny", seed=5)
    outputs = {}
    for name, runner in {
        "local": {"kind": "local"},
        "cluster": {"kind": "ray", "address": ray_head},
    }.items():
        recipe = _recipe(tmp_path / name, coco_tiny, clip, runner)
        finished = _vlit_run(recipe)
        assert finished.returncode == 0, finished.stderr[-3000:]
        summary = json.loads(finished.stdout.strip().splitlines()[-1])
        run = RunDir(tmp_path / name / "run")
        outputs[name] = {
            "summary": summary,
            "rows": {
                stage: [sample.to_row() for sample in run.read_samples(stage)]
                for stage in ("scores", "kept", "dropped")
            },
        }
    cluster, local = outputs["cluster"], outputs["local"]
    assert cluster["summary"]["score"]["runner"] == {"kind": "ray", "address": ray_head}
    # MD batches differ between the runners (blocks), so its float rounding may differ in the
    # 6th digit; every other field is equal
    for on_cluster, here in zip(cluster["rows"]["scores"], local["rows"]["scores"], strict=True):
        scores_cluster, scores_here = dict(on_cluster.pop("scores")), dict(here.pop("scores"))
        assert scores_cluster.pop("md") == pytest.approx(scores_here.pop("md"), abs=1e-3)
        assert scores_cluster == scores_here and on_cluster == here
    for stage in ("kept", "dropped"):
        ids = [[row["sample_id"] for row in output["rows"][stage]] for output in (cluster, local)]
        assert ids[0] == ids[1] and ids[0], stage


def test_an_address_where_nothing_listens_fails_at_once(coco_tiny: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path / "nowhere", coco_tiny, tmp_path / "no-clip", {"kind": "local"})
    started = time.monotonic()
    finished = _vlit_run(recipe, "--runner", "ray", "--address", f"127.0.0.1:{_free_port()}")
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "no Ray cluster answers at 127.0.0.1:" in finished.stderr
    assert "ray start --head" in finished.stderr
    assert time.monotonic() - started < 120  # Ray alone retries for minutes
