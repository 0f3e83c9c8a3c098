"""OpenFlamingo in `vlit bench` and `vlit tune`: a tiny random OpenFlamingo built from tiny parts
(open_clip ViT, Llama) through open_flamingo's own `create_model_and_transforms`, on COCO images."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

if os.environ.get("VLIT_REQUIRE_OPENFLAMINGO"):  # `make test`'s OpenFlamingo run never skips
    import open_flamingo  # noqa: F401
else:
    pytest.importorskip("open_flamingo", reason="see README, OpenFlamingo: make setup installs it")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from test_evaluate_bench import OUR_QUESTIONS, _question  # noqa: E402
from vlit.errors import ConfigError, ModelUnavailableError  # noqa: E402
from vlit.evaluate.bench import (  # noqa: E402
    GenerationChoiceAnswerer,
    LikelihoodChoiceScorer,
    parse_choice_letter,
    run_bench,
)
from vlit.evaluate.export import export_for_training  # noqa: E402
from vlit.evaluate.models import load_vision_language_model, model_family  # noqa: E402
from vlit.evaluate.openflamingo import CHECKPOINT_FILE, SPEC_FILE, read_spec  # noqa: E402
from vlit.evaluate.seed_bench import load_questions  # noqa: E402
from vlit.evaluate.tiny import build_tiny_openflamingo  # noqa: E402
from vlit.evaluate.tuning import (  # noqa: E402
    IGNORE_INDEX,
    LoraTuner,
    build_training_example,
    resolve_preset,
)
from vlit.rundir import RunDir  # noqa: E402
from vlit.schema import Sample, Turn  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _captions(coco_tiny: Path) -> dict[int, list[str]]:
    data = json.loads(
        (coco_tiny / "annotations/captions_train2017.json").read_text(encoding="utf-8")
    )
    texts: dict[int, list[str]] = {}
    for a in data["annotations"]:
        texts.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))
    return texts


@pytest.fixture(scope="module")
def tiny_openflamingo(tmp_path_factory: pytest.TempPathFactory, coco_tiny: Path) -> Path:
    corpus = [t for caps in _captions(coco_tiny).values() for t in caps]
    corpus += [q[3] + " " + " ".join(q[4]) for q in OUR_QUESTIONS]
    corpus += ["Question: Describe the picture. Answer:", "What objects can you count?"]
    return build_tiny_openflamingo(tmp_path_factory.mktemp("tiny_openflamingo"), texts=corpus)


@pytest.fixture(scope="module")
def vlm(tiny_openflamingo: Path):
    return load_vision_language_model(str(tiny_openflamingo), device="cpu")


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "questions.json"
    path.write_text(json.dumps({"questions": [_question(*q) for q in OUR_QUESTIONS]}), "utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, coco_tiny: Path) -> Path:
    captions = json.loads(
        (coco_tiny / "annotations/captions_train2017.json").read_text(encoding="utf-8")
    )
    files = {i["id"]: i["file_name"] for i in captions["images"]}
    texts = _captions(coco_tiny)
    samples = [
        Sample(
            sample_id=f"coco-{image_id}",
            image_id=str(image_id),
            image=files[image_id],
            image_root=str(coco_tiny / "train2017"),
            turns=[
                Turn("user", "<image>\nDescribe the picture."),
                Turn("assistant", texts[image_id][0]),
                Turn("user", "What objects can you count?"),
                Turn("assistant", texts[image_id][1]),
            ],
        )
        for image_id in sorted(texts)[:6]
    ]
    samples.append(replace(samples[0], sample_id="missing-image", image="000000999999.jpg"))
    root = tmp_path_factory.mktemp("run")
    RunDir(root).write_samples("kept", samples)
    return root


def _image(name: str, coco_tiny: Path) -> Image.Image:
    return Image.open(coco_tiny / "train2017" / name).convert("RGB")


def _hand_choice_log_likelihoods(vlm, question: dict, image: Image.Image) -> list[float]:
    """Independent computation through open_flamingo's Flamingo.forward: one unpadded row per
    choice, labels only on the choice tokens; the model's mean loss times their count."""
    flamingo, tokenizer = vlm.model.flamingo, vlm.tokenizer
    vision_x = vlm.processor.image_processor(image)[None, None, None]
    prompt = tokenizer(f"<image>Question: {question['question']} Answer:")["input_ids"]
    sums = []
    for letter in "abcd":
        choice = tokenizer(" " + question[f"choice_{letter}"], add_special_tokens=False)
        ids = torch.tensor([prompt + choice["input_ids"]])
        labels = ids.clone()
        labels[0, : len(prompt)] = IGNORE_INDEX
        with torch.no_grad():
            loss = flamingo(vision_x=vision_x, lang_x=ids, labels=labels).loss
        sums.append(-float(loss) * len(choice["input_ids"]))
    return sums


