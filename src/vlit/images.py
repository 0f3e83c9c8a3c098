"""Image files, safely: path resolution inside an image root, quick checks, reduced-size loading.

Every dataset names its images by a reference relative to an image folder. Such a reference
comes from someone else's file, so it is resolved with `resolve_image_path`, which refuses
references that leave the folder (``../../etc/passwd``, absolute paths, symlinks pointing
outside). `check_image` tells whether a file decodes (header and structure only, fast);
`load_image` opens one for a model, decoding JPEGs at reduced size when a maximum side is given.
An image root may also be a URL on object storage (``s3://bucket/coco``, see `is_url`); its
images are then read through fsspec by the stages that decode them.

Example:
    >>> path = resolve_image_path("/data/coco", "train2017/000000005802.jpg")  # doctest: +SKIP
    >>> check_image(path) is None                                              # doctest: +SKIP
    True
    >>> load_image(path, max_side=224).size                                    # doctest: +SKIP
    (224, 168)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import posixpath
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import IO

from PIL import Image

from vlit.errors import RecordError
from vlit.limits import IMAGE_PIXELS_VARIABLE, max_image_pixels

#: File name suffixes taken for images when a folder is indexed.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: What PIL raises on broken files, beyond OSError (its plugins are not uniform about it).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    Image.DecompressionBombError,
)
_JPEG_END = b"\xff\xd9"
_TAIL_BYTES = 64 * 1024


def is_url(location: str) -> bool:
    """True for an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``); False for a
    local path (a Windows drive letter is not a scheme)."""
    scheme, separator, _ = location.partition("://")
    return bool(separator) and len(scheme) > 1 and scheme.replace("-", "").isalnum()


def join_url(root: str, reference: str) -> str:
    """``reference`` (relative, ``/`` or ``\\`` separated) under the URL ``root``."""
    return root.rstrip("/") + "/" + reference.replace("\\", "/")


def image_location(root: str, reference: str) -> str:
    """An image named relative to its root: a local path, or a URL when ``root`` is one."""
    return join_url(root, reference) if is_url(root) else str(Path(root) / reference)


def read_remote_bytes(url: str) -> bytes:
    """The bytes of an object at ``url`` through fsspec; every failure is an ``OSError``."""
    try:
        import fsspec

        with fsspec.open(url, "rb") as handle:
            data: bytes = handle.read()
            return data
    except ImportError as error:
        raise OSError(f"cannot read {url}: {error} (pip install s3fs / gcsfs)") from None
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - credential and client errors of any backend
        raise OSError(f"cannot read {url}: {type(error).__name__}: {error}") from None


def reference_problem(reference: object) -> str | None:
    """Why ``reference`` cannot name a file inside an image folder, judged on its text alone.

    ``None`` when it can. No file system access and no symlink resolution: refused are empty
    references and NUL bytes ("empty"), absolute paths -- POSIX, backslash-rooted, Windows drive
    or UNC -- ("absolute") and ``..`` that climbs out of the folder ("climbs"); ``/`` and ``\\``
    both count as separators. Collectors use only this check, so an image folder holding
    symlinks into shared storage keeps working; `resolve_image_path` adds the symlink check.
    """
    if not isinstance(reference, str) or not reference or "\x00" in reference:
        return "empty"
    posix = reference.replace("\\", "/")
    if posix.startswith("/") or os.path.isabs(reference) or PureWindowsPath(reference).drive:
        return "absolute"
    normal = posixpath.normpath(posix)
    if normal == ".." or normal.startswith("../"):
        return "climbs"
    return None


def resolve_image_path(root: str | os.PathLike[str], reference: str) -> Path:
    """The real path of ``reference`` inside ``root``; `RecordError` if it would leave ``root``.

    Refused: what `reference_problem` refuses (empty, absolute, ``..`` climbing out of the
    root), and symlinks whose target lies outside the root. The file need not exist. Resolved
    folders are cached for the life of the process (a folder replaced by a symlink meanwhile is
    not seen).
    """
    problem = reference_problem(reference)
    if problem == "empty":
        raise RecordError(
            f"image reference {reference!r} is empty or not a path",
            fix="give the image as a path relative to the image folder",
        )
    if problem is not None:
        how = "is absolute" if problem == "absolute" else "climbs out of it with '..'"
        raise RecordError(
            f"image path escapes the image root: {reference!r} {how}",
            fix="write image references relative to the image folder passed with --images",
        )
    real_root = _real_root(os.fspath(root))
    directory, name = os.path.split(reference)
    if name in ("", ".", ".."):
        resolved = os.path.realpath(os.path.join(real_root, reference))
    else:
        # Folders are resolved once each (datasets put thousands of images in one folder);
        # only the file itself is checked per call, and followed if it is a symlink.
        resolved = os.path.join(_real_directory(real_root, directory), name)
        if os.path.islink(resolved):
            resolved = os.path.realpath(resolved)
    if not _inside(resolved, real_root):
        raise RecordError(
            f"image path escapes the image root: {reference!r} resolves to {resolved}, "
            f"outside {real_root}",
            fix="keep images (and the targets of symlinks) inside the image folder",
        )
    return Path(resolved)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=65536)
def _real_directory(real_root: str, directory: str) -> str:
    return os.path.realpath(os.path.join(real_root, directory)) if directory else real_root


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


class ImageTooLargeError(OSError):
    """An image has more pixels than ``VLIT_MAX_IMAGE_PIXELS`` allows (a decompression bomb,
    or a real image too large to decode safely)."""


@contextlib.contextmanager
def open_image(source: str | os.PathLike[str] | IO[bytes]) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with vlit's pixel limit (`vlit.limits.max_image_pixels`), checked on
    the header before any pixel is decoded: over it, `ImageTooLargeError` (an ``OSError``, so
    callers that record unreadable images record this one too)."""
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # PIL's own bomb check must not fire below vlit's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"image too large to decode ({_describe(error)}; limit {IMAGE_PIXELS_VARIABLE}={limit})"
        ) from error
    with image:
        if image.width * image.height > limit:
            raise ImageTooLargeError(
                f"image too large to decode: {image.width}x{image.height} pixels, over the "
                f"limit of {limit} ({IMAGE_PIXELS_VARIABLE})"
            )
        yield image


