"""Decode and preprocess images where the model runs: nvjpeg and torch on a GPU.

On a CUDA device, CPU decoding is the bottleneck of matching-degree scoring (a ViT-B/32 image
tower embeds images an order of magnitude faster than 16 cores decode 640x480 JPEGs). This
module moves that work to the GPU: JPEG files are decoded in batches by nvjpeg
(``torchvision.io.decode_jpeg(..., device="cuda")``), then resized, centre-cropped and normalised
there with torch, following the same `PreprocessSpec` as the CPU path. Files nvjpeg refuses
(PNG, WebP, CMYK or damaged JPEGs) are decoded by PIL on the CPU and join the batch on the device;
a file PIL cannot read either gets its reason, like on the CPU path.

Resizing uses torch's antialiased bicubic interpolation (PIL's kernel) in two passes, width then
height, rounding to 8 bits after each as PIL does. Pillow 13 sometimes runs the height pass
first; then a few pixels differ by up to a handful of grey levels (on real COCO photos more than
99% of pixels are equal to the CPU path's full decode). nvjpeg's IDCT and chroma upsampling may
differ from libjpeg's by a grey level too. Scores are therefore close to, not bit-equal with,
those of CPU decoding.

Example:
    >>> images = DeviceImages(spec, device="cuda", jpeg_decoder=nvjpeg_decoder())  # doctest: +SKIP
    >>> pixels, errors = images.prepare(["a.jpg", "b.png"])                       # doctest: +SKIP
    >>> pixels.shape                                                               # doctest: +SKIP
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vlit.images import is_url, read_remote_bytes
from vlit.quality.image_preprocess import MAX_PIXELS, CropWindow, PreprocessSpec, resized_size

if TYPE_CHECKING:
    import torch

#: Decodes a batch of encoded JPEG files (1-D uint8 CPU tensors) to (3, H, W) uint8 tensors on
#: the device; raises on the first file it cannot decode, like ``torchvision.io.decode_jpeg``.
JpegDecoder = Callable[[list["torch.Tensor"]], list["torch.Tensor"]]

_JPEG_START = b"\xff\xd8"


def nvjpeg_unavailable_reason(device: str) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` by nvjpeg, or None when they can."""
    if not device.startswith("cuda"):
        return f"the model runs on {device}, not on a CUDA GPU"
    try:
        import torch
        import torchvision.io  # noqa: F401 - loads its image ops (fails on a torch mismatch)
    except (ImportError, RuntimeError, OSError) as error:
        return f"torchvision is not usable ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def nvjpeg_decoder(device: str = "cuda") -> JpegDecoder:
    """A batch JPEG decoder running on ``device`` through nvjpeg (needs torchvision and CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(files: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))

    return decode


def read_file_bytes(path: str) -> bytes:
    """The bytes of a local file or of an object at a URL."""
    return read_remote_bytes(path) if is_url(path) else Path(path).read_bytes()


class DeviceImages:
    """Turns image files into a batch of model-ready pixels on ``device``.

    ``jpeg_decoder`` decodes JPEGs in batches on the device (`nvjpeg_decoder`); without one
    every file is decoded by PIL and moved to the device. File reads run in ``read_threads``
    threads, so object-storage latency overlaps.
    """

    def __init__(
        self,
        spec: PreprocessSpec,
        *,
        device: str,
        jpeg_decoder: JpegDecoder | None = None,
        read_threads: int = 8,
    ) -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.jpeg_decoder = jpeg_decoder
        self._readers = ThreadPoolExecutor(max_workers=read_threads)
        self._torch = torch

    def close(self) -> None:
        self._readers.shutdown(cancel_futures=True)

    def submit_read(self, path: str) -> Future[bytes | str]:
        """Read a file in the background: its bytes, or the reason it cannot be read."""
        return self._readers.submit(_read_or_reason, path)

    def read(self, paths: Sequence[str]) -> list[bytes | str]:
        """Each file's bytes, or the reason it cannot be read."""
        return [future.result() for future in [self.submit_read(path) for path in paths]]

    def prepare(self, files: Sequence[bytes | str]) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Pixels (N_ok, 3, H, W) float32 on the device for the readable files, in order, and
        the reason for each index that could not be decoded (``files`` as `read` returns)."""
        decoded: dict[int, torch.Tensor] = {}
        errors: dict[int, str] = {}
        jpegs: list[tuple[int, bytes]] = []
        for index, data in enumerate(files):
            if isinstance(data, str):
                errors[index] = data
            elif self.jpeg_decoder is not None and data.startswith(_JPEG_START):
                jpegs.append((index, data))
            else:
                self._decode_with_pil(index, data, decoded, errors)
        if jpegs:
            self._decode_jpegs(jpegs, decoded, errors)
        if not decoded:
            return None, errors
        order = sorted(decoded)
        return self._preprocess([decoded[index] for index in order]), errors

    def _decode_jpegs(
        self,
        jpegs: list[tuple[int, bytes]],
        decoded: dict[int, torch.Tensor],
        errors: dict[int, str],
    ) -> None:
        assert self.jpeg_decoder is not None
        uint8 = self._torch.uint8
        encoded = [self._torch.frombuffer(bytearray(data), dtype=uint8) for _, data in jpegs]
        try:
            images = self.jpeg_decoder(encoded)
        except RuntimeError:  # one bad file fails the whole batch: decode one by one
            for (index, data), tensor in zip(jpegs, encoded, strict=True):
                try:
                    decoded[index] = self.jpeg_decoder([tensor])[0]
                except RuntimeError:  # damaged, or a kind nvjpeg refuses (CMYK, lossless)
                    self._decode_with_pil(index, data, decoded, errors)
            return
        decoded.update(zip((index for index, _ in jpegs), images, strict=True))

    def _decode_with_pil(
        self, index: int, data: bytes, decoded: dict[int, torch.Tensor], errors: dict[int, str]
    ) -> None:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            errors[index] = f"{type(error).__name__}: {error}"
            return
        tensor = self._torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        decoded[index] = tensor.to(self.device, non_blocking=True)

    def _preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Resize, crop, rescale and normalise (3, H, W) uint8 images; images of one size are
        resized together."""
        groups: dict[tuple[int, int], list[int]] = {}
        for position, image in enumerate(images):
            groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(position)
        results: list[torch.Tensor | None] = [None] * len(images)
        for (height, width), positions in groups.items():
            batch = self._torch.stack([images[p] for p in positions]).to(self.device).float()
            size = resized_size(width, height, self.spec)
            if size is not None and size != (width, height):
                batch = self._resize_like_pil(batch, size)
            if self.spec.crop is not None:
                batch = self._centre_crop(batch)
            for position, row in zip(positions, batch, strict=True):
                results[position] = row
        pixels = self._torch.stack([row for row in results if row is not None])
        if self.spec.rescale_factor is not None:
            pixels = pixels * self.spec.rescale_factor
        if self.spec.mean is not None and self.spec.std is not None:
            mean = self._torch.tensor(self.spec.mean, device=pixels.device).view(1, 3, 1, 1)
            std = self._torch.tensor(self.spec.std, device=pixels.device).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels

    def _resize_like_pil(self, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Antialiased bicubic resize to ``size`` (width, height) as PIL computes it: the width
        first, then the height, rounding to 8-bit pixels after each pass."""
        interpolate = self._torch.nn.functional.interpolate
        for target in ((int(batch.shape[2]), size[0]), (size[1], size[0])):
            if tuple(batch.shape[2:]) != target:
                batch = interpolate(batch, size=target, mode="bicubic", antialias=True)
                batch = batch.round_().clamp_(0, 255)
        return batch

    def _centre_crop(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.spec.crop is not None
        crop_height, crop_width = self.spec.crop
        height, width = int(batch.shape[2]), int(batch.shape[3])
        window = CropWindow.centred(height, width, self.spec.crop)
        if window.padded != (height, width):
            padded = batch.new_zeros((batch.shape[0], 3, *window.padded))
            top, left = window.offset
            padded[:, :, top : top + height, left : left + width] = batch
            batch = padded
        return batch[
            :, :, window.top : window.top + crop_height, window.left : window.left + crop_width
        ]


def _read_or_reason(path: str) -> bytes | str:
    try:
        return read_file_bytes(path)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
