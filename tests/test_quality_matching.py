"""Matching degree on tiny random CLIP and SigLIP checkpoints loaded through the user path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from random_models import save_random_clip, save_random_siglip
from vlit.errors import ModelUnavailableError
from vlit.generate.parse import FAILURE_NO_TURNS
from vlit.quality.clip_text import CausalTextTower, common_prefix_length
from vlit.quality.image_preprocess import PreprocessSpec, preprocess_image
from vlit.quality.matching import (
    MD_TEXT_PREFIX,
    ClipMatchingScorer,
    conversation_text,
    pair_texts,
)
from vlit.schema import Sample, Turn

pytestmark = pytest.mark.model

ANSWERS = [
    "A man in a red helmet rides a small motorbike along a dirt track between green fields.",
    "Two giraffes stand beside a tall tree while a zebra grazes in the dry grass behind them.",
    "A kitchen counter holds a bowl of oranges, a knife and a cutting board near the sink.",
    "Several people wait at a bus stop in the rain, most of them holding black umbrellas.",
]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dual_encoders")
    return {
        "clip": save_random_clip(folder / "clip", shape="tiny", seed=1),
        "siglip": save_random_siglip(folder / "siglip", seed=2),
    }


@pytest.fixture(scope="session")
def reference_models(checkpoints: dict[str, Path]) -> dict[str, tuple[object, object]]:
    from transformers import AutoModel, AutoProcessor

    return {
        kind: (AutoModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))
        for kind, path in checkpoints.items()
    }


@pytest.fixture(scope="session")
def images(coco_tiny: Path) -> list[str]:
    return sorted(p.name for p in (coco_tiny / "train2017").glob("*.jpg"))[:4]


def make_samples(coco_tiny: Path, images: list[str], turns_per_sample: int = 1) -> list[Sample]:
    samples = []
    for index, answer in enumerate(ANSWERS):
        turns = []
        for turn in range(turns_per_sample):
            turns.append(Turn("user", f"Question {turn} about the photo: what do you notice?"))
            turns.append(Turn("assistant", ANSWERS[(index + turn) % len(ANSWERS)]))
        samples.append(
            Sample(
                sample_id=f"s{index}",
                turns=turns if turns_per_sample > 1 else [turns[0], Turn("assistant", answer)],
                image=images[index % 2],  # two samples per image: exercises the image cache
                image_root=str(coco_tiny / "train2017"),
            )
        )
    return samples


def independent_md(
    model: object, processor: object, text: str, image_path: Path, siglip: bool
) -> float:
    """Normalised dot product of the model's own features, computed without vlit's code."""
    max_tokens = model.config.text_config.max_position_embeddings  # type: ignore[attr-defined]
    tokens = processor.tokenizer(  # type: ignore[attr-defined]
        [text],
        truncation=True,
        max_length=max_tokens,
        padding="max_length" if siglip else True,
        return_tensors="pt",
    )
    image = Image.open(image_path).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]  # type: ignore[operator]
    with torch.no_grad():
        text_features = model.get_text_features(input_ids=tokens["input_ids"]).pooler_output  # type: ignore[attr-defined]
        image_features = model.get_image_features(pixel_values=pixels).pooler_output  # type: ignore[attr-defined]
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    return float(text_features[0] @ image_features[0]) * 100.0


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_preprocessing_matches_the_checkpoint_processor(
    kind: str, reference_models: dict, coco_tiny: Path, images: list[str]
) -> None:
    _, processor = reference_models[kind]
    spec = PreprocessSpec.from_processor_config(processor.image_processor.to_dict())
    for name in images[:2]:
        image = Image.open(coco_tiny / "train2017" / name).convert("RGB")
        ours = preprocess_image(image, spec)
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("workers", [0, 1])
def test_truncate_scores_equal_an_independent_computation(
    kind: str,
    workers: int,
    checkpoints: dict,
    reference_models: dict,
    coco_tiny: Path,
    images: list[str],
) -> None:
    samples = make_samples(coco_tiny, images)
    with ClipMatchingScorer(
        model=str(checkpoints[kind]), fast_decode=False, decode_workers=workers
    ) as scorer:
        scored = scorer(samples)
    model, processor = reference_models[kind]
    values = []
    for sample in scored:
        text = MD_TEXT_PREFIX + conversation_text(sample)
        expected = independent_md(model, processor, text, sample.image_path, kind == "siglip")
        assert sample.scores["md"] == pytest.approx(expected, abs=1e-3)
        assert -100.0 <= sample.scores["md"] <= 100.0
        record = sample.provenance["quality"]["md"]
        assert record["model"] == str(checkpoints[kind])
        assert record["model_type"] == kind
        assert record["text_mode"] == "truncate"
        assert record["scale"] == "cosine x 100"
        values.append(sample.scores["md"])
    assert len(set(np.round(values, 4))) == len(values)  # distinct texts give distinct scores
    assert scorer.counts["scored"] == len(samples)


def test_per_turn_scores_each_pair_and_keeps_mean_and_min(
    checkpoints: dict, reference_models: dict, coco_tiny: Path, images: list[str]
) -> None:
    samples = make_samples(coco_tiny, images, turns_per_sample=3)
    with ClipMatchingScorer(
        model=str(checkpoints["clip"]), text_mode="per_turn", fast_decode=False, decode_workers=0
    ) as scorer:
        scored = scorer(samples)
    model, processor = reference_models["clip"]
    for sample in scored:
        units = pair_texts(sample)
        assert len(units) == 3 and all(u.startswith("Q: ") and " A: " in u for u in units)
        pair_scores = [
            independent_md(model, processor, MD_TEXT_PREFIX + u, sample.image_path, False)
            for u in units
        ]
        assert sample.scores["md"] == pytest.approx(np.mean(pair_scores), abs=1e-3)
        assert sample.scores["md_min"] == pytest.approx(min(pair_scores), abs=1e-3)
        assert sample.scores["md_min"] <= sample.scores["md"]
        record = sample.provenance["quality"]["md"]
        assert record["unit"] == "user+assistant pair" and record["units"] == 3


def test_truncation_reads_only_the_first_max_tokens(
    checkpoints: dict, coco_tiny: Path, images: list[str]
) -> None:
    long_answer = " ".join(ANSWERS * 3)
    base = [Turn("user", "Describe the photo in detail."), Turn("assistant", long_answer)]
    a = Sample(sample_id="a", turns=base, image=images[0], image_root=str(coco_tiny / "train2017"))
    # Same first 77 tokens, different ending: a truncating model cannot tell them apart.
    b = Sample(
        sample_id="b",
        turns=[*base, Turn("user", "Anything else?"), Turn("assistant", "Zebras and a bus.")],
        image=images[0],
        image_root=str(coco_tiny / "train2017"),
    )
    short = Sample(
        sample_id="c",
        turns=[Turn("user", "What is it?"), Turn("assistant", "A dog.")],
        image=images[0],
        image_root=str(coco_tiny / "train2017"),
    )
    with ClipMatchingScorer(model=str(checkpoints["clip"]), decode_workers=0) as scorer:
        scored = scorer([a, b, short])
    assert scored[0].scores["md"] == pytest.approx(scored[1].scores["md"], abs=1e-5)
    assert scored[0].scores["md_coverage"] < 0.5
    assert scored[1].scores["md_coverage"] < scored[0].scores["md_coverage"]
    assert scored[0].provenance["quality"]["md"]["truncated"] is True
    assert scored[2].scores["md_coverage"] == 1.0
    assert scored[2].provenance["quality"]["md"]["truncated"] is False
    assert scored[2].scores["md"] != pytest.approx(scored[0].scores["md"], abs=1e-3)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_one_tokenizer_pass_gives_the_tokenizers_own_truncation(
    kind: str, checkpoints: dict, reference_models: dict
) -> None:
    from vlit.quality.matching import load_dual_encoder

    encoder = load_dual_encoder(str(checkpoints[kind]))
    _, processor = reference_models[kind]
    limit = encoder.max_text_tokens
    texts = ["A dog.", " ".join(ANSWERS * 3), "word " * (limit - 2), "word " * limit]
    tokens = encoder.tokenize(texts)
    expected = processor.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    assert tokens.rows == expected
    assert tokens.counts == [len(ids) for ids in processor.tokenizer(texts)["input_ids"]]
    assert tokens.counts[1] > limit and len(tokens.rows[1]) == limit


def test_distinct_image_cache_gives_the_same_numbers_as_no_cache(
    checkpoints: dict, coco_tiny: Path, images: list[str]
) -> None:
    results = {}
    # (cache, cache size): a one-entry cache evicts while a batch is being scored
    for cache, size in ((True, 100), (True, 1), (False, 100)):
        samples = make_samples(coco_tiny, images)
        with ClipMatchingScorer(
            model=str(checkpoints["clip"]),
            cache_images=cache,
            image_cache_size=size,
            decode_workers=0,
            batch_size=3,
        ) as scorer:
            first = [s.scores["md"] for s in scorer(samples)]
            # a second batch with the same images is served from the cache when enabled
            again = [s.scores["md"] for s in scorer(make_samples(coco_tiny, images))]
        assert again == pytest.approx(first, abs=1e-4)
        results[(cache, size)] = first
    assert results[(True, 100)] == pytest.approx(results[(False, 100)], abs=1e-4)
    assert results[(True, 1)] == pytest.approx(results[(False, 100)], abs=1e-4)


def test_fast_decode_reads_a_smaller_jpeg_and_still_scores(
    checkpoints: dict, coco_tiny: Path, images: list[str]
) -> None:
    from vlit.quality.image_preprocess import decode_image

    spec = PreprocessSpec(resize_shortest_edge=224, crop=(224, 224))
    path = str(coco_tiny / "train2017" / images[0])
    full, reduced = decode_image(path, spec, fast_decode=False), decode_image(path, spec)
    assert min(reduced.size) >= 224
    assert reduced.size[0] < full.size[0]
    with ClipMatchingScorer(model=str(checkpoints["clip"]), decode_workers=0) as scorer:
        scored = scorer(make_samples(coco_tiny, images))
    assert all(np.isfinite(s.scores["md"]) for s in scored)


def test_bad_images_are_recorded_and_the_batch_goes_on(
    checkpoints: dict, coco_tiny: Path, images: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples = make_samples(coco_tiny, images)
    samples[1].image = "missing.jpg"
    samples[2].image, samples[2].image_root = broken.name, str(tmp_path)
    samples[3].failure_reason = FAILURE_NO_TURNS
    with ClipMatchingScorer(model=str(checkpoints["clip"]), decode_workers=1) as scorer:
        scored = scorer(samples)
    assert "md" in scored[0].scores
    for index in (1, 2):
        assert "md" not in scored[index].scores
        status = scored[index].provenance["quality"]["md"]["status"]
        assert status.startswith("not_computed: image_unreadable")
    assert scored[3].provenance["quality"]["md"]["status"] == "not_computed: generation_failed"
    assert scorer.counts == {
        "scored": 1,
        "not_computed_image_unreadable": 2,
        "not_computed_generation_failed": 1,
    }


def test_a_hub_id_offline_raises_model_unavailable_naming_the_model() -> None:
    scorer = ClipMatchingScorer(model="openai/clip-vit-base-patch32", decode_workers=0)
    with pytest.raises(ModelUnavailableError) as error:
        scorer.setup()
    message = str(error.value)
    assert "openai/clip-vit-base-patch32" in message and "--clip DIR" in message


def test_a_missing_local_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        ClipMatchingScorer(model=str(tmp_path / "nope"), decode_workers=0).setup()


def test_open_clip_names_need_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed, installed or not
    with pytest.raises(ModelUnavailableError, match=r"vlit\[openclip\]"):
        ClipMatchingScorer(model="open_clip:ViT-B-32/openai", decode_workers=0).setup()


@pytest.mark.parametrize("legacy_eos", [False, True])
def test_causal_text_tower_equals_the_full_forward(
    reference_models: dict[str, tuple[object, object]], legacy_eos: bool
) -> None:
    model, processor = reference_models["clip"]
    tokenizer = processor.tokenizer  # type: ignore[attr-defined]
    tower = CausalTextTower(model)
    if legacy_eos:  # checkpoints from before transformers' eos fix read the highest token id
        tower.eos_token_id = 2
        model.text_model.eos_token_id = 2  # type: ignore[attr-defined]
    texts = [MD_TEXT_PREFIX + " ".join(ANSWERS[: k + 1]) for k in range(4)]
    texts += [MD_TEXT_PREFIX + "A dog.", "No shared prefix with the others."]
    try:
        for batch in (texts, texts[:4], texts[1:2]):  # long+short, all truncated, a single row
            rows = tokenizer(batch, truncation=True, max_length=77)["input_ids"]
            padded = tokenizer(batch, truncation=True, max_length=77, padding=True)
            with torch.inference_mode():
                output = model.get_text_features(  # type: ignore[attr-defined]
                    input_ids=torch.tensor(padded["input_ids"]),
                    attention_mask=torch.tensor(padded["attention_mask"]),
                )
            expected = getattr(output, "pooler_output", output)
            ours = tower(rows)
            assert ours.shape == expected.shape
            assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    finally:
        model.text_model.eos_token_id = tokenizer.eos_token_id  # type: ignore[attr-defined]
    assert common_prefix_length(rows) == len(rows[0])  # one row: all of it is "shared"
    four = tokenizer(texts[:4], truncation=True, max_length=77)["input_ids"]
    assert common_prefix_length(four) >= len(tokenizer(MD_TEXT_PREFIX)["input_ids"]) - 1
