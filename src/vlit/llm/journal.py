"""Every LLM request and answer in one SQLite file: resume, no request paid twice, accounting.

One row per (request key, rollout index). The request key is the SHA-256 of the canonical JSON
of everything that determines the answer: backend kind, model, messages, temperature,
max_tokens, top_logprobs, stop, seed and, where there is one, the output schema with its
structured-output setting; the rollout index is the second half of the row's
identity. The API key is never part of it (backends never hand it out).

Each answer is committed as soon as it arrives: at the end of the event-loop turn in which it
arrived, together with the other answers of that turn (one transaction for all of them). The
file is in WAL mode with ``synchronous=NORMAL``: a commit is an append to the write-ahead log
without an fsync, so it survives the process being killed at any moment (SIGKILL, OOM); only a
power cut or OS crash can lose the last commits (WAL checkpoints do fsync). Rerunning a
finished run therefore sends no request at all.

Example:
    >>> journal = LlmJournal(run.journal_path)                    # doctest: +SKIP
    >>> session = LlmSession(backend, journal=journal)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vlit.errors import InputFileError
from vlit.llm.base import ChatRequest, Choice

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request_json TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS answers (
    request_key TEXT NOT NULL,
    rollout INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    first_token_logprobs TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (request_key, rollout)
) WITHOUT ROWID;
"""


def canonical_request(*, backend: str, model: str, request: ChatRequest) -> str:
    """The canonical JSON of what determines an answer (sorted keys, no spaces)."""
    document: dict[str, Any] = {
        "backend": backend,
        "model": model,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": float(request.temperature),
        "max_tokens": int(request.max_tokens),
        "top_logprobs": request.top_logprobs,
        "stop": list(request.stop),
        "seed": int(request.seed),
    }
    if request.output is not None:
        # Only requests with an output schema carry it, so older journals keep their keys.
        output = request.output
        document["output"] = [output.setting, output.name, output.schema_json]
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(*, backend: str, model: str, request: ChatRequest) -> str:
    """SHA-256 hex of ``canonical_request``; with the rollout index it names a journal row."""
    return hash_canonical(canonical_request(backend=backend, model=model, request=request))


def hash_canonical(canonical: str) -> str:
    """The request key of a canonical request JSON."""
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JournalTotals:
    """What the journal holds: requests, answers (rollouts) and their token usage."""

    requests: int
    answers: int
    prompt_tokens: int
    completion_tokens: int


class GroupCommit:
    """Entries added during one turn of the event loop, flushed together at the end of it.

    ``flush(entries)`` commits them: a plain function, or one returning an awaitable (a remote
    call). Every ``add`` of the turn returns once that flush has finished, or raises its error.
    """

    def __init__(self, flush: Callable[[list[JournalEntry]], Awaitable[None] | None]) -> None:
        self._flush = flush
        self._pending: list[JournalEntry] = []
        self._done: asyncio.Future[None] | None = None

    async def add(self, entry: JournalEntry) -> None:
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
            loop.call_soon(self._flush_pending)
        self._pending.append(entry)
        # shield: one waiter being cancelled must not cancel the flush the others wait for.
        await asyncio.shield(self._done)

    def _flush_pending(self) -> None:
        entries, done = self._pending, self._done
        self._pending, self._done = [], None
        assert done is not None
        try:
            result = self._flush(entries)
        except Exception as error:  # noqa: BLE001 - handed to every waiter of this turn
            done.set_exception(error)
            return
        if result is None:
            done.set_result(None)
            return

        def settle(finished: asyncio.Future[None]) -> None:
            if finished.cancelled():
                done.cancel()
            elif (failure := finished.exception()) is not None:
                done.set_exception(failure)
            else:
                done.set_result(None)

        asyncio.ensure_future(result).add_done_callback(settle)


class Journal(Protocol):
    """What a session needs of a journal: ``LlmJournal``, or a client of one served elsewhere
    (``vlit.runners.ray_journal.JournalClient`` for LLM stages on Ray workers)."""

    def lookup(self, key: str, n: int) -> dict[int, Choice]: ...

    async def arecord(self, entry: JournalEntry) -> None: ...


def _cannot_write(path: Path, error: sqlite3.DatabaseError) -> bool:
    """True when the journal is fine but read-only (file, folder, or file system)."""
    text = str(error).lower()
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return True
    return path.exists() and not os.access(path, os.W_OK)


