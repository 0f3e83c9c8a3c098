"""LLM session throughput against a local endpoint with fixed latency, and journal overhead.

The endpoint is ``benchmarks/latency_server.py`` in its own process: a lean asyncio server that
answers every request after a fixed latency L, at a small CPU cost per request (reported, so
one can check it is not the bottleneck). With C requests in flight the ideal throughput is
C / L requests per second; the table shows how close the session gets with the journal off and
on, the CPU time per request of client and server, and how fast a finished run replays from
the journal. For reference, a plain httpx client (one AsyncClient and a semaphore) and a plain
aiohttp client (one ClientSession and a semaphore: the leanest maintained client, a floor for any
stack built on one) run the same requests. The journal's cost is shown two ways: extra client
CPU per request of the journaled run, and a direct timing of a lookup plus a commit. The
machine's load average is printed too: on a shared machine the other processes' load lowers the
percentages.

``--old-src DIR [DIR ...]`` also compares this vlit, on each of its transports (aiohttp and
httpx's own; the first table uses ``auto``), with the ones found in each ``DIR`` (say an older
version: ``git archive main | tar -x -C /tmp/base && --old-src /tmp/base/src``): each runs the
session (journal off) in a child process of its own against the same endpoint, all alternating
``--repeat`` times; a second table shows, for each, the median throughput as a share of C/L and
the median client CPU milliseconds per request.

Run:  .venv/bin/python benchmarks/bench_llm_throughput.py [--latency-ms 50] [--seconds 2.0]
      [--old-src DIR [DIR ...] [--repeat 3]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from vlit.llm import ChatRequest, Choice, LlmJournal, LlmSession, Message, OpenAICompatibleBackend
from vlit.llm.journal import JournalEntry, canonical_request, hash_canonical

SERVER = Path(__file__).resolve().with_name("latency_server.py")
TRANSPORTS = ("aiohttp", "httpx")  # this vlit's, each compared with --old-src
Stack = tuple[str | None, str | None]  # (src folder or None for this vlit, transport)


class Endpoint:
    """The latency server in its own process, and the CPU time it has spent so far."""

    def __init__(self, latency_ms: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(SERVER), "--latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self.url = f"http://127.0.0.1:{self._stdout.readline().strip()}/v1"

    def cpu_s(self) -> float:
        self._stdin.write("\n")
        self._stdin.flush()
        return float(self._stdout.readline().split()[0])

    def stop(self) -> None:
        self._stdin.close()
        self._process.wait(timeout=30)


def requests_for(count: int, tag: str) -> list[ChatRequest]:
    return [
        ChatRequest([Message("user", f"{tag} request {i}")], max_tokens=64, seed=i)
        for i in range(count)
    ]


@dataclass(frozen=True)
class Timing:
    elapsed_s: float
    cpu_s: float  # CPU time of this (client) process
    server_cpu_s: float
    requests_sent: int


def timed_run(
    endpoint: Endpoint, requests: list[ChatRequest], concurrency: int, journal: Path | None
) -> Timing:
    backend = OpenAICompatibleBackend(
        base_url=endpoint.url, model="bench-model", max_connections=concurrency
    )
    opened = LlmJournal(journal) if journal is not None else None
    session = LlmSession(backend, journal=opened, concurrency=concurrency)
    server_cpu_started = endpoint.cpu_s()
    started, cpu_started = time.perf_counter(), time.process_time()
    outcomes = session.run(requests)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    server_cpu = endpoint.cpu_s() - server_cpu_started
    if opened is not None:
        opened.close()
    assert all(outcome.ok for outcome in outcomes), "benchmark requests failed"
    return Timing(
        elapsed_s=elapsed,
        cpu_s=cpu,
        server_cpu_s=server_cpu,
        requests_sent=session.usage().requests_sent,
    )


def chat_body(request: ChatRequest) -> dict[str, object]:
    return {
        "model": "bench-model",
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }


async def plain_httpx(url: str, requests: list[ChatRequest], concurrency: int) -> None:
    """What one writes with httpx alone: one AsyncClient, a semaphore, no journal."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(request: ChatRequest) -> None:
            async with semaphore:
                response = await client.post("/chat/completions", json=chat_body(request))
            response.raise_for_status()
            response.json()["choices"][0]["message"]["content"]

        await asyncio.gather(*(one(request) for request in requests))


