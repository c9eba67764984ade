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


async def test_retry_adds_a_run_and_409_after_success(
    stack: Stack, tmp_path: Path
) -> None:
    flaky = f"""
image: {TEST_IMAGE}
steps:
  check:
    scripts: ["test \\"$FLAG\\" = on || exit 7"]
"""
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": flaky})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
        retried = await client.request("POST", f"/api/v1/jobs/{job_id}/retry")
        async for _ in client.stream(job_id):
            pass
        job = await client.request("GET", f"/api/v1/jobs/{job_id}")
        first_log = await client.request(
            "GET", f"/api/v1/jobs/{job_id}/logs", params={"run": accepted["run_id"]}
        )

    assert [run["number"] for run in job["runs"]] == [1, 2]
    assert job["runs"][0]["status"] == "failed"
    assert job["runs"][0]["steps"][0]["exit_code"] == 7
    assert job["runs"][1]["run_id"] == retried["run_id"]
    assert job["runs"][1]["status"] == "failed"
    assert job["status"] == "failed"
    assert "exit 7" in first_log


async def test_retry_of_succeeded_job_is_409(stack: Stack, tmp_path: Path) -> None:
    ok = f"image: {TEST_IMAGE}\nsteps:\n  ok: {{scripts: ['true']}}\n"
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": ok})
    assert stack.gateway is not None
    url = stack.gateway.url
    async with GatewayClient(url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        async for _ in client.stream(accepted["job_id"]):
            pass
    async with aiohttp.ClientSession() as session:
        retry_url = f"{url}/api/v1/jobs/{accepted['job_id']}/retry"
        async with session.post(retry_url) as resp:
            body = await resp.json()
    assert resp.status == 409
    assert "'succeeded'" in body["detail"]


async def test_gateway_serves_both_schemas(stack: Stack) -> None:
    assert stack.gateway is not None
    shipped = Path("libs/pipeline/pipeline.schema.json").read_text()
    async with GatewayClient(stack.gateway.url) as client:
        pipeline = await client.request("GET", "/api/v1/schemas/pipeline.json")
        events = await client.request("GET", "/api/v1/schemas/events.json")
    assert pipeline == json.loads(shipped)
    tags = {
        definition["properties"]["type"]["enum"][0]
        for definition in events["$defs"].values()
        if "type" in definition.get("properties", {})
    }
    assert {"job.submitted", "run.finished", "artifact.stored"} <= tags


async def test_logs_plain_json_and_since(stack: Stack, tmp_path: Path) -> None:
    colour = f"""
image: {TEST_IMAGE}
steps:
  paint:
    scripts: ["printf 'a\\\\rb\\\\rc\\\\n'", "printf '\\\\033[31mred\\\\033[0m\\\\n'"]
"""
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": colour})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
        url = f"/api/v1/jobs/{job_id}/logs"
        raw = await client.request("GET", url, params={"step": "paint"})
        plain = await client.request(
            "GET", url, params={"step": "paint", "format": "plain"}
        )
        chunks = await client.request("GET", url, params={"format": "json"})
        first_seq = chunks["chunks"][0]["seq"]
        after = await client.request("GET", url, params={"since": str(first_seq)})

    assert "a\rb\rc\n" in raw
    assert "\x1b[31mred\x1b[0m\n" in raw
    assert "c\n" in plain
    assert "red\n" in plain
    assert "\x1b" not in plain
    assert "\r" not in plain
    first_text = chunks["chunks"][0]["chunk"]["data"]
    whole = "".join(entry["chunk"]["data"] for entry in chunks["chunks"])
    assert after == whole[len(first_text) :]


async def test_idempotency_key_gives_one_job(stack: Stack, tmp_path: Path) -> None:
    assert stack.gateway is not None
    url = f"{stack.gateway.url}/api/v1/jobs"
    body = {"repository": {"url": str(tmp_path / "a")}}
    other = {"repository": {"url": str(tmp_path / "b")}}
    headers = {"Idempotency-Key": "deploy-42"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            first = await resp.json()
        async with session.post(url, json=body, headers=headers) as resp:
            second = await resp.json()
        async with session.post(url, json=other, headers=headers) as resp:
            reused_status = resp.status
            reused = await resp.json()
    assert second["job_id"] == first["job_id"]
    assert second["run_id"] == first["run_id"]
    assert reused_status == 422
    assert "'deploy-42'" in reused["detail"]
