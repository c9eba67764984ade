"""Forwarding of log chunks to HTTP endpoints, against a real NATS server."""

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from libs.events.embedded import EmbeddedNats
from services.logsink import LogSink
from tests.conftest import make_config, wait_until

from .conftest import JOB_ID, RUN_ID, expected_log, publish_chunks

FAST = {
    "retry_base": 0.005,
    "retry_max": 10.0,
    "rate_limit_per_second": 1000.0,
    "flush_interval": 0.05,
    "batch_max_chunks": 10,
}


@pytest.fixture
async def logsinks() -> AsyncIterator[list[LogSink]]:
    """Logsinks that a test started; every one is stopped after it."""
    running: list[LogSink] = []
    yield running
    for sink in running:
        await sink.stop()


async def start_logsink(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    running: list[LogSink],
    *endpoints: dict[str, Any],
) -> LogSink:
    config = make_config(
        tmp_path,
        **{"nats.url": nats_server.url, "logsink.forward": list(endpoints)},
    )
    sink = LogSink(config)
    await sink.start()
    running.append(sink)
    return sink


def step_file(tmp_path: Path, step: str) -> Path:
    return tmp_path / "data" / "logs" / JOB_ID / RUN_ID / f"{step}.log"


async def test_flaky_endpoint_gets_every_chunk_once(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint(lambda n: (500, {}) if n < 10 else (200, {}))
    seqs = await publish_chunks(js, ["build", "test"], 15)
    settings = {**FAST, "url": server.url, "max_attempts": 20}
    await start_logsink(tmp_path, nats_server, logsinks, settings)

    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs), timeout=30)

    assert sorted(server.delivered_seqs()) == seqs
    batch_ids = [r.batch_id for r in server.delivered()]
    assert len(batch_ids) == len(set(batch_ids))
    failed = [r for r in server.requests if r.status == 500]
    assert len(failed) == 10
    assert {r.batch_id for r in failed} == {server.requests[10].batch_id}
    assert all(r.idempotency_key == r.batch_id for r in server.requests)
    gaps = [
        b.at - a.at
        for a, b in zip(server.requests[:10], server.requests[1:11], strict=True)
    ]
    # Full jitter draws each delay from [0, 0.005 * 2 ** (n - 1)]; the last five
    # ceilings (0.08 to 1.28 s) dwarf the first five (0.005 to 0.04 s).
    assert sum(gaps[5:]) > sum(gaps[:5])
    for n, gap in enumerate(gaps, start=1):
        assert gap <= 0.005 * 2 ** (n - 1) + 0.25


