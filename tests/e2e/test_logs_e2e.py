"""Step logs end to end: real Docker steps, NATS, logsink files, HTTP and SSE.

Each test runs a pipeline whose step runs `sh out.sh` from the repository, so
the step log is the line `$ sh out.sh` that the executor echoes, then the
script's output.
"""

import asyncio
import base64
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from libs.events import connect, subjects
from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient, ServerSentEvent, parse_sse
from services.cli.stack import Stack
from services.executor import logs as executor_logs
from services.executor.capture import CONTINUATION
from tests.conftest import TEST_IMAGE, make_config, make_repo, wait_until

HEADER = b"$ sh out.sh\n"
PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  main:
    scripts: ["sh out.sh"]
"""
LOG_LIMIT = 256 * 1024

StackFactory = Callable[..., Awaitable[Stack]]


class JobRun(msgspec.Struct):
    """A finished job: its ids, SSE events, and the step's log in every view."""

    job_id: str
    run_id: str
    events: list[ServerSentEvent]
    text: str
    raw: bytes
    chunks: list[dict[str, Any]]


@pytest.fixture
async def stack_factory(
    tmp_path: Path, test_image: str, nats_server: EmbeddedNats
) -> AsyncIterator[StackFactory]:
    """Start an in-process stack on `nats_server` with extra config overrides."""
    started: list[Stack] = []

    async def start(**overrides: Any) -> Stack:
        config = make_config(tmp_path, **{"nats.url": nats_server.url, **overrides})
        stack = Stack(config)
        await stack.start()
        started.append(stack)
        return stack

    yield start
    for stack in started:
        await stack.stop()


@pytest.fixture
async def limited_stack(stack_factory: StackFactory) -> Stack:
    """A stack whose runs may log LOG_LIMIT bytes."""
    return await stack_factory(**{"executor.max_log_bytes": LOG_LIMIT})


def gateway_url(stack: Stack) -> str:
    assert stack.gateway is not None
    return stack.gateway.url