def check_image(path: str | os.PathLike[str]) -> str | None:
    """``None`` if the file looks like a decodable image, else the reason it does not.

    Fast: PIL parses the header and runs ``verify()`` (for PNG that checks every chunk's CRC);
    a JPEG must also end with its end-of-image marker, which catches truncated downloads. Only
    when that marker is not near the end (data appended after it) is the image fully decoded.
    """
    try:
        with open_image(path) as image:
            image_format = image.format
            image.verify()
    except FileNotFoundError:
        return "image file not found"
    except _DECODE_ERRORS as error:
        return f"cannot decode image ({_describe(error)})"
    if image_format == "JPEG" and not _jpeg_ends_cleanly(Path(path)):
        try:
            with open_image(path) as image:
                image.load()
        except _DECODE_ERRORS as error:
            return f"JPEG data is truncated or damaged ({_describe(error)})"
    return None


def _jpeg_ends_cleanly(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    return _JPEG_END in tail


def _describe(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def load_image(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """Open an image (a local path or a URL, see `is_url`) as RGB, at most ``max_side`` pixels
    on its longer side when given.

    JPEGs are decoded at a reduced scale with ``draft()`` (much faster for large photos), then
    resized with ``thumbnail`` to the exact bound. Raises `RecordError` if the file cannot be
    read, so a caller can record the problem on its sample and go on.
    """
    try:
        source = path if not is_url(os.fspath(path)) else io.BytesIO(read_remote_bytes(str(path)))
        with open_image(source) as opened:
            if max_side is not None and opened.format == "JPEG":
                opened.draft("RGB", (max_side, max_side))
            image = opened.convert("RGB")
        if max_side is not None and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    except _DECODE_ERRORS as error:
        raise RecordError(
            f"cannot read image ({_describe(error)})",
            file=os.fspath(path),
            fix="check the file (`vlit import ... --verify-images` lists every unreadable one)",
        ) from error
    return image


def guess_image_suffix(data: bytes) -> str:
    """The usual file suffix for encoded image bytes, from their magic number (``.bin`` if none)."""
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".bin"


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_name(name: str) -> str:
    """``name`` usable as one file name: path separators and odd characters become ``_``."""
    cleaned = _UNSAFE_NAME.sub("_", name).lstrip(".")
    return cleaned or "_"


#: How much of an id is kept, readable, in a file name made from it.
_STEM_CHARS = 80


def id_file_stem(identifier: str) -> str:
    """A file name stem for ``identifier`` that no other identifier gets.

    An id that is already a safe, short file name is its own stem (``391895``); any other
    id gets its readable slug plus ``~`` and a hash of the exact id, so ``cam/1`` and ``cam_1``
    (one slug) stay apart: ``cam_1~3f0c1e9a2b`` and ``cam_1``. ``~`` never occurs in a plain
    stem, so a plain stem never equals a hashed one.

    Example:
        >>> id_file_stem("391895"), id_file_stem("cam/1") != id_file_stem("cam_1")
        ('391895', True)
    """
    slug = safe_file_name(identifier)
    if slug == identifier and len(slug) <= _STEM_CHARS:
        return slug
    digest = hashlib.blake2b(identifier.encode("utf-8", "surrogatepass"), digest_size=5)
    return f"{slug[:_STEM_CHARS]}~{digest.hexdigest()}"


class ImageFolderIndex:
    """Find an image in a folder by its id: the file stem, a ``_``-separated tail of the stem,
    or the number the stem ends with.

    COCO names one image ``COCO_train2014_000000288586.jpg`` (2014) or ``000000288586.jpg``
    (2017); both are found by ``"288586"``, ``"000000288586"`` or the full stem, and a region
    copy ``COCO_train2014_000000247884_0.jpg`` by ``"000000247884_0"``. The folder is walked
    once, on first use.

    Example:
        >>> index = ImageFolderIndex("/data/coco/train2014")  # doctest: +SKIP
        >>> index.find("288586")                               # doctest: +SKIP
        'COCO_train2014_000000288586.jpg'
    """

    _TRAILING_NUMBER = re.compile(r"(\d+)$")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._by_key: dict[str, str] | None = None

    def find(self, image_id: str) -> str | None:
        """The reference (relative to the root, ``/``-separated) of the image, or ``None``."""
        index = self._build() if self._by_key is None else self._by_key
        found = index.get(image_id) or index.get(f"~{image_id}")
        if found is None:
            number = self._TRAILING_NUMBER.search(image_id)
            if number and number.end() - number.start() == len(image_id):
                found = index.get(f"#{int(number.group(1))}")
        return found

    def _build(self) -> dict[str, str]:
        index: dict[str, str] = {}
        numbered: dict[str, str] = {}
        tails: dict[str, str] = {}
        if self.root.is_dir():
            for directory, subdirectories, files in os.walk(self.root):
                subdirectories.sort()
                for name in sorted(files):
                    stem, suffix = os.path.splitext(name)
                    if suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    relative = Path(directory, name).relative_to(self.root).as_posix()
                    index.setdefault(stem, relative)
                    parts = stem.split("_")
                    for start in range(1, len(parts)):
                        tails.setdefault("~" + "_".join(parts[start:]), relative)
                    number = self._TRAILING_NUMBER.search(stem)
                    if number:
                        numbered.setdefault(f"#{int(number.group(1))}", relative)
        index.update(tails)
        index.update(numbered)
        self._by_key = index
        return index
