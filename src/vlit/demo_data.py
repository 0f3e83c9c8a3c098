"""A small demo dataset of our own: photos bundled with scikit-image, annotated by us in COCO form.

Seven photos that ``skimage.data`` ships inside the package (no download): an astronaut, a cup
of coffee, a cat, a rocket on its pad, a motorcycle in a garage, a cameraman and a printed page.
Their annotations (captions, boxes, attributes, text, VQA pairs) live as package data in
``vlit/data/demo``; `materialize_demo` writes the photos as JPEG next to copies of those files,
so that ``vlit collect coco`` reads them like any real dataset.

Example:
    >>> paths = materialize_demo("demo")          # doctest: +SKIP
    >>> paths.images_dir, paths.captions.name     # doctest: +SKIP
    (PosixPath('demo/images'), 'captions_demo.json')
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

#: The annotation files of the demo, by role.
DEMO_FILES = {
    "captions": "captions_demo.json",
    "instances": "instances_demo.json",
    "vqa_questions": "vqa_questions_demo.json",
    "vqa_annotations": "vqa_annotations_demo.json",
    "coco_text": "coco_text_demo.json",
    "attributes": "attributes_demo.json",
}

JPEG_QUALITY = 92


@dataclass(frozen=True)
class DemoPaths:
    """Where `materialize_demo` put the demo's images and annotation files."""

    root: Path
    images_dir: Path
    captions: Path
    instances: Path
    vqa_questions: Path
    vqa_annotations: Path
    coco_text: Path
    attributes: Path


def demo_photos() -> dict[str, Callable[[], np.ndarray]]:
    """File name -> loader of the bundled ``skimage.data`` photo (none needs the network)."""
    from skimage import data

    return {
        "astronaut.jpg": data.astronaut,
        "coffee.jpg": data.coffee,
        "chelsea.jpg": data.chelsea,
        "rocket.jpg": data.rocket,
        "motorcycle.jpg": lambda: data.stereo_motorcycle()[0],
        "camera.jpg": data.camera,
        "page.jpg": data.page,
    }


def demo_annotation_dir() -> Path:
    """The packaged folder holding the demo's annotation JSON files."""
    return Path(str(resources.files("vlit").joinpath("data", "demo")))


def materialize_demo(dest_dir: str | os.PathLike[str]) -> DemoPaths:
    """Write the demo photos (``images/*.jpg``) and annotation files (``annotations/``).

    Existing files are overwritten, so running it twice gives the same folder.
    """
    root = Path(dest_dir)
    images_dir = root / "images"
    annotations_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    for file_name, load in demo_photos().items():
        pixels = load()
        image = Image.fromarray(pixels).convert("RGB")  # the camera and page photos are grey
        image.save(images_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
    source = demo_annotation_dir()
    for name in DEMO_FILES.values():
        shutil.copyfile(source / name, annotations_dir / name)
    return DemoPaths(
        root=root,
        images_dir=images_dir,
        captions=annotations_dir / DEMO_FILES["captions"],
        instances=annotations_dir / DEMO_FILES["instances"],
        vqa_questions=annotations_dir / DEMO_FILES["vqa_questions"],
        vqa_annotations=annotations_dir / DEMO_FILES["vqa_annotations"],
        coco_text=annotations_dir / DEMO_FILES["coco_text"],
        attributes=annotations_dir / DEMO_FILES["attributes"],
    )
