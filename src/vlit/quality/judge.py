"""Correctness (C): an LLM judge compares a conversation with the visual clue it came from.

The judge reads the same textual description of the image the generator read (the visual clue
stored in ``provenance["visual_clue"]``, or rebuilt from the image's record in ``RUN/records``
with ``clue.visual_clue`` / ``clue.region_clue`` for region samples; records with captions only
give a caption-only clue), a few hand-scored examples written by us, and the conversation. It
answers in the verdict shape of ``vlit.generate.schemas`` (``{"verdict": "correct" |
"incorrect", "reason": ...}``), constrained to it like generation is (``structured``: the token
mask on the local model, ``response_format`` on endpoints, with the same ``auto`` fallback); the
setting is part of the journal key. It is asked ``votes``
times (one request with ``n = votes``; backends without ``n`` get distinct seeds from the
session) and the majority of the parseable verdicts decides; a tie counts as incorrect (the
conservative side for filtering).

Written to each sample: ``scores["correct"]`` (1 or 0), ``scores["correct_share"]`` (share of
parseable votes saying correct), ``scores["judge_valid_votes"]``; the votes, reasons and any
unparseable raw answers under ``provenance["quality"]["correctness"]``. Samples with no clue
(imported without annotations or captions) are **not judged** (no score, not counted as
incorrect), as are samples whose votes were all unparseable or whose requests failed.

Example:
    >>> judge = CorrectnessJudge(backend=backend, journal_path=run.journal_path, records=records)
    >>> batch = judge(batch)                                   # doctest: +SKIP
    >>> batch[0].scores["correct"], batch[0].scores["correct_share"]  # doctest: +SKIP
    (1.0, 0.667)
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlit.clue import region_clue, visual_clue
from vlit.errors import ConfigError
from vlit.generate.schemas import VerdictShape, verdict_shape
from vlit.llm.base import ChatRequest, LlmBackend, Message, Outcome, StructuredSetting
from vlit.llm.journal import Journal, LlmJournal
from vlit.llm.session import LlmSession
from vlit.runners.base import Resources
from vlit.schema import ImageRecord, Sample

JUDGE_PROMPT_VERSION = "judge-v2"
DEFAULT_VERDICT_SHAPE = VerdictShape()

JUDGE_SYSTEM_PROMPT = """\
You review conversations that were written about a photo by someone who could not see it and \
only had a written reference about it. You get the same reference. Decide whether the \
assistant's answers are faithful to it.

An answer is wrong when it states an object, number, colour, position, action or piece of \
written text that the reference contradicts, or invents specific visual details the reference \
does not support. Saying that something is absent is right when the reference does not list \
it. Background knowledge (what an object is for, history of a place) is fine when it does not \
contradict the reference. Do not judge style or length.

