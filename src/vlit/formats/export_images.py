"""The images of an export: one image folder per file, every image found, every image kept.

A training framework finds images by joining one folder (LLaVA's ``--image_folder``,
LLaMA-Factory's ``media_dir``) to the paths in the file, so an export must not mix paths relative
to different folders, and an image that is not there must not pass unnoticed:

- **formats that write paths** (llava, sharegpt): the images must share one root, which the
  summary names; a run whose images come from several roots (say the demo photos and the run's
  own ``images/regions/``) needs ``image_root`` (``--image-root DIR``): each image is hard-linked
  (copied across file systems or from object storage) to ``DIR/<folder>/<path>``, one
  ``<folder>`` per source root, so names stay unique (images already under ``DIR`` stay where
  they are); ``absolute_paths`` writes absolute paths instead;
- **formats that embed images** (parquet, mimicit): the bytes go into the export, so the root
  does not matter, but the images must exist;
- **paper** names images by id only and holds one image per conversation: a multi-image sample
  is unsupported there; **jsonl** is vlit's own lossless dump: images are left as they are.

A missing image is an error for the whole export (`MissingImagesError`, naming the first few)
unless ``allow_missing``: the sample is then written without it and counted.

Example:
    >>> images = ExportImages(format_name="llava", image_root=Path("export/images"))
    >>> prepared = [images.prepare(sample) for sample in samples]   # doctest: +SKIP
    >>> images.finish(); images.summary()["image_root"]             # doctest: +SKIP
    '/abs/export/images'
"""

from __future__ import annotations

import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlit.errors import ConfigError, InputFileError, RecordError
from vlit.fileio import write_bytes_atomic
from vlit.formats.image_token import IMAGE_TOKEN_KEY
from vlit.images import is_url, join_url, read_remote_bytes, resolve_image_path
from vlit.schema import Sample

#: Formats whose files hold image paths relative to one folder.
PATH_FORMATS = ("llava", "sharegpt")
#: Formats whose files hold the image bytes.
EMBEDDING_FORMATS = ("parquet", "mimicit")
#: Formats that hold one image per sample.
SINGLE_IMAGE_FORMATS = ("paper",)
#: ``Sample.extra`` keys of a sample's images (`vlit.formats.llava`, `vlit.formats.mimicit`).
IMAGES = "images"
IMAGE_IDS = "image_ids"
IMAGE_FILES = "image_files"
_IN_CONTENT = ("images_in_content", "content_parts")
_EXAMPLES = 5
#: How many image references an export remembers having looked up (datasets often hold many
#: conversations about each image); past it the memory starts again.
_KNOWN_SOURCES = 65_536


class MissingImagesError(InputFileError):
    """Images an export refers to or embeds are not there."""


def sample_images(sample: Sample) -> list[str]:
    """Every image reference of a sample, its main image (``sample.image``) first."""
    listed = sample.extra.get(IMAGES)
    if not isinstance(listed, list):
        listed = sample.extra.get(IMAGE_FILES) if IMAGE_IDS in sample.extra else None
    if isinstance(listed, list) and len(listed) > 1:
        references = [str(item) if item is not None else "" for item in listed]
        if sample.image is not None:
            references[0] = sample.image
        return references
    return [sample.image] if sample.image is not None else []


def set_sample_images(sample: Sample, references: list[str], image_ids: list[str]) -> None:
    """Give ``sample`` these images (and MIMIC-IT ids), keeping its extra keys consistent."""
    sample.image = references[0] if references else None
    if len(references) > 1 or isinstance(sample.extra.get(IMAGES), list):
        sample.extra[IMAGES] = list(references)
    if IMAGE_IDS in sample.extra:
        sample.extra[IMAGE_IDS] = list(image_ids)
        sample.extra[IMAGE_FILES] = list(references)


@dataclass
class ExportImageCounts:
    """What happened to the images of an export."""

    images: int = 0
    images_missing: int = 0
    samples_without_image: int = 0
    images_linked: int = 0
    images_copied: int = 0
    multi_image_samples: int = 0
    skipped_unsupported: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unsupported_examples: list[str] = field(default_factory=list)