def make_script_repo(path: Path, script: str, **files: bytes) -> str:
    """Create a repository with PIPELINE, `out.sh` and binary `files`."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (path / name).write_bytes(content)
    make_repo(path, {".stasis-ci.yaml": PIPELINE, "out.sh": script})
    return str(path)


async def fetch_log(url: str, job_id: str, log_format: str) -> bytes:
    params = {"step": "main", "format": log_format}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/api/v1/jobs/{job_id}/logs", params=params) as resp,
    ):
        assert resp.status == 200, await resp.text()
        if log_format == "raw":
            assert resp.content_type == "application/octet-stream"
        return await resp.read()


async def run_script(
    stack: Stack, tmp_path: Path, script: str, **files: bytes
) -> JobRun:
    """Run `script` as the step, follow its SSE stream to the end, read its logs."""
    repo = make_script_repo(tmp_path / "repo", script, **files)
    url = gateway_url(stack)
    async with GatewayClient(url) as client:
        accepted = await client.submit({"repository": {"url": repo}})
        job_id = accepted["job_id"]
        events = [sse async for sse in client.stream(job_id)]
    text = (await fetch_log(url, job_id, "text")).decode("utf-8")
    raw = await fetch_log(url, job_id, "raw")
    chunks = json.loads(await fetch_log(url, job_id, "json"))["chunks"]
    return JobRun(job_id, accepted["run_id"], events, text, raw, chunks)


def log_file(stack: Stack, run: JobRun) -> Path:
    return Path(stack.config.logs_dir) / run.job_id / run.run_id / "main.log"


def chunk_raw(entry: dict[str, Any]) -> bytes:
    chunk = entry["chunk"]
    if chunk.get("raw_b64") is not None:
        return base64.b64decode(chunk["raw_b64"])
    return str(chunk["data"]).encode("utf-8")


async def test_carriage_returns_kept_plain_shows_last(
    stack: Stack, tmp_path: Path
) -> None:
    run = await run_script(stack, tmp_path, "printf 'a\\rb\\rc\\n'\n")
    plain = (await fetch_log(gateway_url(stack), run.job_id, "plain")).decode()

    assert run.text == "$ sh out.sh\na\rb\rc\n"
    assert run.raw == HEADER + b"a\rb\rc\n"
    assert plain.splitlines() == ["$ sh out.sh", "c"]


async def test_long_line_split_with_marks_nothing_lost(
    stack: Stack, tmp_path: Path
) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' x\necho\nseq 1 5\n"
    run = await run_script(stack, tmp_path, script)
    expected = HEADER + b"x" * 3_000_000 + b"\n1\n2\n3\n4\n5\n"

    assert run.raw == expected
    # A pause may release part of the line before it reaches the cut size, and
    # such a part gets no mark, so only some of the pieces end with one.
    assert run.text.count(CONTINUATION) >= 1
    assert run.text.replace(CONTINUATION, "") == expected.decode()
    assert max(len(chunk_raw(entry)) for entry in run.chunks) <= 64 * 1024
    assert run.text.endswith("x\n1\n2\n3\n4\n5\n")
    await wait_until(lambda: log_file(stack, run).exists(), timeout=10)
    await wait_until(lambda: log_file(stack, run).read_bytes() == expected, 10)


async def test_output_without_final_newline(stack: Stack, tmp_path: Path) -> None:
    run = await run_script(stack, tmp_path, "echo first\nprintf 'no newline'\n")
    streamed = "".join(
        json.loads(sse.data)["data"] for sse in run.events if sse.event == "log"
    )

    assert run.text.endswith("first\nno newline")
    assert run.raw == HEADER + b"first\nno newline"
    assert streamed.endswith("first\nno newline")


async def test_invalid_utf8_kept_raw_and_replaced_in_text(
    stack: Stack, tmp_path: Path
) -> None:
    payload = random.Random(512).randbytes(512)
    run = await run_script(
        stack, tmp_path, "cat random.bin\necho text after\n", **{"random.bin": payload}
    )
    expected = HEADER + payload + b"text after\n"

    assert run.raw == expected
    assert "\ufffd" in run.text
    assert run.text == expected.decode("utf-8", "replace")
    assert any(entry["chunk"].get("raw_b64") for entry in run.chunks)
    await wait_until(lambda: log_file(stack, run).exists(), timeout=10)
    await wait_until(lambda: log_file(stack, run).read_bytes() == expected, 10)


async def test_euro_split_by_pause_stays_whole(stack: Stack, tmp_path: Path) -> None:
    script = "printf '\\342\\202'\nsleep 0.3\nprintf '\\254\\n'\n"
    run = await run_script(stack, tmp_path, script)

    assert run.text == "$ sh out.sh\n\u20ac\n"
    assert run.raw == HEADER + "\u20ac\n".encode()
    assert all("\ufffd" not in entry["chunk"]["data"] for entry in run.chunks)


async def test_seq_300000_complete_and_in_order(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    run = await run_script(stack, tmp_path, "seq 1 300000\n")
    elapsed = time.monotonic() - started
    lines = run.text.splitlines()
    output = [entry for entry in run.chunks if entry["chunk"]["stream"] == "stdout"]

    assert lines[0] == "$ sh out.sh"
    assert lines[1:] == [str(number) for number in range(1, 300_001)]
    # Batches, not lines, are published: 2 MB of output in at most a few
    # hundred chunks even with a partial batch every flush interval.
    assert len(output) < 1000
    finished = next(
        json.loads(sse.data) for sse in run.events if sse.event == "step.finished"
    )
    step_seconds = finished["duration_s"]
    print(
        f"\nseq 1 300000: {300_000 / elapsed:,.0f} lines/s from submit to the "
        f"end of the SSE stream ({elapsed:.2f}s); the step took {step_seconds:.2f}s "
        "from container start to the last ack"
    )


async def test_stdout_stderr_alternating_keep_tags(
    stack: Stack, tmp_path: Path
) -> None:
    script = (
        "for i in 1 2 3 4 5; do echo out$i; sleep 0.05; echo err$i >&2; "
        "sleep 0.05; done\n"
    )
    run = await run_script(stack, tmp_path, script)
    tagged = [
        (entry["chunk"]["stream"], line)
        for entry in run.chunks
        for line in entry["chunk"]["data"].splitlines()
        if entry["chunk"]["stream"] in ("stdout", "stderr")
    ]
    expected = [("stdout", "$ sh out.sh")]
    for number in range(1, 6):
        expected += [("stdout", f"out{number}"), ("stderr", f"err{number}")]

    assert tagged == expected


async def test_final_chunk_before_step_finished(stack: Stack, tmp_path: Path) -> None:
    run = await run_script(stack, tmp_path, "echo hello\n")
    names = [sse.event for sse in run.events]
    finished_index = names.index("step.finished")
    main_logs = [
        (index, json.loads(sse.data))
        for index, sse in enumerate(run.events)
        if sse.event == "log" and json.loads(sse.data)["step"] == "main"
    ]
    finals = [
        sse for sse in run.events if sse.event == "log" and '"final":true' in sse.data
    ]
    end_index, end_chunk = main_logs[-1]

    assert len(finals) == 2  # the step's log and the _system log
    assert end_chunk["final"] is True
    assert end_chunk["data"] == ""
    assert not any(chunk["final"] for _, chunk in main_logs[:-1])
    assert end_index < finished_index
    assert run.events[end_index].id is not None


async def test_over_limit_truncates_keeps_tail_and_exit_code(
    limited_stack: Stack, tmp_path: Path
) -> None:
    script = "seq 1 200000\necho the-last-line\nexit 3\n"
    run = await run_script(limited_stack, tmp_path, script)
    async with GatewayClient(gateway_url(limited_stack)) as client:
        job = await client.request("GET", f"/api/v1/jobs/{run.job_id}")
    step = job["runs"][-1]["steps"][0]
    system = [
        e["chunk"]["data"] for e in run.chunks if e["chunk"]["stream"] == "system"
    ]
    notices = [text for text in system if text.startswith("log truncated:")]
    tails = [text for text in system if text.startswith("log tail:")]
    streamed = [
        json.loads(sse.data)["data"]
        for sse in run.events
        if sse.event == "log" and json.loads(sse.data)["stream"] == "system"
    ]
    total = len(HEADER) + sum(len(f"{n}\n") for n in range(1, 200_001)) + 14

    assert job["status"] == "failed"
    assert step["status"] == "failed"
    assert step["exit_code"] == 3
    assert len(notices) == 1
    assert len(tails) == 1
    assert sum(text.startswith("log truncated:") for text in streamed) == 1
    assert run.text.endswith("199999\n200000\nthe-last-line\n")
    dropped, kept = (int(word) for word in tails[0].split() if word.isdigit())
    output = [e for e in run.chunks if e["chunk"]["stream"] == "stdout"]
    logged = sum(len(chunk_raw(entry)) for entry in output)
    assert logged - kept <= LOG_LIMIT
    assert logged + dropped == total
    assert kept <= executor_logs.DEFAULT_TAIL_BYTES


async def collect_stream(
    session: aiohttp.ClientSession,
    url: str,
    last_event_id: str | None = None,
    stop_after_logs: int | None = None,
) -> list[ServerSentEvent]:
    """Read one SSE stream, until its end or after `stop_after_logs` log events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    received: list[ServerSentEvent] = []
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Accel-Buffering"] == "no"
        events = parse_sse(resp.content)
        async with contextlib.aclosing(events):
            async for sse in events:
                received.append(sse)
                logs = sum(event.event == "log" for event in received)
                if stop_after_logs is not None and logs >= stop_after_logs:
                    break
    return received


