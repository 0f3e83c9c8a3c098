"""Exit codes tell the truth: Ctrl-C, a dead endpoint, partial failures, an unreadable import.

Ctrl-C is a real SIGINT sent to a `vlit` subprocess; the LLM endpoints are real HTTP servers on
127.0.0.1 (or a port where nothing listens).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_servers import Response, ScriptedServer
from recipe_parts import coco_tiny_collect
from vlit.cli import main
from vlit.collect import CocoCollector
from vlit.rundir import RunDir

_SRC = str(Path(__file__).resolve().parents[1] / "src")
_ANSWER = '[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]'


def _vlit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _subprocess(args: list[str], **options: Any) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": _SRC, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "vlit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        **options,
    )


@pytest.fixture
def run_with_records(tmp_path: Path, coco_tiny: Path) -> RunDir:
    records = (
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
        )
        .collect()
        .records
    )
    run = RunDir(tmp_path / "run")
    run.write_records(records[:4])
    return run


def _generate_args(run: RunDir, url: str, *extra: str) -> list[str]:
    return [
        "generate",
        str(run.root),
        "--modes",
        "conversation",
        "--llm-base-url",
        url,
        "--llm-model",
        "m",
        "--n",
        "1",
        "--concurrency",
        "1",
        *extra,
    ]


def test_ctrl_c_exits_130_with_one_line(
    run_with_records: RunDir, scripted_server: ScriptedServer
) -> None:
    scripted_server.default = Response.text(_ANSWER, delay_s=60)  # never answers in time
    process = _subprocess(_generate_args(run_with_records, scripted_server.url))
    deadline = time.monotonic() + 60
    while not scripted_server.requests and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    assert scripted_server.requests, "the command never sent its first request"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not run_with_records.has_stage("samples")  # nothing half-written is committed


def test_generate_against_a_dead_endpoint_fails(tmp_path: Path, coco_tiny: Path) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "collect": coco_tiny_collect(coco_tiny),
        "generate": {"modes": {"conversation": 1.0}, "n": 1, "max_requests": 3},
        "llm": {"kind": "openai", "base_url": url, "model": "m", "max_retries": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    process = _subprocess(["run", str(path), "--json"])
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    assert url in err and "every LLM request failed" in err
    assert "gave up after 1 attempts" in err  # the first error, as the client worded it
    summary = json.loads(out)["generate"]
    assert summary["samples_ok"] == 0 and summary["requests_failed"] > 0


def test_generate_all_requests_refused_exits_1(
    run_with_records: RunDir, scripted_server: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_server.default = Response.status(404, message="model m does not exist")
    code, out, err = _vlit(_generate_args(run_with_records, scripted_server.url, "--json"), capsys)
    assert code == 1
    summary = json.loads(out)
    assert summary["requests_failed"] == summary["requests"] == 4
    assert summary["all_requests_failed"] is True
    assert "every LLM request failed (4 of 4)" in err and scripted_server.url in err
    assert "does not exist" in err


def test_partial_failure_is_success_with_the_count_on_stderr(
    run_with_records: RunDir, scripted_server: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_server.queue(Response.status(404, message="scripted refusal"))
    scripted_server.default = Response.text(_ANSWER)
    code, out, err = _vlit(_generate_args(run_with_records, scripted_server.url, "--json"), capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["requests_failed"] == 1 and summary["all_requests_failed"] is False
    assert summary["samples_ok"] == 3
    assert "1 of 4 LLM requests failed" in err and "scripted refusal" in err


def test_import_of_a_file_in_no_known_format_exits_2(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations = shared_data / "formats" / "vqa_v2" / "v2_mscoco_val2014_annotations.first100.json"
    code, out, err = _vlit(["import", str(annotations), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and out == ""
    assert "none of its 100 records can be read as paper data" in err
    assert "vlit collect coco" in err
    assert not RunDir(tmp_path / "r").has_stage("samples")


def test_install_completion(tmp_path: Path) -> None:
    environment = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    # from a bash process, as a user types it (typer finds the shell among the ancestors; the
    # trailing `exit` keeps bash from replacing itself with vlit)
    done = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m vlit --install-completion; exit $?'],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": _SRC},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "vlit.sh" in (tmp_path / ".bashrc").read_text()
    completed = subprocess.run(
        [sys.executable, "-m", "vlit"],
        capture_output=True,
        text=True,
        env={
            **environment,
            "PYTHONPATH": _SRC,
            "_VLIT_COMPLETE": "complete_bash",
            "COMP_WORDS": "vlit expo",
            "COMP_CWORD": "1",
        },
        check=False,
    )
    assert completed.stdout.split() == ["export"]


def test_progress_shows_the_total_and_time_left_from_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from vlit.cli import common
    from vlit.schema import Sample, Turn

    run = RunDir(tmp_path / "run")
    samples = [
        Sample(sample_id=f"s{i}", turns=[Turn("user", "q"), Turn("assistant", "a")])
        for i in range(7)
    ]
    run.write_samples("samples", samples)
    assert common.stage_rows(run, "samples") == 7 and common.stage_rows(run, "scores") is None
    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, force_terminal=True, width=120))
    list(
        common.track(
            run.read_samples("samples"), "exporting", total=common.stage_rows(run, "samples")
        )
    )
    shown = screen.getvalue()
    assert "7/7" in shown and "-:--:--" not in shown.split("7/7")[-1]  # a total, then an ETA