def test_bench_ranks_choices_by_the_flamingo_likelihood(
    vlm, questions_file: Path, coco_tiny: Path
) -> None:
    assert vlm.family == "openflamingo"
    assert vlm.prompt("How many?") == "<image>Question: How many? Answer:"
    result = run_bench(questions_file, images=coco_tiny / "train2017", model=vlm, batch_size=3)
    assert result.overall["total"] == len(OUR_QUESTIONS)
    by_id = {o.question_id: o for o in result.outcomes}
    predictions = []
    for spec in OUR_QUESTIONS:
        question = _question(*spec)
        hand = _hand_choice_log_likelihoods(vlm, question, _image(spec[1], coco_tiny))
        assert by_id[spec[0]].scores == pytest.approx(hand, abs=2e-4)
        predictions.append(by_id[spec[0]].prediction)
        assert predictions[-1] == "ABCD"[max(range(4), key=hand.__getitem__)]
    assert len(set(predictions)) > 1
    # the image reaches the language model through the gated cross-attention
    question = load_questions(questions_file).questions[0]
    scorer = LikelihoodChoiceScorer(model=vlm)
    one = scorer.score([(question, _image(OUR_QUESTIONS[0][1], coco_tiny))])[0].log_prob_sums
    other = scorer.score([(question, _image(OUR_QUESTIONS[5][1], coco_tiny))])[0].log_prob_sums
    assert max(abs(a - b) for a, b in zip(one, other, strict=True)) > 1e-3


def test_generation_mode_batched_equals_alone(vlm, questions_file: Path, coco_tiny: Path) -> None:
    images = coco_tiny / "train2017"
    result = run_bench(questions_file, images=images, model=vlm, mode="generate", batch_size=4)
    assert result.overall["total"] == len(OUR_QUESTIONS)
    for outcome, spec in zip(result.outcomes, OUR_QUESTIONS, strict=True):
        assert outcome.raw_output is not None
        assert outcome.prediction == parse_choice_letter(outcome.raw_output, spec[4])
    question = load_questions(questions_file).questions[2]
    alone = GenerationChoiceAnswerer(model=vlm).answer(
        [(question, _image(question.data_id, coco_tiny))]
    )
    assert alone == [result.outcomes[2].raw_output]


def test_family_is_recognised_from_the_folder_or_asked_for(
    tiny_openflamingo: Path, tmp_path: Path
) -> None:
    assert model_family(str(tiny_openflamingo)) == "openflamingo"
    assert model_family(str(tmp_path)) == "auto"
    with pytest.raises(ConfigError, match="auto, openflamingo"):
        model_family(str(tmp_path), "flamingo")
    # a bare hub download (checkpoint.pt only) is OpenFlamingo-3B with --family openflamingo
    bare = tmp_path / "of3b"
    bare.mkdir()
    (bare / CHECKPOINT_FILE).write_bytes(b"")
    spec = read_spec(bare)
    assert (spec.clip_vision_encoder_path, spec.clip_vision_encoder_pretrained) == (
        "ViT-L-14",
        "openai",
    )
    assert spec.lang_encoder_path == "anas-awadalla/mpt-1b-redpajama-200b"
    assert spec.cross_attn_every_n_layers == 1
    with pytest.raises(ModelUnavailableError, match="no openflamingo.json"):
        load_vision_language_model(str(tmp_path), device="cpu", family="openflamingo")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / SPEC_FILE).write_text('{"preset": "openflamingo-3b", "lm": "x"}', "utf-8")
    with pytest.raises(ConfigError, match=r"unknown fields \['lm'\]") as error:
        read_spec(broken)
    assert str(broken / SPEC_FILE) in str(error.value)


