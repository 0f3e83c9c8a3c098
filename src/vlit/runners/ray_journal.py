"""One LLM journal for every Ray worker: a SQLite file owned by one actor on the driver's node.

LLM stages on Ray (the correctness judge) run in actors that may sit on other hosts. SQLite
must not be shared over network storage, and one journal per worker would let two workers pay
for the same request. So the run's ``journal.sqlite`` is opened by a single ``JournalServer``
actor, pinned to the node of the driver that started it (where the run directory is); workers
hold a ``JournalClient`` (picklable: it carries the actor handle) that looks answers up and
commits them through it. Commits from one event-loop turn of a worker travel in one call, and
the server commits each call in one transaction, so every answer is durable before the worker
goes on, exactly as with a local ``LlmJournal``.

Example:
    >>> server = start_journal_server(run.journal_path)             # doctest: +SKIP
    >>> judge = CorrectnessJudge(backend=b, journal=JournalClient(server))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlit.llm.base import Choice
from vlit.llm.journal import GroupCommit, JournalEntry, JournalTotals, LlmJournal
from vlit.runners.ray_runner import init_ray


class _JournalServer:
    """The actor's body: an ``LlmJournal`` answering lookups and batched commits."""

    def __init__(self, path: str) -> None:
        self.journal = LlmJournal(path)

    def lookup(self, key: str, n: int) -> dict[int, Choice]:
        return self.journal.lookup(key, n)

    def record_many(self, entries: list[JournalEntry]) -> None:
        self.journal.record_many(entries)

    def totals(self) -> JournalTotals:
        return self.journal.totals()


def start_journal_server(path: str | Path, *, address: str | None = None) -> Any:
    """Start the journal actor for ``path`` on this (the driver's) node; returns its handle."""
    ray = init_ray(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(_JournalServer)
    return actor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(str(Path(path).resolve()))


class JournalClient:
    """A ``Journal`` for a session in a Ray worker, backed by the journal actor."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._group = GroupCommit(lambda entries: self.server.record_many.remote(entries))

    def __getstate__(self) -> dict[str, Any]:
        return {"server": self.server}  # pending commits belong to the process that made them

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["server"])  # type: ignore[misc]

    def lookup(self, key: str, n: int) -> dict[int, Choice]:
        import ray

        found: dict[int, Choice] = ray.get(self.server.lookup.remote(key, n))
        return found

    async def arecord(self, entry: JournalEntry) -> None:
        """Returns once the answers are committed; one server call per event-loop turn."""
        await self._group.add(entry)

    def totals(self) -> JournalTotals:
        import ray

        totals: JournalTotals = ray.get(self.server.totals.remote())
        return totals

    def stop_server(self) -> None:
        """End the journal actor (its commits are already durable); for the driver, at the end."""
        import ray

        ray.kill(self.server)