async def submit(stack: Stack, tmp_path: Path, script: str) -> str:
    repo = make_script_repo(tmp_path / "repo", script)
    async with GatewayClient(gateway_url(stack)) as client:
        accepted = await client.submit({"repository": {"url": repo}})
    return str(accepted["job_id"])


async def test_sse_resume_no_gap_no_duplicate(stack: Stack, tmp_path: Path) -> None:
    script = "for i in $(seq 1 40); do echo line$i; sleep 0.03; done\n"
    job_id = await submit(stack, tmp_path, script)
    url = f"{gateway_url(stack)}/api/v1/jobs/{job_id}/stream"
    async with aiohttp.ClientSession() as session:
        first = await collect_stream(session, url, stop_after_logs=6)
        resume_id = [sse.id for sse in first if sse.id][-1]
        rest = await collect_stream(session, url, last_event_id=resume_id)
        whole = await collect_stream(session, url)

    # The interleaving of events and chunks follows arrival, so each of the two
    # streams is compared on its own.
    joined_logs, joined_events = split_streams(first + rest)
    whole_logs, whole_events = split_streams(whole)
    # `end` has no id of its own; a parser keeps the id of the event before it.
    positions = [
        tuple(map(int, str(sse.id).split(":")))
        for sse in first + rest
        if sse.event != "end"
    ]
    assert rest[-1].event == "end"
    assert joined_logs == whole_logs
    assert joined_events == whole_events
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert any("line40" in data for data in joined_logs)


