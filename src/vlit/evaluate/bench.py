"""Multiple-choice evaluation of a vision-language model, SEED-Bench style.

Two ways to pick a choice:

- ``likelihood`` (SEED-Bench's own protocol): each choice's text is scored by the model's
  log-probability given the image and the question; the highest wins. SEED-Bench's reference
  code sums the choice tokens' log-probabilities (``aggregation="sum"``, the default here);
  ``"mean"`` divides by the number of choice tokens, which removes the bias toward short
  choices. The choices are not shown in the prompt, as in SEED-Bench.
- ``generate``: the prompt lists the four choices and asks for a letter; the answer is parsed
  (``parse_choice_letter``). For models whose likelihoods are not available or not meaningful.

Example:
    >>> vlm = load_vision_language_model("checkpoints/llava-1.5-7b-hf")    # doctest: +SKIP
    >>> result = run_bench("SEED-Bench.json", images="seed_images", model=vlm)  # doctest: +SKIP
    >>> result.overall["accuracy"]                                         # doctest: +SKIP
    58.6
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, UnidentifiedImageError

from vlit.errors import ConfigError, InputFileError, RecordError
from vlit.evaluate.models import VisionLanguageModel
from vlit.evaluate.seed_bench import (
    CHOICE_LETTERS,
    BenchQuestion,
    QuestionOutcome,
    accuracy_table,
    load_questions,
)
from vlit.images import ImageTooLargeError, open_image, resolve_image_path

if TYPE_CHECKING:
    import torch

BenchMode = Literal["likelihood", "generate"]
Aggregation = Literal["sum", "mean"]
BENCH_MODES: tuple[str, ...] = ("likelihood", "generate")
AGGREGATIONS: tuple[str, ...] = ("sum", "mean")


@dataclass
class ChoiceScores:
    """Per choice: the summed log-probability of its tokens and how many tokens it has."""

    log_prob_sums: list[float]
    token_counts: list[int]

    def aggregate(self, how: Aggregation) -> list[float]:
        if how == "sum":
            return list(self.log_prob_sums)
        return [s / max(n, 1) for s, n in zip(self.log_prob_sums, self.token_counts, strict=True)]


class LikelihoodChoiceScorer:
    """Scores the choices of a batch of questions by the model's log-likelihood.

    Each (question, choice) pair is one row: the prompt (image placeholders expanded by the
    processor) followed by the choice's tokens, right-padded; only the choice tokens are scored.

    Example:
        >>> scorer = LikelihoodChoiceScorer(model=vlm)                   # doctest: +SKIP
        >>> scorer.score([(question, image)])[0].aggregate("sum")       # doctest: +SKIP
        [-7.1, -9.4, -8.8, -12.0]
    """

    def __init__(self, *, model: VisionLanguageModel) -> None:
        text_config = getattr(model.model.config, "text_config", model.model.config)
        if getattr(text_config, "is_encoder_decoder", False):
            raise ConfigError(
                f"likelihood scoring supports decoder-only language models; '{model.name}' "
                "has an encoder-decoder language model",
                file=model.name,
                fix="use --mode generate for this model",
            )
        self.vlm = model

    def continuation(self, prompt: str, choice: str) -> str:
        """The choice as it follows the prompt: one space after a prompt without one."""
        return choice if prompt[-1:].isspace() else f" {choice}"

    def score(self, items: list[tuple[BenchQuestion, Image.Image]]) -> list[ChoiceScores]:
        import torch

        rows: list[list[int]] = []
        spans: list[tuple[int, int]] = []
        image_tensors: list[dict[str, Any]] = []
        for question, image in items:
            prompt = self.vlm.prompt(question.question)
            prompt_ids, tensors = self.vlm.encode_first(prompt, image)
            for choice in question.choices:
                choice_ids = self.vlm.encode_plain(self.continuation(prompt, choice))
                spans.append((len(prompt_ids), len(prompt_ids) + len(choice_ids)))
                rows.append(prompt_ids + choice_ids)
                image_tensors.append(tensors)
        batch = _right_padded(rows, self.vlm.pad_token_id, self.vlm.device)
        batch.update(_stack_image_tensors(image_tensors, self.vlm))
        with torch.inference_mode():
            logits = self.vlm.model(**batch).logits
        if logits.shape[1] != batch["input_ids"].shape[1]:
            raise ConfigError(
                f"the model returned logits for {logits.shape[1]} positions for "
                f"{batch['input_ids'].shape[1]} input tokens",
                file=self.vlm.name,
                fix="use a transformers version whose processor expands the image placeholders "
                "(transformers >= 4.47), or --mode generate",
            )
        sums: list[float] = []
        counts: list[int] = []
        for row, (start, end) in enumerate(spans):
            # the token at position t is predicted by the logits at t - 1
            log_probs = torch.log_softmax(logits[row, start - 1 : end - 1].float(), dim=-1)
            targets = batch["input_ids"][row, start:end]
            sums.append(float(log_probs.gather(1, targets.unsqueeze(1)).sum()))
            counts.append(end - start)
        per_question = len(CHOICE_LETTERS)
        return [
            ChoiceScores(
                log_prob_sums=sums[i : i + per_question], token_counts=counts[i : i + per_question]
            )
            for i in range(0, len(sums), per_question)
        ]


class GenerationChoiceAnswerer:
    """Asks the model for a letter and parses it (greedy decoding, a few new tokens).

    Example:
        >>> answerer = GenerationChoiceAnswerer(model=vlm)              # doctest: +SKIP
        >>> answerer.answer([(question, image)])                        # doctest: +SKIP
        ['B. Two']
    """

    def __init__(self, *, model: VisionLanguageModel, max_new_tokens: int = 12) -> None:
        self.vlm = model
        self.max_new_tokens = max_new_tokens

    def question_text(self, question: BenchQuestion) -> str:
        options = "\n".join(
            f"{letter}. {choice}"
            for letter, choice in zip(CHOICE_LETTERS, question.choices, strict=True)
        )
        return (
            f"{question.question}\n{options}\n"
            "Reply with the letter (A, B, C or D) of the one option that fits the picture."
        )

    def answer(self, items: list[tuple[BenchQuestion, Image.Image]]) -> list[str]:
        import torch

        prompts = [self.vlm.prompt(self.question_text(q)) for q, _ in items]
        images = [image for _, image in items]
        bos = self.vlm.tokenizer.bos_token
        encoded = self.vlm.processor(
            text=prompts,
            images=images,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=not (bos and prompts[0].startswith(bos)),
        )
        encoded = {k: _to_device(v, self.vlm) for k, v in encoded.items()}
        with torch.inference_mode():
            generated = self.vlm.model.generate(
                **encoded,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.vlm.pad_token_id,
            )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        return [
            str(t) for t in self.vlm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]


_LETTER_PATTERNS = (
    re.compile(r"^\W*([ABCD])\W*$", re.IGNORECASE),  # "B", "(b)", "B."
    re.compile(r"^\W*([ABCD])[\.\):\]]"),  # "B. two", "C) ..."
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([ABCD])\b"),  # "answer is D"
    re.compile(r"^\W*([ABCD])\b"),  # "B two"
)


def parse_choice_letter(text: str, choices: tuple[str, ...] | None = None) -> str | None:
    """The letter A-D a generated answer gives, or None when it gives none.

    Accepts "B", "(b)", "B.", "C) a dog", "The answer is D", "Answer: A"; falls back to the one
    choice whose text the answer contains (when exactly one does).
    """
    cleaned = text.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(cleaned)
        if match:
            return match.group(1).upper()
    if choices:
        lowered = cleaned.lower()
        found = [
            letter
            for letter, choice in zip(CHOICE_LETTERS, choices, strict=True)
            if choice and re.search(rf"\b{re.escape(choice.lower())}\b", lowered)
        ]
        if len(found) == 1:
            return found[0]
    return None


@dataclass
class BenchResult:
    """Accuracy per dimension and overall, with what was skipped and why."""

    model: str
    mode: str
    aggregation: str | None
    dimensions: dict[str, dict[str, float | int]]
    overall: dict[str, float | int]
    skipped: dict[str, int]
    outcomes: list[QuestionOutcome] = field(default_factory=list)
    unparsed: int = 0
    dataset: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "mode": self.mode,
            "aggregation": self.aggregation,
            "evaluated": self.overall["total"],
            "overall_accuracy": round(float(self.overall["accuracy"]), 2),
            "dimension_accuracy": {
                name: round(float(row["accuracy"]), 2) for name, row in self.dimensions.items()
            },
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": self.skipped,
            "unparsed_answers": self.unparsed,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "mode": self.mode,
            "aggregation": self.aggregation,
            "dimensions": self.dimensions,
            "overall": self.overall,
            "skipped": self.skipped,
            "unparsed_answers": self.unparsed,
            "questions": [o.to_json() for o in self.outcomes],
        }


def check_bench_paths(
    questions: str | Path, *, images: str | Path, out: str | Path | None = None
) -> None:
    """Refuse, before a model is loaded, paths a bench cannot use: a question file that is
    not a file, an image folder that is not a folder, an ``out`` that is a folder."""
    if not Path(questions).is_file():
        raise InputFileError(
            "question file not found (or not a file)",
            file=str(questions),
            fix="pass the SEED-Bench JSON",
        )
    if not Path(images).is_dir():
        raise InputFileError(
            "image folder not found (or not a folder)",
            file=str(images),
            fix="pass --images, the folder the questions' data_id paths are relative to",
        )
    if out is not None and Path(out).is_dir():
        raise InputFileError(
            "--out is a folder", file=str(out), fix="pass a file path for the results JSON"
        )


def run_bench(
    questions: str | Path,
    *,
    images: str | Path,
    model: VisionLanguageModel,
    mode: BenchMode = "likelihood",
    aggregation: Aggregation = "sum",
    batch_size: int = 4,
    dataset: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Evaluate ``model`` on a SEED-Bench question file with images under ``images``.

    Questions whose image is missing or unreadable are skipped and counted by reason; they do
    not enter any accuracy. ``on_progress(n)`` is called after each batch of n questions.
    """
    if mode not in BENCH_MODES:
        raise ConfigError(f"unknown mode '{mode}'", fix=f"use one of: {', '.join(BENCH_MODES)}")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"unknown aggregation '{aggregation}'", fix=f"use one of: {', '.join(AGGREGATIONS)}"
        )
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1", fix="pass --batch-size 1 or more")
    check_bench_paths(questions, images=images)
    question_set = load_questions(questions)
    skipped = Counter(question_set.skipped_reasons())
    image_root = Path(images)
    scorer = LikelihoodChoiceScorer(model=model) if mode == "likelihood" else None
    answerer = GenerationChoiceAnswerer(model=model) if mode == "generate" else None
    outcomes: list[QuestionOutcome] = []
    unparsed = 0
    pending = list(question_set.questions)
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        items: list[tuple[BenchQuestion, Image.Image]] = []
        for question in chunk:
            image, reason = _open_image(image_root, question.data_id)
            if image is None:
                skipped[reason] += 1
            else:
                items.append((question, image))
        if items and scorer is not None:
            for (question, _), scores in zip(items, scorer.score(items), strict=True):
                values = scores.aggregate(aggregation)
                best = max(range(len(values)), key=values.__getitem__)
                outcomes.append(
                    QuestionOutcome(
                        question_id=question.question_id,
                        dimension_id=question.dimension_id,
                        answer=question.answer,
                        prediction=CHOICE_LETTERS[best],
                        scores=values,
                    )
                )
        elif items and answerer is not None:
            for (question, _), text in zip(items, answerer.answer(items), strict=True):
                letter = parse_choice_letter(text, question.choices)
                unparsed += letter is None
                outcomes.append(
                    QuestionOutcome(
                        question_id=question.question_id,
                        dimension_id=question.dimension_id,
                        answer=question.answer,
                        prediction=letter,
                        raw_output=text,
                    )
                )
        if on_progress is not None:
            on_progress(len(chunk))
    if not outcomes:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common(3))
        raise InputFileError(
            f"no question could be evaluated ({reasons or 'the file has no question'})",
            file=str(questions),
            fix="check --images (data_id paths are relative to it) and the question file",
        )
    correct = sum(o.correct for o in outcomes)
    dimensions = accuracy_table(outcomes, question_set.dimension_names)
    overall: dict[str, float | int] = {
        "correct": correct,
        "total": len(outcomes),
        "accuracy": 100.0 * correct / len(outcomes) if outcomes else 0.0,
        "mean_of_dimensions": (
            sum(float(row["accuracy"]) for row in dimensions.values()) / len(dimensions)
            if dimensions
            else 0.0
        ),
    }
    return BenchResult(
        model=model.name,
        mode=mode,
        aggregation=aggregation if mode == "likelihood" else None,
        dimensions=dimensions,
        overall=overall,
        skipped=dict(skipped),
        outcomes=outcomes,
        unparsed=unparsed,
        dataset=dataset,
    )


def _open_image(root: Path, reference: str) -> tuple[Image.Image | None, str]:
    try:
        path = resolve_image_path(root, reference)  # data_id comes from the question file
    except RecordError:
        return None, "image path escapes the image folder"
    if not path.is_file():
        return None, "image not found"
    try:
        with open_image(path) as handle:
            return handle.convert("RGB"), ""
    except ImageTooLargeError:
        return None, "image too large"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, "image unreadable"


def _to_device(value: Any, vlm: VisionLanguageModel) -> Any:
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(vlm.device, dtype=vlm.model.dtype)
    return value.to(vlm.device)


def _right_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _stack_image_tensors(per_row: list[dict[str, Any]], vlm: VisionLanguageModel) -> dict[str, Any]:
    import torch

    stacked: dict[str, Any] = {}
    for key in per_row[0]:
        values = [row[key] for row in per_row]
        if isinstance(values[0], torch.Tensor):
            stacked[key] = _to_device(torch.cat(values, dim=0), vlm)
    return stacked