async def plain_aiohttp(url: str, requests: list[ChatRequest], concurrency: int) -> None:
    """The same with aiohttp alone (one ClientSession): the floor of a maintained client."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(request: ChatRequest) -> None:
            async with semaphore:
                async with client.post(f"{url}/chat/completions", json=chat_body(request)) as got:
                    got.raise_for_status()
                    (await got.json())["choices"][0]["message"]["content"]

        await asyncio.gather(*(one(request) for request in requests))


def baseline_run(
    endpoint: Endpoint, requests: list[ChatRequest], concurrency: int, client: Callable[..., Any]
) -> Timing:
    """``client`` (``plain_httpx`` or ``plain_aiohttp``) sends ``requests``, timed."""
    asyncio.run(client(endpoint.url, requests[:concurrency], concurrency))  # warm: connections
    server_cpu_started = endpoint.cpu_s()
    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(client(endpoint.url, requests, concurrency))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Timing(
        elapsed_s=elapsed,
        cpu_s=cpu,
        server_cpu_s=endpoint.cpu_s() - server_cpu_started,
        requests_sent=len(requests),
    )


def journal_microseconds(directory: Path, count: int) -> float:
    """Per request: look up a missing request, then commit its answer (one transaction)."""
    journal = LlmJournal(directory / "micro.sqlite")
    requests = requests_for(count, "micro")
    choice = [Choice(text="a typical answer of a few words " * 8)]
    started = time.perf_counter()
    for request in requests:
        canonical = canonical_request(backend="openai", model="m", request=request)
        key = hash_canonical(canonical)
        journal.lookup(key, 1)
        journal.record(
            JournalEntry(
                key=key,
                canonical=canonical,
                backend="openai",
                model="m",
                rollouts=[0],
                choices=choice,
                prompt_tokens=30,
                completion_tokens=60,
                latency_s=0.05,
            )
        )
    elapsed = time.perf_counter() - started
    journal.close()
    return elapsed / count * 1e6


def child_run(endpoint: Endpoint, stack: Stack, count: int, concurrency: int, tag: str) -> Timing:
    """``timed_run`` (journal off) in a child process, with the vlit package in the stack's
    ``source`` (``None``: this one) and its transport."""
    source, transport = stack
    server_cpu_started = endpoint.cpu_s()
    done = subprocess.run(
        [sys.executable, __file__, "--child-url", endpoint.url, "--child-count", str(count)]
        + ["--child-tag", tag, "--concurrency", str(concurrency)]
        + (["--child-transport", transport] if transport else []),
        capture_output=True,
        text=True,
        check=True,
        env=os.environ if source is None else os.environ | {"PYTHONPATH": source},
    )
    elapsed, cpu = (float(value) for value in done.stdout.split())
    return Timing(elapsed, cpu, endpoint.cpu_s() - server_cpu_started, count)


def child(url: str, count: int, concurrency: int, tag: str, transport: str | None) -> None:
    """Print ``elapsed_s cpu_s`` of one session run (journal off) against ``url``."""
    options = {"transport": transport} if transport else {}  # older vlits have no transport
    backend = OpenAICompatibleBackend(
        base_url=url, model="bench-model", max_connections=concurrency, **options
    )
    session = LlmSession(backend, concurrency=concurrency)
    session.run(requests_for(8, f"{tag}-warmup"))  # imports done, as for timed_run's warmup
    requests = requests_for(count, tag)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcomes = session.run(requests)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert all(outcome.ok for outcome in outcomes), "benchmark requests failed"
    print(elapsed, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="ideal duration per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--old-src", nargs="+", default=[], help="src/ folders of other vlits to compare with"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each stack with --old-src")
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-tag", help=argparse.SUPPRESS)
    parser.add_argument("--child-transport", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_url:
        child(
            args.child_url,
            args.child_count,
            args.concurrency[0],
            args.child_tag,
            args.child_transport,
        )
        return
    latency = args.latency_ms / 1000
    compared: list[tuple[int, int, float, dict[Stack, list[Timing]]]] = []

    load_before = os.getloadavg()
    endpoint = Endpoint(args.latency_ms)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        timed_run(endpoint, requests_for(64, "warmup"), 8, None)
        for concurrency in args.concurrency:
            ideal = concurrency / latency
            count = max(int(ideal * args.seconds), concurrency)
            base = baseline_run(
                endpoint, requests_for(count, f"base{concurrency}"), concurrency, plain_httpx
            )
            bare = baseline_run(
                endpoint, requests_for(count, f"bare{concurrency}"), concurrency, plain_aiohttp
            )
            off = timed_run(endpoint, requests_for(count, f"off{concurrency}"), concurrency, None)
            journal = directory / f"journal-{concurrency}.sqlite"
            on = timed_run(endpoint, requests_for(count, f"on{concurrency}"), concurrency, journal)
            replay = timed_run(
                endpoint, requests_for(count, f"on{concurrency}"), concurrency, journal
            )
            assert replay.requests_sent == 0
            rows.append((concurrency, count, ideal, base, bare, off, on, replay))
            if args.old_src:
                runs: dict[Stack, list[Timing]] = {(None, name): [] for name in TRANSPORTS}
                runs.update(((source, None), []) for source in args.old_src)
                for turn in range(args.repeat):
                    for stack, timings in runs.items():
                        tag = f"{stack[1] or 'old'}{concurrency}-{turn}"
                        timings.append(child_run(endpoint, stack, count, concurrency, tag))
                compared.append((concurrency, count, ideal, runs))
        micro = journal_microseconds(directory, 3000)
    endpoint.stop()
    load_after = os.getloadavg()

    print(f"LLM session throughput, endpoint latency L = {args.latency_ms:g} ms")
    print(
        f"{'C':>3} {'requests':>8} {'ideal C/L':>9} | {'httpx':>6} {'CPU µs':>6} | "
        f"{'aiohttp':>7} {'% ideal':>7} {'CPU µs':>6} | "
        f"{'session':>7} {'% ideal':>7} {'CPU µs':>6} {'server µs':>9} | "
        f"{'+journal':>8} {'% ideal':>7} {'CPU µs':>6} | {'replay':>7}"
    )
    for concurrency, count, ideal, base, bare, off, on, replay in rows:

        def rate(timing: Timing, count: int = count) -> float:
            return count / timing.elapsed_s

        def micros(seconds: float, count: int = count) -> float:
            return seconds / count * 1e6

        print(
            f"{concurrency:>3} {count:>8} {ideal:>9.0f} | {rate(base):>6.0f} "
            f"{micros(base.cpu_s):>6.0f} | {rate(bare):>7.0f} {rate(bare) / ideal:>7.0%} "
            f"{micros(bare.cpu_s):>6.0f} | {rate(off):>7.0f} {rate(off) / ideal:>7.0%} "
            f"{micros(off.cpu_s):>6.0f} {micros(off.server_cpu_s):>9.0f} | "
            f"{rate(on):>8.0f} {rate(on) / ideal:>7.0%} {micros(on.cpu_s):>6.0f} | "
            f"{rate(replay):>7.0f}"
        )
    print(
        "req/s: httpx = one httpx.AsyncClient + a semaphore (reference); aiohttp = one "
        "aiohttp.ClientSession + a semaphore\n(the leanest maintained client, nothing else); "
        "session = LlmSession + OpenAICompatibleBackend, journal off;\n+journal = journal on; "
        "replay = rerun answered from the journal. CPU µs = client process CPU time per "
        "request\n(one free core sustains at most 1e6 / that many req/s); server µs = the "
        "endpoint's CPU per request."
    )
    overhead = ", ".join(
        f"C={concurrency}: {(on.cpu_s - off.cpu_s) / count * 1e6:+.0f} µs CPU"
        for concurrency, count, _, _, _, off, on, _ in rows
    )
    print(
        f"journal overhead per request: {overhead}; lookup + commit timed directly: {micro:.0f} µs"
    )
    if compared:
        print(
            f"\nThis vlit against {', '.join(args.old_src)}: each in a child process, journal "
            f"off, same endpoint, alternating; medians of {args.repeat} runs"
        )
        print(f"{'C':>3} {'requests':>8} | {'stack':<28} {'% of C/L':>8} {'CPU ms/request':>14}")
    for concurrency, count, ideal, runs in compared:
        for (source, transport), timings in runs.items():
            share = statistics.median(count / timing.elapsed_s / ideal for timing in timings)
            cpu_ms = statistics.median(timing.cpu_s / count * 1e3 for timing in timings)
            name = f"this vlit, {transport}" if source is None else source
            print(f"{concurrency:>3} {count:>8} | {name:<28} {share:>8.0%} {cpu_ms:>14.2f}")
    print(
        "load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f} "
        "on {} cores".format(*load_before, *load_after, os.cpu_count())
    )


if __name__ == "__main__":
    main()
