"""Decode and preprocess images for an image-text model, in worker processes.

This module imports only PIL and numpy, so a spawned worker starts in a fraction of a second
(no torch, no transformers); images at URLs (``s3://``, ``gs://``) are read through fsspec.
It reproduces the PIL path of the Hugging Face CLIP and SigLIP image processors (resize with the
shortest edge or to a fixed size, bicubic; centre crop; rescale; normalise) from their saved
settings, so the pixels match what ``AutoProcessor`` would give for the same decoded image.

Reduced-size JPEG decoding: with ``fast_decode``, PIL's ``draft`` asks the JPEG decoder for a
1/2, 1/4 or 1/8 scale version that is still at least as large as the model's input, which cuts
decoding time several-fold for photos much larger than 224 pixels. The pixels then differ
slightly from a full decode followed by the same resize (a different downscaling path).

Example:
    >>> spec = PreprocessSpec(resize_shortest_edge=224, crop=(224, 224))
    >>> pixels = preprocess_file("photo.jpg", spec)  # doctest: +SKIP
    >>> pixels.shape                                  # doctest: +SKIP
    (3, 224, 224)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlit.images import is_url, read_remote_bytes

MAX_PIXELS = 200_000_000  # refuse decompression bombs instead of exhausting memory


@dataclass(frozen=True)
class PreprocessSpec:
    """How one model family wants its images: a picklable subset of an image processor config.

    Exactly one of ``resize_shortest_edge`` and ``resize_to`` (height, width) is set when the
    model resizes; ``crop`` is the centre crop (height, width) or None.
    """

    resize_shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, float, float] | None = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] | None = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> PreprocessSpec:
        """Read the settings of a Hugging Face image processor (``image_processor.to_dict()``)."""
        size = config.get("size") or {}
        shortest = size.get("shortest_edge") if config.get("do_resize", True) else None
        resize_to = None
        if config.get("do_resize", True) and shortest is None and size.get("height"):
            resize_to = (int(size["height"]), int(size["width"]))
        crop_size = config.get("crop_size") or {}
        crop = None
        if config.get("do_center_crop") and crop_size.get("height"):
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        mean = config.get("image_mean") if config.get("do_normalize", True) else None
        std = config.get("image_std") if config.get("do_normalize", True) else None
        return cls(
            resize_shortest_edge=int(shortest) if shortest else None,
            resize_to=resize_to,
            crop=crop,
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=(
                float(config.get("rescale_factor", 1 / 255))
                if config.get("do_rescale", True)
                else None
            ),
            mean=_triple(mean),
            std=_triple(std),
        )

    def smallest_decode_size(self) -> tuple[int, int]:
        """The (width, height) a reduced-size decode must reach so that no quality is lost."""
        if self.resize_to is not None:
            return (self.resize_to[1], self.resize_to[0])
        if self.resize_shortest_edge is not None:
            return (self.resize_shortest_edge, self.resize_shortest_edge)
        if self.crop is not None:
            return (self.crop[1], self.crop[0])
        return (1 << 30, 1 << 30)  # no resize: decode at full size


def _triple(values: Any) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if isinstance(values, int | float):
        return (float(values),) * 3
    first, second, third = (float(v) for v in values)
    return (first, second, third)


def decode_image(path: str, spec: PreprocessSpec, *, fast_decode: bool = True) -> Image.Image:
    """Open an image as RGB, with reduced-size JPEG decoding when ``fast_decode``."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(io.BytesIO(read_remote_bytes(path)) if is_url(path) else path) as image:
        if fast_decode and image.format == "JPEG":
            image.draft("RGB", spec.smallest_decode_size())
        return image.convert("RGB")


def resized_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int] | None:
    """The (width, height) an image of this size is resized to, as the HF processors compute
    it; None when the model does not resize."""
    if spec.resize_to is not None:
        return (spec.resize_to[1], spec.resize_to[0])
    if spec.resize_shortest_edge is None:
        return None
    short, long = (width, height) if width <= height else (height, width)
    new_short = spec.resize_shortest_edge
    new_long = int(new_short * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize, crop, rescale and normalise one RGB image to a float32 array (3, H, W)."""
    size = resized_size(image.width, image.height, spec)
    if size is not None:
        image = image.resize(size, resample=spec.resample)
    array = np.asarray(image)
    if spec.crop is not None:
        array = _center_crop(array, spec.crop)
    pixels = array.astype(np.float32)
    if spec.rescale_factor is not None:
        pixels = pixels * np.float32(spec.rescale_factor)
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class CropWindow:
    """A centre crop as HF does it: zero padding (centred) up to the crop size, then a window."""

    padded: tuple[int, int]  # (height, width) after padding
    offset: tuple[int, int]  # where the original image sits in the padded one (top, left)
    top: int
    left: int

    @classmethod
    def centred(cls, height: int, width: int, crop: tuple[int, int]) -> CropWindow:
        padded = (max(height, crop[0]), max(width, crop[1]))
        offset = (-(-(padded[0] - height) // 2), -(-(padded[1] - width) // 2))
        return cls(padded, offset, (padded[0] - crop[0]) // 2, (padded[1] - crop[1]) // 2)


def _center_crop(array: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    height, width = array.shape[:2]
    window = CropWindow.centred(height, width, crop)
    if window.padded != (height, width):
        padded = np.zeros((*window.padded, array.shape[2]), dtype=array.dtype)
        top, left = window.offset
        padded[top : top + height, left : left + width] = array
        array = padded
    return array[window.top : window.top + crop[0], window.left : window.left + crop[1]]


def preprocess_file(path: str, spec: PreprocessSpec, fast_decode: bool = True) -> np.ndarray | str:
    """Decode and preprocess one file; on failure return the reason as a string (no raise).

    Returning the reason keeps a worker pool alive through unreadable files: the caller records
    the problem on the samples that use this image and goes on.
    """
    try:
        return preprocess_image(decode_image(path, spec, fast_decode=fast_decode), spec)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
