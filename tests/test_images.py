"""Image paths stay inside their root; broken images are named; reduced-size loading is right."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlit.errors import RecordError
from vlit.images import (
    ImageFolderIndex,
    check_image,
    guess_image_suffix,
    load_image,
    resolve_image_path,
    safe_file_name,
)


@pytest.fixture(scope="module")
def coco_image(coco_tiny: Path) -> Path:
    return coco_tiny / "train2017" / "000000005802.jpg"


def test_reference_inside_the_root_resolves(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert resolve_image_path(tmp_path, "a/x.jpg") == (tmp_path / "a" / "x.jpg").resolve()
    # `..` that stays inside the root is fine
    assert resolve_image_path(tmp_path, "a/../b.jpg") == (tmp_path / "b.jpg").resolve()


@pytest.mark.parametrize(
    "reference",
    ["../../etc/passwd", "/etc/passwd", "a/../../outside.jpg", "C:\\images\\x.jpg", ".."],
)
def test_references_leaving_the_root_are_refused(tmp_path: Path, reference: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RecordError, match="image path escapes the image root"):
        resolve_image_path(root, reference)


@pytest.mark.parametrize("reference", ["", "a\x00b.jpg"])
def test_empty_or_nul_references_are_refused(tmp_path: Path, reference: str) -> None:
    with pytest.raises(RecordError, match="empty or not a path"):
        resolve_image_path(tmp_path, reference)


def test_symlink_pointing_outside_is_an_escape(tmp_path: Path, coco_image: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.jpg").write_bytes(coco_image.read_bytes())
    (root / "fine.jpg").symlink_to(root / "inside.jpg")
    (root / "secret.jpg").symlink_to(coco_image)  # a real file, but outside the root
    (root / "dir").symlink_to(tmp_path)
    assert resolve_image_path(root, "fine.jpg") == (root / "inside.jpg").resolve()
    with pytest.raises(RecordError, match="escapes the image root: 'secret.jpg' resolves to"):
        resolve_image_path(root, "secret.jpg")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    with pytest.raises(RecordError, match="escapes"):
        resolve_image_path(root, "dir/outside.jpg")  # through a symlinked folder: outside
    # a symlinked folder whose target path comes back inside the root is fine
    assert resolve_image_path(root, "dir/root/inside.jpg") == (root / "inside.jpg").resolve()


def test_check_image_accepts_a_real_photo(coco_image: Path) -> None:
    assert check_image(coco_image) is None


def test_check_image_names_truncated_and_garbage_files(tmp_path: Path, coco_image: Path) -> None:
    data = coco_image.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    reason = check_image(truncated)
    assert reason is not None and "truncated" in reason
    assert "cannot decode image" in (check_image(garbage) or "")
    assert "cannot decode image" in (check_image(empty) or "")
    assert check_image(tmp_path / "absent.jpg") == "image file not found"


def test_check_image_catches_a_damaged_png(tmp_path: Path, coco_image: Path) -> None:
    buffer = io.BytesIO()
    Image.open(coco_image).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    good = tmp_path / "good.png"
    good.write_bytes(bytes(data))
    position = data.index(b"IDAT") + 100
    data[position] ^= 0xFF  # one flipped byte: the chunk's CRC no longer matches
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    assert check_image(good) is None
    assert check_image(bad) is not None


def test_load_image_full_size_equals_pil(coco_image: Path) -> None:
    image = load_image(coco_image)
    reference = Image.open(coco_image).convert("RGB")
    assert image.size == reference.size
    assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_load_image_reduced_size_is_bounded_and_faithful(coco_image: Path) -> None:
    small = load_image(coco_image, max_side=160)
    reference = Image.open(coco_image).convert("RGB")
    assert max(small.size) == 160
    width, height = reference.size
    assert abs(small.size[0] / small.size[1] - width / height) < 0.02
    # the draft-decoded picture is the same picture: close to a full decode resized alike
    resized = reference.resize(small.size, Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(small, dtype=float) - np.asarray(resized, dtype=float))
    assert difference.mean() < 6.0
    # and different content is far away (the bound above means something)
    flipped = np.asarray(resized, dtype=float)[::-1]
    assert np.abs(np.asarray(small, dtype=float) - flipped).mean() > 20.0


def test_load_image_raises_record_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(RecordError) as raised:
        load_image(broken, max_side=100)
    assert str(broken) in str(raised.value) and "cannot read image" in str(raised.value)


def test_folder_index_finds_coco_names(tmp_path: Path, coco_image: Path) -> None:
    data = coco_image.read_bytes()
    (tmp_path / "train2014").mkdir()
    (tmp_path / "train2014" / "COCO_train2014_000000288586.jpg").write_bytes(data)
    (tmp_path / "COCO_train2014_000000247884_0.jpg").write_bytes(data)
    (tmp_path / "notes.txt").write_text("not an image")
    index = ImageFolderIndex(tmp_path)
    expected = "train2014/COCO_train2014_000000288586.jpg"
    assert index.find("288586") == expected
    assert index.find("000000288586") == expected
    assert index.find("COCO_train2014_000000288586") == expected
    assert index.find("000000247884_0") == "COCO_train2014_000000247884_0.jpg"
    assert index.find("999") is None
    assert index.find("notes") is None


def test_folder_index_on_real_coco_folder(coco_tiny: Path) -> None:
    index = ImageFolderIndex(coco_tiny / "train2017")
    assert index.find("5802") == "000000005802.jpg"


def test_suffix_and_safe_names(coco_image: Path) -> None:
    assert guess_image_suffix(coco_image.read_bytes()) == ".jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert guess_image_suffix(buffer.getvalue()) == ".png"
    assert guess_image_suffix(b"hello") == ".bin"
    assert safe_file_name("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_file_name("a/b") and safe_file_name("...") == "_"
