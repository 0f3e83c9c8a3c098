"""vlit against a real OpenAI-compatible server people run locally: ``transformers serve``.

The server (transformers, fastapi, uvicorn) serves the embedded SmolLM2-135M GGUF offline on
127.0.0.1, in its own process, once per test session. What it does, seen in its log: it
processes one request at a time (``1 running, 1 waiting``) and ignores ``n`` (``Ignoring
unsupported fields in the request: {'n'}``), so a request for n=2 gets one choice and vlit asks
for the second rollout in a request of its own. Answers are short (``--max-tokens 16``): on a
busy CPU the 135M model writes about 1-20 tokens/s, one request after the other.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vlit.collect import CocoCollector
from vlit.llm.local import EMBEDDED_GGUF_FILE, embedded_model_folder
from vlit.llm.openai_compatible import OpenAICompatibleBackend
from vlit.quality.judge import CorrectnessJudge
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn

pytestmark = pytest.mark.model

SERVER_START_S = 600.0  # importing torch and reading the GGUF on a loaded CI box


class TransformersServer:
    """``transformers serve`` on a free port of 127.0.0.1, its log in a file."""

    def __init__(self, log: Path) -> None:
        self.model = f"{embedded_model_folder()}:{EMBEDDED_GGUF_FILE}"
        self.log = log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # much faster than 2 on a shared 2-core machine
        }
        executable = Path(sys.executable).with_name("transformers")
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [str(executable), "serve", self.model, "--host", "127.0.0.1"]
                + ["--port", str(self.port), "--device", "cpu", "--enable-log-requests"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"transformers serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise AssertionError(f"transformers serve not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def transformers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServer]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    server = TransformersServer(tmp_path_factory.mktemp("transformers-serve") / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def vlit(*argv: str) -> dict[str, object]:
    """Run the real CLI in a process of its own; its --json summary."""
    done = subprocess.run(
        [sys.executable, "-m", "vlit", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_generate_and_judge_at_concurrency_2_with_n_2(
    transformers_server: TransformersServer, tmp_path: Path, coco_tiny: Path
) -> None:
    records = (
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
            instances=coco_tiny / "annotations" / "instances_train2017.json",
        )
        .collect()
        .records
    )[:2]
    run = RunDir(tmp_path / "run")
    run.write_records(records)
    argv = ["generate", str(run.root), "--modes", "conversation", "--n", "2"]
    argv += ["--concurrency", "2", "--max-tokens", "16", "--llm-base-url", transformers_server.url]
    argv += ["--llm-model", transformers_server.model]

    first = vlit(*argv)
    samples = list(run.read_samples("samples"))
    assert len(samples) == 2 * 2 == first["samples"]
    for sample in samples:  # generated, or failed with a reason (16 tokens rarely parse)
        assert sample.ok or (sample.failure_reason and sample.provenance.get("raw_text"))
    # The server ignores n: each prompt took two HTTP requests, one generation each.
    assert first["requests_sent"] == 4 and first["generations_received"] == 4
    assert int(first["tokens_out"]) > 0  # type: ignore[call-overload]
    again = vlit(*argv)
    assert again["requests_sent"] == 0 and again["from_journal"] == 2
    assert [s.to_row() for s in run.read_samples("samples")] == [s.to_row() for s in samples]

    # The judge, through the same journal: 2 samples x 2 votes at concurrency 2.
    backend = OpenAICompatibleBackend(
        base_url=transformers_server.url, model=transformers_server.model, max_connections=2
    )
    judged = [
        Sample(
            sample_id=f"judged-{record.image_id}",
            image_id=record.image_id,
            turns=[Turn("user", "What is in the picture?"), Turn("assistant", record.captions[0])],
        )
        for record in records
    ]
    judge = CorrectnessJudge(
        backend=backend,
        journal_path=run.journal_path,
        records={record.image_id: record for record in records},
        votes=2,
        max_tokens=8,
        concurrency=2,
    )
    judge(judged)
    assert judge.session is not None
    usage = judge.session.usage()
    assert usage.requests_sent == 4 and usage.generations_received == 4 and usage.failures == 0
    for sample in judged:  # judged, or not with a reason (8 tokens may hold no verdict)
        correctness = sample.provenance["quality"]["correctness"]
        assert "judge_valid_votes" in sample.scores or correctness["status"] == (
            "not_judged: unparseable"
        )
        assert len(correctness["votes"]) == 2
    rejudge = CorrectnessJudge(
        backend=backend,
        journal_path=run.journal_path,
        records={record.image_id: record for record in records},
        votes=2,
        max_tokens=8,
        concurrency=2,
    )
    rejudge([Sample(s.sample_id, turns=s.turns, image_id=s.image_id) for s in judged])
    assert rejudge.session is not None and rejudge.session.usage().requests_sent == 0

    # The server says what it ignores (a set, printed in any order): n, and the schema that
    # generate and the judge send under --structured auto (it answers 200, so nothing refuses).
    ignored: set[str] = set()
    for line in transformers_server.log.read_text().splitlines():
        if "Ignoring unsupported fields in the request:" in line:
            ignored |= ast.literal_eval(line.split("request:", 1)[1].strip())
    assert {"n", "response_format"} <= ignored