class LlmJournal:
    """The SQLite journal of one run directory (``RunDir.journal_path``).

    Use it from one thread (the session's event loop); open one per process.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._group = GroupCommit(self.record_many)

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we open and commit transactions ourselves.
            database = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            database.execute("PRAGMA journal_mode=WAL")
            database.execute("PRAGMA synchronous=NORMAL")
            database.execute("PRAGMA busy_timeout=10000")
            database.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            if _cannot_write(self.path, error):
                # Never advise moving it away here: its answers are paid for and would be
                # asked (and paid) for again.
                raise InputFileError(
                    f"the LLM journal cannot be written ({error})",
                    file=str(self.path),
                    fix=f"make it and its folder writable (chmod u+w {self.path} "
                    f"{self.path.parent}); keep the file, it holds answers already paid for",
                ) from None
            raise InputFileError(
                f"not a usable vlit LLM journal ({error})",
                file=str(self.path),
                fix="move the file away to start a fresh journal (its answers would be asked "
                "for again), or point the run at another directory",
            ) from None
        return database

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LlmJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def lookup(self, key: str, n: int) -> dict[int, Choice]:
        """The journaled rollouts ``0..n-1`` of a request, by rollout index."""
        rows = self._db.execute(
            "SELECT rollout, text, finish_reason, first_token_logprobs FROM answers "
            "WHERE request_key = ? AND rollout < ?",
            (key, n),
        ).fetchall()
        return {
            rollout: Choice(
                text=text,
                finish_reason=finish_reason,
                first_token_logprobs=json.loads(logprobs) if logprobs else None,
            )
            for rollout, text, finish_reason, logprobs in rows
        }

    def record(self, entry: JournalEntry) -> None:
        """Commit the answers of one backend call (its rollouts) in one transaction."""
        _commit(self._db, [entry])

    def record_many(self, entries: list[JournalEntry]) -> None:
        """Commit the answers of several backend calls in one transaction."""
        _commit(self._db, entries)

    async def arecord(self, entry: JournalEntry) -> None:
        """Like ``record``, from an event loop: returns once the answers are committed.

        The answers recorded during one turn of the event loop are committed together at the
        end of that turn (group commit): one transaction (~0.1 ms, no fsync) instead of one per
        answer, and nothing is held back longer than the turn in which it arrived.
        """
        await self._group.add(entry)

    def totals(self) -> JournalTotals:
        """Counts and token usage over everything journaled (all sessions, all reruns)."""
        requests = self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        answers, prompt, completion = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0) FROM answers"
        ).fetchone()
        return JournalTotals(
            requests=int(requests),
            answers=int(answers),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
        )


@dataclass(frozen=True, kw_only=True)
class JournalEntry:
    """The answers of one backend call, ready to journal: rollout ``rollouts[i]`` is
    ``choices[i]``; ``canonical`` is ``canonical_request(...)`` and ``key`` its hash.

    Token usage is split over the rows so that summing rows gives the call's usage: the
    prompt is paid once (first row), completion tokens are shared out evenly.
    """

    key: str
    canonical: str
    backend: str
    model: str
    rollouts: list[int]
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float

    def __post_init__(self) -> None:
        if len(self.rollouts) != len(self.choices):
            raise ValueError(f"{len(self.rollouts)} rollouts but {len(self.choices)} choices")

    def request_row(self, now: float) -> tuple[Any, ...]:
        return (self.key, self.backend, self.model, self.canonical, now)

    def answer_rows(self, now: float) -> list[tuple[Any, ...]]:
        share, remainder = divmod(self.completion_tokens, max(len(self.choices), 1))
        return [
            (
                self.key,
                rollout,
                choice.text,
                choice.finish_reason,
                json.dumps(choice.first_token_logprobs)
                if choice.first_token_logprobs is not None
                else None,
                self.prompt_tokens if index == 0 else 0,
                share + (remainder if index == 0 else 0),
                self.latency_s,
                now,
            )
            for index, (rollout, choice) in enumerate(zip(self.rollouts, self.choices, strict=True))
        ]


def _commit(database: sqlite3.Connection, answers: list[JournalEntry]) -> None:
    now = time.time()
    database.execute("BEGIN")
    try:
        for answer in answers:
            database.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?)", answer.request_row(now)
            )
            # OR IGNORE: the first committed answer of a rollout stays the answer.
            database.executemany(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                answer.answer_rows(now),
            )
    except BaseException:
        database.execute("ROLLBACK")
        raise
    database.execute("COMMIT")
