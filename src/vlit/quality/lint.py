"""Structural lint of conversations: every finding is a named flag with a count.

Per sample (``SampleLinter``, a stage):

- ``first_turn_not_user``, ``roles_not_alternating``, ``empty_turn``, ``no_turns``;
- ``image_token_in_turn``: ``<image>`` inside a turn (vlit keeps turns without it; imported raw
  text may still carry stray ones); ``image_token_multiple`` / ``image_token_misplaced`` /
  ``image_token_missing``: from the import's record in ``extra["image_token"]`` (several
  tokens for one image; a token outside the first user message or mid-text; an image with no
  token in the source);
- ``refusal``: apologies and refusals ("I'm sorry", "as an AI", "I cannot ...");
- ``leak``: the answer gives away that it was written from text ("the description",
  "the caption", "the given text", "according to the annotations", bounding-box numbers);
- ``non_english``: turns failing our light heuristic (share of ASCII letters, share of common
  English function words); no language model involved.

Over the whole dataset (``DatasetLinter``): ``length_outlier_long`` / ``length_outlier_short``
(robust z-score of log answer length, median and MAD, beyond ``z_limit``) and
``duplicate_exact`` / ``duplicate_near`` / ``duplicate_same_image`` (``dedup.py``).

Flags are written to ``provenance["quality"]["lint"]`` (flag -> count) and to the scores as
``lint_<flag>`` (count, only for raised flags) plus ``lint_flags`` (the total, 0 when clean).

Example:
    >>> linter = SampleLinter()
    >>> batch = linter(batch)                         # doctest: +SKIP
    >>> DatasetLinter().apply(all_samples)            # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from vlit.formats.image_token import IMAGE_TOKEN, IMAGE_TOKEN_KEY
from vlit.quality.dedup import DuplicateFinder, DuplicateIndex, Fingerprints
from vlit.runners.base import Resources
from vlit.schema import Sample

SAMPLE_FLAGS = (
    "no_turns",
    "first_turn_not_user",
    "roles_not_alternating",
    "empty_turn",
    "image_token_in_turn",
    "image_token_missing",
    "image_token_multiple",
    "image_token_misplaced",
    "refusal",
    "leak",
    "non_english",
)
DATASET_FLAGS = (
    "length_outlier_long",
    "length_outlier_short",
    "duplicate_exact",
    "duplicate_near",
    "duplicate_same_image",
)
LINT_FLAGS = SAMPLE_FLAGS + DATASET_FLAGS

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|my apologies|as an ai\b|as a language model|"
    r"i cannot\b|i can'?t (help|assist|provide|answer|determine|tell|see|view|identify)|"
    r"i'?m (unable|not able) to|i am (unable|not able) to|"
    r"i do(?: not|n'?t) have (access|the ability|enough information))",
    re.IGNORECASE,
)
_LEAK = re.compile(
    r"\bthe (given |provided |above |following )?(description|captions?)\b|"
    r"\bthe (given|provided|above|following) (text|information|context|data|annotations?)\b|"
    r"\b(according to|based on|as (stated|mentioned|described|noted) in) the "
    r"(annotations?|description|captions?|text|information|data|context|bounding box(es)?)\b|"
    r"\bbounding box(es)?\b|\[\s*0?\.\d+\s*,\s*0?\.\d+\s*,",
    re.IGNORECASE,
)
# Common English function words (our own short list) for the language heuristic.
_ENGLISH_WORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being
    it its this that these those there here he she they we you i his her their our your my me
    him them us not no yes do does did have has had can could will would should may might
    what which who whom whose where when why how all any some many much more most very so
    than then too also just only into onto over under about above below between near
    while""".split()
)


# Function words of Spanish, French, German, Italian, Portuguese and Dutch that are not English
# words (our own selection), for telling Latin-script languages apart.
_OTHER_FUNCTION_WORDS = frozenset(
    """el la los las del que y con por para una uno es est les des du et une sur pour dans avec
    qui ne pas der die das und ist nicht mit ein eine den dem zu von auf il che di per della
    sono non da gli nel não uma com os em het een van zijn niet ook dat wat""".split()
)


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def looks_non_english(text: str, *, min_words: int = 6) -> bool:
    """Our heuristic: mostly non-ASCII letters, or more function words of other Latin-script
    languages than of English. Keyword lists without function words ("steel watch, classic
    couple watch") are not called foreign."""
    letters = _letters(text)
    if len(letters) < 3:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.7:
        return True
    words = [w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) > 1]
    if len(words) < min_words:
        return False
    english = sum(w in _ENGLISH_WORDS for w in words)
    foreign = sum(w in _OTHER_FUNCTION_WORDS for w in words)
    return foreign > english and foreign / len(words) >= 0.1