def test_tuning_trains_the_flamingo_modules_and_reloads_the_same(
    tiny_openflamingo: Path, vlm, run_dir: Path, coco_tiny: Path, tmp_path: Path
) -> None:
    sample = next(iter(RunDir(run_dir).read_samples("kept")))
    example = build_training_example(vlm, sample, _image(sample.image, coco_tiny), max_length=512)
    labelled = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label >= 0]
    # trained: the two answers, each closed by <|endofchunk|>; the questions and <image> are not
    assert labelled == vlm.encode_plain(
        f" {sample.turns[1].text}<|endofchunk|>"
    ) + vlm.encode_plain(f" {sample.turns[3].text}<|endofchunk|>")
    assert example.input_ids.count(vlm.image_token_id) == 1
    assert vlm.tokenizer.decode(example.input_ids).startswith("<image>Question: Describe")

    out = tmp_path / "tuned"
    preset = resolve_preset("openflamingo-3b", family="openflamingo", learning_rate=3e-3)
    result = LoraTuner(preset=preset, max_steps=6, seed=0, device="cpu").tune(
        run_dir, model=str(tiny_openflamingo), out=out
    )
    assert result.samples_used == 6 and result.skipped == {"image missing or unreadable": 1}
    assert result.loss_after < result.loss_before - 0.05
    saved = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert any(k.startswith("perceiver.") for k in saved)
    assert any(".gated_cross_attn_layer." in k for k in saved)
    assert not any(k.startswith("vision_encoder.") for k in saved)
    tuned = load_vision_language_model(str(out), device="cpu")
    # only the perceiver and the gated cross-attention moved
    base_state, tuned_state = vlm.model.flamingo.state_dict(), tuned.model.flamingo.state_dict()
    moved = {k for k in base_state if not torch.equal(base_state[k], tuned_state[k])}
    assert moved and all(k.startswith("perceiver.") or "gated_cross_attn" in k for k in moved)
    # the reloaded model gives the loss the tuner measured in memory after training
    samples = [s for s in RunDir(run_dir).read_samples("kept") if s.sample_id.startswith("coco")]

    def loss(model) -> float:
        total, count = 0.0, 0
        for s in samples:
            ex = build_training_example(model, s, _image(s.image, coco_tiny), max_length=512)
            with torch.no_grad():
                value = model.model(
                    input_ids=torch.tensor([ex.input_ids]),
                    vision_x=ex.image_tensors["vision_x"],
                    labels=torch.tensor([ex.labels]),
                ).loss
            total += float(value) * ex.trained_tokens
            count += ex.trained_tokens
        return total / count

    assert loss(tuned) == pytest.approx(result.loss_after, rel=1e-5)
    assert loss(vlm) == pytest.approx(result.loss_before, rel=1e-5)
    # saved again and reloaded: the same choice scores
    again = tmp_path / "again"
    tuned.model.save_pretrained(again)
    reloaded = load_vision_language_model(str(again), device="cpu")
    question = load_questions(_write_one_question(tmp_path)).questions[0]
    image = _image(question.data_id, coco_tiny)
    first = LikelihoodChoiceScorer(model=tuned).score([(question, image)])[0].log_prob_sums
    second = LikelihoodChoiceScorer(model=reloaded).score([(question, image)])[0].log_prob_sums
    assert first == second


def _write_one_question(folder: Path) -> Path:
    path = folder / "one.json"
    path.write_text(json.dumps([_question(*OUR_QUESTIONS[1])]), encoding="utf-8")
    return path


def test_cli_bench_and_tune_with_family_flag(
    tiny_openflamingo: Path, run_dir: Path, questions_file: Path, coco_tiny: Path, tmp_path, capsys
) -> None:
    from vlit.cli import main

    main(
        [
            "bench", str(questions_file), "--images", str(coco_tiny / "train2017"),
            "--model", str(tiny_openflamingo), "--family", "openflamingo", "--device", "cpu",
            "--json",
        ]
    )  # fmt: skip
    summary = json.loads(capsys.readouterr().out)  # open_flamingo's own print kept off stdout
    assert summary["evaluated"] == len(OUR_QUESTIONS)
    main(
        [
            "tune", str(run_dir), "--model", str(tiny_openflamingo), "--out", str(tmp_path / "t"),
            "--max-steps", "1", "--device", "cpu", "--json",
        ]
    )  # fmt: skip
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["preset"] == "openflamingo-3b" and tuned["optimizer_steps"] == 1
    assert (tmp_path / "t" / SPEC_FILE).is_file()


def test_tune_export_says_why_open_flamingo_scripts_cannot_take_conversations(
    run_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--laion_shards and --mmc4_shards") as error:
        export_for_training(run_dir, format="openflamingo", out=tmp_path)
    assert "vlit tune" in str(error.value)
