"""OpenFlamingo models (the ``open_flamingo`` package) behind vlit's model contract.

An OpenFlamingo checkpoint is loaded as its users load it: ``create_model_and_transforms``
builds the model from an open_clip vision encoder, a causal language model and its tokenizer,
then the Flamingo weights file (``checkpoint.pt``: perceiver resampler, gated cross-attention
layers, embeddings) is loaded on top. A folder is an OpenFlamingo checkpoint when it holds
``openflamingo.json``, which names those parts (paths relative to the folder are resolved
against it)::

    {"clip_vision_encoder_path": "ViT-L-14", "clip_vision_encoder_pretrained": "openai",
     "lang_encoder_path": "anas-awadalla/mpt-1b-redpajama-200b",
     "tokenizer_path": "anas-awadalla/mpt-1b-redpajama-200b",
     "cross_attn_every_n_layers": 1, "checkpoint": "checkpoint.pt"}

or just ``{"preset": "openflamingo-3b"}`` (``OPENFLAMINGO_PRESETS``). A folder with only a
``checkpoint.pt`` (what ``hf download openflamingo/OpenFlamingo-3B-vitl-mpt1b`` gives) is read as
``openflamingo-3b`` when ``--family openflamingo`` is passed.

Prompt layout (OpenFlamingo's interleaved format): ``<image>Question: ... Answer: ...`` with
``<|endofchunk|>`` closing each answer.

Example:
    >>> vlm = load_openflamingo("checkpoints/openflamingo-3b", device="cuda")  # doctest: +SKIP
    >>> vlm.prompt("How many dogs are there?")                              # doctest: +SKIP
    '<image>Question: How many dogs are there? Answer:'
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlit.errors import ConfigError, ModelUnavailableError

if TYPE_CHECKING:
    from PIL import Image

    from vlit.evaluate.models import VisionLanguageModel

FAMILY = "openflamingo"
SPEC_FILE = "openflamingo.json"
CHECKPOINT_FILE = "checkpoint.pt"
MEDIA_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
INSTALL = "pip install 'vlit[openflamingo]' && pip install --no-deps open-flamingo==2.0.1"

#: The released OpenFlamingo models (their model cards' arguments to create_model_and_transforms).
OPENFLAMINGO_PRESETS: dict[str, dict[str, Any]] = {
    "openflamingo-3b": {
        "clip_vision_encoder_path": "ViT-L-14",
        "clip_vision_encoder_pretrained": "openai",
        "lang_encoder_path": "anas-awadalla/mpt-1b-redpajama-200b",
        "tokenizer_path": "anas-awadalla/mpt-1b-redpajama-200b",
        "cross_attn_every_n_layers": 1,
    },
    "openflamingo-3b-instruct": {
        "clip_vision_encoder_path": "ViT-L-14",
        "clip_vision_encoder_pretrained": "openai",
        "lang_encoder_path": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        "tokenizer_path": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        "cross_attn_every_n_layers": 1,
    },
    "openflamingo-4b": {
        "clip_vision_encoder_path": "ViT-L-14",
        "clip_vision_encoder_pretrained": "openai",
        "lang_encoder_path": "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "tokenizer_path": "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "cross_attn_every_n_layers": 2,
    },
    "openflamingo-9b": {
        "clip_vision_encoder_path": "ViT-L-14",
        "clip_vision_encoder_pretrained": "openai",
        "lang_encoder_path": "anas-awadalla/mpt-7b",
        "tokenizer_path": "anas-awadalla/mpt-7b",
        "cross_attn_every_n_layers": 4,
    },
}
DEFAULT_PRESET = "openflamingo-3b"


@dataclass(frozen=True)
class OpenFlamingoSpec:
    """What ``create_model_and_transforms`` is called with, and the Flamingo weights file."""

    clip_vision_encoder_path: str
    clip_vision_encoder_pretrained: str | None
    lang_encoder_path: str
    tokenizer_path: str
    cross_attn_every_n_layers: int
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "clip_vision_encoder_path": self.clip_vision_encoder_path,
            "clip_vision_encoder_pretrained": self.clip_vision_encoder_pretrained,
            "lang_encoder_path": self.lang_encoder_path,
            "tokenizer_path": self.tokenizer_path,
            "cross_attn_every_n_layers": self.cross_attn_every_n_layers,
            "checkpoint": self.checkpoint,
        }


def is_openflamingo_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding ``openflamingo.json``."""
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(folder: str | Path) -> OpenFlamingoSpec:
    """The folder's ``openflamingo.json`` (or the 3B preset for a bare ``checkpoint.pt``)."""
    folder = Path(folder)
    spec_path = folder / SPEC_FILE
    if spec_path.is_file():
        try:
            raw = json.loads(spec_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"not valid JSON ({error})", file=str(spec_path), fix="fix the JSON syntax"
            ) from error
        if not isinstance(raw, dict):
            raise ConfigError("expected a JSON object", file=str(spec_path))
    elif (folder / CHECKPOINT_FILE).is_file():
        raw = {"preset": DEFAULT_PRESET}
    else:
        raise ModelUnavailableError(
            f"'{folder}' is not an OpenFlamingo checkpoint folder (no {SPEC_FILE} and no "
            f"{CHECKPOINT_FILE})",
            file=str(folder),
            fix=f"put the Flamingo weights in {folder}/{CHECKPOINT_FILE} and describe the "
            f"vision encoder and language model in {SPEC_FILE} (see docs/validation.md)",
        )
    preset = raw.pop("preset", None)
    values: dict[str, Any] = {"checkpoint": CHECKPOINT_FILE}
    if preset is not None:
        if preset not in OPENFLAMINGO_PRESETS:
            raise ConfigError(
                f"unknown OpenFlamingo preset '{preset}'",
                file=str(spec_path),
                fix=f"use one of: {', '.join(OPENFLAMINGO_PRESETS)}",
            )
        values.update(OPENFLAMINGO_PRESETS[preset])
    values.update(raw)
    fields = set(OpenFlamingoSpec.__dataclass_fields__)
    unknown = sorted(set(values) - fields)
    missing = sorted(fields - set(values))
    if unknown or missing:
        raise ConfigError(
            f"unknown fields {unknown}, missing fields {missing}"
            if unknown and missing
            else (f"unknown fields {unknown}" if unknown else f"missing fields {missing}"),
            file=str(spec_path),
            fix=f"give {', '.join(sorted(fields))} or a preset",
        )
    return OpenFlamingoSpec(
        clip_vision_encoder_path=_local(values["clip_vision_encoder_path"], folder),
        clip_vision_encoder_pretrained=values["clip_vision_encoder_pretrained"],
        lang_encoder_path=_local(values["lang_encoder_path"], folder),
        tokenizer_path=_local(values["tokenizer_path"], folder),
        cross_attn_every_n_layers=int(values["cross_attn_every_n_layers"]),
        checkpoint=str(folder / values["checkpoint"]),
    )


