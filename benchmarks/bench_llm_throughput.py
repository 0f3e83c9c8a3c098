"""LLM session throughput against a local endpoint with fixed latency, and journal overhead.

The endpoint is the scripted OpenAI-compatible test server (tests/llm_servers.py) in its own
process, answering every request after a fixed latency L. With C requests in flight the ideal
throughput is C / L requests per second; the table shows how close the session gets, with the
journal off and on, and how fast a finished run replays from the journal. The journal's own
cost is also timed directly (lookup of a missing request + commit of its answer).

Run:  .venv/bin/python benchmarks/bench_llm_throughput.py [--latency-ms 50] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from vlit.llm import ChatRequest, Choice, LlmJournal, LlmSession, Message, OpenAICompatibleBackend
from vlit.llm.journal import JournalEntry, canonical_request, hash_canonical

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


def serve(latency_s: float) -> None:
    """Child process: run the scripted server until stdin closes."""
    sys.path.insert(0, str(TESTS_DIR))
    from llm_servers import Response, ScriptedServer

    server = ScriptedServer(default=Response.echo(delay_s=latency_s))
    server.start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


def requests_for(count: int, tag: str) -> list[ChatRequest]:
    return [
        ChatRequest([Message("user", f"{tag} request {i}")], max_tokens=64, seed=i)
        for i in range(count)
    ]


@dataclass(frozen=True)
class Timing:
    elapsed_s: float
    cpu_s: float  # CPU time of this (client) process
    requests_sent: int


def timed_run(
    url: str, requests: list[ChatRequest], concurrency: int, journal: Path | None
) -> Timing:
    backend = OpenAICompatibleBackend(
        base_url=url, model="scripted-model", max_connections=concurrency
    )
    opened = LlmJournal(journal) if journal is not None else None
    session = LlmSession(backend, journal=opened, concurrency=concurrency)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcomes = session.run(requests)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if opened is not None:
        opened.close()
    assert all(outcome.ok for outcome in outcomes), "benchmark requests failed"
    return Timing(elapsed_s=elapsed, cpu_s=cpu, requests_sent=session.usage().requests_sent)


def baseline_run(url: str, requests: list[ChatRequest], concurrency: int) -> Timing:
    """What one writes without vlit: one httpx.AsyncClient, a semaphore, no journal."""

    async def run_all() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(request: ChatRequest) -> None:
                body = {
                    "model": "scripted-model",
                    "messages": [{"role": m.role, "content": m.content} for m in request.messages],
                    "max_tokens": request.max_tokens,
                    "seed": request.seed,
                }
                async with semaphore:
                    response = await client.post("/chat/completions", json=body)
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

            await asyncio.gather(*(one(request) for request in requests))

    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(run_all())
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Timing(elapsed_s=elapsed, cpu_s=cpu, requests_sent=len(requests))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=1.0, help="ideal duration per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    latency = args.latency_ms / 1000

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        timed_run(url, requests_for(64, "warmup"), 8, None)
        for concurrency in args.concurrency:
            ideal = concurrency / latency
            count = max(int(ideal * args.seconds), concurrency)
            base = baseline_run(url, requests_for(count, f"base{concurrency}"), concurrency)
            off = timed_run(url, requests_for(count, f"off{concurrency}"), concurrency, None)
            journal = directory / f"journal-{concurrency}.sqlite"
            on = timed_run(url, requests_for(count, f"on{concurrency}"), concurrency, journal)
            replay = timed_run(url, requests_for(count, f"on{concurrency}"), concurrency, journal)
            assert replay.requests_sent == 0
            rows.append(
                (
                    concurrency,
                    count,
                    ideal,
                    count / base.elapsed_s,
                    count / off.elapsed_s,
                    count / on.elapsed_s,
                    count / replay.elapsed_s,
                    off.cpu_s / count * 1000,
                )
            )
        micro = journal_microseconds(directory, 3000)
    server.stdin.close()
    server.wait(timeout=30)

    print(f"LLM session throughput, endpoint latency L = {args.latency_ms:g} ms (req/s)")
    print(
        f"{'C':>3} {'requests':>8} {'ideal C/L':>9} {'httpx baseline':>14} {'session':>8} "
        f"{'% ideal':>7} {'vs baseline':>11} {'+journal':>8} {'% ideal':>7} {'on/off':>6} "
        f"{'replay':>7} {'CPU ms/req':>10}"
    )
    for concurrency, count, ideal, base, off, on, replay, cpu_ms in rows:
        print(
            f"{concurrency:>3} {count:>8} {ideal:>9.0f} {base:>14.0f} {off:>8.0f} "
            f"{off / ideal:>7.0%} {off / base:>11.2f} {on:>8.0f} {on / ideal:>7.0%} "
            f"{on / off:>6.2f} {replay:>7.0f} {cpu_ms:>10.2f}"
        )
    print(
        "session = LlmSession + OpenAICompatibleBackend, journal off; +journal = journal on; "
        "replay = rerun answered from the journal;\nCPU ms/req = this process's CPU time per "
        "request of the session run: one free core sustains at most 1000 / that many req/s."
    )
    print(f"journal lookup + commit per request (direct timing): {micro:.0f} µs")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(float(sys.argv[2]))
    else:
        main()
