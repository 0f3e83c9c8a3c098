"""LoRA fine-tuning of a Hugging Face vision-language model on a run's samples.

The loop is plain PEFT + torch rather than TRL's ``SFTTrainer``: TRL's vision-language path
computes assistant-only loss only from ``{% generation %}`` markers in the chat template, which
LLaVA and BLIP-2 checkpoints do not have. Here the conversation is rendered turn by turn
(``VisionLanguageModel.segments``) and every token that is not the assistant's (system text,
user turns, image placeholders, padding) gets label -100, whatever the template.

Example:
    >>> tuner = LoraTuner(preset=TUNING_PRESETS["llava-7b"])              # doctest: +SKIP
    >>> result = tuner.tune("runs/demo", model="llava-1.5-7b-hf/", out="tuned/")  # doctest: +SKIP
    >>> result.loss_before, result.loss_after                             # doctest: +SKIP
    (2.31, 1.87)
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlit.errors import ConfigError, InputFileError, RecordError
from vlit.evaluate.models import VisionLanguageModel, load_for_training
from vlit.images import open_image
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TuningPreset:
    """Optimisation and LoRA settings for one kind of model.

    ``lora_target`` is ``language-linear`` (every linear layer of the language model, as
    LLaVA's LoRA recipe), ``language-attention`` (its query and value projections) or ``none``
    (no adapter: only the ``fully_trained`` modules learn, everything else is frozen).
    ``fully_trained`` names modules trained in full next to the adapter (PEFT
    ``modules_to_save``), at ``fully_trained_learning_rate`` when set.
    """

    name: str
    learning_rate: float
    epochs: int
    batch_size: int
    gradient_accumulation: int
    weight_decay: float
    warmup_ratio: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str
    fully_trained: tuple[str, ...]
    fully_trained_learning_rate: float | None
    max_length: int
    gradient_checkpointing: bool
    source: str
    warmup_steps: int | None = None


TUNING_PRESETS: dict[str, TuningPreset] = {
    # LLaVA-1.5's LoRA recipe (scripts/v1_5/finetune_lora.sh): global batch 128, 1 epoch,
    # lr 2e-4 (projector 2e-5), cosine with 3% warm-up, no weight decay, r 128, alpha 256,
    # dropout 0.05 on every linear layer of the language model, 2048 tokens.
    "llava-7b": TuningPreset(
        name="llava-7b",
        learning_rate=2e-4,
        epochs=1,
        batch_size=16,
        gradient_accumulation=8,
        weight_decay=0.0,
        warmup_ratio=0.03,
        lora_r=128,
        lora_alpha=256,
        lora_dropout=0.05,
        lora_target="language-linear",
        fully_trained=("multi_modal_projector",),
        fully_trained_learning_rate=2e-5,
        max_length=2048,
        gradient_checkpointing=True,
        source="LLaVA-1.5 LoRA fine-tuning script",
    ),
    # The paper's BLIP-2 settings (lr 1e-5, linear warm-up then cosine, 1 epoch, batch 4, weight
    # decay 0.05). The Q-Former and its projection are trained in full as in LAVIS's recipe;
    # the paper does not give a warm-up length, so LAVIS's 1000 steps (capped at 10% of a run).
    "blip2": TuningPreset(
        name="blip2",
        learning_rate=1e-5,
        epochs=1,
        batch_size=4,
        gradient_accumulation=1,
        weight_decay=0.05,
        warmup_ratio=0.0,
        warmup_steps=1000,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_target="language-attention",
        fully_trained=("qformer", "language_projection"),
        fully_trained_learning_rate=None,
        max_length=512,
        gradient_checkpointing=False,
        source="the paper's BLIP-2 settings; LAVIS for the trained modules and warm-up",
    ),
    # For smoke tests and tiny models on CPU: a large learning rate, no warm-up.
    "tiny": TuningPreset(
        name="tiny",
        learning_rate=1e-2,
        epochs=3,
        batch_size=2,
        gradient_accumulation=1,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target="language-linear",
        fully_trained=("multi_modal_projector",),
        fully_trained_learning_rate=None,
        max_length=512,
        gradient_checkpointing=False,
        source="vlit smoke-test settings",
    ),
    # OpenFlamingo's own recipe: the perceiver resampler and the gated cross-attention layers
    # learn, the language model (embeddings included: --freeze_lm_embeddings) and the vision
    # encoder stay frozen. lr 1e-4, weight decay 0.1 and 5000 warm-up steps (capped at 10% of a
    # run) are open_flamingo's train.py defaults; its batch (128 + 128 per GPU, pre-training)
    # is not a fine-tuning batch, so 4 x 8 accumulation; cosine decay as the other presets.
    "openflamingo-3b": TuningPreset(
        name="openflamingo-3b",
        learning_rate=1e-4,
        epochs=1,
        batch_size=4,
        gradient_accumulation=8,
        weight_decay=0.1,
        warmup_ratio=0.0,
        warmup_steps=5000,
        lora_r=1,
        lora_alpha=1,
        lora_dropout=0.0,
        lora_target="none",
        fully_trained=("perceiver", "gated_cross_attn_layers"),
        fully_trained_learning_rate=None,
        max_length=512,
        gradient_checkpointing=False,
        source="open_flamingo train.py defaults and trained modules",
    ),
}

FAMILY_PRESETS: dict[str, str] = {
    "llava": "llava-7b",
    "blip-2": "blip2",
    "openflamingo": "openflamingo-3b",
}


def resolve_preset(
    name: str | None,
    *,
    family: str,
    epochs: int | None = None,
    learning_rate: float | None = None,
    lora_r: int | None = None,
    batch_size: int | None = None,
) -> TuningPreset:
    """The named preset (default: the model family's), with the given overrides.

    Overriding ``lora_r`` keeps the preset's alpha / r ratio.
    """
    chosen = name or FAMILY_PRESETS.get(family)
    if chosen is None:
        raise ConfigError(
            f"no default tuning preset for model type '{family}'",
            fix=f"pass --preset, one of: {', '.join(TUNING_PRESETS)}",
        )
    if chosen not in TUNING_PRESETS:
        raise ConfigError(
            f"unknown preset '{chosen}'", fix=f"use one of: {', '.join(TUNING_PRESETS)}"
        )
    preset = TUNING_PRESETS[chosen]
    if epochs is not None:
        preset = replace(preset, epochs=epochs)
    if learning_rate is not None:
        preset = replace(preset, learning_rate=learning_rate)
    if batch_size is not None:
        preset = replace(preset, batch_size=batch_size)
    if lora_r is not None:
        ratio = preset.lora_alpha / preset.lora_r
        preset = replace(preset, lora_r=lora_r, lora_alpha=max(1, round(lora_r * ratio)))
    if preset.epochs < 1 or preset.batch_size < 1 or preset.lora_r < 1:
        raise ConfigError("epochs, batch size and LoRA rank must be at least 1")
    return preset


@dataclass
class TrainingExample:
    """Token ids with their labels (-100 where no loss is taken) and the image tensors."""

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    image_tensors: dict[str, Any]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def check_turns(sample: Sample) -> None:
    """Raise RecordError unless the conversation is user-first, alternating, with an answer."""
    if not sample.turns:
        raise RecordError("conversation has no turns", record=sample.sample_id)
    for index, turn in enumerate(sample.turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            raise RecordError(
                f"turn {index} is '{turn.role}', expected '{expected}' (user first, alternating)",
                record=sample.sample_id,
            )
    if len(sample.turns) < 2:
        raise RecordError("conversation has no assistant turn", record=sample.sample_id)


def build_training_example(
    vlm: VisionLanguageModel, sample: Sample, image: Image.Image, *, max_length: int
) -> TrainingExample:
    """Tokenise one conversation about one image; loss only on the assistant's tokens.

    Raises RecordError when the conversation is malformed or when truncation to
    ``max_length`` would cut the image or leave no assistant token.
    """
    check_turns(sample)
    placeholder = vlm.image_placeholder
    turns = [
        Turn(role=t.role, text=t.text.replace(placeholder, "").strip() if placeholder else t.text)
        for t in sample.turns
    ]
    segments = vlm.segments(turns)
    input_ids, image_tensors = vlm.encode_first(segments[0].text, image)
    labels = [IGNORE_INDEX] * len(input_ids)
    for segment in segments[1:]:
        ids = vlm.encode_plain(segment.text)
        input_ids += ids
        labels += ids if segment.trained else [IGNORE_INDEX] * len(ids)
    image_token_id = vlm.image_token_id
    if image_token_id is not None:
        labels = [
            IGNORE_INDEX if t == image_token_id else label
            for t, label in zip(input_ids, labels, strict=True)
        ]
        last_image = max((i for i, t in enumerate(input_ids) if t == image_token_id), default=-1)
        if last_image >= max_length:
            raise RecordError(
                f"the image placeholders end at token {last_image + 1}, past max length "
                f"{max_length}",
                record=sample.sample_id,
            )
    example = TrainingExample(
        sample_id=sample.sample_id,
        input_ids=input_ids[:max_length],
        labels=labels[:max_length],
        image_tensors=image_tensors,
    )
    if example.trained_tokens == 0:
        raise RecordError(
            f"no assistant token left within max length {max_length}", record=sample.sample_id
        )
    return example


def collate(examples: list[TrainingExample], *, pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding gets label -100 and attention 0."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention[row, :length] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    for key, value in examples[0].image_tensors.items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.cat([e.image_tensors[key] for e in examples], dim=0)
    return batch


def to_model_inputs(batch: dict[str, Any], vlm: VisionLanguageModel) -> dict[str, Any]:
    """Move a collated batch to the model's device (floating tensors in the model's dtype)."""
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if value.is_floating_point():
            moved[key] = value.to(vlm.device, dtype=vlm.model.dtype)
        else:
            moved[key] = value.to(vlm.device)
    return moved


def assistant_token_loss(vlm: VisionLanguageModel, examples: list[TrainingExample]) -> float:
    """Mean next-token loss over all assistant tokens of ``examples`` (eval mode, no grad)."""
    import torch

    was_training = vlm.model.training
    vlm.model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            batch = to_model_inputs(collate([example], pad_token_id=vlm.pad_token_id), vlm)
            loss = vlm.model(**batch).loss
            tokens = example.trained_tokens
            total += float(loss) * tokens
            count += tokens
    vlm.model.train(was_training)
    return total / max(count, 1)


@dataclass
class TuningResult:
    """What a tuning run did; written as ``tuning.json`` next to the adapter."""

    out: str
    base_model: str
    preset: dict[str, Any]
    samples_used: int
    skipped: dict[str, int]
    optimizer_steps: int
    step_losses: list[float] = field(default_factory=list)
    loss_before: float | None = None
    loss_after: float | None = None
    sample_stage: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "base_model": self.base_model,
            "preset": self.preset["name"],
            "sample_stage": self.sample_stage,
            "samples_used": self.samples_used,
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": self.skipped,
            "optimizer_steps": self.optimizer_steps,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
        }


def read_training_samples(run: str | Path) -> tuple[str, list[Sample]]:
    """The run's kept samples, or those of its latest sample stage when nothing was filtered."""
    run_dir = RunDir(run)
    if not run_dir.root.is_dir():
        raise InputFileError("run directory not found", file=str(run), fix="pass a run directory")
    stage = "kept" if run_dir.has_stage("kept") else run_dir.latest_sample_stage()
    return stage, list(run_dir.read_samples(stage))


class LoraTuner:
    """LoRA fine-tuning of a vision-language model on vlit samples.

    Example:
        >>> tuner = LoraTuner(preset=TUNING_PRESETS["tiny"], max_steps=10, seed=0)
        >>> tuner.tune("runs/demo", model="tiny-llava/", out="tuned/")   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        preset: TuningPreset,
        max_steps: int | None = None,
        max_samples: int | None = None,
        loss_check_samples: int = 32,
        seed: int = 0,
        device: str | None = None,
        dtype: str | None = None,
        family: str | None = None,
    ) -> None:
        if max_steps is not None and max_steps < 1:
            raise ConfigError("max steps must be at least 1", fix="pass --max-steps 1 or more")
        self.preset = preset
        self.max_steps = max_steps
        self.max_samples = max_samples
        self.loss_check_samples = loss_check_samples
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.family = family

    def tune(
        self,
        run: str | Path,
        *,
        model: str,
        out: str | Path,
        on_step: Callable[[int, float], None] | None = None,
    ) -> TuningResult:
        """Train an adapter on the run's samples and save it (with the processor) in ``out``."""
        import torch

        stage, samples = read_training_samples(run)
        rng = random.Random(self.seed)
        if self.max_samples is not None and len(samples) > self.max_samples:
            samples = rng.sample(samples, self.max_samples)
        torch.manual_seed(self.seed)
        vlm = load_for_training(model, device=self.device, dtype=self.dtype, family=self.family)
        skipped: Counter[str] = Counter()
        examples = self._examples(vlm, samples, skipped)
        if not examples:
            raise InputFileError(
                f"no usable training sample in stage '{stage}' ({dict(skipped)})",
                file=str(run),
                fix="check that the samples' images exist and the conversations start with user",
            )
        checked = examples[: self.loss_check_samples]
        loss_before = assistant_token_loss(vlm, checked)
        vlm.model = self._with_adapter(vlm)
        steps, step_losses = self._train(vlm, examples, rng, on_step)
        loss_after = assistant_token_loss(vlm, checked)
        result = TuningResult(
            out=str(out),
            base_model=model,
            preset=asdict(self.preset),
            samples_used=len(examples),
            skipped=dict(skipped),
            optimizer_steps=steps,
            step_losses=step_losses,
            loss_before=loss_before,
            loss_after=loss_after,
            sample_stage=stage,
        )
        self._save(vlm, result, Path(out))
        return result

    def _examples(
        self, vlm: VisionLanguageModel, samples: list[Sample], skipped: Counter[str]
    ) -> list[TrainingExample]:
        # Images are encoded up front; for very large runs pass max_samples (the paper
        # sampled every dataset down to the smallest one's size).
        examples: list[TrainingExample] = []
        for sample in samples:
            reason = _unusable(sample)
            if reason:
                skipped[reason] += 1
                continue
            image = _open(sample.image_path)
            if image is None:
                skipped["image missing or unreadable"] += 1
                continue
            try:
                examples.append(
                    build_training_example(vlm, sample, image, max_length=self.preset.max_length)
                )
            except RecordError as error:
                skipped[_reason_kind(error.problem)] += 1
        return examples

    def _with_adapter(self, vlm: VisionLanguageModel) -> Any:
        model = vlm.model
        if self.preset.lora_target == "none":
            return _train_only(model, self.preset.fully_trained)
        if vlm.family == "openflamingo":
            raise ConfigError(
                f"preset '{self.preset.name}' puts LoRA on the language model; OpenFlamingo is "
                "tuned by training its Flamingo modules",
                fix="use --preset openflamingo-3b",
            )
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        config = LoraConfig(
            r=self.preset.lora_r,
            lora_alpha=self.preset.lora_alpha,
            lora_dropout=self.preset.lora_dropout,
            target_modules=lora_target_pattern(model, self.preset.lora_target),
            modules_to_save=[m for m in self.preset.fully_trained if m in present] or None,
            bias="none",
        )
        if self.preset.gradient_checkpointing and vlm.device.type == "cuda":
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        return get_peft_model(model, config)

    def _train(
        self,
        vlm: VisionLanguageModel,
        examples: list[TrainingExample],
        rng: random.Random,
        on_step: Callable[[int, float], None] | None,
    ) -> tuple[int, list[float]]:
        import torch
        from transformers import get_cosine_schedule_with_warmup

        preset = self.preset
        batches_per_epoch = math.ceil(len(examples) / preset.batch_size)
        steps_per_epoch = max(1, batches_per_epoch // preset.gradient_accumulation)
        total_steps = self.max_steps or steps_per_epoch * preset.epochs
        warmup = (
            min(preset.warmup_steps, total_steps // 10)
            if preset.warmup_steps is not None
            else int(preset.warmup_ratio * total_steps)
        )
        optimizer = torch.optim.AdamW(_parameter_groups(vlm.model, preset), lr=preset.learning_rate)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
        vlm.model.train()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=vlm.device.type == "cuda")
        step, micro, running, losses = 0, 0, 0.0, []
        for batch_examples in _batches(examples, preset.batch_size, rng):
            batch = to_model_inputs(collate(batch_examples, pad_token_id=vlm.pad_token_id), vlm)
            with autocast:
                loss = vlm.model(**batch).loss / preset.gradient_accumulation
            loss.backward()
            running += float(loss.detach())
            micro += 1
            if micro % preset.gradient_accumulation:
                continue
            torch.nn.utils.clip_grad_norm_(
                [p for p in vlm.model.parameters() if p.requires_grad], 1.0
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(running)
            if on_step is not None:
                on_step(step, running)
            running = 0.0
            if step >= total_steps:
                break
        return step, losses

    def _save(self, vlm: VisionLanguageModel, result: TuningResult, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        vlm.model.save_pretrained(out)
        vlm.processor.save_pretrained(out)
        (out / "tuning.json").write_text(
            json.dumps(asdict(result), indent=2, sort_keys=True), encoding="utf-8"
        )


def _train_only(model: Any, modules: tuple[str, ...]) -> Any:
    """Freeze ``model`` except the modules whose name ends with one of ``modules``."""
    model.requires_grad_(False)
    found = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in modules]
    if not found:
        raise ConfigError(
            f"the model has none of the modules to train ({', '.join(modules)})",
            fix="pick the preset of the model's family",
        )
    for module in found:
        module.requires_grad_(True)
    return model


def lora_target_pattern(model: Any, target: str) -> str:
    """A PEFT ``target_modules`` regex for the language model's linear layers."""
    import torch

    prefixes = sorted(
        (name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "language_model"),
        key=len,
    )
    if not prefixes:
        raise ConfigError(
            "cannot find the model's language model (no module named 'language_model')",
            fix="tune a LLaVA- or BLIP-2-style checkpoint",
        )
    prefix = prefixes[0]
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear)
    }
    if target == "language-attention":
        leaves &= {"q_proj", "v_proj"}
    elif target != "language-linear":
        raise ConfigError(
            f"unknown LoRA target '{target}'", fix="use language-linear or language-attention"
        )
    if not leaves:
        raise ConfigError(f"no linear layer for LoRA target '{target}' under '{prefix}'")
    names = "|".join(sorted(re.escape(leaf) for leaf in leaves))
    return rf"{re.escape(prefix)}\..*\.({names})"


def _parameter_groups(model: Any, preset: TuningPreset) -> list[dict[str, Any]]:
    lora, decayed_full, plain_full = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if "lora_" in name:
            lora.append(parameter)
        elif name.endswith("bias") or "norm" in name.lower():
            plain_full.append(parameter)
        else:
            decayed_full.append(parameter)
    full_lr = preset.fully_trained_learning_rate or preset.learning_rate
    groups = [
        {"params": lora, "weight_decay": preset.weight_decay},
        {"params": decayed_full, "weight_decay": preset.weight_decay, "lr": full_lr},
        {"params": plain_full, "weight_decay": 0.0, "lr": full_lr},
    ]
    return [group for group in groups if group["params"]]


def _batches(
    examples: list[TrainingExample], size: int, rng: random.Random
) -> Iterator[list[TrainingExample]]:
    while True:  # epochs follow each other until the caller has its steps
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), size):
            yield [examples[i] for i in order[start : start + size]]


def _unusable(sample: Sample) -> str:
    if not sample.ok:
        return "generation failed"
    if sample.image is None:
        return "no image"
    return ""


def _open(path: Path | None) -> Image.Image | None:
    if path is None or not path.is_file():
        return None
    try:
        with open_image(path) as handle:
            return handle.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _reason_kind(problem: str) -> str:
    if "max length" in problem:
        return "too long"
    return "malformed conversation"
