"""The run directory as a store: a stage is committed or absent, stale stages are refused, one
writer at a time. Kills are real SIGKILLs of real processes; the second writer is a real process.
"""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import pytest

from vlit.cli import main
from vlit.errors import InputFileError
from vlit.rundir import MANIFEST_NAME, RunDir, StaleStageError
from vlit.runlock import LOCK_NAME, RunLock, RunLockedError
from vlit.schema import Sample, Turn

REPO = Path(__file__).resolve().parents[1]


def _samples(count: int, *, tag: str = "a") -> list[Sample]:
    return [
        Sample(
            sample_id=f"{tag}-{index}",
            turns=[
                Turn("user", f"What is in picture {index} ({tag})?"),
                Turn("assistant", f"A dog and {index % 7} cats sit on a {tag} sofa near a lamp."),
            ],
            image_id=str(index),
            mode="conversation",
        )
        for index in range(count)
    ]


def _ids(run: RunDir, stage: str) -> list[str]:
    return [sample.sample_id for sample in run.read_samples(stage)]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `vlit` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- committed or absent -------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from vlit.rundir import RunDir
    from vlit.schema import Sample, Turn

    run, kill_after = RunDir(sys.argv[1]), int(sys.argv[2])

    def rows():
        for index in range(100):
            if index == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            turns = [Turn("user", "q"), Turn("assistant", "a")]
            yield Sample(sample_id=f"new-{index}", turns=turns)

    run.write_samples("samples", rows(), shard_size=10)
    """
)


@pytest.mark.parametrize("kill_after", [0, 5, 10, 35, 99])
def test_a_write_killed_midway_is_invisible(tmp_path: Path, kill_after: int) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(23), shard_size=10)
    before = _ids(run, "samples")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(run.root), str(kill_after)], timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    assert _ids(run, "samples") == before  # the committed version, whole
    leftovers = {p.name for p in run.stage_dir("samples").glob("shard-*.parquet")}
    manifest = run.manifest("samples")
    assert manifest is not None and manifest.rows == 23
    assert len(leftovers) == len(manifest.shards) + kill_after // 10  # written, never listed
    # The next write takes the dead writer's lock over, commits, and deletes every leftover.
    run.write_samples("samples", _samples(4, tag="b"))
    assert _ids(run, "samples") == [f"b-{i}" for i in range(4)]
    assert len(list(run.stage_dir("samples").glob("shard-*.parquet"))) == 1
    assert not (run.root / LOCK_NAME).exists()


def test_a_first_write_killed_leaves_no_stage(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(run.root), "35"], timeout=120)
    assert not run.has_stage("samples")
    with pytest.raises(InputFileError, match="3 shard file.*no manifest"):
        list(run.read_samples("samples"))


def test_an_error_inside_a_write_keeps_the_old_version(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(12), shard_size=5)

    def broken() -> Any:
        yield from _samples(7, tag="b")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        run.write_samples("samples", broken(), shard_size=5)
    assert _ids(run, "samples") == [f"a-{i}" for i in range(12)]
    assert len(list(run.stage_dir("samples").glob("shard-*.parquet"))) == 3


def test_plain_parquet_readers_see_exactly_the_committed_stage(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(30), shard_size=7)
    run.write_samples("samples", _samples(11, tag="b"), shard_size=4)
    folder = run.stage_dir("samples")
    assert ds.dataset(folder, format="parquet").to_table().num_rows == 11
    frame = pd.read_parquet(folder)
    assert sorted(frame["sample_id"]) == sorted(f"b-{i}" for i in range(11))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["rows"] == 11 and [s["rows"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["schema_version"] == 1 and manifest["stage"] == "samples"


def test_the_same_content_keeps_its_id_and_other_content_gets_another(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(9))
    first = run.manifest("samples")
    run.write_samples("samples", _samples(9))
    again = run.manifest("samples")
    run.write_samples("samples", _samples(9, tag="b"))
    other = run.manifest("samples")
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id
    assert first.shards[0]["file"] != again.shards[0]["file"]  # written anew, same bytes


def test_a_damaged_manifest_or_run_json_names_the_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(3))
    run.save_summary("import", {"samples": 3})
    (run.stage_dir("samples") / MANIFEST_NAME).write_text('{"format": "vlit.st')
    with pytest.raises(InputFileError, match="_manifest.json: cannot read the stage manifest"):
        list(run.read_samples("samples"))
    for damage in (b"[1, 2]", b"\xff\xfe\x00garbage", b'{"summaries": '):
        (run.root / "run.json").write_bytes(damage)
        with pytest.raises(InputFileError, match="run.json"):
            run.load_meta()


def test_shards_are_decoded_with_the_collector_paused_and_handed_over_with_it_as_it_was(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(25), shard_size=10)
    run.write_records([])
    decoding: list[bool] = []  # per collection: did it start while a row was being decoded?

    def note(phase: str, _: dict[str, int]) -> None:
        if phase == "start":
            frames = traceback.extract_stack()
            decoding.append(any(frame.name == "_sample_from_row" for frame in frames))

    threshold = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # a collection at nearly every allocation, unless paused
    gc.callbacks.append(note)
    try:
        seen = [(sample.sample_id, gc.isenabled()) for sample in run.read_samples("samples")]
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*threshold)
    assert decoding and not any(decoding)  # collections ran, never inside the decoding
    assert [name for name, _ in seen] == [f"a-{index}" for index in range(25)]
    assert all(enabled for _, enabled in seen) and gc.isenabled()
    assert list(run.read_records()) == [] and gc.isenabled()
    gc.disable()
    try:  # a caller that paused the collector itself keeps it paused
        assert len(list(run.read_samples("samples"))) == 25 and not gc.isenabled()
    finally:
        gc.enable()


# -- lineage -------------------------------------------------------------------------------------


def test_a_stage_made_from_an_older_input_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(10))
    run.write_samples("scores", run.read_samples("samples"), inputs=("samples",))
    run.write_samples("kept", run.read_samples("scores"), inputs=("scores",))
    assert len(_ids(run, "kept")) == 10
    run.write_samples("samples", _samples(12, tag="b"))  # regenerated: scores and kept are stale
    with pytest.raises(StaleStageError) as raised:
        list(run.read_samples("kept"))
    message = str(raised.value)
    assert "'scores' is stale: it was made from 'samples'" in message
    assert "vlit score" in message
    run.write_samples("scores", run.read_samples("samples"), inputs=("samples",))
    with pytest.raises(StaleStageError, match="'kept' is stale.*vlit filter"):
        list(run.read_samples("kept"))


def _imported_and_filtered(tmp_path: Path, capsys: pytest.CaptureFixture[str], llava: Path) -> Path:
    run = tmp_path / "run"
    assert _cli(capsys, "import", str(llava), "--out", str(run), "--json")[0] == 0
    assert _cli(capsys, "score", str(run), "--json")[0] == 0
    assert _cli(capsys, "filter", str(run), "--drop-lint", "empty_turn", "--json")[0] == 0
    return run


@pytest.fixture
def small_llava(tmp_path: Path, llava_slice: Path) -> tuple[Path, Path]:
    records = json.loads(llava_slice.read_text())
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(records[:40]))
    second.write_text(json.dumps(records[40:95]))
    return first, second


def test_commands_refuse_stale_stages_and_name_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_llava: tuple[Path, Path]
) -> None:
    first, second = small_llava
    run = _imported_and_filtered(tmp_path, capsys, first)
    code, out, _ = _cli(capsys, "import", str(second), "--out", str(run), "--overwrite", "--json")
    assert code == 0 and json.loads(out)["samples"] == 55
    out_file = tmp_path / "x.jsonl"
    for argv in (
        ("filter", str(run), "--json"),
        ("export", str(run), "--format", "llava", "--out", str(out_file)),
        ("report", str(run), "--embedder", "none", "--json"),
    ):
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, out)
        assert "stale" in err and "samples" in err and "vlit score" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not out_file.exists()
    assert _cli(capsys, "score", str(run), "--json")[0] == 0
    assert _cli(capsys, "filter", str(run), "--json")[0] == 0
    code, out, _ = _cli(  # the slice ships no images
        capsys, "export", str(run), "--format", "llava", "--out", str(out_file), "--allow-missing"
    )
    assert code == 0 and len(json.loads(out_file.read_text())) == 55


def test_a_filter_killed_between_kept_and_dropped_leaves_dropped_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_samples("samples", _samples(10))
    run.write_samples("scores", run.read_samples("samples"), inputs=("samples",))
    scores = list(run.read_samples("scores"))
    run.write_samples("kept", scores[:6], inputs=("scores",))
    run.write_samples("dropped", scores[6:], inputs=("scores", "kept"))
    assert len(_ids(run, "dropped")) == 4
    run.write_samples("kept", scores[:3], inputs=("scores",))  # the next filter died here
    with pytest.raises(StaleStageError, match="'dropped' is stale.*'kept'"):
        list(run.read_samples("dropped"))


# -- one writer ----------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vlit.runlock import RunLock
    with RunLock(Path(sys.argv[1]), command="vlit score demo-run"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_second_writer_exits_2_naming_the_holder_and_a_dead_holder_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_llava: tuple[Path, Path]
) -> None:
    first, _ = small_llava
    run = tmp_path / "run"
    assert _cli(capsys, "import", str(first), "--out", str(run), "--json")[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        for argv in (
            ("score", str(run)),
            ("filter", str(run)),
            ("import", str(first), "--out", str(run), "--overwrite"),
        ):
            code, _, err = _cli(capsys, *argv)
            assert code == 2, argv
            assert f"vlit score demo-run` (pid {holder.pid}" in err, err
            assert "another command is writing this run" in err
        assert time.monotonic() - started < 30  # refused at once, not after waiting
        # Readers never need the lock.
        code, out, _ = _cli(capsys, "cat", str(run))
        assert code == 0 and len(out.splitlines()) == 40
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / LOCK_NAME).exists()  # left behind by the killed holder
    code, out, err = _cli(capsys, "score", str(run), "--json")
    assert code == 0 and json.loads(out)["written"] == 40
    assert not (run / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_refused_across_processes(
    tmp_path: Path,
) -> None:
    with RunLock(tmp_path, command="vlit run"):
        RunDir(tmp_path).write_samples("samples", _samples(2))  # the stage writer re-enters
        assert (tmp_path / LOCK_NAME).exists()
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from vlit.runlock import RunLock; "
                "RunLock(Path(sys.argv[1]), command='vlit filter').acquire()",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode != 0 and RunLockedError.__name__ in other.stderr
    assert not (tmp_path / LOCK_NAME).exists()
