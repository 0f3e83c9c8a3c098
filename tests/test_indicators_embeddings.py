"""Embedders on real models (MiniLM, WordLlama) and the on-disk embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlit.errors import ModelUnavailableError
from vlit.quality.indicators.embeddings import (
    EmbeddingCache,
    StaticEmbedder,
    TransformerEmbedder,
    bundled_minilm_folder,
)


@pytest.fixture(scope="module")
def responses(llava_slice: Path) -> list[str]:
    records = json.loads(llava_slice.read_text())
    return [r["conversations"][1]["value"] for r in records[:200]]


@pytest.fixture(scope="module")
def minilm() -> TransformerEmbedder:
    embedder = TransformerEmbedder(model="minilm")
    embedder.setup()
    return embedder


@pytest.mark.model
def test_minilm_matches_sentence_transformers(
    minilm: TransformerEmbedder, responses: list[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    ours = minilm.embed(responses[:64])
    reference = SentenceTransformer(str(bundled_minilm_folder()), device="cpu").encode(
        responses[:64], normalize_embeddings=True
    )
    assert ours.shape == (64, 384)
    assert minilm.pooling == "mean"
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.model
def test_bf16_vectors_are_close_and_cached_apart(
    tmp_path: Path, minilm: TransformerEmbedder, responses: list[str]
) -> None:
    bf16 = TransformerEmbedder(model="minilm", precision="bf16")  # a GPU's default, here on CPU
    assert str(minilm.device) == "cpu" and minilm.batch_size == 64  # no GPU: fp32, batch 64
    assert bf16.model_id == minilm.model_id + ":bfloat16"
    cache = EmbeddingCache(tmp_path)
    full, reduced = cache.embed(minilm, responses[:64]), cache.embed(bf16, responses[:64])
    assert cache.hits == 0  # float32 vectors are not served for a bf16 request
    assert (full * reduced).sum(axis=1).min() > 0.999  # measured 0.99993 on 200 responses
    assert np.abs(full - reduced).max() > 1e-4  # and really computed in bf16


@pytest.mark.model
def test_static_embedder_offline_and_semantic() -> None:
    vectors = StaticEmbedder().embed(
        ["a red double-decker bus", "a red bus in the city", "a bowl of soup", ""]
    )
    assert vectors.shape == (4, 256)
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert not vectors[3].any()  # empty text: zero vector, not NaN


@pytest.mark.model
def test_cache_reuses_vectors(
    tmp_path: Path, minilm: TransformerEmbedder, responses: list[str]
) -> None:
    cache = EmbeddingCache(tmp_path)
    first = cache.embed(minilm, responses[:40])
    assert cache.misses == len(set(responses[:40])) and cache.hits == 0
    again = EmbeddingCache(tmp_path)
    second = again.embed(minilm, responses[20:60])
    assert again.hits == len(set(responses[20:40]))
    assert again.misses == len(set(responses[40:60]) - set(responses[20:40]))
    assert np.allclose(second[:20], first[20:40])
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_unknown_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailableError, match="--embedder PATH"):
        TransformerEmbedder(model="princeton-nlp/sup-simcse-bert-base-uncased").setup()


def test_simcse_style_checkpoint_uses_cls_pooling(tmp_path: Path) -> None:
    """A tiny random BERT saved under a SimCSE-like name loads through the user path."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "my-simcse-bert"
    config = BertConfig(
        vocab_size=120,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(folder)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "dog": 5, "cat": 6}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(folder)
    embedder = TransformerEmbedder(model=str(folder))
    vectors = embedder.embed(["a dog", "a cat a cat"])
    assert embedder.pooling == "cls"
    assert vectors.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=4), size=st.integers(0, 40))
def test_r_subsample_is_the_same_bottom_k_in_any_batching(
    responses: list[str], cuts: list[int], size: int
) -> None:
    """R keeps the ``subsample_size`` distinct response keys of smallest seeded hash and one hash
    per response: however the stream is cut into batches and workers merged."""
    from vlit.quality.indicators.response_diversity import (
        ResponseDiversityIndicator,
        response_key,
    )
    from vlit.schema import Sample, Turn

    texts = responses[:300] + responses[:50]  # 50 repeated responses
    samples = [
        Sample(f"s{i}", turns=[Turn("user", "Q?"), Turn("assistant", t)])
        for i, t in enumerate(texts)
    ]

    def indicator() -> ResponseDiversityIndicator:
        return ResponseDiversityIndicator(embedder=None, subsample_size=size, seed=3)  # type: ignore[arg-type]

    whole = indicator()
    whole.update(samples)
    bounds = [0, *sorted(cuts), len(samples)]
    parts = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        part = indicator()
        part.update(samples[start:end])
        parts.append(part)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    distinct = sorted({response_key(t) for t in texts}, key=whole._hash)
    assert sorted(whole.kept.values()) == sorted(distinct[:size])
    assert merged.kept == whole.kept and merged.responses == whole.responses == len(texts)
