"""Idempotent submission, retries past the duplicate window, and cancel.

`tests/e2e/test_pipeline_semantics.py` covers timeouts of a process tree and a
second cancel. Here a single cancel of a tree with a background child and a
TERM-ignoring child must end `cancelled` and leave nothing in Docker.
"""

import time
from pathlib import Path

import aiohttp

from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo, wait_until

from .harness import docker_leftovers

FAILING = f"image: {TEST_IMAGE}\nsteps:\n  check: {{scripts: ['exit 7']}}\n"
KILL_GRACE = 2.0
"""`executor.timeouts.kill_grace` of the test config, in seconds."""
TREE = (
    "(trap 'echo child got TERM; exit 0' TERM; while true; do sleep 0.1; done) & "
    "sh -c \"trap '' TERM; echo stubborn child; sleep 60\" & "
    "trap '' TERM; echo started; wait"
)
CANCEL_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  tree:
    scripts: ['eval "$TREE"']
"""


async def test_same_idempotency_key_one_job(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": FAILING})
    assert stack.gateway is not None
    body = {"repository": {"url": str(tmp_path / "repo")}}
    headers = {"Idempotency-Key": "deploy-42"}
    async with aiohttp.ClientSession() as session:
        answers = []
        for _ in range(2):
            async with session.post(
                f"{stack.gateway.url}/api/v1/jobs", json=body, headers=headers
            ) as resp:
                assert resp.status == 202
                answers.append(await resp.json())
        async with session.get(f"{stack.gateway.url}/api/v1/jobs") as resp:
            listing = await resp.json()

    assert answers[0]["job_id"] == answers[1]["job_id"]
    assert answers[0]["run_id"] == answers[1]["run_id"]
    assert answers[0]["seq"] == answers[1]["seq"]
    assert [job["job_id"] for job in listing["jobs"]] == [answers[0]["job_id"]]


async def test_retries_in_a_row_each_run(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": FAILING})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
        retried = []
        for _ in range(2):
            retried.append(await client.request("POST", f"/api/v1/jobs/{job_id}/retry"))
            async for _ in client.stream(job_id):
                pass
        job = await client.request("GET", f"/api/v1/jobs/{job_id}")
        events = (await client.request("GET", f"/api/v1/jobs/{job_id}/events"))[
            "events"
        ]

    runs = job["runs"]
    finished = [e["event"] for e in events if e["event"]["type"] == "run.finished"]
    assert [run["run_id"] for run in runs] == [
        accepted["run_id"],
        retried[0]["run_id"],
        retried[1]["run_id"],
    ]
    assert [run["status"] for run in runs] == ["failed"] * 3
    assert [e["run_id"] for e in finished] == [run["run_id"] for run in runs]


async def test_cancel_stops_whole_tree(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": CANCEL_PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit(
            {"repository": {"url": str(tmp_path / "repo")}, "env": {"TREE": TREE}}
        )
        job_id = accepted["job_id"]

        async def started() -> bool:
            log = await client.request("GET", f"/api/v1/jobs/{job_id}/logs")
            return "stubborn child" in log and "started" in log

        await wait_until(started, timeout=30, interval=0.1)
        cancelled_at = time.monotonic()
        await client.request("DELETE", f"/api/v1/jobs/{job_id}")
        async for _ in client.stream(job_id):
            pass
        seconds = time.monotonic() - cancelled_at
        job = await client.request("GET", f"/api/v1/jobs/{job_id}")
        log = await client.request("GET", f"/api/v1/jobs/{job_id}/logs")

    step = job["runs"][-1]["steps"][0]
    assert job["status"] == "cancelled"
    assert step["status"] == "cancelled"
    assert "child got TERM" in log
    # The main shell and one child ignore TERM, so only SIGKILL after the
    # grace ends the container.
    assert KILL_GRACE <= seconds < KILL_GRACE + 10
    assert docker_leftovers([job_id]) == []
