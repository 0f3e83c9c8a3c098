"""A fixed corpus of hostile inputs: whole files no reader can use, records that leak local
files, and ways to damage a run directory. Shared by the fuzz tests and the CLI tests.

Every builder is deterministic, so a failing case names itself (``CORRUPT_JSON["deep"]``).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlit.rundir import RunDir
from vlit.schema import Sample, Turn

#: Text that rich would read as markup ("[/x]" closes a tag never opened): must print as is.
MARKUP = "[/x] [bold]not bold[/bold] [red"

#: Whole JSON files that no reader can use: each must stop its command with one line, exit 2.
CORRUPT_JSON: dict[str, bytes] = {
    "empty": b"",
    "blank": b"  \n\n ",
    "binary": random.Random(12).randbytes(3000),
    "truncated": b'[{"id": "1", "image": "a.jpg", "conversations": [{"from": "hu',
    "deep": b"[" * 100_000,
    "deep_closed": b"[" * 5_000 + b"]" * 5_000,
    "deep_object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "big_integer": b"[" + b"9" * 5_000 + b"]",
    "not_utf8": b'[{"id": "caf\xe9", "conversations": []}]',
    "utf16": '[{"id": "1"}]'.encode("utf-16"),
    "nul_bytes": b"\x00" * 64,
    "a_string": b'"just a string"',
    "a_number": b"42",
    "markup": json.dumps(MARKUP).encode(),
}

#: JSONL files without one usable line (collect must refuse them, not collect nothing).
UNUSABLE_JSONL: dict[str, bytes] = {
    "empty": b"",
    "binary": random.Random(7).randbytes(3000),
    "json_array": b'[{"image_id": "1", "file_name": "a.jpg"}]\n',
    "deep": b"[" * 100_000 + b"\n",
    "not_utf8": b'{"image_id": "caf\xe9", "file_name": "a.jpg"}\n',
    "strings": b'"a"\n"b"\n',
}

#: YAML recipes no one can run: one line, exit 2.
CORRUPT_YAML: dict[str, bytes] = {
    "unclosed": b"run_dir: [unclosed\ncollect: {",
    "deep": b"run_dir: " + b"[" * 50_000,
    "not_utf8": b"run_dir: caf\xe9\n",
    "a_list": b"- a\n- b\n",
    "tabs": b"run_dir:\n\t- x\n",
    "markup_key": f"run_dir: r\n'{MARKUP}': 1\n".encode(),
}

BOM = b"\xef\xbb\xbf"


def llava_record(image: str, *, record_id: str = "r1", text: str = "What is served?") -> Any:
    """One LLaVA record about ``image``."""
    return {
        "id": record_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{text}"},
            {"from": "gpt", "value": "Broccoli and rice on a white plate."},
        ],
    }


def leaking_references(secret: Path, images: Path) -> list[str]:
    """Image references that point at ``secret`` (a file outside ``images``) in every way a
    dataset can try: absolute, climbing, backslashes, and a symlink inside the folder."""
    link = images / "innocent.jpg"
    if not link.exists():
        link.symlink_to(secret)
    depth = len(images.resolve().parts)
    climb = "../" * depth + str(secret.resolve()).lstrip("/")
    return [
        str(secret.resolve()),
        climb,
        climb.replace("/", "\\"),
        "innocent.jpg",
        f"sub/../../{secret.name}",
    ]


def leaking_samples_jsonl(secret: Path) -> bytes:
    """vlit JSONL whose lines carry their own ``image_root`` pointing at ``secret``'s folder."""
    lines = []
    for number, root in enumerate([str(secret.parent), "/", "/etc"]):
        line = {
            "sample_id": f"leak{number}",
            "turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "yo"}],
            "image": secret.name if root != "/" else str(secret).lstrip("/"),
            "image_root": root,
        }
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header;
    no pixel data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def copy_images(source: Path, target: Path, count: int = 2) -> list[str]:
    """Copy ``count`` real photos into ``target``; their names."""
    target.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in source.glob("*.jpg"))[:count]
    for name in names:
        shutil.copyfile(source / name, target / name)
    return names


# -- damaged run directories ----------------------------------------------------------------
#: How ``run.json`` can be damaged: name -> what to do to the file.
RUN_JSON_DAMAGE = ("truncated", "a_list", "binary", "a_folder", "deep", "not_utf8")


def damage_run_json(run: Path, kind: str) -> None:
    """Damage ``run/run.json`` as ``kind`` (one of `RUN_JSON_DAMAGE`)."""
    path = run / "run.json"
    text = path.read_bytes() if path.is_file() else b'{"summaries": {}}'
    if path.is_file():
        path.unlink()
    if kind == "a_folder":
        path.mkdir()
        return
    data = {
        "truncated": text[: len(text) // 2],
        "a_list": b"[1, 2]",
        "binary": random.Random(3).randbytes(500),
        "deep": b"[" * 100_000,
        "not_utf8": b'{"summaries": {"x": "\xff"}}',
    }[kind]
    path.write_bytes(data)


def damage_manifest(run: Path, stage: str, kind: str) -> None:
    """Damage the ``_manifest.json`` of ``stage``: ``truncated``, ``binary`` or ``deep``."""
    path = run / stage / "_manifest.json"
    data = {
        "truncated": path.read_bytes()[:40],
        "binary": random.Random(5).randbytes(400),
        "deep": b"[" * 100_000,
    }[kind]
    path.write_bytes(data)


def write_bad_provenance_row(run: Path, *, images: Path, image: str) -> None:
    """Commit ``samples/`` (through the run's writer) with two good samples and one whose
    stored provenance and extra are not JSON."""
    rows = []
    for number in range(3):
        sample = Sample(
            sample_id=f"s{number}",
            turns=[Turn("user", "What is served?"), Turn("assistant", "Broccoli and rice.")],
            image=image,
            image_root=str(images.resolve()),
            mode="conversation",
        )
        row = sample.to_row()
        if number == 1:
            row["provenance"] = '{"model": "trunc'
            row["extra"] = "[" * 10_000
        rows.append(row)
    with RunDir(run).writer("samples", command="test: a damaged row") as writer:
        writer.add_rows(rows)


def write_wrong_columns(run: Path, stage: str = "samples") -> None:
    """Commit ``stage`` (through the run's writer) with a shard that has other columns."""
    schema = pa.schema([("name", pa.string()), ("value", pa.int64())])
    with RunDir(run).writer(stage, schema=schema, command="test: wrong columns") as writer:
        writer.add_rows([{"name": "a", "value": 1}])