def _token_placement_flags(sample: Sample) -> Counter[str]:
    """Flags from the import's record of where ``<image>`` stood in the source text.

    ``extra["image_token"]`` is written by ``vlit.formats.image_token`` on import: "before" or
    "after" the first user message is the normal LLaVA convention; "inline" (mid-text), a
    token in a later turn, several tokens ("verbatim"), or none at all for an image are not.
    """
    flags: Counter[str] = Counter()
    record = sample.extra.get(IMAGE_TOKEN_KEY)
    if not isinstance(record, dict) or sample.image is None:
        return flags
    placement = record.get("placement")
    if placement == "none":
        flags["image_token_missing"] += 1
    elif placement == "inline" or int(record.get("turn", 0) or 0) != 0:
        flags["image_token_misplaced"] += 1
    elif placement == "verbatim":
        texts = {int(k): str(v) for k, v in (record.get("texts") or {}).items()}
        tokens = sum(text.count(IMAGE_TOKEN) for text in texts.values())
        flags["image_token_multiple"] += max(tokens - 1, 0)
        flags["image_token_misplaced"] += sum(1 for turn in texts if turn != 0)
    return flags


def lint_sample(sample: Sample) -> Counter[str]:
    """The per-sample flags of one sample, with counts."""
    flags: Counter[str] = Counter()
    turns = sample.turns
    if not turns:
        flags["no_turns"] += 1
        return flags
    if turns[0].role != "user":
        flags["first_turn_not_user"] += 1
    flags["roles_not_alternating"] += sum(
        a.role == b.role for a, b in zip(turns, turns[1:], strict=False)
    )
    for turn in turns:
        text = turn.text.replace("’", "'")
        flags["empty_turn"] += not text.replace(IMAGE_TOKEN, "").strip()
        flags["image_token_in_turn"] += text.count(IMAGE_TOKEN)
        flags["non_english"] += looks_non_english(text.replace(IMAGE_TOKEN, " "))
        if turn.role == "assistant":
            flags["refusal"] += len(_REFUSAL.findall(text))
            flags["leak"] += len(_LEAK.findall(text))
    flags.update(_token_placement_flags(sample))
    return +flags  # drop zero counts


def clear_flags(sample: Sample) -> None:
    """Forget flags of an earlier lint run (rescoring a scored run must not add them up)."""
    sample.provenance.get("quality", {}).pop("lint", None)
    for key in [k for k in sample.scores if k.startswith("lint_")]:
        del sample.scores[key]


def record_flags(sample: Sample, flags: Counter[str]) -> None:
    """Write flags to the sample (provenance and ``lint_*`` scores), merging earlier ones."""
    stored = sample.provenance.setdefault("quality", {}).setdefault("lint", {})
    for flag, count in flags.items():
        stored[flag] = stored.get(flag, 0) + count
        sample.scores[f"lint_{flag}"] = float(stored[flag])
    sample.scores["lint_flags"] = float(sum(stored.values()))


class SampleLinter:
    """Stage: per-sample structural flags (see the module docstring).

    Example:
        >>> linter = SampleLinter()
        >>> linted = linter(samples)               # doctest: +SKIP
        >>> linter.counts["refusal"]               # doctest: +SKIP
        3
    """

    name = "lint"
    resources = Resources(cpus=1.0, batch_size=1024)

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            clear_flags(sample)
            flags = lint_sample(sample)
            record_flags(sample, flags)
            self.counts.update({f: 1 for f in flags})  # samples per flag
            self.counts["linted"] += 1
        return batch


class DatasetLintFlags:
    """Stage: records the dataset lint's flags (found beforehand by `DatasetLinter.find` over
    the whole dataset) on each generated sample, keyed by sample id; 0 flags on the others."""

    name = "dataset_lint"
    resources = Resources(batch_size=256)

    def __init__(self, *, flags: dict[str, Counter[str]]) -> None:
        self.flags = flags
        self.counts: Counter[str] = Counter()

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            if not sample.ok:
                continue
            found = self.flags.get(sample.sample_id)
            if found:
                record_flags(sample, found)
                self.counts.update({flag: 1 for flag in found})
            sample.scores.setdefault("lint_flags", 0.0)
        return batch