"""


@dataclass(frozen=True)
class JudgeExample:
    """A hand-scored example (ours) shown to the judge before the real case."""

    reference: str
    conversation: str
    verdict: str
    reason: str


JUDGE_EXAMPLES: tuple[JudgeExample, ...] = (
    JudgeExample(
        reference="Captions: A brown dog lies on a green sofa next to a sleeping cat. "
        "Objects: 1 dog, 1 cat, 1 couch.",
        conversation="User: What animals are on the sofa?\n"
        "Assistant: A brown dog and a cat are resting together on the green sofa.",
        verdict="correct",
        reason="The dog, the cat and the green sofa all match the reference.",
    ),
    JudgeExample(
        reference="Captions: Three people ride bicycles along a river path. "
        "Objects: 3 person, 3 bicycle.",
        conversation="User: How many cyclists are there?\n"
        "Assistant: There are five cyclists riding in a line beside the water.",
        verdict="incorrect",
        reason="The reference has three people on bicycles, not five.",
    ),
    JudgeExample(
        reference="Captions: A kitchen with a white refrigerator and a wooden table. "
        "Objects: 1 refrigerator, 1 dining table, 2 chair.",
        conversation="User: Is there a dog in the kitchen?\n"
        "Assistant: No, there is no dog; the kitchen holds a white fridge, a wooden table "
        "and two chairs.",
        verdict="correct",
        reason="No dog is listed, and the fridge, table and two chairs match.",
    ),
    JudgeExample(
        reference="Captions: A red stop sign at a street corner. Objects: 1 stop sign. "
        "Text in the image: STOP.",
        conversation="User: What does the sign say?\n"
        "Assistant: The blue sign at the corner reads YIELD.",
        verdict="incorrect",
        reason="The sign is red and reads STOP, not a blue YIELD sign.",
    ),
    JudgeExample(
        reference="Captions: A man surfs a large wave in the ocean. Objects: 1 person, "
        "1 surfboard.",
        conversation="User: What sport is shown?\n"
        "Assistant: Surfing. The man balances on his board as the wave breaks; surfing "
        "became popular in Hawaii long ago.",
        verdict="correct",
        reason="The surfer and board match, and the history remark contradicts nothing.",
    ),
    JudgeExample(
        reference="Captions: Two giraffes stand near a tree. Objects: 2 giraffe.",
        conversation="User: What is happening?\n"
        "Assistant: Two giraffes eat leaves while a zebra drinks from a pond beside them.",
        verdict="incorrect",
        reason="The zebra and the pond are invented; only two giraffes and a tree are given.",
    ),
)

_VERDICT = re.compile(r"verdict\s*[:=\-]?\s*[*_\"']*\s*(correct|incorrect)\b", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\W*(correct|incorrect)\b", re.IGNORECASE)
_REASON = re.compile(r"reason\s*[:=\-]\s*(.+)", re.IGNORECASE)


def parse_verdict(text: str, shape: VerdictShape = DEFAULT_VERDICT_SHAPE) -> tuple[str | None, str]:
    """``("correct" | "incorrect" | None, reason)`` from one judge answer (None: unparseable).

    The verdict shape the prompt asks for (what a constrained judge writes), or, from a judge
    that ignored it, ``Verdict: ...`` / ``Reason: ...`` lines.
    """
    structured = shape.read(text)
    if structured is not None:
        return structured[0], structured[1][:300]
    match = _VERDICT.search(text) or _BARE_VERDICT.search(text.strip())
    reason_match = _REASON.search(text)
    reason = reason_match.group(1).strip() if reason_match else ""
    return (match.group(1).lower() if match else None), reason[:300]


def render_conversation(sample: Sample) -> str:
    lines = []
    for turn in sample.turns:
        speaker = "User" if turn.role == "user" else "Assistant"
        lines.append(f"{speaker}: {' '.join(turn.text.split())}")
    return "\n".join(lines)


def judge_messages(
    reference: str, conversation: str, shape: VerdictShape = DEFAULT_VERDICT_SHAPE
) -> list[Message]:
    """System prompt with the shape's instructions, the hand-scored examples as earlier
    exchanges answered in that shape, then the case."""
    messages = [Message("system", JUDGE_SYSTEM_PROMPT + shape.instructions())]
    for example in JUDGE_EXAMPLES:
        messages.append(Message("user", _case(example.reference, example.conversation)))
        messages.append(Message("assistant", shape.render(example.verdict, example.reason)))
    messages.append(Message("user", _case(reference, conversation)))
    return messages


def _case(reference: str, conversation: str) -> str:
    return f"Reference:\n{reference}\n\nConversation:\n{conversation}"


def clue_for(sample: Sample, records: Mapping[str, ImageRecord]) -> tuple[str | None, str]:
    """The clue the sample was generated from and where it came from, or ``(None, why)``."""
    stored = sample.provenance.get("visual_clue")
    if isinstance(stored, str) and stored.strip():
        return stored, "provenance"
    record = records.get(sample.image_id or "")
    if record is None:
        return None, "no annotations for this image"
    object_index = sample.provenance.get("object_index")
    if isinstance(object_index, int) and 0 <= object_index < len(record.objects):
        return region_clue(record, object_index), "record (region)"
    if not (record.captions or record.objects or record.ocr or record.vqa):
        return None, "the image record has no annotations or captions"
    return visual_clue(record), "record"


class CorrectnessJudge:
    """Stage: majority vote of an LLM judge over ``votes`` answers (see module docstring).

    Example:
        >>> backend = OpenAICompatibleBackend(base_url="http://127.0.0.1:8000/v1", model="m")
        >>> judge = CorrectnessJudge(backend=backend, journal_path=Path("run/journal.sqlite"))
        >>> judged = judge(samples)              # doctest: +SKIP
    """

    name = "correctness"
    resources = Resources(cpus=1.0, batch_size=256)

    def __init__(
        self,
        *,
        backend: LlmBackend,
        journal_path: Path | None = None,
        journal: Journal | None = None,
        records: Mapping[str, ImageRecord] | None = None,
        votes: int = 3,
        temperature: float = 0.7,
        max_tokens: int = 96,
        seed: int = 0,
        concurrency: int = 8,
        structured: StructuredSetting = "auto",
    ) -> None:
        if votes < 1:
            raise ConfigError(f"judge votes must be >= 1, not {votes}", fix="use e.g. 3")
        self.backend = backend
        self.journal_path = journal_path
        self.journal = journal  # a journal served elsewhere (Ray); else opened from the path
        self.records = records or {}
        self.votes = votes
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.concurrency = concurrency
        self.structured = structured
        self.shape = verdict_shape(max_tokens)
        self.counts: Counter[str] = Counter()
        self.session: LlmSession | None = None

    def setup(self) -> None:
        if self.session is None:
            journal = self.journal
            if journal is None and self.journal_path is not None:
                journal = LlmJournal(self.journal_path)
            self.session = LlmSession(self.backend, journal=journal, concurrency=self.concurrency)

    def worker_copy(self, share_journal: Callable[[Path], Journal]) -> CorrectnessJudge:
        """The copy a runner's workers use: the run's journal shared through
        ``share_journal(path)``, so no two workers pay for one request; fresh counts."""
        if self.journal_path is None:
            return self
        remote = copy.copy(self)
        remote.journal, remote.counts = share_journal(self.journal_path), Counter()
        return remote

    def request_for(self, reference: str, sample: Sample) -> ChatRequest:
        return ChatRequest(
            judge_messages(reference, render_conversation(sample), self.shape),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            n=self.votes,
            seed=self.seed,
            output=self.shape.output_schema(self.structured),
        )

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        self.setup()
        assert self.session is not None
        cases: list[tuple[Sample, str]] = []
        requests: list[ChatRequest] = []
        for sample in batch:
            if not sample.ok:
                self._not_judged(sample, "generation_failed", {})
                continue
            reference, source = clue_for(sample, self.records)
            if reference is None:
                self._not_judged(sample, "no_clue", {"detail": source})
                continue
            cases.append((sample, source))
            requests.append(self.request_for(reference, sample))
        outcomes = self.session.run(requests) if requests else []
        for (sample, source), outcome in zip(cases, outcomes, strict=True):
            self._record(sample, source, outcome)
        return batch

    def _record(self, sample: Sample, source: str, outcome: Outcome) -> None:
        base = {
            "judge": self.backend.describe().get("model", self.backend.model_name),
            "prompt_version": JUDGE_PROMPT_VERSION,
            "clue_source": source,
            "votes_asked": self.votes,
            "structured": self.structured,
        }
        if not outcome.ok:
            self._not_judged(sample, "llm_error", base | {"detail": outcome.error})
            return
        votes: list[dict[str, Any]] = []
        for choice in outcome.choices:
            verdict, reason = parse_verdict(choice.text, self.shape)
            vote: dict[str, Any] = {"verdict": verdict, "reason": reason}
            if verdict is None:
                vote["raw"] = choice.text[:500]
                self.counts["votes_unparseable"] += 1
            votes.append(vote)
        tally = Counter(v["verdict"] for v in votes if v["verdict"] is not None)
        valid = tally["correct"] + tally["incorrect"]
        if valid == 0:
            self._not_judged(sample, "unparseable", base | {"votes": votes})
            return
        correct = tally["correct"] > tally["incorrect"]
        sample.scores["correct"] = 1.0 if correct else 0.0
        sample.scores["correct_share"] = tally["correct"] / valid
        sample.scores["judge_valid_votes"] = float(valid)
        sample.provenance.setdefault("quality", {})["correctness"] = base | {
            "status": "judged",
            "votes": votes,
            "abstentions": len(votes) - valid,
        }
        self.counts["judged"] += 1
        self.counts["correct" if correct else "incorrect"] += 1

    def _not_judged(self, sample: Sample, reason: str, details: dict[str, Any]) -> None:
        for key in ("correct", "correct_share", "judge_valid_votes"):
            sample.scores.pop(key, None)
        sample.provenance.setdefault("quality", {})["correctness"] = details | {
            "status": f"not_judged: {reason}"
        }
        self.counts[f"not_judged_{reason}"] += 1