class ExportImages:
    """Checks, gathers and rewrites the image references of samples on their way to a writer.

    ``prepare(sample)`` returns the sample to write (its references rewritten when images are
    gathered, missing images removed with ``allow_missing``) or ``None`` when the format cannot
    hold it; ``finish()`` raises when images were missing or samples unsupported (nothing is
    written then: the writers commit their file only when the stream ends cleanly).
    """

    def __init__(
        self,
        *,
        format_name: str,
        image_root: Path | None = None,
        absolute_paths: bool = False,
        allow_missing: bool = False,
        skip_unsupported: bool = False,
    ) -> None:
        if absolute_paths and format_name not in PATH_FORMATS:
            raise ConfigError(
                f"--absolute-paths does not apply to {format_name}",
                fix=f"use it with {' or '.join(PATH_FORMATS)}, the formats that write image paths",
            )
        self.format_name = format_name
        self.image_root = image_root.resolve() if image_root is not None else None
        self.absolute_paths = absolute_paths
        self.allow_missing = allow_missing
        self.skip_unsupported = skip_unsupported
        self.counts = ExportImageCounts()
        self._roots: list[str] = []
        self._folders: dict[str, str] = {}
        self._listings: dict[str, set[str]] = {}
        self._sources: dict[tuple[str, str], str | None] = {}

    @property
    def checks(self) -> bool:
        """Whether this format's images are checked at all (jsonl keeps them as they are)."""
        return self.format_name in (*PATH_FORMATS, *EMBEDDING_FORMATS, *SINGLE_IMAGE_FORMATS)

    def prepare(self, sample: Sample) -> Sample | None:
        references = sample_images(sample)
        if not references or not self.checks:
            return sample
        if len(references) > 1:
            self.counts.multi_image_samples += 1
            if self.format_name in SINGLE_IMAGE_FORMATS:
                self.counts.skipped_unsupported += 1
                if len(self.counts.unsupported_examples) < _EXAMPLES:
                    self.counts.unsupported_examples.append(sample.sample_id)
                return None
        image_ids = list(sample.extra.get(IMAGE_IDS) or [])
        if len(image_ids) != len(references):
            image_ids = [posixpath.splitext(posixpath.basename(r))[0] for r in references]
        kept: list[tuple[str, str]] = []
        for reference, image_id in zip(references, image_ids, strict=True):
            self.counts.images += 1
            source = self._source(sample.image_root, reference)
            if source is None:
                self._missing(sample, reference)
            else:
                kept.append((reference, image_id))
        if len(kept) < len(references):
            sample.extra.pop(IMAGE_TOKEN_KEY, None)  # the writer puts one token per kept image
            if not kept:
                self.counts.samples_without_image += 1
        placed = [self._place(sample.image_root, reference) for reference, _ in kept]
        new_root = self._new_root(sample.image_root)
        if placed != [reference for reference, _ in kept]:
            for key in _IN_CONTENT:  # content parts name the old paths: write a plain list
                sample.extra.pop(key, None)
        set_sample_images(sample, placed, [image_id for _, image_id in kept])
        if sample.image is None:
            sample.extra.pop(IMAGES, None)
        sample.image_root = new_root
        self._check_one_root(new_root if placed else None)
        return sample

    def finish(self) -> None:
        """Raise if images were missing (without ``allow_missing``) or samples unsupported."""
        counts = self.counts
        if counts.images_missing and not self.allow_missing:
            raise MissingImagesError(
                f"{counts.images_missing} image(s) of this export are missing, e.g. "
                + "; ".join(counts.missing_examples),
                fix="put the images in place (or pass the right --images at import), or pass "
                "--allow-missing to write those samples without their image",
            )
        if counts.skipped_unsupported and not self.skip_unsupported:
            raise ConfigError(
                f"{counts.skipped_unsupported} sample(s) have more than one image, which the "
                f"{self.format_name} format cannot hold (e.g. "
                + ", ".join(counts.unsupported_examples)
                + ")",
                fix="export as llava, sharegpt, mimicit or parquet, or pass --skip-unsupported "
                "to leave those samples out",
            )

    def summary(self) -> dict[str, Any]:
        counts = self.counts
        root: str | None = None
        if self.image_root is not None:
            root = str(self.image_root)
        elif len(self._roots) == 1 and not self.absolute_paths:
            root = self._roots[0]
        return {
            "image_root": root,
            "images_referenced": counts.images,
            "images_missing_at_export": counts.images_missing,
            "samples_without_image": counts.samples_without_image,
            "images_linked": counts.images_linked,
            "images_copied": counts.images_copied,
            "multi_image_samples": counts.multi_image_samples,
            "skipped_unsupported": counts.skipped_unsupported,
            "absolute_paths": self.absolute_paths,
        }

    # -- where the images are -----------------------------------------------------------------
    def _source(self, root: str, reference: str) -> str | None:
        """The image's location (a local path or URL), or ``None`` if it is not there; looked
        up once per image, however many samples share it."""
        key = (root, reference)
        if key not in self._sources:
            if len(self._sources) >= _KNOWN_SOURCES:
                self._sources.clear()
            self._sources[key] = self._look_up(root, reference)
        return self._sources[key]

    def _look_up(self, root: str, reference: str) -> str | None:
        if not reference:
            return None
        if is_url(root):
            listing = self._listing(root)
            relative = posixpath.normpath(reference.replace("\\", "/"))
            return join_url(root, reference) if relative in listing else None
        try:
            path = resolve_image_path(root, reference)
        except RecordError:
            return None
        return str(path) if path.is_file() else None

    def _listing(self, root: str) -> set[str]:
        if root not in self._listings:
            from vlit.formats.importing import list_objects  # importing imports this module

            self._listings[root] = set(list_objects(root))
        return self._listings[root]

    def _missing(self, sample: Sample, reference: str) -> None:
        self.counts.images_missing += 1
        if len(self.counts.missing_examples) < _EXAMPLES:
            where = join_url(sample.image_root, reference) if is_url(sample.image_root) else None
            location = where or str(Path(sample.image_root) / reference)
            self.counts.missing_examples.append(f"sample {sample.sample_id}: {location}")

    # -- one root -----------------------------------------------------------------------------
    def _new_root(self, root: str) -> str:
        if self.image_root is not None:
            return str(self.image_root)
        if self.absolute_paths:
            return ""
        return root

    def _place(self, root: str, reference: str) -> str:
        """The reference to write: gathered under ``image_root``, absolute, or as it is."""
        if self.image_root is None:
            if self.absolute_paths:
                return join_url(root, reference) if is_url(root) else str(Path(root) / reference)
            return reference
        if not is_url(root) and Path(root).resolve() == self.image_root:  # already there
            return str(self.image_root / reference) if self.absolute_paths else reference
        relative = posixpath.join(self._folder(root), posixpath.normpath(reference))
        target = self.image_root / relative
        self._gather(root, reference, target)
        return str(target) if self.absolute_paths else relative

    def _folder(self, root: str) -> str:
        """The sub-folder of ``image_root`` that receives the images of one source root."""
        if root not in self._folders:
            name = posixpath.basename(root.rstrip("/")) or "images"
            taken = set(self._folders.values())
            candidate, number = name, 2
            while candidate in taken:
                candidate, number = f"{name}-{number}", number + 1
            self._folders[root] = candidate
        return self._folders[root]

    def _gather(self, root: str, reference: str, target: Path) -> None:
        if is_url(root):
            if not target.exists():
                write_bytes_atomic(target, read_remote_bytes(join_url(root, reference)))
                self.counts.images_copied += 1
            return
        source = resolve_image_path(root, reference)
        if target.exists():
            if os.path.samefile(source, target) or _same_bytes(source, target):
                return
            raise ConfigError(
                f"{target} already exists and is not {source}",
                fix="choose an empty --image-root, or delete what an earlier export left there",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
            self.counts.images_linked += 1
        except OSError:  # another file system, or links not allowed: copy
            shutil.copyfile(source, target)
            self.counts.images_copied += 1

    def _check_one_root(self, root: str | None) -> None:
        if root is None or self.format_name not in PATH_FORMATS or root in self._roots:
            return
        self._roots.append(root)
        if len(self._roots) > 1 and self.image_root is None and not self.absolute_paths:
            raise ConfigError(
                "the images of this export lie under more than one folder ("
                + " and ".join(self._roots)
                + "), so no single image folder finds them all",
                fix="pass --image-root DIR to gather them under one folder (hard links where "
                "possible), or --absolute-paths",
            )


def _same_bytes(first: Path, second: Path) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    return first.read_bytes() == second.read_bytes()