class DatasetLinter:
    """Flags that need the whole dataset: answer-length outliers and duplicates."""

    def __init__(
        self, *, z_limit: float = 3.5, duplicate_threshold: float = 0.8, seed: int = 1
    ) -> None:
        self.z_limit = z_limit
        self.finder = DuplicateFinder(threshold=duplicate_threshold, seed=seed)
        self.counts: Counter[str] = Counter()

    def apply(self, samples: Sequence[Sample]) -> Counter[str]:
        """Flag ``samples`` in place; return the number of samples per flag."""
        for index, flags in self.find(samples).items():
            self.flag(samples[index], flags)
        for sample in samples:
            sample.scores.setdefault("lint_flags", 0.0)
        return self.counts

    def find(self, samples: Iterable[Sample]) -> dict[int, Counter[str]]:
        """The flags of each sample index, reading ``samples`` once (a stream of any size: per
        sample, its answer length and what `DuplicateFinder` keeps)."""
        stream = iter(samples)
        with DatasetLintFeed(self) as feed:
            while chunk := list(itertools.islice(stream, 1024)):
                feed.add(self.measure(chunk))
            return feed.flags()

    def measure(self, samples: Sequence[Sample]) -> LintMeasures:
        """What the flags need of ``samples``: log answer lengths and duplicate fingerprints."""
        lengths = np.array(
            [math.log1p(sum(len(t.split()) for t in s.assistant_turns())) for s in samples],
            dtype=np.float64,
        )
        return LintMeasures(lengths, self.finder.fingerprints(samples))

    def flag(self, sample: Sample, flags: Counter[str]) -> None:
        """Record ``flags`` (from `find`) on ``sample`` and count them."""
        record_flags(sample, flags)
        self.counts.update({f: 1 for f in flags})

    def flags_of(
        self, lengths: np.ndarray, duplicates: dict[int, list[str]]
    ) -> dict[int, Counter[str]]:
        """The flags per sample index, from every sample's log answer length and the
        duplicates found among them."""
        found: dict[int, Counter[str]] = {}
        for index, flag in self._length_outliers(lengths):
            found.setdefault(index, Counter())[flag] += 1
        for index, duplicate_flags in duplicates.items():
            found.setdefault(index, Counter()).update(duplicate_flags)
        return found

    def _length_outliers(self, lengths: np.ndarray) -> Iterator[tuple[int, str]]:
        if len(lengths) < 5:
            return
        median = float(np.median(lengths))
        deviations = np.abs(lengths - median)
        mad = float(np.median(deviations))
        if mad > 0.0:
            robust_z = 0.6745 * (lengths - median) / mad
        else:  # over half the answers have the same length: fall back to the mean deviation
            mean_deviation = float(np.mean(deviations))
            if mean_deviation == 0.0:
                return
            robust_z = (lengths - median) / (1.253314 * mean_deviation)
        for index, z in enumerate(robust_z):
            if z > self.z_limit:
                yield index, "length_outlier_long"
            elif z < -self.z_limit:
                yield index, "length_outlier_short"


@dataclass
class LintMeasures:
    """`DatasetLinter.measure` of a run of samples."""

    lengths: NDArray[np.float64]
    fingerprints: Fingerprints


class DatasetLintFeed:
    """The dataset lint's measures of a stage's generated samples, in order: a `Feed` that a
    runner folds the stage into (on Ray each worker measures its shard, the MinHash work
    included, and this process adds the measures in shard order). What it keeps per sample is
    8 bytes of length and what a `DuplicateIndex` keeps; `flags` gives the flags per index of
    the generated samples. Use it as a context manager (the index has a temporary file)."""

    def __init__(self, linter: DatasetLinter) -> None:
        self.linter = linter
        self.lengths = array("d")
        self.index: DuplicateIndex | None = linter.finder.index()
        self.shard: LintMeasures | None = None  # a worker's copy: its shard's measures

    def __enter__(self) -> DatasetLintFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.index is not None:
            self.index.close()

    def __getstate__(self) -> dict[str, Any]:
        """A worker's copy: no index (it measures one shard and is merged here)."""
        return {**self.__dict__, "index": None, "lengths": array("d")}

    def update_shard(self, shard: list[Sample], index: int) -> None:
        measures = self.linter.measure([sample for sample in shard if sample.ok])
        if self.index is None:
            self.shard = measures
        else:
            self.add(measures)

    def merge(self, other: Self) -> None:
        if other.shard is not None:
            self.add(other.shard)

    def add(self, measures: LintMeasures) -> None:
        """Measures of the samples that follow those added so far."""
        assert self.index is not None, "a worker's copy is merged, not added to"
        self.lengths.frombytes(measures.lengths.tobytes())
        self.index.add(measures.fingerprints)

    def flags(self) -> dict[int, Counter[str]]:
        assert self.index is not None, "a worker's copy has no flags"
        lengths = np.frombuffer(self.lengths, dtype=np.float64)
        return self.linter.flags_of(lengths, self.index.flags())