def _local(value: str, folder: Path) -> str:
    """A path relative to the folder made absolute; a Hub id or open_clip name left as it is."""
    prefix = "local-dir:" if value.startswith("local-dir:") else ""
    rest = value[len(prefix) :]
    candidate = folder / rest
    if rest and not Path(rest).is_absolute() and candidate.exists():
        return prefix + str(candidate.resolve())
    return value


@dataclass
class FlamingoConfig:
    """What vlit reads from a model's config: its type, image token and language model's."""

    model_type: str
    image_token_id: int
    text_config: Any


class OpenFlamingoModel(torch.nn.Module):
    """The Flamingo model with the keyword interface vlit's bench and tuning loops call.

    ``forward(input_ids, attention_mask, vision_x, labels)`` and ``generate(...)`` map to
    Flamingo's ``lang_x``/``vision_x`` arguments; ``vision_x`` is (batch, 1 image, 1 frame, C,
    H, W).
    """

    def __init__(self, flamingo: Any, *, spec: OpenFlamingoSpec) -> None:
        super().__init__()
        self.flamingo = flamingo
        self.spec = spec
        self.config = FlamingoConfig(
            model_type=FAMILY,
            image_token_id=int(flamingo.media_token_id),
            text_config=flamingo.lang_encoder.config,
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.flamingo.lang_encoder.parameters()).dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vision_x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        return self.flamingo(
            vision_x=vision_x, lang_x=input_ids, attention_mask=attention_mask, labels=labels
        )

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vision_x: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.flamingo.generate(
            vision_x=vision_x, lang_x=input_ids, attention_mask=attention_mask, **kwargs
        )

    def save_pretrained(self, out: str | Path) -> None:
        """Write ``checkpoint.pt`` as open_flamingo's training script does (trained modules and
        the embeddings) and ``openflamingo.json`` naming the same base parts."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(trainable_state_dict(self.flamingo), out / CHECKPOINT_FILE)
        spec = {**self.spec.to_json(), "checkpoint": CHECKPOINT_FILE}
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def trainable_state_dict(flamingo: Any) -> dict[str, torch.Tensor]:
    """The Flamingo weights a checkpoint holds (open_flamingo's ``filter_state_dict_to_trainable``):
    the perceiver, the gated cross-attention layers and the embeddings (the added ``<image>`` and
    ``<|endofchunk|>`` rows must be the same at every load); not the frozen backbones."""
    state = flamingo.state_dict()
    keep: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith("vision_encoder.") or ".old_decoder_blocks." in name:
            continue
        if name.startswith("lang_encoder.gated_cross_attn_layers."):
            continue  # the same tensors as the decoder layers' gated_cross_attn_layer
        if (
            name.startswith("perceiver.")
            or ".gated_cross_attn_layer." in name
            or "embed" in name
            or name.endswith("wte.weight")
        ):
            keep[name] = tensor.detach().cpu().clone()
    return keep


class OpenFlamingoProcessor:
    """Tokenizer plus open_clip's image transform, called like a Hugging Face processor."""

    image_token = MEDIA_TOKEN
    chat_template = None

    def __init__(self, *, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(MEDIA_TOKEN))

    def __call__(
        self,
        *,
        text: list[str],
        images: list[Image.Image],
        return_tensors: str = "pt",
        padding: bool = False,
        padding_side: str = "right",
        add_special_tokens: bool = True,
    ) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            text,
            return_tensors=return_tensors,
            padding=padding,
            padding_side=padding_side,
            add_special_tokens=add_special_tokens,
        )
        pixels = torch.stack([self.image_processor(image) for image in images])
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "vision_x": pixels[:, None, None],  # one image, one frame per text
        }

    def save_pretrained(self, out: str | Path) -> None:
        """Nothing to write: the tokenizer and the transform come from the base parts."""


