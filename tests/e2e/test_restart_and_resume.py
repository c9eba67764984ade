"""Gateway restarts rebuild state from the stream; SSE resumes without gaps."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from tests.conftest import TEST_IMAGE, make_repo
from tests.e2e.helpers import ServiceProcess

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  count:
    type: exec
    scripts: ["seq 1 200", "echo done"]
  fail:
    type: exec
    scripts: ["test -f missing-file"]
"""


@pytest.fixture
async def processes(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> AsyncIterator[dict[str, ServiceProcess]]:
    data = tmp_path / "data"
    running = {
        name: ServiceProcess(name, nats_server.url, data)
        for name in ("logsink", "scheduler", "executor", "gateway")
    }
    for process in running.values():
        await process.start()
    yield running
    for process in running.values():
        process.stop()


async def _finished_jobs(client: GatewayClient, count: int, repo: str) -> list[str]:
    job_ids = []
    for _ in range(count):
        accepted = await client.submit({"repository": {"url": repo}})
        job_ids.append(accepted["job_id"])
    for job_id in job_ids:
        async for _ in client.stream(job_id):
            pass
    return job_ids


async def test_gateway_killed_rebuilds_every_job(
    processes: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    gateway = processes["gateway"]
    async with GatewayClient(gateway.url) as client:
        job_ids = await _finished_jobs(client, 3, str(tmp_path / "repo"))
        before = await client.request("GET", "/api/v1/jobs?limit=10")
        logs_before = await client.request("GET", f"/api/v1/jobs/{job_ids[0]}/logs")

    gateway.kill()
    await gateway.start()

    async with GatewayClient(gateway.url) as client:
        after = await client.request("GET", "/api/v1/jobs?limit=10")
        logs_after = await client.request("GET", f"/api/v1/jobs/{job_ids[0]}/logs")
    assert [job["job_id"] for job in before["jobs"]] == list(reversed(job_ids))
    assert after == before
    assert {job["status"] for job in after["jobs"]} == {"failed"}
    assert logs_after == logs_before
    assert "199\n200\n$ echo done\ndone\n" in logs_after


def _of_kind(events: list, log: bool) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in events if (e.event == "log") == log]


async def test_sse_resume_has_no_gap_or_duplicate(
    processes: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    async with GatewayClient(processes["gateway"].url) as client:
        [job_id] = await _finished_jobs(client, 1, str(tmp_path / "repo"))
        full = [sse async for sse in client.stream(job_id)]
        assert full[-1].event == "end"
        assert len(full) > 10
        for cut in (1, 5, len(full) // 2, len(full) - 2):
            first = full[:cut]
            rest = [sse async for sse in client.stream(job_id, first[-1].id)]
            combined = first + rest
            # Events and log chunks come from two streams; each keeps its order
            # and nothing is lost or repeated, though they may interleave anew.
            assert _of_kind(combined, log=False) == _of_kind(full, log=False), cut
            assert _of_kind(combined, log=True) == _of_kind(full, log=True), cut
            positions = [e.id for e in combined if e.event != "end"]
            assert len(set(positions)) == len(positions), cut


async def test_sse_live_events_arrive_in_order(
    processes: dict[str, ServiceProcess], tmp_path: Path
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    async with GatewayClient(processes["gateway"].url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        events = [sse async for sse in client.stream(accepted["job_id"])]
    kinds = [e.event for e in events if e.event != "log"]
    assert kinds == [
        "job.submitted",
        "job.queued",
        "run.dispatched",
        "run.started",
        "source.checked_out",
        "pipeline.loaded",
        "step.started",
        "step.finished",
        "step.started",
        "step.finished",
        "run.finished",
        "end",
    ]
    positions = [tuple(int(p) for p in e.id.split(":")) for e in events[:-1]]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    count_log = "".join(
        json.loads(e.data)["data"]
        for e in events
        if e.event == "log" and '"step":"count"' in e.data
    )
    assert count_log.splitlines()[1:201] == [str(n) for n in range(1, 201)]
