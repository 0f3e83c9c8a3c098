"""Loading Hugging Face vision-language models and rendering their prompts.

One loader serves ``vlit bench`` and ``vlit tune``: a local checkpoint folder, a Hub id (only when
the Hub is reachable or the model is cached), or a LoRA adapter folder written by ``vlit tune``
(its base model is loaded first and the adapter merged in).

Example:
    >>> vlm = load_vision_language_model("checkpoints/llava-1.5-7b-hf")   # doctest: +SKIP
    >>> vlm.prompt("How many dogs are there?")                           # doctest: +SKIP
    'USER: <image>\\nHow many dogs are there? ASSISTANT:'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.schema import Turn

if TYPE_CHECKING:
    import torch
    from PIL import Image

ADAPTER_CONFIG = "adapter_config.json"
OPENFLAMINGO = "openflamingo"
#: Values of ``--family``: ``openflamingo``, or ``auto`` (the folder tells: openflamingo.json
#: makes an OpenFlamingo, anything else is a transformers checkpoint read by its config).
FAMILIES: tuple[str, ...] = ("auto", OPENFLAMINGO)


@dataclass
class Segment:
    """A piece of a rendered conversation; ``trained`` pieces are the assistant's tokens."""

    text: str
    trained: bool


@dataclass
class VisionLanguageModel:
    """A loaded model with its processor, and how to talk to it.

    ``family`` is the config's ``model_type`` (``llava``, ``blip-2``, ...). Prompts use the
    processor's chat template when it has one; otherwise a plain layout known for the family.
    """

    name: str
    model: Any
    processor: Any
    family: str
    device: torch.device
    adapter: str | None = None

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_placeholder(self) -> str | None:
        """The processor's image token as text (some processors keep an AddedToken)."""
        token = getattr(self.processor, "image_token", None)
        return None if token is None else str(getattr(token, "content", token))

    @property
    def image_token_id(self) -> int | None:
        """Id of the image placeholder token in the input ids (None if the model has none)."""
        for source, name in (
            (self.processor, "image_token_id"),
            (self.model.config, "image_token_id"),
            (self.model.config, "image_token_index"),
        ):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.processor, "chat_template", None))

    def prompt(self, question: str) -> str:
        """The text that asks ``question`` about one image and leaves the answer to the model."""
        if self.has_chat_template:
            messages = [{"role": "user", "content": _user_content(question, with_image=True)}]
            return str(
                self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )
        return self._plain_user(question, first=True)

    def segments(self, turns: list[Turn]) -> list[Segment]:
        """Split a conversation (user first) into rendered pieces; the image goes in turn one.

        With a chat template the pieces are the differences between renderings of growing
        prefixes of the conversation, so every character belongs to exactly one piece and
        the assistant pieces include the template's end-of-turn marker (the model learns to
        stop). A template for which a prefix rendering is not a prefix of the longer one
        cannot be split this way and raises ConfigError.
        """
        if not self.has_chat_template:
            return self._plain_segments(turns)
        messages: list[dict[str, Any]] = []
        rendered = ""
        pieces: list[Segment] = []
        for index, turn in enumerate(turns):
            if turn.role == "user":
                messages.append(
                    {"role": "user", "content": _user_content(turn.text, with_image=index == 0)}
                )
                text = self._render(messages, add_generation_prompt=True)
            else:
                messages.append(
                    {"role": "assistant", "content": [{"type": "text", "text": turn.text}]}
                )
                text = self._render(messages, add_generation_prompt=False)
            if not text.startswith(rendered):
                raise ConfigError(
                    "the chat template does not render a conversation prefix as a prefix of "
                    "the longer conversation, so assistant tokens cannot be located",
                    file=self.name,
                    fix="give the processor a chat template without look-ahead (or tune with "
                    "a processor that has no chat template, which uses the plain layout)",
                )
            pieces.append(Segment(text=text[len(rendered) :], trained=turn.role == "assistant"))
            rendered = text
        return pieces

    def _render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        return str(
            self.processor.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )

    def _plain_user(self, text: str, *, first: bool) -> str:
        if self.family == OPENFLAMINGO:
            from vlit.evaluate.openflamingo import plain_user

            return plain_user(text, first=first)
        # BLIP-2's processor puts the image's query tokens in front of the text by itself.
        if self.family == "blip-2":
            return f"Question: {text} Answer:"
        image = f"{self.image_placeholder}\n" if first and self.image_placeholder else ""
        return f"USER: {image}{text} ASSISTANT:"

    def _plain_segments(self, turns: list[Turn]) -> list[Segment]:
        # OpenFlamingo closes each chunk of text with its own marker, not the LM's eos
        flamingo = self.family == OPENFLAMINGO
        eos = "<|endofchunk|>" if flamingo else (self.tokenizer.eos_token or "")
        pieces: list[Segment] = []
        for index, turn in enumerate(turns):
            if turn.role == "user":
                lead = "" if index == 0 or flamingo else "\n"
                pieces.append(Segment(lead + self._plain_user(turn.text, first=index == 0), False))
            else:
                pieces.append(Segment(f" {turn.text}{eos}", True))
        return pieces

    def encode_first(self, text: str, image: Image.Image) -> tuple[list[int], dict[str, Any]]:
        """Token ids of the text holding the image (image placeholders expanded) and the
        processor's image tensors (``pixel_values`` and whatever else the model needs)."""
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        encoded = self.processor(
            text=[text], images=[image], return_tensors="pt", add_special_tokens=add_special
        )
        ids = encoded["input_ids"][0].tolist()
        tensors = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
        return ids, tensors

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of a text piece without an image and without added special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ConfigError(
                "the tokenizer has neither a pad nor an end-of-sequence token",
                file=self.name,
                fix="set tokenizer.pad_token in the checkpoint's tokenizer_config.json",
            )
        return int(pad)


