"""Run many chat requests through one backend: journal, concurrency, budget, accounting.

``LlmSession.run(requests)`` returns one ``Outcome`` per request, in input order, each with
exactly ``request.n`` choices or an ``error``; one failing request never stops the others.
For each request the session first reads the journal and asks the backend only for the
rollouts that are missing, so rerunning a finished run sends nothing.

Example:
    >>> backend = OpenAICompatibleBackend(base_url="http://127.0.0.1:8000/v1", model="qwen")
    >>> session = LlmSession(backend, journal=LlmJournal(run.journal_path), concurrency=16)
    >>> outcomes = session.run([ChatRequest([Message("user", "Describe a kitchen.")], n=2)])
    >>> session.usage().requests_sent                                      # doctest: +SKIP
    1
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlit.errors import ConfigError, LlmError
from vlit.llm.base import ChatRequest, Choice, Completion, LlmBackend, Outcome, rollout_seed
from vlit.llm.journal import Journal, JournalEntry, canonical_request, hash_canonical
from vlit.llm.openai_compatible import RequestFailed

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` each time a request is finished (sent or journaled)."""


@dataclass(frozen=True, kw_only=True)
class TokenPrices:
    """Price per 1000 prompt and completion tokens, in the currency of your choice."""

    prompt_per_1k: float
    completion_per_1k: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        ) / 1000


