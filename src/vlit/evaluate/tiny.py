"""Tiny randomly initialised LLaVA and BLIP-2 checkpoints, for smoke runs and tests offline.

``build_tiny_llava`` trains a small byte-level BPE tokenizer on the texts given, adds the
``<image>`` token and a chat template, and saves a LLaVA model (tiny CLIP vision tower, tiny
Llama language model) with its processor: the folder loads through the same code as a real
checkpoint (``vlit bench --model DIR``, ``vlit tune --model DIR``). Its answers are noise.

Example:
    >>> build_tiny_llava("tiny-llava", texts=["a dog on a red sofa", "two cats"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Our own minimal template: "USER: <image>\n...\nASSISTANT: ...</s>\n" per round.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}"
    "{% else %}ASSISTANT: "
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(
    folder: str | Path,
    *,
    texts: Iterable[str],
    vocab_size: int = 600,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a tiny LLaVA checkpoint and processor in ``folder`` and return its path."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    bpe = _train_bpe(texts, vocab_size, ["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=TINY_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=_tiny_llama_config(tokenizer, hidden_size),
        image_token_index=tokenizer.get_vocab()["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_blip2(
    folder: str | Path,
    *,
    texts: Iterable[str],
    vocab_size: int = 500,
    image_size: int = 32,
    num_query_tokens: int = 4,
    seed: int = 0,
) -> Path:
    """Save a tiny BLIP-2 checkpoint (tiny ViT, Q-Former and OPT) with its processor.

    No chat template: vlit uses BLIP-2's plain "Question: ... Answer:" layout for it.
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    bpe = _train_bpe(texts, vocab_size, ["<pad>", "</s>", "<unk>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    # the processor adds the <image> token itself (one per query token, in front of the text)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    vocab = len(processor.tokenizer)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        qformer_config=Blip2QFormerConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
            vocab_size=100,
        ),
        text_config=OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        num_query_tokens=num_query_tokens,
        image_token_index=processor.tokenizer.get_vocab()["<image>"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _tiny_llama_config(tokenizer: Any, hidden_size: int) -> Any:
    """A two-layer Llama sized to ``tokenizer``, the language model of every tiny builder."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (offline, seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(texts),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return bpe


def build_tiny_openflamingo(
    folder: str | Path,
    *,
    texts: Iterable[str],
    vocab_size: int = 500,
    image_size: int = 32,
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a tiny OpenFlamingo: open_clip ViT (``vision/``), Llama language model and tokenizer
    (``lm/``), ``openflamingo.json`` and the Flamingo weights (``checkpoint.pt``).

    The Flamingo weights come from the model that ``create_model_and_transforms`` builds from
    these parts, with the gates of the cross-attention layers opened (a fresh model has them at
    zero, which would hide the image from the language model). Needs ``vlit[openflamingo]``.
    """
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from vlit.evaluate.openflamingo import (
        CHECKPOINT_FILE,
        END_OF_CHUNK,
        MEDIA_TOKEN,
        SPEC_FILE,
        load_openflamingo,
        trainable_state_dict,
    )

    folder = Path(folder)
    vision, lm = folder / "vision", folder / "lm"
    vision.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_cfg: dict[str, Any] = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 2,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 8,
            "vocab_size": 64,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    clip_config = {
        "model_cfg": model_cfg,
        # CLIP's normalisation, as open_clip's ViT configs
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (vision / "open_clip_config.json").write_text(json.dumps(clip_config), encoding="utf-8")
    clip = open_clip.model.CLIP(**model_cfg)
    save_file(clip.state_dict(), vision / "open_clip_model.safetensors")

    bpe = _train_bpe(texts, vocab_size, ["<pad>", "</s>", "<unk>", END_OF_CHUNK, MEDIA_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=[END_OF_CHUNK, MEDIA_TOKEN],
    )
    config = _tiny_llama_config(tokenizer, hidden_size)
    LlamaForCausalLM(config).save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    spec = {
        "clip_vision_encoder_path": "local-dir:vision",
        "clip_vision_encoder_pretrained": None,
        "lang_encoder_path": "lm",
        "tokenizer_path": "lm",
        "cross_attn_every_n_layers": 1,
        "checkpoint": CHECKPOINT_FILE,
    }
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    # the Flamingo modules of the model built from these parts, gates opened
    flamingo = _fresh_flamingo(folder)
    with torch.no_grad():
        for layer in flamingo.lang_encoder.gated_cross_attn_layers:
            if layer is not None:
                layer.attn_gate.fill_(1.0)
                layer.ff_gate.fill_(1.0)
    torch.save(trainable_state_dict(flamingo), folder / CHECKPOINT_FILE)
    load_openflamingo(folder, device=torch.device("cpu"), dtype=torch.float32)  # loads back
    return folder


def _fresh_flamingo(folder: Path) -> Any:
    """The Flamingo model ``create_model_and_transforms`` builds from the folder's parts."""
    import contextlib
    import sys

    from open_flamingo import create_model_and_transforms

    from vlit.evaluate.openflamingo import read_spec

    spec = read_spec(folder)
    with contextlib.redirect_stdout(sys.stderr):
        flamingo, _, _ = create_model_and_transforms(
            clip_vision_encoder_path=spec.clip_vision_encoder_path,
            clip_vision_encoder_pretrained=spec.clip_vision_encoder_pretrained,
            lang_encoder_path=spec.lang_encoder_path,
            tokenizer_path=spec.tokenizer_path,
            cross_attn_every_n_layers=spec.cross_attn_every_n_layers,
        )
    return flamingo
