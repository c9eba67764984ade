"""An executor killed mid-step: the run is recovered by another executor."""

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from tests.conftest import TEST_IMAGE, make_repo, wait_until
from tests.e2e.helpers import ServiceProcess

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  slow:
    scripts: ["sleep 3", "echo finished"]
"""
ACK_WAIT = {"STASIS_NATS_ACK_WAIT": "2s"}


@pytest.fixture
async def services(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> AsyncIterator[dict[str, ServiceProcess]]:
    data = tmp_path / "data"
    running = {
        name: ServiceProcess(name, nats_server.url, data, **ACK_WAIT)
        for name in ("logsink", "scheduler", "gateway")
    }
    for process in running.values():
        await process.start()
    yield running
    for process in running.values():
        process.stop()


def _docker_lines(kind: str, run_id: str) -> list[str]:
    args = ["docker", kind, "ls", "-q", "--filter", f"label=stasis.run_id={run_id}"]
    if kind == "container":
        args.insert(3, "-a")
    result = subprocess.run(args, check=True, capture_output=True, text=True)
    return result.stdout.split()


async def test_killed_executor_run_recovered(
    services: dict[str, ServiceProcess], nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    data = tmp_path / "data"
    first = ServiceProcess(
        "executor", nats_server.url, data, STASIS_EXECUTOR_ID="ex-a", **ACK_WAIT
    )
    second = ServiceProcess(
        "executor", nats_server.url, data, STASIS_EXECUTOR_ID="ex-b", **ACK_WAIT
    )
    await first.start()
    try:
        async with GatewayClient(services["gateway"].url) as client:
            accepted = await client.submit(
                {"repository": {"url": str(tmp_path / "repo")}}
            )
            job_id, run_id = accepted["job_id"], accepted["run_id"]

            async def step_running() -> bool:
                job = await client.request("GET", f"/api/v1/jobs/{job_id}")
                steps = job["runs"][0]["steps"]
                return bool(steps) and steps[0]["status"] == "running"

            await wait_until(step_running, timeout=30)
            first.kill()
            await second.start()
            events = [sse async for sse in client.stream(job_id)]
            job = await client.request("GET", f"/api/v1/jobs/{job_id}")
    finally:
        first.stop()
        second.stop()

    kinds = [e.event for e in events]
    lost = [json.loads(e.data) for e in events if e.event == "run.attempt_lost"]
    starts = [json.loads(e.data) for e in events if e.event == "run.started"]
    run = job["runs"][0]
    assert job["status"] == "succeeded"
    assert kinds.count("run.finished") == 1
    assert [(e["attempt"], e["executor_id"]) for e in lost] == [(1, "ex-a")]
    assert [(e["attempt"], e["executor_id"]) for e in starts] == [
        (1, "ex-a"),
        (2, "ex-b"),
    ]
    assert run["lost_attempts"] == 1
    assert run["executor_id"] == "ex-b"
    assert _docker_lines("container", run_id) == []
    assert _docker_lines("volume", run_id) == []