@dataclass
class SessionUsage:
    """What a session did. Token counts and cost cover the requests it sent, not the journal.

    ``requests_sent`` counts backend calls (for an HTTP backend, HTTP requests, retries not
    counted: those are ``retries``); ``generations_received`` counts the choices they brought;
    ``answered_from_journal`` counts requests answered entirely from the journal; ``failures``
    counts requests that failed (after retries); ``budget_skipped`` counts requests refused once
    the budget was spent, and ``stopped`` says why the session stopped sending.
    """

    requests_sent: int = 0
    generations_received: int = 0
    answered_from_journal: int = 0
    rollouts_from_journal: int = 0
    failures: int = 0
    budget_skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    retries: int = 0
    rate_limited: int = 0
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LlmSession:
    """Runs chat requests through a backend with a journal, a concurrency limit and a budget.

    Args:
        backend: any ``LlmBackend``.
        journal: where answers are committed and looked up; ``None`` sends every request.
        concurrency: requests in flight at once.
        max_requests: stop sending after this many backend calls (HTTP requests for an HTTP
            backend: a request for n generations that gets fewer asks for the rest one by one,
            and each of those counts).
        max_cost: stop sending once the cost of the answers received reaches this (needs
            ``prices``; requests already in flight may overshoot it a little).
        prices: token prices, for the cost in ``usage()``.
        progress: ``progress(done, total)`` after each finished request.
    """

    def __init__(
        self,
        backend: LlmBackend,
        *,
        journal: Journal | None = None,
        concurrency: int = 8,
        max_requests: int | None = None,
        max_cost: float | None = None,
        prices: TokenPrices | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(
                f"concurrency must be at least 1, not {concurrency}",
                fix="pass the number of requests to keep in flight, e.g. concurrency=8",
            )
        if max_cost is not None and prices is None:
            raise ConfigError(
                "max_cost needs token prices to know what a request costs",
                fix="set llm.price_per_1k_prompt and llm.price_per_1k_completion, "
                "or use max_requests",
            )
        self.backend = backend
        self.journal = journal
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_cost = max_cost
        self.prices = prices
        self.progress = progress
        description = backend.describe()
        self._backend_kind = str(description.get("kind", type(backend).__name__))
        self._native_n = bool(description.get("supports_n", True))
        self._usage = SessionUsage(cost=0.0 if prices else None)
        # One lock per request key in flight (dropped when its last user leaves, so a run of a
        # million requests holds at most `concurrency` of them).
        self._key_locks: dict[str, _KeyLock] = {}

    # -- public -------------------------------------------------------------------------------
    def run(self, requests: Sequence[ChatRequest]) -> list[Outcome]:
        """Answer ``requests`` (blocking); one outcome per request, in input order."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_and_close(requests))
        raise RuntimeError("LlmSession.run() was called inside an event loop; use `await arun()`")

    async def arun(self, requests: Sequence[ChatRequest]) -> list[Outcome]:
        """Answer ``requests`` inside a running event loop."""
        # Locks are bound to one event loop; each run starts with fresh ones.
        self._key_locks = {}
        outcomes: list[Outcome | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        done = 0

        async def worker() -> None:
            nonlocal done
            for index in pending:
                outcomes[index] = await self._answer(requests[index])
                done += 1
                if self.progress is not None:
                    self.progress(done, len(requests))

        # A fixed pool of workers keeps memory flat however many requests there are.
        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(requests)))))
        return [outcome for outcome in outcomes if outcome is not None]

    def usage(self) -> SessionUsage:
        """A copy of the counts so far."""
        return dataclasses.replace(self._usage)

    def summary(self) -> dict[str, Any]:
        """Backend description and usage, for ``run.json`` and ``--json`` output."""
        return {"backend": self.backend.describe(), **self._usage.to_dict()}

    # -- one request --------------------------------------------------------------------------
    async def _run_and_close(self, requests: Sequence[ChatRequest]) -> list[Outcome]:
        try:
            return await self.arun(requests)
        finally:
            await self.backend.aclose()

    async def _answer(self, request: ChatRequest) -> Outcome:
        if request.n < 1:
            self._usage.failures += 1
            return Outcome(request, error=f"n must be at least 1, not {request.n}")
        canonical = canonical_request(
            backend=self._backend_kind, model=self.backend.model_name, request=request
        )
        key = hash_canonical(canonical)
        key_lock = self._key_locks.get(key)
        if key_lock is None:
            key_lock = self._key_locks[key] = _KeyLock()
        key_lock.users += 1
        try:
            # Identical requests in one batch wait for each other and then share the journal.
            async with key_lock.lock:
                found = self.journal.lookup(key, request.n) if self.journal is not None else {}
                missing = [rollout for rollout in range(request.n) if rollout not in found]
                self._usage.rollouts_from_journal += len(found)
                if not missing:
                    self._usage.answered_from_journal += 1
                    return Outcome(
                        request, choices=[found[i] for i in range(request.n)], from_journal=True
                    )
                error: str | None = None
                if len(missing) == request.n and (request.n == 1 or self._native_n):
                    error = await self._call_into(found, key, canonical, missing, request)
                    missing = [rollout for rollout in missing if rollout not in found]
                if missing and error is None:
                    # Partly journaled or partly answered (a server that ignores n), or n not
                    # supported: ask for each missing rollout alone, with its own seed.
                    errors = await asyncio.gather(
                        *(
                            self._call_into(
                                found, key, canonical, [rollout], _single_rollout(request, rollout)
                            )
                            for rollout in missing
                        )
                    )
                    error = next((error for error in errors if error is not None), None)
        finally:
            key_lock.users -= 1
            if key_lock.users == 0:
                del self._key_locks[key]
        if isinstance(error, _BudgetRefusal):
            self._usage.budget_skipped += 1
            return Outcome(request, error=str(error), budget_refused=True)
        if error is not None:
            self._usage.failures += 1
            return Outcome(request, error=error)
        return Outcome(request, choices=[found[i] for i in range(request.n)])

    async def _call_into(
        self,
        found: dict[int, Choice],
        key: str,
        canonical: str,
        rollouts: list[int],
        request: ChatRequest,
    ) -> str | None:
        """One backend call for ``rollouts``; puts what it got into ``found``, or says why not."""
        result = await self._call(key, canonical, rollouts, request)
        if isinstance(result, str):
            return result
        found.update(zip(rollouts, result, strict=False))
        return None

    async def _call(
        self, key: str, canonical: str, rollouts: list[int], request: ChatRequest
    ) -> list[Choice] | str:
        """One backend call; its choices, or why there are none."""
        refusal = self._budget_refusal()
        if refusal is not None:
            return refusal
        self._usage.requests_sent += 1
        started = time.perf_counter()
        try:
            completion = await self.backend.complete(request)
        except RequestFailed as failure:
            self._usage.retries += failure.retries
            self._usage.rate_limited += failure.rate_limited
            return str(failure)
        except LlmError as failure:
            return str(failure)
        except Exception as failure:  # noqa: BLE001 - one failing request must not end the batch
            return f"{type(failure).__name__}: {failure}"
        latency = time.perf_counter() - started
        self._account(completion)
        if not completion.choices:
            return f"the backend returned no choice for {len(rollouts)} rollouts"
        # A server may answer fewer choices than asked (it ignores n): those are the first
        # rollouts, journaled as such; the caller asks for the rest.
        rollouts = rollouts[: len(completion.choices)]
        completion.choices = completion.choices[: len(rollouts)]
        self._usage.generations_received += len(completion.choices)
        if self.journal is not None:
            await self.journal.arecord(
                JournalEntry(
                    key=key,
                    canonical=canonical,
                    backend=self._backend_kind,
                    model=self.backend.model_name,
                    rollouts=rollouts,
                    choices=completion.choices,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    latency_s=latency,
                )
            )
        return completion.choices

    def _account(self, completion: Completion) -> None:
        usage = self._usage
        usage.prompt_tokens += completion.prompt_tokens
        usage.completion_tokens += completion.completion_tokens
        usage.retries += completion.retries
        usage.rate_limited += completion.rate_limited
        if self.prices is not None:
            usage.cost = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)

    def _budget_refusal(self) -> _BudgetRefusal | None:
        usage = self._usage
        if self.max_requests is not None and usage.requests_sent >= self.max_requests:
            reason = f"budget exhausted: max_requests={self.max_requests} requests sent"
        elif self.max_cost is not None and (usage.cost or 0.0) >= self.max_cost:
            reason = f"budget exhausted: cost {usage.cost:.4f} reached max_cost={self.max_cost:g}"
        else:
            return None
        if usage.stopped is None:
            usage.stopped = reason
        return _BudgetRefusal(reason)


class _KeyLock:
    """The lock of one request key and how many requests hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _BudgetRefusal(str):
    """The error of a request refused because the budget is spent (counted apart)."""


def _single_rollout(request: ChatRequest, rollout: int) -> ChatRequest:
    return dataclasses.replace(request, n=1, seed=rollout_seed(request.seed, rollout))