async def test_delivered_batches_keep_stream_order(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint()
    seqs = await publish_chunks(js, ["build"], 25)
    await start_logsink(tmp_path, nats_server, logsinks, {**FAST, "url": server.url})

    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    assert server.delivered_seqs() == seqs
    first = server.delivered()[0]
    assert first.batch_id == f"{seqs[0]}-{seqs[9]}"
    assert first.chunks[0]["data"] == "build line 1\n"
    assert first.chunks[0]["job_id"] == JOB_ID
    assert first.headers["Content-Type"] == "application/json"


async def test_down_endpoint_dead_letters_files_persist(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="services.logsink")
    stuck = await endpoint(lambda n: (0, {}))  # keeps every request open
    down = await endpoint(lambda n: (503, {}))
    secret = {"Authorization": "Bearer very-secret-token"}
    await start_logsink(
        tmp_path,
        nats_server,
        logsinks,
        {**FAST, "url": stuck.url, "timeout": 30.0, "max_attempts": 100},
        {**FAST, "url": down.url, "max_attempts": 3, "headers": secret},
    )
    seqs = await publish_chunks(js, ["build", "test"], 20)

    for step in ("build", "test"):
        path = step_file(tmp_path, step)
        await wait_until(lambda p=path: p.exists() and p.stat().st_size > 0)
        await wait_until(lambda s=step, p=path: p.read_text() == expected_log(s, 20))
    dead_letters = tmp_path / "data" / "logs" / "dead-letter" / "1.jsonl"
    await wait_until(lambda: dead_letters.exists() and _dead_seqs(dead_letters) == seqs)

    records = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert all(record["attempts"] == 3 for record in records)
    assert all(record["error"] == "HTTP 503" for record in records)
    assert len(down.requests) == 3 * len(records)
    assert len(stuck.requests) == 1
    assert "very-secret-token" not in dead_letters.read_text()
    assert "very-secret-token" not in caplog.text
    assert f"batch {records[0]['batch_id']} dead-lettered" in caplog.text
    assert down.requests[0].headers["Authorization"] == secret["Authorization"]


def _dead_seqs(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    return [c["stream_seq"] for line in lines for c in json.loads(line)["chunks"]]


async def test_client_error_dead_letters_at_once(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint(lambda n: (400, {}) if n == 0 else (200, {}))
    seqs = await publish_chunks(js, ["build"], 15)
    await start_logsink(tmp_path, nats_server, logsinks, {**FAST, "url": server.url})

    await wait_until(lambda: len(server.delivered_seqs()) >= 5)

    dead_letters = tmp_path / "data" / "logs" / "dead-letter" / "0.jsonl"
    record = json.loads(dead_letters.read_text())
    assert record["attempts"] == 1
    assert record["error"] == "HTTP 400"
    assert record["batch_id"] == server.requests[0].batch_id
    assert _dead_seqs(dead_letters) + server.delivered_seqs() == seqs


async def test_too_many_requests_waits_retry_after(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint(
        lambda n: (429, {"Retry-After": "1"}) if n < 2 else (200, {})
    )
    seqs = await publish_chunks(js, ["build"], 5)
    await start_logsink(tmp_path, nats_server, logsinks, {**FAST, "url": server.url})

    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    first, second, third = server.requests[:3]
    assert second.at - first.at >= 0.95
    assert third.at - second.at >= 0.95
    assert first.batch_id == second.batch_id == third.batch_id
    assert server.delivered_seqs() == seqs


async def test_rate_limit_bounds_requests(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint()
    seqs = await publish_chunks(js, ["build"], 12)
    settings = {
        **FAST,
        "url": server.url,
        "batch_max_chunks": 1,
        "rate_limit_per_second": 5.0,
    }
    await start_logsink(tmp_path, nats_server, logsinks, settings)

    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    times = [r.at for r in server.requests]
    assert len(times) == 12
    # One token refills every 0.2 s and the bucket has a capacity of one, so 12 requests
    # take at least 11 refills; the 0.9 leaves room for timer granularity.
    assert times[-1] - times[0] >= 11 * 0.2 * 0.9
    for start in range(len(times)):
        in_one_second = [t for t in times[start:] if t - times[start] < 1.0]
        assert len(in_one_second) <= 6


async def test_restart_does_not_resend_acked_batches(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint()
    settings = {**FAST, "url": server.url}
    sink = await start_logsink(tmp_path, nats_server, logsinks, settings)
    seqs = await publish_chunks(js, ["build", "test"], 15)
    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    await sink.stop()
    logsinks.remove(sink)
    await start_logsink(tmp_path, nats_server, logsinks, settings)
    seqs += await publish_chunks(js, ["build", "test"], 5, start=16)
    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    assert server.delivered_seqs() == seqs
    assert Counter(server.delivered_seqs()).most_common(1)[0][1] == 1
    batch_ids = [r.batch_id for r in server.requests]
    assert len(batch_ids) == len(set(batch_ids))


async def test_interrupted_batch_keeps_id_after_restart(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    endpoint: Callable[..., Any],
    logsinks: list[LogSink],
) -> None:
    server = await endpoint(lambda n: (500, {}) if n < 3 else (200, {}))
    seqs = await publish_chunks(js, ["build"], 25)
    settings = {**FAST, "url": server.url, "retry_base": 5.0, "max_attempts": 50}
    sink = await start_logsink(tmp_path, nats_server, logsinks, settings)
    await wait_until(lambda: len(server.requests) >= 1)

    # The retry waits up to 5 s, so the batch is still in flight when stopped.
    await sink.stop()
    logsinks.remove(sink)
    fast_retries = {**settings, "retry_base": 0.005}
    await start_logsink(tmp_path, nats_server, logsinks, fast_retries)
    await wait_until(lambda: len(server.delivered_seqs()) >= len(seqs))

    interrupted = server.requests[0].batch_id
    assert interrupted == f"{seqs[0]}-{seqs[9]}"
    assert {r.batch_id for r in server.requests[:4]} == {interrupted}
    assert server.delivered()[0].batch_id == interrupted
    assert server.delivered_seqs() == seqs