def split_streams(events: list[ServerSentEvent]) -> tuple[list[str], list[str]]:
    """Return the data of the log chunks and of the job events, in order."""
    logs = [sse.data for sse in events if sse.event == "log"]
    jobs = [
        sse.data
        for sse in events
        if sse.id is not None and sse.event not in ("log", "end")
    ]
    return logs, jobs


async def test_200_clients_receive_every_chunk(stack: Stack, tmp_path: Path) -> None:
    script = "for i in $(seq 1 20); do echo tick$i; sleep 0.1; done\n"
    job_id = await submit(stack, tmp_path, script)
    url = f"{gateway_url(stack)}/api/v1/jobs/{job_id}/stream"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        streams = await asyncio.wait_for(
            asyncio.gather(*(collect_stream(session, url) for _ in range(200))), 60
        )
    text = (await fetch_log(gateway_url(stack), job_id, "json")).decode()
    expected = [str(entry["chunk"]["seq"]) for entry in json.loads(text)["chunks"]]

    assert len(streams) == 200
    for received in streams:
        assert received[-1].event == "end"
        main_chunks = [
            str(json.loads(sse.data)["seq"])
            for sse in received
            if sse.event == "log" and json.loads(sse.data)["step"] == "main"
        ]
        assert main_chunks == expected


async def consumer_counts(js: Any) -> tuple[int, int]:
    logs = await js.stream_info(subjects.LOGS_STREAM)
    jobs = await js.stream_info(subjects.JOBS_STREAM)
    return logs.state.consumer_count, jobs.state.consumer_count


async def test_consumers_released_after_clients_leave(
    stack_factory: StackFactory, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    # A heartbeat slower than the release bound, so that the release cannot
    # rely on a failed heartbeat write to notice the client left.
    stack = await stack_factory(**{"server.sse_heartbeat": "3s"})
    nc = await connect(nats_server.url, "consumer-count")
    js = nc.jetstream()
    job_id = await submit(stack, tmp_path, "echo started\nsleep 60\n")
    url = f"{gateway_url(stack)}/api/v1/jobs/{job_id}/stream"
    try:
        # Measure once the step runs, when no other service is opening consumers.
        await wait_until(lambda: _log_contains(stack, job_id, b"started"), 20)
        baseline = await consumer_counts(js)
        opened = (baseline[0] + 20, baseline[1] + 20)
        async with aiohttp.ClientSession() as session:
            responses = [await session.get(url) for _ in range(20)]
            await wait_until(lambda: _counts_are(js, opened), timeout=10)
            ping = await asyncio.wait_for(_read_until_ping(responses[0]), 8)
            for resp in responses:
                resp.close()
            started = time.monotonic()
            await wait_until(lambda: _counts_are(js, baseline), timeout=5)
            released_in = time.monotonic() - started
    finally:
        async with GatewayClient(gateway_url(stack)) as client:
            await client.request("DELETE", f"/api/v1/jobs/{job_id}")
        await nc.close()

    assert ping.startswith(b":")
    assert released_in < 2.5


async def _log_contains(stack: Stack, job_id: str, text: bytes) -> bool:
    return text in await fetch_log(gateway_url(stack), job_id, "raw")


async def _counts_are(js: Any, expected: tuple[int, int]) -> bool:
    return await consumer_counts(js) == expected


async def _read_until_ping(resp: aiohttp.ClientResponse) -> bytes:
    """Return the first SSE comment line of a stream: the heartbeat."""
    while True:
        line = await resp.content.readline()
        if line.startswith(b":"):
            return line