def load_openflamingo(
    folder: str | Path, *, device: torch.device, dtype: torch.dtype, training: bool = False
) -> VisionLanguageModel:
    """Build the model from the folder's spec and load its Flamingo weights."""
    from vlit.evaluate.models import VisionLanguageModel

    spec = read_spec(folder)
    create_model_and_transforms = _open_flamingo_factory()
    try:
        # open_flamingo prints a line while building: keep stdout for vlit's own output
        with contextlib.redirect_stdout(sys.stderr):
            flamingo, image_processor, tokenizer = create_model_and_transforms(
                clip_vision_encoder_path=spec.clip_vision_encoder_path,
                clip_vision_encoder_pretrained=spec.clip_vision_encoder_pretrained,
                lang_encoder_path=spec.lang_encoder_path,
                tokenizer_path=spec.tokenizer_path,
                cross_attn_every_n_layers=spec.cross_attn_every_n_layers,
            )
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelUnavailableError(
            f"cannot build OpenFlamingo from {spec.clip_vision_encoder_path} and "
            f"{spec.lang_encoder_path} ({type(error).__name__}: {str(error).splitlines()[0]})",
            file=str(folder),
            fix="download the vision encoder and language model where the Hub is reachable and "
            f"point {SPEC_FILE} at the local folders",
        ) from error
    _load_flamingo_weights(flamingo, spec)
    _allow_generation_without_mask(flamingo.lang_encoder)
    flamingo.to(device=device, dtype=dtype)
    model = OpenFlamingoModel(flamingo, spec=spec)
    model.train(training)
    processor = OpenFlamingoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return VisionLanguageModel(
        name=str(folder), model=model, processor=processor, family=FAMILY, device=device
    )


class _AttentionMaskOptional:
    """open_flamingo 2.0.1's language-model forward requires ``attention_mask``, and
    transformers >= 5 leaves it out of ``generate``'s calls when it is all ones (no padding)."""

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        return super().forward(input_ids, attention_mask, **kwargs)  # type: ignore[misc]


def _allow_generation_without_mask(lang_encoder: Any) -> None:
    # the same mechanism open_flamingo uses to turn the LM into a Flamingo LM (extend_instance)
    from open_flamingo.src.utils import extend_instance

    extend_instance(lang_encoder, _AttentionMaskOptional)


def _open_flamingo_factory() -> Any:
    try:
        from open_flamingo import create_model_and_transforms
    except ImportError as error:
        raise ModelUnavailableError(
            f"the open_flamingo package (or one of its imports) is missing: {error}",
            fix=INSTALL,
        ) from error
    return create_model_and_transforms


def _load_flamingo_weights(flamingo: Any, spec: OpenFlamingoSpec) -> None:
    path = Path(spec.checkpoint)
    if not path.is_file():
        raise ModelUnavailableError(
            "the Flamingo weights file is missing",
            file=str(path),
            fix="download checkpoint.pt of the OpenFlamingo model into the folder",
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]  # a checkpoint_N.pt of open_flamingo's train.py
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = flamingo.load_state_dict(state, strict=False)
    not_loaded = [
        k for k in result.missing_keys if k.startswith("perceiver.") or "gated_cross_attn" in k
    ]
    not_loaded = [k for k in not_loaded if not k.startswith("lang_encoder.gated_cross_attn_layers")]
    if result.unexpected_keys or not_loaded:
        raise ModelUnavailableError(
            f"the weights do not fit the model built from {SPEC_FILE}: "
            f"{len(result.unexpected_keys)} unexpected keys "
            f"({', '.join(result.unexpected_keys[:3])}), {len(not_loaded)} Flamingo weights "
            f"missing ({', '.join(not_loaded[:3])})",
            file=str(path),
            fix="check the vision encoder, language model and cross_attn_every_n_layers in "
            f"{SPEC_FILE} against the model card",
        )


def plain_user(text: str, *, first: bool) -> str:
    """One question in OpenFlamingo's layout; the image marker leads the first."""
    return f"{MEDIA_TOKEN if first else ''}Question: {text} Answer:"
