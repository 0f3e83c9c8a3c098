"""Randomly initialised CLIP and SigLIP checkpoints, written to a folder like a real one.

No CLIP or SigLIP weights can be downloaded on an offline machine, yet the loading, tokenising,
preprocessing and scoring code must run for real. These builders write a complete checkpoint
(config, weights, image processor, tokenizer) with ``save_pretrained``, so it is loaded back
through exactly the path a user's downloaded checkpoint takes. The scores it gives are
meaningless as quality measures; they are real outputs of a real (random) model.

The tokenizers are built here from scratch: a byte-level BPE in CLIP's format (all 256 byte
symbols, their end-of-word forms and a few merges of common English pieces) and, for SigLIP, a
word-level tokenizer over a small English vocabulary with an end-of-sequence token.

Example:
    >>> path = save_random_clip("/tmp/tiny-clip", shape="tiny", seed=0)  # doctest: +SKIP
    >>> scorer = ClipMatchingScorer(model=str(path))                      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

CheckpointShape = Literal["tiny", "vit-b-32", "vit-l-14"]


def _tower(hidden: int, intermediate: int, layers: int, heads: int, **extra: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    } | extra


# (text tower, vision tower, projection) dimensions; the ViT ones are OpenAI's CLIP checkpoints'
_SHAPES: dict[str, tuple[dict[str, int], dict[str, int], int]] = {
    "tiny": (_tower(32, 64, 2, 4), _tower(32, 64, 2, 4, patch_size=32), 16),
    "vit-b-32": (_tower(512, 2048, 12, 8), _tower(768, 3072, 12, 12, patch_size=32), 512),
    "vit-l-14": (_tower(768, 3072, 12, 12), _tower(1024, 4096, 24, 16, patch_size=14), 768),
}

# Common English pieces merged by the BPE tokenizer (our own short list, enough to make tokens
# longer than single bytes, so truncation and padding behave like a real vocabulary's).
_MERGE_WORDS = (
    "the a an of to in on is are and with this that there picture image conversation "
    "what how many where person dog cat man woman table car red blue two three"
).split()

_SIGLIP_WORDS = (
    "the a an of to in on is are and with this that there picture image conversation what "
    "how many where person people dog dogs cat cats man woman table car red blue green one two "
    "three four yes no it its at by for from as be can see looks like photo shows q user "
    "assistant"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-printable-character table of byte-level BPE (the GPT-2/CLIP convention)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters), strict=True))


def build_clip_tokenizer(max_length: int = 77) -> Any:
    """A byte-level BPE tokenizer in CLIP's format, built without downloading anything."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _MERGE_WORDS:
        # merge left to right: ((t h) e</w>) -> "the</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = (merged, piece)
            result = merged + piece
            if rule not in merges:
                merges.append(rule)
            if result not in vocab:
                vocab[result] = len(vocab)
            merged = result
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    tokenizer.model_max_length = max_length
    return tokenizer


def build_siglip_tokenizer(max_length: int = 64) -> Any:
    """A word-level tokenizer with an end-of-sequence token, shaped like SigLIP's."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in _SIGLIP_WORDS:
        vocab.setdefault(word, len(vocab))
    for character in "abcdefghijklmnopqrstuvwxyz0123456789.,:;?!'\"-":
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def save_random_clip(folder: str | Path, *, shape: CheckpointShape = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised CLIP checkpoint (model, processor, tokenizer) to ``folder``.

    ``shape="vit-b-32"`` / ``"vit-l-14"`` have the dimensions of OpenAI's ViT-B/32 and ViT-L/14
    (for benchmarks); ``"tiny"`` is a few hundred kilobytes (for tests).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_clip_tokenizer(max_length=77)
    text_shape, vision_shape, projection_dim = _SHAPES[shape]
    text: dict[str, Any] = text_shape | {"projection_dim": projection_dim}
    vision: dict[str, Any] = vision_shape | {"projection_dim": projection_dim}
    text |= {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision |= {"image_size": 224}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_random_siglip(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny randomly initialised SigLIP checkpoint (model, processor, tokenizer)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = build_siglip_tokenizer(max_length=64)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 32,
    }
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tokenizer)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
