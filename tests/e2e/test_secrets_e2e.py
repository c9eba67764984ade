"""Secrets and clone credentials reach the job and nowhere else.

A job clones from a real smart-HTTP git server with basic auth and prints its
secret variables in several forms. Then the test searches every stream, every
stored log file and every API response for each secret value.
"""

from pathlib import Path

import aiohttp
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from libs.events import connect
from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo
from tests.gitservers import GitHttpServer, publish

TOKEN = "tok-Secret-4242-value"
MULTI = "first-line-secret\nsecond-line-secret"
PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  leak:
    scripts:
      - echo "$API_TOKEN"
      - echo "token=$API_TOKEN and again $API_TOKEN"
      - printf '%s' "${{API_TOKEN%??????}}"; sleep 0.3; echo "${{API_TOKEN#*4242}}"
      - printf '%s\\n' "$MULTI_LINE"
      - echo "https://$API_TOKEN@git.example.invalid/repo.git"
      - echo done-printing
"""


async def _stream_bytes(js: object, stream: str) -> bytes:
    """Return every stored message of `stream`, data and headers, concatenated."""
    sub = await js.subscribe(  # type: ignore[attr-defined]
        ">",
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(),
    )
    info = await js.stream_info(stream)  # type: ignore[attr-defined]
    collected = []
    for _ in range(info.state.messages):
        msg = await sub.next_msg(timeout=5)
        collected.append(msg.data + repr(msg.headers).encode())
    await sub.unsubscribe()
    return b"".join(collected)


async def test_secrets_never_leave_the_job(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "work", {".stasis-ci.yaml": PIPELINE})
    server = GitHttpServer(tmp_path / "served", auth="basic")
    publish(tmp_path / "work", tmp_path / "served", "app")
    server.start()
    assert stack.gateway is not None
    try:
        async with GatewayClient(stack.gateway.url) as client:
            accepted = await client.submit(
                {
                    "repository": {"url": server.url("app")},
                    "secrets": {"API_TOKEN": TOKEN, "MULTI_LINE": MULTI},
                    "credentials": {
                        "username": server.username,
                        "password": server.password,
                    },
                }
            )
            job_id = accepted["job_id"]
            sse = [event.data async for event in client.stream(job_id)]
            responses = [
                await client.request("GET", f"/api/v1/jobs/{job_id}"),
                await client.request("GET", f"/api/v1/jobs/{job_id}/events"),
                await client.request("GET", f"/api/v1/jobs/{job_id}/logs"),
                await client.request("GET", f"/api/v1/jobs/{job_id}/logs?format=json"),
                await client.request("GET", "/api/v1/jobs"),
                await client.request("GET", f"/api/v1/jobs/{job_id}/logs?format=raw"),
            ]
            metrics = await client.request("GET", "/metrics")
    finally:
        server.stop()

    job, _, log_text = responses[0], responses[1], responses[2]
    assert job["status"] == "succeeded", job["runs"][-1]["reason"]
    assert "done-printing" in log_text
    assert log_text.count("********") >= 6
    assert job["secret_names"] == ["API_TOKEN", "MULTI_LINE"]
    assert job["credentials_kind"] == "basic"

    nc = await connect(stack.nats_url, "secret-scan")
    js = nc.jetstream()
    streams = [
        await _stream_bytes(js, name)
        for name in ("STASIS_JOBS", "STASIS_LOGS", "KV_STASIS_SECRETS")
    ]
    kv = await js.key_value("STASIS_SECRETS")
    with pytest.raises(KeyNotFoundError):
        await kv.get(job_id)
    await nc.close()

    stored_logs = b"".join(
        path.read_bytes() for path in (tmp_path / "data" / "logs").rglob("*.log")
    )
    assert stored_logs
    assert "stasis_" in metrics
    haystacks = {
        "streams": b"".join(streams).decode(errors="replace"),
        "stored logs": stored_logs.decode(errors="replace"),
        "api": repr(responses),
        "sse": "".join(sse),
        "metrics": metrics,
    }
    needles = [TOKEN, *MULTI.splitlines(), "s3cret-Pa55word"]
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {where}"


async def test_secret_job_retry_is_409(stack: Stack, tmp_path: Path) -> None:
    failing = f"image: {TEST_IMAGE}\nsteps:\n  a: {{scripts: ['exit 1']}}\n"
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": failing})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit(
            {
                "repository": {"url": str(tmp_path / "repo")},
                "secrets": {"KEY": "abcdefgh"},
            }
        )
        async for _ in client.stream(accepted["job_id"]):
            pass
    url = f"{stack.gateway.url}/api/v1/jobs/{accepted['job_id']}/retry"
    async with aiohttp.ClientSession() as session, session.post(url) as resp:
        body = await resp.json()
    assert resp.status == 409
    assert "secrets" in body["detail"]


async def test_secret_name_in_env_too_is_422(stack: Stack, tmp_path: Path) -> None:
    assert stack.gateway is not None
    url = f"{stack.gateway.url}/api/v1/jobs"
    body = {
        "repository": {"url": str(tmp_path)},
        "env": {"KEY": "plain"},
        "secrets": {"KEY": "hidden-value"},
    }
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        problem = await resp.json()
    assert resp.status == 422
    assert "KEY given both in env and in secrets" in problem["detail"]
    assert "hidden-value" not in problem["detail"]
