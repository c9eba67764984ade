"""A real pipeline through every service: HTTP submit, JetStream, Docker steps."""

import json
from pathlib import Path

import aiohttp

from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  setup:
    type: pre
    scripts: ["echo preparing", "echo $CI_STEP_NAME"]
  build:
    type: exec
    scripts: ["echo building", "echo to-stderr >&2", "exit 3"]
  report:
    type: post
    when: always
    scripts: ["echo reporting"]
  never:
    type: exec
    scripts: ["echo must not run"]
"""


async def test_three_steps_second_fails(stack: Stack, tmp_path: Path) -> None:
    commit = make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        events = [sse async for sse in client.stream(job_id)]
        job = await client.request("GET", f"/api/v1/jobs/{job_id}")
        log_text = await client.request("GET", f"/api/v1/jobs/{job_id}/logs")

    assert events[-1].event == "end"
    assert json.loads(events[-1].data)["status"] == "failed"
    run = job["runs"][-1]
    assert job["status"] == "failed"
    assert run["commit"] == commit
    steps = {step["name"]: step for step in run["steps"]}
    assert [s["name"] for s in run["steps"]] == ["setup", "build", "never", "report"]
    assert steps["setup"]["status"] == "succeeded"
    assert steps["setup"]["exit_code"] == 0
    assert steps["build"]["status"] == "failed"
    assert steps["build"]["exit_code"] == 3
    assert steps["never"]["status"] == "skipped"
    assert steps["report"]["status"] == "succeeded"
    assert "preparing\n" in log_text
    assert "setup\n" in log_text
    assert "to-stderr\n" in log_text
    assert "reporting\n" in log_text
    assert "must not run" not in log_text


async def test_bad_requests_get_problem_details(stack: Stack) -> None:
    assert stack.gateway is not None
    url = f"{stack.gateway.url}/api/v1/jobs"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b"{not json") as resp:
            assert resp.status == 400
            assert resp.content_type == "application/problem+json"
            assert "not valid JSON" in (await resp.json())["detail"]
        async with session.post(url, json={"env": {}}) as resp:
            assert resp.status == 422
            assert "repository" in (await resp.json())["detail"]
        async with session.post(url, json={"repository": {"url": "not a url"}}) as resp:
            assert resp.status == 422
            assert "'not a url'" in (await resp.json())["detail"]
