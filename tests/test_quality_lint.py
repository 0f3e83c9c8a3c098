"""Lint on crafted samples and on the real LLaVA slice (imported with vlit's LLaVA reader)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlit.formats.importing import DatasetImporter
from vlit.formats.llava import LlavaReader
from vlit.quality.dedup import DuplicateFinder
from vlit.quality.lint import DatasetLinter, SampleLinter, lint_sample, looks_non_english
from vlit.schema import Sample, Turn


def conversation(*texts: str, roles: tuple[str, ...] | None = None, **fields: object) -> Sample:
    roles = roles or tuple("user" if i % 2 == 0 else "assistant" for i in range(len(texts)))
    turns = [Turn(role, text) for role, text in zip(roles, texts, strict=True)]  # type: ignore[arg-type]
    return Sample(sample_id=str(fields.pop("sample_id", "s")), turns=turns, **fields)  # type: ignore[arg-type]


def test_turn_order_and_empty_turns() -> None:
    flags = lint_sample(
        conversation("A dog.", "", "Why?", roles=("assistant", "assistant", "user"))
    )
    assert flags == {"first_turn_not_user": 1, "roles_not_alternating": 1, "empty_turn": 1}
    assert lint_sample(Sample(sample_id="x")) == {"no_turns": 1}
    assert lint_sample(conversation("What is it?", "A brown dog on a sofa.")) == {}


def test_refusals_and_leaks_in_assistant_turns_only() -> None:
    flags = lint_sample(
        conversation(
            "I'm sorry, can you describe the caption?",  # user turns are not linted for these
            "I’m sorry, but as an AI I cannot see images.",
            "Where is the cat?",
            "According to the annotations, the cat sits on the left. The description says so.",
        )
    )
    assert flags["refusal"] == 3  # "I'm sorry" (curly quote), "as an AI", "I cannot"
    assert flags["leak"] == 2
    clean = conversation("What does the sign say?", "The text on the sign reads OPEN.")
    assert lint_sample(clean) == {}


def test_image_token_checks_use_the_import_record() -> None:
    stray = conversation("<image>\nWhat is this?", "A cat.", image="a.jpg")
    assert lint_sample(stray) == {"image_token_in_turn": 1}
    placements = {
        "before": ({"turn": 0, "placement": "before", "separator": "\n"}, {}),
        "inline": ({"turn": 0, "placement": "inline", "offset": 3}, {"image_token_misplaced": 1}),
        "later": (
            {"turn": 2, "placement": "after", "separator": "\n"},
            {"image_token_misplaced": 1},
        ),
        "none": ({"placement": "none"}, {"image_token_missing": 1}),
        "verbatim": (
            {"placement": "verbatim", "texts": {"0": "<image> <image> Hi", "2": "<image> ok"}},
            {"image_token_multiple": 2, "image_token_misplaced": 1},
        ),
    }
    for name, (record, expected) in placements.items():
        sample = conversation("Hi", "Hello", image="a.jpg", extra={"image_token": record})
        assert lint_sample(sample) == expected, name


def test_non_english_heuristic() -> None:
    assert looks_non_english("El perro está sentado en la cama con una manta roja.")
    assert looks_non_english("Der Hund sitzt auf dem Bett und schläft ein.")
    assert looks_non_english("这是一只坐在沙发上的狗")
    assert not looks_non_english("A dog is sitting on the bed next to a red blanket.")
    assert not looks_non_english("steel analog watch, classic couple watch, steel bracelet")


ANSWERS = [
    "A red bus waits at the corner while two people climb aboard in light rain, and the "
    "driver watches the mirror before pulling away from the curb toward the bridge.",
    "Three sheep graze on a green hill under a cloudy sky.",
    "The kitchen has a white refrigerator, a wooden table with four chairs and a bowl of "
    "apples near the window.",
    "A skier in a yellow jacket turns sharply on fresh snow, sending up a spray of powder.",
    "Two cats sleep on a blue sofa beside a stack of books and an old lamp.",
    "A man holds an umbrella over a child while they wait for the train on a crowded platform.",
    "The pizza on the plate has mushrooms, olives and melted cheese.",
    "A laptop, a coffee mug and a phone sit on a desk next to a potted plant by the wall.",
]


def test_length_outliers_and_duplicates_over_a_dataset() -> None:
    base = [
        conversation("Describe the scene.", answer, sample_id=f"s{i}", image_id=f"img{i}")
        for i, answer in enumerate(ANSWERS)
    ]
    long = conversation("Describe.", " ".join(["word"] * 400), sample_id="long", image_id="L")
    short = conversation("Describe.", "Bus.", sample_id="short", image_id="S")
    exact = conversation("Describe the scene!", ANSWERS[0].upper(), sample_id="dup-exact")
    exact.image_id = "img0"  # the same conversation (up to case and punctuation), same image
    near = conversation(
        "Describe the scene.",
        ANSWERS[0].replace("bridge", "old stone bridge"),
        sample_id="dup-near",
        image_id="other",
    )
    samples = [*base, long, short, exact, near]
    counts = DatasetLinter().apply(samples)
    by_id = {s.sample_id: s.provenance.get("quality", {}).get("lint", {}) for s in samples}
    assert by_id["long"] == {"length_outlier_long": 1}
    assert by_id["short"] == {"length_outlier_short": 1}
    assert by_id["dup-exact"] == {"duplicate_exact": 1, "duplicate_same_image": 1}
    assert by_id["dup-near"] == {"duplicate_near": 1}
    assert all(by_id[f"s{i}"] == {} for i in range(len(ANSWERS)))
    assert counts["duplicate_exact"] == 1 and counts["duplicate_near"] == 1
    assert samples[0].scores["lint_flags"] == 0.0
    assert samples[-1].scores["lint_flags"] == 1.0


def test_near_duplicate_threshold_is_validated() -> None:
    from vlit.errors import ConfigError

    with pytest.raises(ConfigError, match="threshold"):
        DuplicateFinder(threshold=1.5)


def test_real_llava_slice(llava_slice: Path, tmp_path: Path) -> None:
    importer = DatasetImporter(reader=LlavaReader(), images=None, workdir=tmp_path)
    samples = list(importer.samples(llava_slice))
    assert len(samples) == 2183
    linter = SampleLinter()
    linter(samples)
    dataset_counts = DatasetLinter().apply([s for s in samples if s.ok])
    assert linter.counts["linted"] == 2183
    # Real LLaVA data puts <image> before or after the first message: never flagged.
    assert linter.counts["image_token_misplaced"] == 0
    assert linter.counts["image_token_in_turn"] == 0
    assert linter.counts["first_turn_not_user"] == 0
    # The slice has a Bengali-script caption and a few meme captions quoting "the caption".
    flagged = [s for s in samples if s.scores.get("lint_non_english")]
    assert any("bengali" in s.turns[1].text for s in flagged)
    # exact counts on this fixed slice: a changed heuristic must show up here and be reviewed
    assert len(flagged) == 5
    assert linter.counts["leak"] == 2
    assert dataset_counts["length_outlier_short"] >= 1
    assert all("lint_flags" in s.scores for s in samples)


@pytest.mark.parametrize("shard_size", [1, 97, 700, 5000])
def test_the_lint_feed_folded_as_ray_folds_it_finds_what_one_pass_finds(
    llava_slice: Path, tmp_path: Path, shard_size: int
) -> None:
    """Shards measured on pickled copies (as Ray's workers get the feed) and merged in order
    give the flags of one pass over the generated samples; failed samples are skipped."""
    import pickle

    from vlit.generate.generator import FAILURE_LLM
    from vlit.quality.lint import DatasetLintFeed

    importer = DatasetImporter(reader=LlavaReader(), images=None, workdir=tmp_path)
    samples = list(importer.samples(llava_slice))
    samples += [Sample.from_row(s.to_row()) for s in samples[:300:7]]  # far from their originals
    for sample in samples[5::50]:
        sample.failure_reason = FAILURE_LLM
    generated = [s for s in samples if s.ok]
    expected = DatasetLinter().find(generated)
    assert sum("duplicate_exact" in f for f in expected.values()) >= 40
    with DatasetLintFeed(DatasetLinter()) as feed:
        unfed = pickle.dumps(feed)
        for index, start in enumerate(range(0, len(samples), shard_size)):
            copy = pickle.loads(unfed)
            copy.update_shard(samples[start : start + shard_size], index)
            feed.merge(pickle.loads(pickle.dumps(copy)))
        assert feed.flags() == expected
