"""Matching degree (MD): how well a conversation fits its image, by an image-text dual encoder.

MD is the cosine similarity between the image embedding and the embedding of the text
``MD_TEXT_PREFIX + <conversation>``, stored **times 100** (the scale of the paper's Table 4) in
``sample.scores["md"]``. Which model and text mode produced it is written on the sample under
``provenance["quality"]["md"]``.

Text modes (CLIP reads 77 tokens, SigLIP 64; a conversation is usually longer):

- ``truncate`` (the paper's recipe): the whole conversation, cut to the model's token limit.
  ``scores["md_coverage"]`` says which share of the conversation's tokens the model saw.
- ``per_turn``: each user+assistant **pair** is scored on its own (each pair with the prefix,
  cut to the limit if needed); ``scores["md"]`` is the mean over pairs and ``scores["md_min"]``
  the weakest pair, so one off-topic answer is not averaged away.

Models: Hugging Face CLIP / SigLIP checkpoints by hub id or local folder (``AutoModel`` with
``get_image_features`` / ``get_text_features``), and open_clip models as
``open_clip:ARCH/PRETRAINED`` (optional extra ``vlit[openclip]``).

Efficiency: every distinct image is decoded, preprocessed and encoded once (and kept in an LRU
cache across batches, since one image serves n rollouts in several modes); on a CUDA GPU images
are decoded by nvjpeg and preprocessed there (``device_images``, when torchvision is installed),
otherwise in worker processes with reduced-size JPEG decoding while the main process encodes
texts. Texts are tokenized once, ordered by token length, then by their tokens (texts that open
alike share a batch), and encoded in batches under ``torch.inference_mode``; a CLIP text tower
encodes the tokens every text of a batch starts with once and runs its last layer on the
end-of-text token only (``clip_text``: the same numbers for less work). Similarities are computed
in one operation per call. On CUDA the model runs in bfloat16 (float16 where bf16 is
unsupported) with SDPA attention and batches of 256.

Example:
    >>> scorer = ClipMatchingScorer(model="openai/clip-vit-base-patch32", text_mode="truncate")
    >>> scorer.setup()                                   # doctest: +SKIP
    >>> scored = scorer(samples)                         # doctest: +SKIP
    >>> scored[0].scores["md"]                           # doctest: +SKIP
    31.4
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.images import is_url
from vlit.quality.clip_text import CausalTextTower, supports_causal_tower
from vlit.quality.device_images import DeviceImages, nvjpeg_decoder, nvjpeg_unavailable_reason
from vlit.quality.devices import Precision, device_and_dtype, load_with_sdpa
from vlit.quality.image_preprocess import PreprocessSpec, preprocess_file
from vlit.reasons import Reason
from vlit.runners.base import Resources
from vlit.schema import Sample

if TYPE_CHECKING:
    import torch

TextMode = Literal["truncate", "per_turn"]
TEXT_MODES: tuple[TextMode, ...] = ("truncate", "per_turn")
DecodeMode = Literal["auto", "workers", "device"]
DECODE_MODES: tuple[DecodeMode, ...] = ("auto", "workers", "device")
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256

# Our wording of the paper's text template; the conversation follows it.
MD_TEXT_PREFIX = "A picture that this conversation is about: "
MD_SCALE = "cosine x 100"
PER_TURN_UNIT = "user+assistant pair"
IMAGE_TOKEN = "<image>"


def conversation_text(sample: Sample) -> str:
    """The conversation as one line of text, as the matching model reads it."""
    return " ".join(_turn_text(turn.role, turn.text) for turn in sample.turns if turn.text.strip())


def pair_texts(sample: Sample) -> list[str]:
    """One text per user+assistant pair (a lone turn forms its own unit)."""
    units: list[str] = []
    current: list[str] = []
    for turn in sample.turns:
        if not turn.text.strip():
            continue
        if turn.role == "user" and current:
            units.append(" ".join(current))
            current = []
        current.append(_turn_text(turn.role, turn.text))
    if current:
        units.append(" ".join(current))
    return units


def _turn_text(role: str, text: str) -> str:
    label = "Q:" if role == "user" else "A:"
    return f"{label} {' '.join(text.replace(IMAGE_TOKEN, ' ').split())}"


# -- models ------------------------------------------------------------------------------------
@dataclass
class TokenizedTexts:
    """Texts tokenized once: ``rows`` truncated to the model's limit (what it reads) and
    ``counts``, the untruncated token counts with special tokens (None when unknown)."""

    rows: list[list[int]]
    counts: list[int] | None


def encoding_order(rows: list[list[int]]) -> list[int]:
    """The order to encode token rows in: by length (short padding), then rows that share their
    first tokens together (the causal tower encodes a batch's shared prefix once)."""
    return sorted(range(len(rows)), key=lambda i: (len(rows[i]), rows[i]))


class DualEncoder(Protocol):
    """An image-text model that embeds both sides into one space (CLIP, SigLIP, ...)."""

    preprocess: PreprocessSpec
    max_text_tokens: int
    device: torch.device

    def describe(self) -> dict[str, Any]: ...

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        """Token ids of each text, truncated to the model's limit, with the untruncated counts."""
        ...

    def encode_tokens(self, rows: list[list[int]]) -> torch.Tensor:
        """L2-normalised float32 embeddings, one per row of token ids (from `tokenize`)."""
        ...

    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings of preprocessed images (B, 3, H, W)."""
        ...


def _normalise(features: torch.Tensor) -> torch.Tensor:
    import torch

    features = features.float()
    return features / torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-12)


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features;
    # transformers 4 returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _closing_special_tokens(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts after a text's own (CLIP: end-of-text)."""
    if getattr(tokenizer, "truncation_side", "right") != "right":
        raise ModelUnavailableError(
            "the matching model's tokenizer truncates on the left",
            fix="use a CLIP/SigLIP checkpoint whose tokenizer truncates on the right",
        )
    plain = tokenizer("a photo", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a photo")["input_ids"]
    for start in range(len(marked) - len(plain) + 1):
        if marked[start : start + len(plain)] == plain:
            return len(marked) - start - len(plain)
    return 0


class HuggingFaceDualEncoder:
    """A CLIP or SigLIP checkpoint loaded with ``transformers`` (hub id or local folder)."""

    def __init__(self, *, model: str, device: str | None, precision: Precision) -> None:
        try:
            import torch
            from transformers import AutoModel, AutoProcessor
        except ImportError as error:
            raise ModelUnavailableError(
                f"cannot load '{model}': transformers/torch are not installed ({error})",
                fix="pip install 'vlit[vision]' (with torch installed first)",
            ) from error
        path = Path(model).expanduser()
        looks_like_path = model.startswith((".", "/", "~")) or path.exists()
        if looks_like_path and not path.exists():
            raise ModelUnavailableError(
                f"matching model folder '{model}' does not exist",
                file=str(path),
                fix="pass the folder that holds config.json and model.safetensors, or a hub id",
            )
        source = str(path) if path.exists() else model
        try:
            self.processor = AutoProcessor.from_pretrained(source)
            self.model = load_with_sdpa(AutoModel, source)
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(
                f"cannot load matching model '{model}' ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})",
                fix=(
                    "the model hub is not reachable or the id is wrong: on a machine with access "
                    f"run `huggingface-cli download {model} --local-dir DIR`, copy DIR here and "
                    "pass --clip DIR (a local folder with config.json, weights, tokenizer and "
                    "preprocessor files)"
                ),
            ) from error
        if not hasattr(self.model, "get_image_features") or not hasattr(
            self.model, "get_text_features"
        ):
            raise ModelUnavailableError(
                f"'{model}' ({type(self.model).__name__}) is not an image-text dual encoder",
                fix="use a CLIP or SigLIP checkpoint",
            )
        self.name = model
        self.device, self.dtype = device_and_dtype(device, precision)
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = self.processor.tokenizer
        self.model_type = str(getattr(self.model.config, "model_type", ""))
        # SigLIP pools the last position and was trained on max-length padding; CLIP pools the
        # end-of-text token, so padding to the batch's longest text gives the same numbers.
        self.pad_to_max = self.model_type.startswith("siglip")
        # CLIP: the causal text tower that skips shared-prefix and non-final work (same numbers)
        self.causal_tower = (
            CausalTextTower(self.model) if supports_causal_tower(self.model) else None
        )
        positions = int(self.model.config.text_config.max_position_embeddings)
        tokenizer_limit = int(getattr(self.tokenizer, "model_max_length", positions) or positions)
        self.max_text_tokens = min(positions, tokenizer_limit)
        self.closing_special_tokens = _closing_special_tokens(self.tokenizer)
        self.preprocess = PreprocessSpec.from_processor_config(
            self.processor.image_processor.to_dict()
        )
        self._torch = torch

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "family": "huggingface",
            "model_type": self.model_type,
            "attention": str(getattr(self.model.config, "_attn_implementation", "")),
            "max_tokens": self.max_text_tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        """One tokenizer pass; the truncated rows are cut from the full ones as the tokenizer's
        own right-side truncation cuts them (the closing special tokens kept)."""
        full = self.tokenizer(texts, truncation=False, padding=False, verbose=False)["input_ids"]
        limit, closing = self.max_text_tokens, self.closing_special_tokens
        rows = [
            ids if len(ids) <= limit else ids[: limit - closing] + ids[len(ids) - closing :]
            for ids in full
        ]
        return TokenizedTexts(rows=rows, counts=[len(ids) for ids in full])

    def encode_tokens(self, rows: list[list[int]]) -> torch.Tensor:
        if self.causal_tower is not None:
            return _normalise(self.causal_tower(rows))
        encoded = self.tokenizer.pad(
            {"input_ids": rows},
            padding="max_length" if self.pad_to_max else "longest",
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        inputs = {"input_ids": encoded["input_ids"].to(self.device)}
        if "attention_mask" in encoded and not self.pad_to_max:
            inputs["attention_mask"] = encoded["attention_mask"].to(self.device)
        with self._torch.inference_mode():
            return _normalise(_pooled(self.model.get_text_features(**inputs)))

    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = self._torch.as_tensor(pixels).to(device=self.device, dtype=self.dtype)
        with self._torch.inference_mode():
            return _normalise(_pooled(self.model.get_image_features(pixel_values=tensor)))


class OpenClipDualEncoder:
    """An open_clip model, named ``open_clip:ARCH/PRETRAINED`` (PRETRAINED may be a file)."""

    def __init__(self, *, model: str, device: str | None, precision: Precision) -> None:
        try:
            import open_clip  # optional extra, imported only when asked for
            import torch
        except ImportError as error:
            raise ModelUnavailableError(
                f"cannot load '{model}': the open_clip package is not installed",
                fix="pip install 'vlit[openclip]', or use a Hugging Face CLIP/SigLIP checkpoint",
            ) from error
        spec = model.removeprefix("open_clip:")
        architecture, _, pretrained = spec.partition("/")
        if architecture.startswith("hf-hub:"):
            architecture, pretrained = spec, ""
        self.device, self.dtype = device_and_dtype(device, precision)
        try:
            self.model, _, transform = open_clip.create_model_and_transforms(
                architecture, pretrained=pretrained or None, device=self.device
            )
        except (OSError, RuntimeError, ValueError) as error:
            raise ModelUnavailableError(
                f"cannot load open_clip model '{spec}' ({error})",
                fix=(
                    "download the weights where the network is reachable and pass "
                    "open_clip:ARCH//path/to/weights.bin (a local file as PRETRAINED)"
                ),
            ) from error
        self.model = self.model.to(dtype=self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.name = model
        self.max_text_tokens = int(getattr(self.model, "context_length", 77))
        config = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = config.get("size", 224)
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        squash = config.get("resize_mode", "shortest") == "squash"
        self.preprocess = PreprocessSpec(
            resize_shortest_edge=None if squash else min(height, width),
            resize_to=(height, width) if squash else None,
            crop=None if squash else (height, width),
            mean=tuple(config.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(config.get("std", (0.26862954, 0.26130258, 0.27577711))),
        )
        self._torch = torch
        del transform  # open_clip's torchvision transform; PreprocessSpec reproduces it

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "family": "open_clip",
            "max_tokens": self.max_text_tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        """Rows padded to the context length, as open_clip's tokenizer returns them."""
        encode = getattr(self.tokenizer, "encode", None)
        counts = None if encode is None else [len(encode(text)) + 2 for text in texts]
        return TokenizedTexts(rows=self.tokenizer(texts).tolist(), counts=counts)

    def encode_tokens(self, rows: list[list[int]]) -> torch.Tensor:
        tokens = self._torch.tensor(rows, device=self.device)
        with self._torch.inference_mode():
            return _normalise(self.model.encode_text(tokens))

    def encode_pixels(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = self._torch.as_tensor(pixels).to(device=self.device, dtype=self.dtype)
        with self._torch.inference_mode():
            return _normalise(self.model.encode_image(tensor))


MODEL_FAMILIES: dict[str, type[HuggingFaceDualEncoder] | type[OpenClipDualEncoder]] = {
    "huggingface": HuggingFaceDualEncoder,
    "open_clip": OpenClipDualEncoder,
}


def load_dual_encoder(
    model: str, *, device: str | None = None, precision: Precision = "auto"
) -> DualEncoder:
    """Load ``model``: ``open_clip:ARCH/PRETRAINED`` for open_clip, else a Hugging Face id/path."""
    family = "open_clip" if model.startswith("open_clip:") else "huggingface"
    return MODEL_FAMILIES[family](model=model, device=device, precision=precision)


# -- the scorer --------------------------------------------------------------------------------
@dataclass
class _Pending:
    sample: Sample
    image_key: str
    text_indices: list[int]


class ClipMatchingScorer:
    """Stage that writes the matching degree (cosine x 100) of each sample.

    Scores: ``md`` (truncate: the conversation's score; per_turn: mean over user+assistant
    pairs), ``md_min`` (per_turn only: the weakest pair), ``md_coverage`` (share of the text's
    tokens the model read, when the tokenizer can tell). A sample whose image is missing or
    unreadable gets no ``md``; ``provenance["quality"]["md"]["status"]`` says why. ``counts``
    holds ``scored`` and ``not_computed_<reason>`` for the run summary.

    Where images are decoded (``decode``): ``device`` decodes and preprocesses them where the
    model runs (nvjpeg on a CUDA GPU when torchvision is installed, else PIL in this process);
    ``workers`` uses ``decode_workers`` spawned processes (0: this process) with reduced-size
    JPEG decoding when ``fast_decode``; ``auto`` picks ``device`` when nvjpeg can run, else
    ``workers``. As with any spawning multiprocessing code, a script that uses workers needs
    the ``if __name__ == "__main__":`` guard; if they die, decoding falls back to this process
    and ``counts["decode_workers_failed"]`` says so. ``batch_size`` (texts and images per
    forward pass) defaults to 32 on a CPU and 256 on a GPU.

    Example:
        >>> scorer = ClipMatchingScorer(model="/models/clip-vit-b-32", text_mode="per_turn")
        >>> scorer.setup()                    # doctest: +SKIP
        >>> batch = scorer(batch)             # doctest: +SKIP
    """

    name = "matching_degree"

    def __init__(
        self,
        *,
        model: str,
        text_mode: TextMode = "truncate",
        device: str | None = None,
        precision: Precision = "auto",
        batch_size: int | None = None,
        decode: DecodeMode = "auto",
        decode_workers: int = 2,
        fast_decode: bool = True,
        cache_images: bool = True,
        image_cache_size: int = 20_000,
    ) -> None:
        if text_mode not in TEXT_MODES:
            raise ConfigError(
                f"unknown matching text mode '{text_mode}'",
                fix=f"use one of: {', '.join(TEXT_MODES)}",
            )
        if (batch_size is not None and batch_size < 1) or decode_workers < 0:
            raise ConfigError(
                "matching batch_size must be >= 1 and decode_workers >= 0",
                fix="pass e.g. batch_size=32, decode_workers=2",
            )
        if decode not in DECODE_MODES:
            raise ConfigError(
                f"unknown image decode mode '{decode}'",
                fix=f"use one of: {', '.join(DECODE_MODES)}",
            )
        self.model_name = model
        self.text_mode = text_mode
        self.device = device
        self.precision = precision
        self.requested_batch_size = batch_size
        self.batch_size = batch_size or CPU_BATCH_SIZE
        self.decode = decode
        self.decode_workers = decode_workers
        self.fast_decode = fast_decode
        self.cache_images = cache_images
        self.image_cache_size = image_cache_size
        uses_gpu = (device or "").startswith("cuda")
        self.resources = Resources(
            cpus=1.0 + decode_workers,
            gpus=1.0 if uses_gpu else 0.0,
            batch_size=512,
            uses_model=True,
        )
        self.counts: Counter[str] = Counter()
        self.encoder: DualEncoder | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._device_images: DeviceImages | None = None
        self.decoder = "not set up"  # what decodes JPEGs: nvjpeg, pil or pil-reduced
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the model (raises ModelUnavailableError) and start the image decoding."""
        if self.encoder is None:
            self.encoder = load_dual_encoder(
                self.model_name, device=self.device, precision=self.precision
            )
        device = str(self.encoder.device)
        on_gpu = self.encoder.device.type == "cuda"
        if self.requested_batch_size is None:
            self.batch_size = GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE
        nvjpeg_missing = nvjpeg_unavailable_reason(device)
        if self.decode == "device" or (self.decode == "auto" and nvjpeg_missing is None):
            if self._device_images is None:
                decoder = nvjpeg_decoder(device) if nvjpeg_missing is None else None
                self._device_images = DeviceImages(
                    self.encoder.preprocess, device=device, jpeg_decoder=decoder
                )
                self.decoder = "nvjpeg" if decoder is not None else "pil"
            return
        self.decoder = "pil-reduced" if self.fast_decode else "pil"
        if self._pool is None and self.decode_workers > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=self.decode_workers, mp_context=get_context("spawn")
            )

    def worker_copy(self, share_journal: Callable[[Path], Any]) -> ClipMatchingScorer:
        """The copy a runner's workers use: the same settings, nothing loaded (each worker
        loads its own model)."""
        return ClipMatchingScorer(
            model=self.model_name,
            text_mode=self.text_mode,
            device=self.device,
            precision=self.precision,
            batch_size=self.requested_batch_size,
            decode=self.decode,
            decode_workers=self.decode_workers,
            fast_decode=self.fast_decode,
            cache_images=self.cache_images,
            image_cache_size=self.image_cache_size,
        )

    def close(self) -> None:
        """Stop the decoding workers and readers (the model stays loaded)."""
        self._stop_workers()
        if self._device_images is not None:
            self._device_images.close()
            self._device_images = None
        self.decoder = "not set up"

    def _stop_workers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ClipMatchingScorer:
        self.setup()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def provenance(self) -> dict[str, Any]:
        """What produced the scores: model, text mode, unit and scale."""
        if self.encoder is None:
            raise ConfigError("the matching scorer is not set up", fix="call setup() first")
        info = self.encoder.describe()
        info |= {
            "text_mode": self.text_mode,
            "unit": "conversation" if self.text_mode == "truncate" else PER_TURN_UNIT,
            "scale": MD_SCALE,
            "prefix": MD_TEXT_PREFIX,
            "decoder": self.decoder,
        }
        return info

    # -- scoring -------------------------------------------------------------------------------
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        if self.decoder == "not set up":
            self.setup()
        encoder = self.encoder
        assert encoder is not None
        info = self.provenance()
        pending: list[_Pending] = []
        texts: list[str] = []
        for sample in batch:
            reason = self._unscorable(sample)
            if reason is not None:
                self._not_computed(sample, info, reason)
                continue
            units = (
                [conversation_text(sample)] if self.text_mode == "truncate" else pair_texts(sample)
            )
            location = str(sample.image_location)
            image_key = location if is_url(location) else os.path.abspath(location)
            start = len(texts)
            texts.extend(MD_TEXT_PREFIX + unit for unit in units)
            pending.append(_Pending(sample, image_key, list(range(start, len(texts)))))
        if not pending:
            return batch
        # Cached mode: one slot per distinct image; uncached mode: one slot per sample.
        slots = [item.image_key if self.cache_images else str(i) for i, item in enumerate(pending)]
        jobs, image_embeddings = self._start_decoding(slots, [item.image_key for item in pending])
        tokens = encoder.tokenize(texts)
        text_embeddings = self._encode_texts(tokens.rows)
        decoded, image_errors = self._finish_images(jobs)
        image_embeddings |= decoded
        scorable = []
        for slot, item in zip(slots, pending, strict=True):
            if slot in image_errors:
                unreadable = Reason("image_unreadable", image_errors[slot])
                self._not_computed(item.sample, info, unreadable)
            else:
                scorable.append((slot, item))
        similarities = self._similarities(text_embeddings, image_embeddings, scorable)
        counts = tokens.counts
        for (_, item), values in zip(scorable, similarities, strict=True):
            scores = item.sample.scores
            scores["md"] = float(np.mean(values))
            if self.text_mode == "per_turn":
                scores["md_min"] = min(values)
            truncated = False
            if counts is not None:
                total = sum(counts[i] for i in item.text_indices)
                read = sum(min(counts[i], encoder.max_text_tokens) for i in item.text_indices)
                scores["md_coverage"] = read / total if total else 1.0
                truncated = read < total
            record = dict(info) | {"status": "computed", "units": len(values)}
            record["truncated"] = truncated
            item.sample.provenance.setdefault("quality", {})["md"] = record
            self.counts["scored"] += 1
        return batch

    def _unscorable(self, sample: Sample) -> Reason | None:
        if not sample.ok:
            return Reason("generation_failed")
        if sample.image is None:
            return Reason("no_image")
        if not any(turn.text.strip() for turn in sample.turns):
            return Reason("empty_conversation")
        return None

    def _not_computed(self, sample: Sample, info: dict[str, Any], reason: Reason) -> None:
        sample.scores.pop("md", None)
        sample.scores.pop("md_min", None)
        sample.provenance.setdefault("quality", {})["md"] = {
            "status": f"not_computed: {reason}",
            "model": info.get("model"),
            "text_mode": self.text_mode,
        }
        self.counts[f"not_computed_{reason.code}"] += 1

    def _similarities(
        self,
        text_embeddings: torch.Tensor,
        image_embeddings: dict[str, torch.Tensor],
        scorable: list[tuple[str, _Pending]],
    ) -> list[list[float]]:
        """Cosine x 100 of each text unit with its sample's image, computed in one operation
        (one transfer from the device) and split back per sample."""
        import torch

        if not scorable:
            return []
        images = torch.stack([image_embeddings[slot] for slot, _ in scorable])
        text_rows = [index for _, item in scorable for index in item.text_indices]
        image_rows = [row for row, (_, item) in enumerate(scorable) for _ in item.text_indices]
        values = ((text_embeddings[text_rows] * images[image_rows]).sum(dim=-1) * 100.0).tolist()
        split, start = [], 0
        for _, item in scorable:
            split.append(values[start : start + len(item.text_indices)])
            start += len(item.text_indices)
        return split

    def _encode_texts(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        assert self.encoder is not None
        # Batches of similar length that share prefixes; rows go back to their places.
        order = encoding_order(rows)
        chunks = [
            self.encoder.encode_tokens([rows[i] for i in order[start : start + self.batch_size]])
            for start in range(0, len(order), self.batch_size)
        ]
        stacked = torch.cat(chunks)
        result = torch.empty_like(stacked)
        result[torch.tensor(order)] = stacked
        return result

    def _start_decoding(
        self, slots: list[str], paths: list[str]
    ) -> tuple[dict[str, tuple[str, Future[Any] | None]], dict[str, torch.Tensor]]:
        """Submit each slot's image unless cached (cached ones are returned as ``known``): its
        read when decoding on the device, its decoding when there are workers; without either,
        images are decoded later, inline."""
        assert self.encoder is not None
        jobs: dict[str, tuple[str, Future[Any] | None]] = {}
        known: dict[str, torch.Tensor] = {}
        for slot, path in zip(slots, paths, strict=True):
            if slot in jobs or slot in known:
                continue
            if slot in self._cache:  # taken now: the LRU may evict it while this batch runs
                known[slot] = self._cache[slot]
                self._cache.move_to_end(slot)
                continue
            future: Future[Any] | None = None
            if self._device_images is not None:
                future = self._device_images.submit_read(path)
            elif self._pool is not None:
                future = self._pool.submit(
                    preprocess_file, path, self.encoder.preprocess, self.fast_decode
                )
            jobs[slot] = (path, future)
        return jobs, known

    def _finish_images(
        self, jobs: dict[str, tuple[str, Future[Any] | None]]
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Collect decoded pixels in batches, encode them; return embeddings and errors by slot."""
        assert self.encoder is not None
        embeddings: dict[str, torch.Tensor] = {}
        errors: dict[str, str] = {}
        if self._device_images is not None:
            self._finish_on_device(jobs, embeddings, errors)
            return embeddings, errors
        ready: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            if ready:
                pixels = np.stack([pixels for _, pixels in ready])
                self._keep(embeddings, [slot for slot, _ in ready], pixels)
                ready.clear()

        for slot, (path, future) in jobs.items():
            result = self._pixels(path, future)
            if isinstance(result, str):
                errors[slot] = result
                continue
            ready.append((slot, result))
            if len(ready) >= self.batch_size:
                flush()
        flush()
        return embeddings, errors

    def _finish_on_device(
        self,
        jobs: dict[str, tuple[str, Future[Any] | None]],
        embeddings: dict[str, torch.Tensor],
        errors: dict[str, str],
    ) -> None:
        """Decode and preprocess the read files on the model's device, a batch at a time."""
        assert self._device_images is not None
        items = list(jobs.items())
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            files: list[bytes | str] = []
            for _, (_, future) in chunk:
                assert future is not None  # on the device every file is read ahead
                files.append(future.result())
            pixels, failed = self._device_images.prepare(files)
            for index, reason in failed.items():
                errors[chunk[index][0]] = reason
            if pixels is not None:
                slots = [slot for index, (slot, _) in enumerate(chunk) if index not in failed]
                self._keep(embeddings, slots, pixels)

    def _keep(
        self,
        embeddings: dict[str, torch.Tensor],
        slots: list[str],
        pixels: np.ndarray | torch.Tensor,
    ) -> None:
        """Encode ``pixels`` and keep each row under its slot (and in the cache)."""
        assert self.encoder is not None
        for slot, row in zip(slots, self.encoder.encode_pixels(pixels), strict=True):
            embeddings[slot] = row
            if self.cache_images:
                self._remember(slot, row)

    def _pixels(self, path: str, future: Future[np.ndarray | str] | None) -> np.ndarray | str:
        assert self.encoder is not None
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:
                # A worker died (out of memory, or a script without the __main__ guard that
                # spawned workers need): decode in this process from now on.
                self.counts["decode_workers_failed"] += 1
                self._stop_workers()
        return preprocess_file(path, self.encoder.preprocess, self.fast_decode)

    def _remember(self, key: str, embedding: torch.Tensor) -> None:
        self._cache[key] = embedding
        if len(self._cache) > self.image_cache_size:
            self._cache.popitem(last=False)
