"""Datasets with a known amount of one property, for checking that each indicator measures it.

Every builder makes samples from real text: COCO captions (five per image, written by people),
the LLaVA slice's captions, VQA v2 questions, COCO instance categories, and our own annotation
adaptation templates and generation examples. One property is varied, the rest held still:

- ``topic_mix``: responses about ``topics`` different images (each a caption or two or three of
  that image), at a fixed size: response diversity R should rise with ``topics``;
- ``with_near_duplicates``: every response also as near-identical copies (punctuation, case,
  spacing and Unicode forms): R should not change;
- ``task_mix`` / ``skewed_tasks``: ``kinds`` adaptation tasks, or one task taking ``share`` of
  the samples: T should rise with the kinds, the balance variance with the share;
- ``phrasing_mix``: ``phrasings`` distinct instruction phrasings per task, repeated to a size:
  instruction diversity I should rise with the phrasings, not with the size;
- ``object_questions``: instructions about ``objects`` real COCO categories, each with an
  attribute: O/G should rise with ``objects``;
- ``complexity_tiers``: one-word questions, VQA v2 questions, multi-turn reasoning
  conversations: the complexity proxy should rise in that order.

The test suite (``tests/test_indicator_validity.py``) and ``benchmarks/bench_indicator_validity.py``
run the indicators on them.

Example:
    >>> captions = {1: ["A dog runs.", "A brown dog on grass."], 2: ["Two buses in a street."]}
    >>> [s.assistant_turns() for s in topic_mix(captions, topics=2, size=2, seed=0)]
    [['A brown dog on grass. A dog runs.'], ['Two buses in a street.']]
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from pathlib import Path

from vlit.generate.prompts import ADAPTATION_FILE, EXAMPLES_FILE, read_prompt_data
from vlit.schema import Sample, Turn

RESPONSE_QUESTION = "Describe the picture."
ATTRIBUTES = ("red", "small", "wooden", "old", "striped", "bright", "wet", "empty")


def coco_captions(path: str | Path) -> dict[int, list[str]]:
    """Captions per image id of a COCO captions file, whitespace collapsed."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(
            " ".join(annotation["caption"].split())
        )
    return captions


def coco_categories(path: str | Path) -> list[str]:
    """Category names of a COCO instances file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return sorted(category["name"] for category in data["categories"])


def llava_responses(path: str | Path) -> list[str]:
    """The first assistant turn of every record of a LLaVA json file."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        next(turn["value"] for turn in record["conversations"] if turn["from"] == "gpt")
        for record in records
    ]


def vqa_questions(path: str | Path) -> list[str]:
    """The question texts of a VQA v2 questions file."""
    return [q["question"] for q in json.loads(Path(path).read_text(encoding="utf-8"))["questions"]]


def one_turn(sample_id: str, instruction: str, response: str) -> Sample:
    return Sample(sample_id, turns=[Turn("user", instruction), Turn("assistant", response)])


def response_samples(responses: Sequence[str], prefix: str = "r") -> list[Sample]:
    """One sample per response, all with the same question."""
    return [one_turn(f"{prefix}{i}", RESPONSE_QUESTION, text) for i, text in enumerate(responses)]


def topic_mix(captions: dict[int, list[str]], *, topics: int, size: int, seed: int) -> list[Sample]:
    """``size`` responses about ``topics`` images, evenly: each is 1 to 3 of the image's
    captions, in random order."""
    rng = random.Random(seed)
    images = rng.sample(sorted(captions), topics)
    texts = []
    for index in range(size):
        pool = captions[images[index % topics]]
        texts.append(" ".join(sorted(rng.sample(pool, rng.randint(1, min(3, len(pool)))))))
    return response_samples(texts, prefix=f"t{topics}-")


def _punctuation_copies(text: str) -> list[str]:
    stripped = text.rstrip(" .!")
    return [stripped + ".", stripped, stripped + "!", stripped + " ...", stripped + "?!"]


def _case_copies(text: str) -> list[str]:
    alternating = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))
    return [text.upper(), text.title(), text[:1].upper() + text[1:], alternating, text.lower()]


def _spacing_copies(text: str) -> list[str]:
    words = text.split()
    return [
        "  ".join(words),
        "\u00a0".join(words),  # no-break spaces
        " " + "\t".join(words) + "\n",
        text.replace(",", "\uff0c").replace(".", "\uff0e"),  # full-width punctuation
        "\u3000".join(words),  # ideographic spaces
    ]


PREFIXES = ("The image shows ", "This picture shows ", "In the photo, ", "We can see ", "Here is ")


def _prefix_copies(text: str) -> list[str]:
    return [prefix + text[:1].lower() + text[1:] for prefix in PREFIXES]


def _typo_copies(text: str) -> list[str]:
    """Five versions, each with two neighbouring letters of one word swapped (seeded by text)."""
    rng = random.Random(text)
    pairs = [
        i for i in range(len(text) - 1) if text[i : i + 2].isalpha() and text[i] != text[i + 1]
    ]
    chosen = rng.sample(pairs, min(5, len(pairs)))
    return [text[:i] + text[i + 1] + text[i] + text[i + 2 :] for i in chosen]


