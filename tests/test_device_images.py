"""Decoding and preprocessing on the model's device, checked on the CPU against the PIL path.

No GPU here: nvjpeg itself cannot run. Everything around it does: the torch preprocessing, the
PIL fallback, and the batch logic, driven by a CPU JPEG decoder with nvjpeg's contract (a batch
in, images out, an exception for the whole batch when one file is bad).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from random_models import save_random_clip
from vlit.errors import ConfigError
from vlit.quality.device_images import DeviceImages, nvjpeg_unavailable_reason
from vlit.quality.image_preprocess import PreprocessSpec, preprocess_file
from vlit.quality.matching import ClipMatchingScorer
from vlit.schema import Sample, Turn

CLIP_SPEC = PreprocessSpec(resize_shortest_edge=224, crop=(224, 224))
SIGLIP_SPEC = PreprocessSpec(resize_to=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CROP_ONLY_SPEC = PreprocessSpec(crop=(224, 224))  # small images get zero padding


class CpuJpegBatchDecoder:
    """Decodes a batch of JPEGs on the CPU with nvjpeg's contract; counts its calls."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, files: list[torch.Tensor]) -> list[torch.Tensor]:
        self.batches.append(len(files))
        images = []
        for file in files:
            try:
                with Image.open(io.BytesIO(file.numpy().tobytes())) as image:
                    array = np.asarray(image.convert("RGB"))
            except OSError as error:
                raise RuntimeError(f"decode failed: {error}") from error
            images.append(torch.from_numpy(array.transpose(2, 0, 1).copy()))
        return images


@pytest.fixture(scope="module")
def image_files(coco_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Real COCO JPEGs, a PNG, and a small JPEG that a 224 crop must pad."""
    folder = tmp_path_factory.mktemp("device_images")
    png = folder / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).resize((300, 200)).save(png)
    small = folder / "small.jpg"
    Image.fromarray(skimage_data.coffee()).resize((150, 100)).save(small, quality=90)
    coco = sorted(str(p) for p in (coco_tiny / "train2017").glob("*.jpg"))[:12]
    return [*coco, str(png), str(small)]


def grey_levels(ours: torch.Tensor, theirs: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Absolute pixel differences in 8-bit grey levels (undoing the normalisation)."""
    assert spec.std is not None
    std = np.asarray(spec.std).reshape(1, 3, 1, 1)
    return np.abs(ours.numpy() - theirs) * std * 255


# (spec, most grey levels any pixel may differ by, share of pixels that must be equal): the
# shortest-edge resize of these photos keeps PIL's pass order (width first); SigLIP's square
# resize of portrait photos is where Pillow 13 runs the height pass first; a crop alone is exact.
@pytest.mark.parametrize(
    ("spec", "most", "equal_share"),
    [(CLIP_SPEC, 1, 0.999), (SIGLIP_SPEC, 5, 0.97), (CROP_ONLY_SPEC, 0, 1.0)],
)
def test_device_pixels_match_the_pil_path(
    image_files: list[str], spec: PreprocessSpec, most: int, equal_share: float
) -> None:
    images = DeviceImages(spec, device="cpu")
    pixels, errors = images.prepare(images.read(image_files))
    images.close()
    reference = np.stack([preprocess_file(path, spec, fast_decode=False) for path in image_files])
    assert errors == {}
    assert pixels is not None and tuple(pixels.shape) == reference.shape
    difference = grey_levels(pixels, reference, spec)
    assert difference.max() <= most + 1e-3
    assert (difference < 1e-3).mean() >= equal_share


def test_one_bad_jpeg_in_a_batch_is_found_and_the_rest_decoded(
    image_files: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [image_files[0], str(broken), image_files[-2], str(tmp_path / "missing.jpg")]
    paths.append(image_files[1])
    decoder = CpuJpegBatchDecoder()
    images = DeviceImages(CLIP_SPEC, device="cpu", jpeg_decoder=decoder)
    pixels, errors = images.prepare(images.read(paths))
    clean = CpuJpegBatchDecoder()
    clean_images = DeviceImages(CLIP_SPEC, device="cpu", jpeg_decoder=clean)
    expected, clean_errors = clean_images.prepare(clean_images.read([paths[0], paths[2], paths[4]]))
    images.close()
    clean_images.close()
    assert sorted(errors) == [1, 3]
    assert errors[1] == "OSError: Truncated File Read"  # PIL's verdict, after the decoder's
    assert errors[3].startswith("FileNotFoundError")
    # the batch of 3 JPEGs failed, then each was tried alone; the PNG never reached the decoder
    assert decoder.batches == [3, 1, 1, 1]
    assert clean.batches == [2] and clean_errors == {}
    assert pixels is not None and expected is not None
    assert torch.equal(pixels, expected)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("clip") / "clip", shape="tiny", seed=3)


def samples_for(paths: list[str]) -> list[Sample]:
    turns = [Turn("user", "What is in the picture?"), Turn("assistant", "A photo of a scene.")]
    return [
        Sample(
            sample_id=f"s{i}",
            turns=list(turns),
            image=Path(path).name,
            image_root=str(Path(path).parent),
        )
        for i, path in enumerate(paths)
    ]


def test_scoring_with_device_decoding_matches_worker_decoding(
    tiny_clip: Path, image_files: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [*image_files, str(broken)]
    scored = {}
    for decode in ("device", "workers"):
        with ClipMatchingScorer(
            model=str(tiny_clip), decode=decode, decode_workers=1, fast_decode=False, batch_size=4
        ) as scorer:
            scored[decode] = scorer(samples_for(paths))
            counts = dict(scorer.counts)
        assert counts == {"scored": len(image_files), "not_computed_image_unreadable": 1}
    on_device, in_workers = scored["device"], scored["workers"]
    assert on_device[0].provenance["quality"]["md"]["decoder"] == "pil"
    assert in_workers[0].provenance["quality"]["md"]["decoder"] == "pil"
    for ours, theirs in zip(on_device[:-1], in_workers[:-1], strict=True):
        # measured 0.004 at most, where the scores of these photos spread over ~70 points
        assert ours.scores["md"] == pytest.approx(theirs.scores["md"], abs=0.01)
    reasons = {mode: scored[mode][-1].provenance["quality"]["md"]["status"] for mode in scored}
    assert reasons["device"] == reasons["workers"]
    assert reasons["device"].startswith("not_computed: image_unreadable: OSError")


def test_auto_decoding_on_a_cpu_uses_reduced_size_workers(tiny_clip: Path) -> None:
    with ClipMatchingScorer(model=str(tiny_clip), decode_workers=0) as scorer:
        assert scorer.decoder == "pil-reduced"
        assert scorer.batch_size == 32
    assert "cpu" in (nvjpeg_unavailable_reason("cpu") or "")
    assert nvjpeg_unavailable_reason("cuda") is not None  # no CUDA (or torchvision) here


def test_an_unknown_decode_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="decode mode 'gpu'"):
        ClipMatchingScorer(model="unused", decode="gpu")  # type: ignore[arg-type]
