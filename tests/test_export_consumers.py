"""Exports loaded by our re-implementations of their consumers' rules (tests/consumers.py).

Three inputs: a generated run whose images lie under two folders (COCO photos and the run's own
region copies, as in `vlit demo`), a part of the real LLaVA slice, and an edge-case file
(multi-turn, text-only, image without token, two images, more tokens than images, non-Latin
text). Every exported row must load in LLaVA, LLaMA-Factory, Otter and `datasets`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as skimage_data

from consumers import (
    datasets_problems,
    give_images,
    llamafactory_problems,
    llava_problems,
    otter_problems,
)
from llm_servers import Response, ScriptedServer
from vlit.cli import main
from vlit.collect import CocoCollector
from vlit.evaluate.export import export_for_training
from vlit.formats import ImportContext, export_images
from vlit.formats.image_token import IMAGE_TOKEN
from vlit.formats.llava import LlavaReader, LlavaWriter
from vlit.formats.sharegpt import ShareGptWriter
from vlit.rundir import RunDir

_ANSWER = '[{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A."}]'


def _vlit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    try:
        main([*args, "--json"])
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def _export(capsys: pytest.CaptureFixture[str], run: Path, fmt: str, out: Path, *more: str) -> Any:
    code, summary, err = _vlit(
        capsys, "export", str(run), "--format", fmt, "--out", str(out), *more
    )
    assert code == 0, err
    return summary


def _import_llava(
    capsys: pytest.CaptureFixture[str], source: Path, images: Path, run: Path
) -> Path:
    code, _, err = _vlit(
        capsys,
        "import",
        str(source),
        "--format",
        "llava",
        "--images",
        str(images),
        "--out",
        str(run),
    )
    assert code == 0, err
    return run


def _all_consumers(
    capsys: pytest.CaptureFixture[str], run: Path, tmp_path: Path, *more: str
) -> dict[str, Any]:
    """Export ``run`` in the four trained-on formats; each consumer loads every row."""
    out = tmp_path / "exports"
    llava = _export(capsys, run, "llava", out / "llava.json", *more)
    assert llava_problems(out / "llava.json", Path(llava["image_root"] or "")) == []
    sharegpt = _export(capsys, run, "sharegpt", out / "sharegpt.json", *more)
    assert llamafactory_problems(out / "sharegpt.json", Path(sharegpt["image_root"] or "")) == []
    embedded = tuple(option for option in more if option != "--absolute-paths")
    mimicit = _export(capsys, run, "mimicit", out / "x_instructions.json", *embedded)
    assert otter_problems(out / "x_instructions.json", out / "x_images.parquet") == []
    parquet = _export(capsys, run, "parquet", out / "data.parquet", *embedded)
    problems, dataset = datasets_problems(out / "data.parquet", tmp_path / "hf")
    assert problems == []
    assert dataset.num_rows == parquet["samples"] == mimicit["samples"]
    assert llava["samples"] == sharegpt["samples"]
    return {"llava": llava, "sharegpt": sharegpt, "mimicit": mimicit, "parquet": parquet}


@pytest.fixture
def generated_run(tmp_path: Path, coco_tiny: Path, scripted_server: ScriptedServer) -> Path:
    """Conversations and region conversations (drawn-box copies under RUN/images/regions)."""
    collected = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
    ).collect()
    run = RunDir(tmp_path / "run")
    run.write_records(collected.records[:3])
    scripted_server.add_rule(lambda body: Response.text(*[_ANSWER] * int(body.get("n") or 1)))
    main(
        ["generate", str(run.root), "--modes", "conversation,region", "--n", "1"]
        + ["--llm-base-url", scripted_server.url, "--llm-model", "m"]
    )
    return run.root


def test_a_run_with_images_in_two_folders(
    generated_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = [s for s in RunDir(generated_run).read_samples("samples") if s.ok]
    roots = {sample.image_root for sample in samples}
    assert len(roots) == 2 and any(root.endswith("images") for root in roots)

    # paths relative to two folders: no single --image_folder works, so no file is written
    code, _, err = _vlit(
        capsys, "export", str(generated_run), "--format", "llava", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "more than one folder" in err and "--image-root" in err
    assert not (tmp_path / "x").exists()

    gathered = tmp_path / "gathered"
    summaries = _all_consumers(capsys, generated_run, tmp_path, "--image-root", str(gathered))
    llava = summaries["llava"]
    assert llava["image_root"] == str(gathered.resolve()) and llava["image_roots"] == 2
    assert llava["samples"] == len(samples) and llava["images_missing"] == 0
    assert llava["images_linked"] + llava["images_copied"] == len({s.image for s in samples})
    records = json.loads((tmp_path / "exports" / "llava.json").read_text())
    folders = {record["image"].split("/")[0] for record in records}
    assert folders == {"train2017", "images"}  # one sub-folder per source folder
    for record, sample in zip(records, samples, strict=True):  # the very same image files
        assert (gathered / record["image"]).samefile(Path(sample.image_root) / sample.image)

    absolute = tmp_path / "absolute.json"
    _export(capsys, generated_run, "llava", absolute, "--absolute-paths")
    assert llava_problems(absolute, None) == []
    assert all(Path(record["image"]).is_absolute() for record in json.loads(absolute.read_text()))


def test_the_llava_slice(
    llava_slice: Path, coco_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = tmp_path / "slice.json"  # 150 real records; the slice ships no images: link photos
    part.write_text(json.dumps(json.loads(llava_slice.read_text())[:150], indent=4))
    images = tmp_path / "images"
    give_images(part, images, sorted((coco_tiny / "train2017").glob("*.jpg")))
    run = tmp_path / "run"
    code, _, err = _vlit(capsys, "import", str(part), "--images", str(images), "--out", str(run))
    assert code == 0, err
    summaries = _all_consumers(capsys, run, tmp_path)
    assert summaries["llava"]["image_root"] == str(images.resolve())
    assert summaries["llava"]["samples"] == 150 and summaries["parquet"]["images_embedded"] == 150
    assert summaries["llava"]["image_tokens_added"] == 0  # LLaVA's own data has its tokens
    assert (tmp_path / "exports" / "llava.json").read_text() == part.read_text()


def _edge_case_records() -> list[dict[str, Any]]:
    def turns(*texts: str) -> list[dict[str, str]]:
        return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(texts)]

    return [
        {
            "id": "multi-turn",
            "image": "a.jpg",
            "conversations": turns("<image>\nQ1?", "A1", "Q2?", "A2"),
        },
        {"id": "text-only", "conversations": turns("What is 2 + 2?", "4")},
        {"id": "no-token", "image": "b.jpg", "conversations": turns("What is here?", "A cat.")},
        {
            "id": "two-images",
            "image": ["a.jpg", "c.png"],
            "conversations": turns("<image>\n<image>\nWhat differs?", "The colour."),
        },
        {
            "id": "too-many-tokens",
            "image": "a.jpg",
            "conversations": turns("<image> <image> Hi", "Hi"),
        },
        {
            "id": "non-latin",
            "image": "b.jpg",
            "conversations": turns("<image>\n这是什么？ Что это?", "猫です。"),
        },
    ]


@pytest.fixture
def edge_case_run(tmp_path: Path, coco_tiny: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    photos = sorted((coco_tiny / "train2017").glob("*.jpg"))
    images = tmp_path / "edge_images"
    images.mkdir()
    (images / "a.jpg").write_bytes(photos[0].read_bytes())
    (images / "b.jpg").write_bytes(photos[1].read_bytes())
    Image.open(photos[2]).convert("RGB").resize((64, 48)).save(images / "c.png")
    source = tmp_path / "edge.json"
    source.write_text(json.dumps(_edge_case_records(), ensure_ascii=False), encoding="utf-8")
    return _import_llava(capsys, source, images, tmp_path / "edge_run")


def test_edge_cases(
    edge_case_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summaries = _all_consumers(capsys, edge_case_run, tmp_path)
    exports = tmp_path / "exports"
    for name in ("llava", "sharegpt"):
        summary = summaries[name]
        assert summary["samples"] == 5 and summary["image_token_mismatch"] == 1, summary
        assert summary["image_tokens_added"] == 1 and summary["multi_image_samples"] == 1
        assert any("too-many-tokens" in problem for problem in summary["problems"])
    llava = {record["id"]: record for record in json.loads((exports / "llava.json").read_text())}
    assert llava["no-token"]["conversations"][0]["value"] == "<image>\nWhat is here?"
    assert llava["two-images"]["image"] == ["a.jpg", "c.png"]
    assert "image" not in llava["text-only"] and "too-many-tokens" not in llava
    assert llava["non-latin"]["conversations"][1]["value"] == "猫です。"
    sharegpt = {r["id"]: r for r in json.loads((exports / "sharegpt.json").read_text())}
    assert sharegpt["two-images"]["images"] == ["a.jpg", "c.png"]
    instructions = json.loads((exports / "x_instructions.json").read_text())["data"]
    assert instructions["two-images"]["image_ids"] == ["a", "c"]
    assert len([key for key in instructions if key.startswith("multi-turn")]) == 2

    _, dataset = datasets_problems(exports / "data.parquet", tmp_path / "hf2")
    rows = {row["sample_id"]: row for row in dataset}
    pair = rows["two-images"]["images"]
    edge_images = tmp_path / "edge_images"
    for decoded, name in zip(pair, ["a.jpg", "c.png"], strict=True):  # the pixels, not paths
        expected = np.asarray(Image.open(edge_images / name).convert("RGB"))
        assert np.array_equal(np.asarray(decoded.convert("RGB")), expected)
    assert rows["text-only"]["image"] is None and rows["no-token"]["images"] == []

    # the paper format holds one image per conversation: it says so
    paper = tmp_path / "paper.json"
    code, _, err = _vlit(
        capsys, "export", str(edge_case_run), "--format", "paper", "--out", str(paper)
    )
    assert code == 2 and "1 sample(s) have more than one image" in err and "two-images" in err
    assert not paper.exists()
    summary = _export(capsys, edge_case_run, "paper", paper, "--skip-unsupported")
    assert summary["skipped_unsupported"] == 1 and summary["samples"] == 5


def test_missing_images_fail_unless_allowed(
    edge_case_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "edge_images" / "b.jpg").unlink()  # two samples show it
    for fmt in ("llava", "sharegpt", "mimicit", "parquet"):
        out = tmp_path / f"out-{fmt}"
        code, _, err = _vlit(
            capsys, "export", str(edge_case_run), "--format", fmt, "--out", str(out)
        )
        assert code == 2 and "2 image(s) of this export are missing" in err, (fmt, err)
        assert "b.jpg" in err and "--allow-missing" in err and not out.exists()
    summaries = _all_consumers(capsys, edge_case_run, tmp_path, "--allow-missing")
    assert summaries["llava"]["samples_without_image"] == 2
    records = json.loads((tmp_path / "exports" / "llava.json").read_text())
    no_token = next(record for record in records if record["id"] == "no-token")
    assert "image" not in no_token and "<image>" not in json.dumps(no_token)


def test_the_validators_catch_what_the_consumers_fail_on(tmp_path: Path, coco_tiny: Path) -> None:
    photo = sorted((coco_tiny / "train2017").glob("*.jpg"))[0]
    turns = [{"from": "human", "value": "What is here?"}, {"from": "gpt", "value": "A cat."}]
    bad_llava = [
        {"id": "no-token", "image": photo.name, "conversations": turns},
        {"id": "elsewhere", "image": "regions/x.jpg", "conversations": turns},
        {"id": "roles", "conversations": [turns[1], turns[1]]},
        {
            "id": "text-token",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, turns[1]],
        },
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad_llava))
    problems = llava_problems(path, photo.parent)
    for record in bad_llava:
        assert any(f"({record['id']})" in problem for problem in problems), record["id"]
    bad_sharegpt = [
        {"messages": [{"role": "user", "content": "Hi"}], "images": [photo.name]},
        {
            "messages": [
                {"role": "user", "content": "<image>Hi"},
                {"role": "assistant", "content": "Yo"},
            ],
            "images": [photo.name, photo.name],
        },
    ]
    path.write_text(json.dumps(bad_sharegpt))
    problems = llamafactory_problems(path, photo.parent)
    assert any("Invalid message count" in problem for problem in problems)
    assert any("does not match the number of <image> tokens" in problem for problem in problems)


def test_tune_export_keeps_every_image(edge_case_run: Path, tmp_path: Path) -> None:
    llava = export_for_training(edge_case_run, format="llava", out=tmp_path / "l")
    assert llava_problems(tmp_path / "l" / "llava_train.json", Path(llava.image_folder or "")) == []
    records = {r["id"]: r for r in json.loads((tmp_path / "l" / "llava_train.json").read_text())}
    assert records["two-images"]["image"] == ["a.jpg", "c.png"]
    factory = export_for_training(edge_case_run, format="llamafactory", out=tmp_path / "f")
    data = tmp_path / "f" / f"{factory.extra['dataset_name']}.json"
    assert llamafactory_problems(data, Path(factory.image_folder or "")) == []
    assert sorted(len(record["images"]) for record in json.loads(data.read_text())) == [1] * 4 + [2]


@st.composite
def _llava_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """LLaVA records with 0-3 images and 0-3 tokens placed anywhere in the user turns."""
    text = st.text(alphabet="abc xyz?!\n猫Ж", max_size=12)
    records = []
    for index in range(draw(st.integers(1, 5))):
        pairs = draw(st.integers(1, 3))
        turns = [draw(text) for _ in range(2 * pairs)]
        for _ in range(draw(st.integers(0, 3))):
            turn = 2 * draw(st.integers(0, pairs - 1))
            cut = draw(st.integers(0, len(turns[turn])))
            turns[turn] = turns[turn][:cut] + IMAGE_TOKEN + turns[turn][cut:]
        images = draw(st.lists(st.sampled_from(["a.jpg", "b.jpg", "c.png"]), max_size=3))
        record: dict[str, Any] = {"id": f"r{index}"}
        if images:
            record["image"] = images if len(images) > 1 or draw(st.booleans()) else images[0]
        record["conversations"] = [
            {"from": ("human", "gpt")[position % 2], "value": value}
            for position, value in enumerate(turns)
        ]
        records.append(record)
    return records


@pytest.fixture(scope="module")
def three_images(tmp_path_factory: pytest.TempPathFactory, coco_tiny: Path) -> Path:
    folder = tmp_path_factory.mktemp("three")
    photos = sorted((coco_tiny / "train2017").glob("*.jpg"))
    (folder / "a.jpg").write_bytes(photos[0].read_bytes())
    (folder / "b.jpg").write_bytes(photos[1].read_bytes())
    Image.open(photos[2]).convert("RGB").resize((32, 24)).save(folder / "c.png")
    return folder


@settings(max_examples=25, deadline=None)
@given(records=_llava_records())
def test_every_exported_record_has_one_token_per_image(
    records: list[dict[str, Any]], three_images: Path
) -> None:
    source = three_images / "records.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    context = ImportContext(images=three_images, workdir=three_images / "work")
    samples = list(LlavaReader().read(source, context))
    for writer, validate in ((LlavaWriter(), llava_problems), (ShareGptWriter(), None)):
        out = three_images / f"out-{writer.name}.json"
        counts = writer.write(samples, out)
        written = json.loads(out.read_text(encoding="utf-8"))
        too_many = [
            r["id"]
            for r in records
            if sum(t["value"].count(IMAGE_TOKEN) for t in r["conversations"])
            > len(
                r["image"]
                if isinstance(r.get("image"), list)
                else [r.get("image")] * ("image" in r)
            )
        ]
        assert counts.image_token_mismatch == len(too_many)
        assert [r["id"] for r in written] == [r["id"] for r in records if r["id"] not in too_many]
        if validate is not None:
            assert validate(out, three_images) == []
        else:
            assert llamafactory_problems(out, three_images) == []


def test_an_image_root_that_already_holds_the_images(
    edge_case_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "edge_images"
    out = tmp_path / "same.json"
    summary = _export(capsys, edge_case_run, "llava", out, "--image-root", str(images))
    assert summary["image_root"] == str(images.resolve()) and summary["images_linked"] == 0
    assert json.loads(out.read_text())[0]["image"] == "a.jpg"
    assert llava_problems(out, images) == []


def test_samples_sharing_an_image_look_it_up_once_and_each_misses_it(
    tmp_path: Path,
    coco_tiny: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photos = sorted((coco_tiny / "train2017").glob("*.jpg"))
    images = tmp_path / "shared_images"
    images.mkdir()
    (images / "coco.jpg").write_bytes(photos[0].read_bytes())
    Image.fromarray(skimage_data.astronaut()).save(images / "astronaut.png")
    (images / "gone.jpg").write_bytes(photos[1].read_bytes())
    names = ["coco.jpg", "astronaut.png", "gone.jpg"]
    records = [
        {
            "id": f"s{index}",
            "image": names[index % 3],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": f"Picture number {index}."},
            ],
        }
        for index in range(12)
    ]
    source = tmp_path / "shared.json"
    source.write_text(json.dumps(records))
    run = _import_llava(capsys, source, images, tmp_path / "run")
    (images / "gone.jpg").unlink()  # four samples show it
    looked_up: Counter[str] = Counter()
    resolve = export_images.resolve_image_path

    def counted(root: str, reference: str) -> Path:
        looked_up[reference] += 1
        return resolve(root, reference)

    monkeypatch.setattr(export_images, "resolve_image_path", counted)
    out = tmp_path / "out.json"
    code, _, err = _vlit(capsys, "export", str(run), "--format", "llava", "--out", str(out))
    assert code == 2 and "4 image(s) of this export are missing" in err, err
    assert all(f"sample s{index}: " in err for index in (2, 5, 8, 11)), err
    assert looked_up == {name: 1 for name in names} and not out.exists()
    # past the limit of what is remembered, images are looked up again, with the same result
    monkeypatch.setattr(export_images, "_KNOWN_SOURCES", 2)
    for allowed, lookups in ((False, 12), (True, 24)):
        if allowed:
            summary = _export(capsys, run, "llava", out, "--allow-missing")
            assert summary["images_referenced"] == 12 and summary["images_missing"] == 4
            assert summary["samples_without_image"] == 4
        else:
            code, _, err = _vlit(capsys, "export", str(run), "--format", "llava", "--out", str(out))
            assert code == 2 and "4 image(s) of this export are missing" in err, err
        assert sum(looked_up.values()) == 3 + lookups
    exported = json.loads(out.read_text())
    assert [record["id"] for record in exported if "image" not in record] == [
        "s2",
        "s5",
        "s8",
        "s11",
    ]
    assert {record.get("image") for record in exported} == {"coco.jpg", "astronaut.png", None}