def _user_content(text: str, *, with_image: bool) -> list[dict[str, str]]:
    parts = [{"type": "image"}] if with_image else []
    return [*parts, {"type": "text", "text": text}]


def pick_device(requested: str | None = None) -> torch.device:
    """``cuda`` when a GPU is present (or the device asked for), else ``cpu``."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_family(name_or_path: str, family: str | None = None) -> str:
    """``openflamingo`` when asked for or when the folder holds ``openflamingo.json``; else
    ``auto`` (a transformers checkpoint). Raises ConfigError for an unknown family."""
    from vlit.evaluate.openflamingo import is_openflamingo_folder

    chosen = family or "auto"
    if chosen not in FAMILIES:
        raise ConfigError(
            f"unknown model family '{chosen}'", fix=f"use one of: {', '.join(FAMILIES)}"
        )
    if chosen == "auto" and is_openflamingo_folder(name_or_path):
        return OPENFLAMINGO
    return chosen


def load_vision_language_model(
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    family: str | None = None,
) -> VisionLanguageModel:
    """Load a model and its processor for evaluation.

    ``dtype`` is ``float32``, ``bfloat16`` or ``float16``; default bfloat16 on a GPU, float32 on
    CPU. A folder with ``adapter_config.json`` (what ``vlit tune`` writes) loads its base model
    and merges the adapter; an OpenFlamingo folder (``family``, or ``openflamingo.json``) goes
    through ``open_flamingo``. Raises ModelUnavailableError when the model cannot be found.
    """
    target = pick_device(device)
    torch_dtype = _dtype(dtype, target)
    if model_family(name_or_path, family) == OPENFLAMINGO:
        from vlit.evaluate.openflamingo import load_openflamingo

        return load_openflamingo(name_or_path, device=target, dtype=torch_dtype)
    path = Path(name_or_path)
    adapter: str | None = None
    base = name_or_path
    if (path / ADAPTER_CONFIG).is_file():
        adapter = str(path)
        base = _adapter_base(path)
    model = _load_model(base, torch_dtype)
    processor = _load_processor(adapter or base, fallback=base)
    if adapter is not None:
        model = _merge_adapter(model, adapter)
    model.to(target)
    model.eval()
    family = str(getattr(model.config, "model_type", "") or "")
    return VisionLanguageModel(
        name=name_or_path,
        model=model,
        processor=processor,
        family=family,
        device=target,
        adapter=adapter,
    )


def load_for_training(
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    family: str | None = None,
) -> VisionLanguageModel:
    """Load a model to be tuned (training mode, no adapter merged)."""
    target = pick_device(device)
    if model_family(name_or_path, family) == OPENFLAMINGO:
        from vlit.evaluate.openflamingo import load_openflamingo

        return load_openflamingo(
            name_or_path, device=target, dtype=_dtype(dtype, target), training=True
        )
    model = _load_model(name_or_path, _dtype(dtype, target))
    processor = _load_processor(name_or_path, fallback=name_or_path)
    model.to(target)
    family = str(getattr(model.config, "model_type", "") or "")
    return VisionLanguageModel(
        name=name_or_path, model=model, processor=processor, family=family, device=target
    )


def _dtype(name: str | None, device: torch.device) -> torch.dtype:
    import torch

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name is None:
        # bf16 on a GPU (inference, and the frozen base under LoRA); CPUs are slow at bf16.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in choices:
        raise ConfigError(f"unknown dtype '{name}'", fix=f"use one of: {', '.join(choices)}")
    return choices[name]


def _adapter_base(adapter: Path) -> str:
    config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelUnavailableError(
            "the adapter does not name its base model",
            file=str(adapter / ADAPTER_CONFIG),
            fix="set base_model_name_or_path to the base checkpoint's folder",
        )
    return str(base)


def _unavailable(name: str, error: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE")
    where = "the Hugging Face Hub is offline here" if offline else "it could not be fetched"
    return ModelUnavailableError(
        f"cannot load vision-language model '{name}': not a local checkpoint folder and {where} "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
        file=name,
        fix="download it where the Hub is reachable (`hf download "
        f"{name} --local-dir DIR`) and pass --model DIR",
    )


def load_model_config(name: str) -> Any:
    """The checkpoint's transformers config; ModelUnavailableError when it cannot be found."""
    try:
        import transformers
    except ImportError as error:
        raise ModelUnavailableError(
            "transformers is not installed", fix="pip install 'vlit[eval]'"
        ) from error
    try:
        return transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _unavailable(name, error) from error


def _load_model(name: str, torch_dtype: torch.dtype) -> Any:
    import transformers

    config = load_model_config(name)
    model_class = MODEL_CLASSES.get(config.model_type, "AutoModelForImageTextToText")
    loader = getattr(transformers, model_class)
    try:
        return loader.from_pretrained(name, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"cannot load '{name}' as {model_class} ({error})",
            file=name,
            fix="check that the folder holds a vision-language checkpoint "
            "(config.json with a vision and a text config, and the weights)",
        ) from error


def _load_processor(name: str, *, fallback: str) -> Any:
    import transformers

    for candidate in dict.fromkeys((name, fallback)):
        try:
            return transformers.AutoProcessor.from_pretrained(candidate)
        except (OSError, ValueError):
            continue
    raise ModelUnavailableError(
        f"no processor found for '{name}'",
        file=name,
        fix="save the processor next to the weights (processor.save_pretrained(DIR))",
    )


def _merge_adapter(model: Any, adapter: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ModelUnavailableError(
            "peft is needed to load a LoRA adapter", file=adapter, fix="pip install 'vlit[eval]'"
        ) from error
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


# config.model_type -> transformers class; anything else goes through AutoModelForImageTextToText.
MODEL_CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
}