# kinds of near-identical copy, each five versions of a text
NEAR_COPY_KINDS = {
    "punctuation": _punctuation_copies,
    "case": _case_copies,
    "spacing and Unicode forms": _spacing_copies,
}
# wordier copies: a prefix added, a typo (the normalised key differs from the text's)
WORDY_COPY_KINDS = {"prefix": _prefix_copies, "typo": _typo_copies}


def near_copies(text: str, copies: int, kind: str | None = None) -> list[str]:
    """``copies`` near-identical versions of ``text``: of one kind of ``NEAR_COPY_KINDS`` or
    ``WORDY_COPY_KINDS``, or (``None``) of all ``NEAR_COPY_KINDS`` in turn."""
    kinds = [kind] if kind is not None else list(NEAR_COPY_KINDS)
    makers = NEAR_COPY_KINDS | WORDY_COPY_KINDS
    rounds = zip(*(makers[k](text) for k in kinds), strict=False)
    versions = [v for v in dict.fromkeys(v for versions in rounds for v in versions) if v != text]
    return [versions[i % len(versions)] for i in range(copies)]


def with_near_duplicates(
    responses: Sequence[str], copies: int, kind: str | None = None
) -> list[Sample]:
    """Every response followed by ``copies`` near-identical copies of it (see ``near_copies``)."""
    texts = [variant for text in responses for variant in [text, *near_copies(text, copies, kind)]]
    return response_samples(texts, prefix="nd")


@functools.cache
def _adaptation_pool(task: str) -> tuple[str, ...]:
    return tuple(read_prompt_data(ADAPTATION_FILE)["tasks"][task]["instructions"])


# adaptation tasks that pose different kinds of task (region_caption and grounding both ask
# "where", so only one of them is here)
TASK_KINDS = ("counting", "object_presence", "region_caption", "brief_caption", "detailed_caption")


def _task_sample(task: str, index: int, rng: random.Random, categories: Sequence[str]) -> Sample:
    noun = rng.choice(categories)
    instruction = rng.choice(_adaptation_pool(task)).format(
        noun=noun,
        nouns=noun + "s",
        a_noun=("an " if noun[0] in "aeiou" else "a ") + noun,
        box="[0.12, 0.30, 0.55, 0.90]",
        box_note="",
    )
    return one_turn(f"{task}-{index}", instruction.strip(), f"An answer about the {noun}.")


def task_mix(categories: Sequence[str], *, kinds: int, size: int, seed: int) -> list[Sample]:
    """``size`` samples spread evenly over the first ``kinds`` of ``TASK_KINDS``."""
    rng = random.Random(seed)
    return [_task_sample(TASK_KINDS[i % kinds], i, rng, categories) for i in range(size)]


def skewed_tasks(
    categories: Sequence[str], *, share: float, size: int, seed: int, kinds: int = 4
) -> list[Sample]:
    """``kinds`` tasks; the first takes ``share`` of the samples, the rest share the others."""
    rng = random.Random(seed)
    first = round(share * size)
    tasks = [TASK_KINDS[0]] * first + [TASK_KINDS[1 + i % (kinds - 1)] for i in range(size - first)]
    return [_task_sample(task, i, rng, categories) for i, task in enumerate(tasks)]


def phrasing_mix(*, phrasings: int, size: int) -> list[Sample]:
    """Caption requests (brief and detailed) with ``phrasings`` distinct phrasings per task,
    repeated in turn to ``size`` samples."""
    samples = []
    for task in ("brief_caption", "detailed_caption"):
        pool = _adaptation_pool(task)[:phrasings]
        for index in range(size // 2):
            samples.append(one_turn(f"{task}-{index}", pool[index % len(pool)], "A picture."))
    return samples


def object_questions(
    categories: Sequence[str], *, objects: int, size: int, seed: int
) -> list[Sample]:
    """Instructions that involve ``objects`` distinct categories, each with an attribute."""
    rng = random.Random(seed)
    samples = []
    for index in range(size):
        named = [f"the {rng.choice(ATTRIBUTES)} {c}" for c in rng.sample(list(categories), objects)]
        listed = named[0] if objects == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        samples.append(one_turn(f"o{objects}-{index}", f"Describe {listed}.", "They are there."))
    return samples


def complexity_tiers(questions: Sequence[str]) -> dict[str, list[Sample]]:
    """One-word questions (the last word of each VQA question), the VQA questions, and the
    multi-turn reasoning conversations of our generation examples."""
    one_word = [q.rstrip("?").split()[-1] + "?" for q in questions]
    reasoning = [
        example
        for example in read_prompt_data(EXAMPLES_FILE)["examples"]
        if "reasoning" in example["modes"]
    ]
    conversations = []
    for example in reasoning:
        turns = []
        for turn in example["conversation"]:
            turns += [Turn("user", turn["user"]), Turn("assistant", turn["assistant"])]
        conversations.append(Sample(example["id"], turns=turns))
    return {
        "one-word questions": [one_turn(f"w{i}", q, "Yes.") for i, q in enumerate(one_word)],
        "VQA v2 questions": [one_turn(f"q{i}", q, "Yes.") for i, q in enumerate(questions)],
        "multi-turn reasoning": conversations,
    }
