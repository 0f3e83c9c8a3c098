"""The journal and the session: resume, SIGKILL, budget, concurrency, secrets, accounting."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_servers import Response, ScriptedServer, echo_text
from vlit.errors import ConfigError, InputFileError
from vlit.llm import (
    ChatRequest,
    LlmConfig,
    LlmJournal,
    LlmSession,
    Message,
    OpenAICompatibleBackend,
    TokenPrices,
    build_backend,
    request_key,
    rollout_seed,
)
from vlit.rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[1]


def ask(text: str, **parameters: object) -> ChatRequest:
    return ChatRequest([Message("user", text)], **parameters)  # type: ignore[arg-type]


def journal_rows(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as database:
        return database.execute(
            "SELECT request_key, rollout, text FROM answers ORDER BY request_key, rollout"
        ).fetchall()


def test_rerun_of_a_finished_run_sends_zero_requests(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    run = RunDir(tmp_path / "run")
    requests = [ask(f"question {i}", n=2, seed=i) for i in range(6)]
    with LlmJournal(run.journal_path) as journal:
        first = LlmSession(scripted_server.backend(), journal=journal).run(requests)
    assert len(scripted_server.requests) == 6
    assert all(len(outcome.choices) == 2 for outcome in first)

    with LlmJournal(run.journal_path) as journal:
        session = LlmSession(scripted_server.backend(), journal=journal)
        second = session.run(requests)
    assert len(scripted_server.requests) == 6  # nothing new was sent
    assert all(outcome.from_journal for outcome in second)
    assert [[c.text for c in o.choices] for o in second] == [
        [c.text for c in o.choices] for o in first
    ]
    usage = session.usage()
    assert (usage.requests_sent, usage.answered_from_journal, usage.rollouts_from_journal) == (
        0,
        6,
        12,
    )


def test_more_rollouts_later_asks_only_for_the_missing_ones(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        [two] = LlmSession(scripted_server.backend(), journal=journal).run([ask("q", n=2)])
        [four] = LlmSession(scripted_server.backend(), journal=journal).run([ask("q", n=4)])
    assert [c.text for c in four.choices[:2]] == [c.text for c in two.choices]
    later = scripted_server.requests[1:]
    assert len(later) == 2 and all("n" not in body for body in later)
    assert sorted(body["seed"] for body in later) == sorted(
        [rollout_seed(0, 2), rollout_seed(0, 3)]
    )
    assert len({c.text for c in four.choices}) == 4


def test_identical_requests_in_one_batch_are_sent_once(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    scripted_server.default = Response.echo(delay_s=0.1)
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        outcomes = LlmSession(scripted_server.backend(), journal=journal, concurrency=4).run(
            [ask("same"), ask("same"), ask("other")]
        )
    assert len(scripted_server.requests) == 2
    assert outcomes[0].choices == outcomes[1].choices
    assert [o.from_journal for o in outcomes] == [False, True, False]


def test_key_covers_what_determines_the_answer() -> None:
    base = ask("q", temperature=0.7, max_tokens=10, seed=1)
    key = request_key(backend="openai", model="m", request=base)
    assert key == request_key(
        backend="openai", model="m", request=ask("q", temperature=0.7, max_tokens=10, seed=1)
    )
    # n is not part of the key: rollout i of a request is the same whatever n was asked.
    assert key == request_key(
        backend="openai", model="m", request=ask("q", temperature=0.7, max_tokens=10, seed=1, n=5)
    )
    variants = [
        ask("q2", temperature=0.7, max_tokens=10, seed=1),
        ask("q", temperature=0.8, max_tokens=10, seed=1),
        ask("q", temperature=0.7, max_tokens=11, seed=1),
        ask("q", temperature=0.7, max_tokens=10, seed=2),
        ask("q", temperature=0.7, max_tokens=10, seed=1, top_logprobs=5),
        ask("q", temperature=0.7, max_tokens=10, seed=1, stop=["\n"]),
    ]
    keys = {request_key(backend="openai", model="m", request=v) for v in variants}
    keys |= {request_key(backend="local", model="m", request=base)}
    keys |= {request_key(backend="openai", model="m2", request=base)}
    assert len(keys) == 8 and key not in keys


def test_api_key_never_written_anywhere(
    scripted_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-never-write-me-4242424242"
    monkeypatch.setenv("VLIT_SECRET_TEST_KEY", secret)
    scripted_server.require_api_key = secret
    scripted_server.add_rule(
        lambda body: (
            Response.status(500, message=f"upstream saw {secret}")
            if body["messages"][0]["content"] == "will fail"
            else None
        )
    )
    backend = scripted_server.backend(
        api_key_env="VLIT_SECRET_TEST_KEY", backoff_base_s=0.01, max_retries=0
    )
    journal_path = tmp_path / "journal.sqlite"
    journal = LlmJournal(journal_path)
    session = LlmSession(backend, journal=journal)
    outcomes = session.run([ask("will fail"), ask("a", n=2), ask("b", top_logprobs=2)])
    assert outcomes[0].error is not None and secret not in outcomes[0].error
    assert outcomes[1].ok and outcomes[2].ok
    assert scripted_server.headers[-1]["authorization"] == f"Bearer {secret}"
    texts = [json.dumps(backend.describe()), json.dumps(session.summary()), repr(backend)]
    assert all(secret not in text for text in texts)
    assert "VLIT_SECRET_TEST_KEY" in json.dumps(backend.describe())
    journal.close()
    files = list(tmp_path.glob("journal.sqlite*"))
    assert files and all(secret.encode() not in path.read_bytes() for path in files)
    assert len(journal_rows(journal_path)) == 3


def test_budget_stops_sending_cleanly(scripted_server: ScriptedServer, tmp_path: Path) -> None:
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        session = LlmSession(
            scripted_server.backend(), journal=journal, concurrency=2, max_requests=3
        )
        outcomes = session.run([ask(f"q{i}") for i in range(10)])
    assert sum(outcome.ok for outcome in outcomes) == 3
    refused = [outcome for outcome in outcomes if not outcome.ok]
    assert len(refused) == 7
    assert all((o.error or "").startswith("budget exhausted: max_requests=3") for o in refused)
    assert len(scripted_server.requests) == 3
    usage = session.usage()
    assert (usage.requests_sent, usage.budget_skipped, usage.failures) == (3, 7, 0)
    assert usage.stopped is not None and "max_requests=3" in usage.stopped


def test_cost_budget_and_accounting(scripted_server: ScriptedServer) -> None:
    prices = TokenPrices(prompt_per_1k=1.0, completion_per_1k=2.0)
    # Each echo answer ("echo 0/0: one two three") costs 3 prompt and 5 completion tokens.
    session = LlmSession(scripted_server.backend(), concurrency=1, prices=prices, max_cost=0.03)
    outcomes = session.run([ask("one two three", seed=seed) for seed in range(5)])
    usage = session.usage()
    assert usage.prompt_tokens == 3 * usage.requests_sent
    assert usage.completion_tokens == 5 * usage.requests_sent
    assert usage.cost == pytest.approx(0.013 * usage.requests_sent)
    # 0.013 per request: the third answer brings the cost to 0.039 >= 0.03, then it stops.
    assert usage.requests_sent == 3 and usage.budget_skipped == 2
    assert [o.ok for o in outcomes] == [True, True, True, False, False]
    assert usage.stopped is not None and "max_cost" in usage.stopped


def test_max_cost_without_prices_is_a_config_error(scripted_server: ScriptedServer) -> None:
    with pytest.raises(ConfigError, match="max_cost needs token prices"):
        LlmSession(scripted_server.backend(), max_cost=1.0)


def test_concurrency_limit_is_respected_and_used(scripted_server: ScriptedServer) -> None:
    # Counted at the server, not timed: a slow CI machine must not make this flaky.
    scripted_server.default = Response.echo(delay_s=0.3)
    requests = [ask(f"q{i}") for i in range(8)]
    LlmSession(scripted_server.backend(), concurrency=2).run(requests)
    assert scripted_server.peak_in_flight == 2
    scripted_server.default = Response.echo(delay_s=2.0)  # time enough for all eight to arrive
    LlmSession(scripted_server.backend(), concurrency=8).run(requests)
    assert scripted_server.peak_in_flight == 8
    assert scripted_server.received() == 16


def test_progress_and_input_order(scripted_server: ScriptedServer) -> None:
    scripted_server.add_rule(lambda body: Response.echo(delay_s=0.3 if body["seed"] == 0 else 0.0))
    calls: list[tuple[int, int]] = []
    outcomes = LlmSession(
        scripted_server.backend(),
        concurrency=4,
        progress=lambda done, total: calls.append((done, total)),
    ).run([ask("slow", seed=0), ask("fast", seed=1), ask("fast", seed=2)])
    assert [o.choices[0].text for o in outcomes] == [
        "echo 0/0: slow",
        "echo 1/0: fast",
        "echo 2/0: fast",
    ]
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_unusable_journal_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not a database, just some bytes " * 50)
    with pytest.raises(InputFileError) as failure:
        LlmJournal(path)
    assert str(path) in str(failure.value) and "Fix:" in str(failure.value)


def test_journal_totals_split_tokens_per_rollout(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    with LlmJournal(tmp_path / "j.sqlite") as journal:
        session = LlmSession(scripted_server.backend(), journal=journal)
        session.run([ask("one two", n=3), ask("three")])
        totals = journal.totals()
    usage = session.usage()
    assert (totals.requests, totals.answers) == (2, 4)
    assert (totals.prompt_tokens, totals.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_build_backend_registry() -> None:
    backend = build_backend(LlmConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m"))
    assert isinstance(backend, OpenAICompatibleBackend)
    assert build_backend(LlmConfig(kind="local")).describe()["kind"] == "local"
    with pytest.raises(ConfigError, match="use one of: local, openai, vllm"):
        LlmConfig(kind="llamafile")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs base_url"):
        build_backend(LlmConfig(kind="openai", model="m"))


def test_vllm_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlit.errors import ModelUnavailableError

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, installed or not

    backend = build_backend(LlmConfig(kind="vllm", model="some/model"))
    with pytest.raises(ModelUnavailableError, match=r"vlit\[vllm\]"):
        backend.load()  # type: ignore[attr-defined]


CHILD = textwrap.dedent(
    """
    import json, sys
    from vlit.llm import ChatRequest, LlmJournal, LlmSession, Message, OpenAICompatibleBackend

    url, journal_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    backend = OpenAICompatibleBackend(base_url=url, model="scripted-model", max_retries=0)
    requests = [
        ChatRequest([Message("user", f"question {i}")], n=2, seed=i) for i in range(count)
    ]
    session = LlmSession(backend, journal=LlmJournal(journal_path), concurrency=4)
    outcomes = session.run(requests)
    print(json.dumps({"ok": sum(o.ok for o in outcomes), **session.usage().to_dict()}))
    """
)


def test_sigkill_mid_run_loses_only_in_flight_requests(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    count = 40
    scripted_server.default = Response.echo(delay_s=0.15)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    journal_path = tmp_path / "journal.sqlite"
    command = [sys.executable, str(script), scripted_server.url, str(journal_path), str(count)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}

    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed_rows = 0
    while committed_rows < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
        if journal_path.exists():
            try:
                committed_rows = len(journal_rows(journal_path))
            except sqlite3.OperationalError:
                committed_rows = 0  # the child is still creating the tables
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.3)  # let requests the child had already sent reach the server
    sent_before_kill = len(scripted_server.requests)
    with sqlite3.connect(journal_path) as database:
        committed = {
            json.loads(canonical)["messages"][0][1]
            for (canonical,) in database.execute("SELECT request_json FROM requests")
        }
    assert 8 <= len(committed) < count
    assert len(journal_rows(journal_path)) == 2 * len(committed)  # whole answers, never half

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["ok"] == count
    assert summary["requests_sent"] == count - len(committed)
    assert summary["answered_from_journal"] == len(committed)

    resent = [
        body["messages"][0]["content"] for body in scripted_server.requests[sent_before_kill:]
    ]
    assert len(resent) == count - len(committed)
    assert not committed & set(resent), "a request answered before the kill was sent again"
    prompts = [body["messages"][0]["content"] for body in scripted_server.requests]
    assert all(prompts.count(f"question {i}") <= 2 for i in range(count))

    rows = journal_rows(journal_path)
    assert len(rows) == 2 * count
    with LlmJournal(journal_path) as journal:
        for i in range(count):
            request = ChatRequest([Message("user", f"question {i}")], n=2, seed=i)
            key = request_key(backend="openai", model="scripted-model", request=request)
            found = journal.lookup(key, 2)
            body = {"seed": i, "messages": [{"role": "user", "content": f"question {i}"}]}
            assert [found[j].text for j in range(2)] == [echo_text(body, j) for j in range(2)]

    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(third.stdout)["requests_sent"] == 0
    assert len(scripted_server.requests) == sent_before_kill + len(resent)


def test_session_drops_key_locks_and_still_sends_identical_requests_once(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    scripted_server.default = Response.echo(delay_s=0.02)  # identical requests overlap
    lock_counts: list[int] = []
    requests = [ChatRequest([Message("user", f"distinct {i}")]) for i in range(60)]
    requests += [ChatRequest([Message("user", "same")])] * 8
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        session = LlmSession(
            scripted_server.backend(max_connections=8),
            journal=journal,
            concurrency=8,
            progress=lambda done, total: lock_counts.append(len(session._key_locks)),
        )
        outcomes = session.run(requests)
    assert all(outcome.ok for outcome in outcomes)
    assert session._key_locks == {}  # nothing left behind once the run is over
    assert max(lock_counts) <= 8  # never more than the requests in flight
    same = outcomes[60:]
    assert [o.from_journal for o in same].count(False) == 1
    assert len({o.choices[0].text for o in same}) == 1
    assert len(scripted_server.requests) == 61 == session.usage().requests_sent
