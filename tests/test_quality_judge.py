"""The correctness judge through a real local HTTP endpoint (scripted, then SmolLM2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_servers import ModelServer, Response, ScriptedServer
from vlit.generate.parse import FAILURE_NO_TURNS
from vlit.llm.base import StructuredSetting
from vlit.quality.judge import JUDGE_EXAMPLES, CorrectnessJudge, clue_for, parse_verdict
from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn

RECORD = ImageRecord(
    image_id="391895",
    file_name="000000391895.jpg",
    captions=["A man with a red helmet on a small moped on a dirt road."],
    objects=[ObjectAnnotation("motorcycle", "vehicle"), ObjectAnnotation("person", "person")],
)
CAPTIONS_ONLY = ImageRecord(image_id="cap", file_name="c.jpg", captions=["A cat on a mat."])


def conversation(sample_id: str, image_id: str | None, **provenance: object) -> Sample:
    return Sample(
        sample_id=sample_id,
        image_id=image_id,
        turns=[Turn("user", "What is he riding?"), Turn("assistant", "He rides a moped.")],
        provenance=dict(provenance),
    )


def test_examples_are_ours_and_balanced() -> None:
    verdicts = [example.verdict for example in JUDGE_EXAMPLES]
    assert len(JUDGE_EXAMPLES) >= 4
    assert verdicts.count("correct") >= 2 and verdicts.count("incorrect") >= 2


def test_parse_verdict() -> None:
    assert parse_verdict("Verdict: incorrect\nReason: five, not three.") == (
        "incorrect",
        "five, not three.",
    )
    assert parse_verdict("**Verdict:** Correct\nReason: fits")[0] == "correct"
    assert parse_verdict("correct - all matches")[0] == "correct"
    assert parse_verdict("The conversation seems plausible.")[0] is None


def test_clue_sources() -> None:
    records = {"391895": RECORD, "cap": CAPTIONS_ONLY}
    stored, source = clue_for(conversation("a", "391895", visual_clue="Given clue."), records)
    assert (stored, source) == ("Given clue.", "provenance")
    rebuilt, source = clue_for(conversation("b", "391895"), records)
    assert source == "record" and rebuilt is not None and "moped" in rebuilt
    region, source = clue_for(conversation("c", "391895", object_index=0), records)
    assert source == "record (region)" and region is not None
    captions, source = clue_for(conversation("d", "cap"), records)
    assert source == "record" and captions is not None and "cat" in captions
    assert clue_for(conversation("e", None), records)[0] is None


def test_majority_vote_abstentions_and_not_judged(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    answers = {
        "2-of-3-incorrect": Response.text(
            '{"verdict": "incorrect", "reason": "no moped."}',
            "Verdict: correct\nReason: matches.",
            '{"verdict": "incorrect", "reason": "wrong vehicle."}',
        ),
        "one-valid-vote": Response.text(
            "Looks fine to me!", "Verdict: correct\nReason: the moped is there.", "???"
        ),
        "all-unparseable": Response.text("hmm", "no idea", "maybe"),
    }

    def rule(body: dict) -> Response | None:
        last = body["messages"][-1]["content"]
        for marker, response in answers.items():
            if f"[{marker}]" in last:
                return response
        return None

    scripted_server.add_rule(rule)
    samples = []
    for marker in answers:
        sample = conversation(marker, "391895", visual_clue=f"[{marker}] A man on a moped.")
        samples.append(sample)
    samples.append(conversation("no-clue", "unknown-image"))
    failed = conversation("failed", "391895", visual_clue="x")
    failed.failure_reason = FAILURE_NO_TURNS
    samples.append(failed)

    journal = tmp_path / "journal.sqlite"
    judge = CorrectnessJudge(
        backend=scripted_server.backend(), journal_path=journal, records={"391895": RECORD}
    )
    judged = {s.sample_id: s for s in judge(samples)}

    wrong = judged["2-of-3-incorrect"]
    assert wrong.scores["correct"] == 0.0
    assert wrong.scores["correct_share"] == pytest.approx(1 / 3)
    record = wrong.provenance["quality"]["correctness"]
    assert [v["verdict"] for v in record["votes"]] == ["incorrect", "correct", "incorrect"]
    assert record["votes"][2]["reason"] == "wrong vehicle."
    assert record["judge"] == "scripted-model"

    single = judged["one-valid-vote"]
    assert single.scores["correct"] == 1.0 and single.scores["judge_valid_votes"] == 1.0
    votes = single.provenance["quality"]["correctness"]["votes"]
    assert votes[0] == {"verdict": None, "reason": "", "raw": "Looks fine to me!"}
    assert single.provenance["quality"]["correctness"]["abstentions"] == 2

    unparseable = judged["all-unparseable"]
    assert "correct" not in unparseable.scores
    status = unparseable.provenance["quality"]["correctness"]["status"]
    assert status == "not_judged: unparseable"
    assert judged["no-clue"].provenance["quality"]["correctness"]["status"] == (
        "not_judged: no_clue"
    )
    assert "correct" not in judged["failed"].scores
    assert judge.counts["votes_unparseable"] == 5
    assert judge.counts["judged"] == 2 and judge.counts["incorrect"] == 1

    # Each request asked for 3 votes at once, saw the examples and the clue, and carried the
    # verdict schema; the server ignored it, and the votes that fail anyway keep their text.
    body = scripted_server.requests[0]
    assert body["n"] == 3
    assert body["messages"][0]["role"] == "system"
    assert len(body["messages"]) == 2 + 2 * len(JUDGE_EXAMPLES)
    assert body["messages"][2]["content"] == judge.shape.render(
        JUDGE_EXAMPLES[0].verdict, JUDGE_EXAMPLES[0].reason
    )
    for sent in scripted_server.requests:
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": judge.shape.schema(), "strict": True},
        }
    assert record["structured"] == "auto"

    # A rerun over the same journal asks the server nothing new and gives the same result.
    sent = len(scripted_server.requests)
    again = CorrectnessJudge(
        backend=scripted_server.backend(), journal_path=journal, records={"391895": RECORD}
    )
    rerun = {
        s.sample_id: s
        for s in again(
            [
                conversation(
                    "2-of-3-incorrect", "391895", visual_clue="[2-of-3-incorrect] A man on a moped."
                )
            ]
        )
    }
    assert len(scripted_server.requests) == sent
    assert rerun["2-of-3-incorrect"].scores["correct"] == 0.0


def test_the_structured_setting_is_part_of_the_judges_journal_key(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    scripted_server.add_rule(lambda body: Response.text('{"verdict": "correct", "reason": "ok"}'))
    journal = tmp_path / "journal.sqlite"

    def judge_with(structured: StructuredSetting) -> Sample:
        judge = CorrectnessJudge(
            backend=scripted_server.backend(),
            journal_path=journal,
            votes=1,
            structured=structured,
        )
        return judge([conversation("s", "391895", visual_clue="A man on a moped.")])[0]

    for setting in ("auto", "off", "auto", "off"):
        assert judge_with(setting).scores["correct"] == 1.0
    # Changing the setting is a new request; going back to one already asked is resumed.
    assert len(scripted_server.requests) == 2
    assert "response_format" in scripted_server.requests[0]
    assert "response_format" not in scripted_server.requests[1]


@pytest.mark.model
def test_real_small_model_verdicts_parse_under_the_schema(smollm_server: ModelServer) -> None:
    # SmolLM2 behind a real endpoint that honours response_format with the local backend's
    # token mask: every vote is a verdict, though the 135M model rarely writes one unaided.
    judge = CorrectnessJudge(
        backend=smollm_server.backend(),
        records={"391895": RECORD},
        votes=3,
        max_tokens=64,
        temperature=0.8,
        seed=7,
    )
    [sample] = judge([conversation("real", "391895")])
    record = sample.provenance["quality"]["correctness"]
    assert record["status"] == "judged", record
    assert [vote["verdict"] in ("correct", "incorrect") for vote in record["votes"]] == [True] * 3
    assert all(vote["reason"] and "raw" not in vote for vote in record["votes"])
    assert sample.scores["correct"] in (0.0, 1.0)
    assert smollm_server.requests[-1]["response_format"]["json_schema"]["name"] == "verdict"
